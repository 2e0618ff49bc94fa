"""The `transformers` baseline: LlamaForCausalLM / Qwen2ForCausalLM of the same shape, greedy `generate` with its
KV cache, a fixed number of new tokens. Our DiffusionLM weights are copied in, so its tokens can be compared with
the causal decoder's (same weights, same greedy choice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.config import ModelConfig
from engine.model import DiffusionLM


def available() -> str | None:
    """None when transformers imports, else why not."""
    try:
        import transformers  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"transformers is not importable here ({type(exc).__name__}: {exc})"
    return None


def hf_config(cfg: ModelConfig) -> Any:
    """The transformers config of the same shape: Qwen2 when the projections have biases, LLaMA otherwise."""
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu",
    )
    if cfg.qkv_bias:
        from transformers import Qwen2Config

        return Qwen2Config(**common, use_sliding_window=False)
    from transformers import LlamaConfig

    return LlamaConfig(**common, attention_bias=False, mlp_bias=False)


def hf_state_dict(model: DiffusionLM) -> dict[str, Tensor]:
    """Our parameter names -> transformers' LLaMA/Qwen2 names."""
    out: dict[str, Tensor] = {}
    for name, t in model.plain_state_dict().items():
        if name == "lm_head.weight":
            out[name] = t
            continue
        n = "model." + name
        n = n.replace(".attn.", ".self_attn.").replace(".input_norm.", ".input_layernorm.")
        n = n.replace(".post_attn_norm.", ".post_attention_layernorm.")
        out[n] = t
    return out


def hf_model(model: DiffusionLM, int8_from: Path | None = None) -> Any:
    """A transformers causal LM of the model's shape, dtype and device, holding the model's weights.

    int8_from: the model's directory, when its layers carry int8 weights (engine.quantize): the float weights are
    read from there and the transformers model's decoder layers and output head get the same int8 treatment.
    """
    from transformers import AutoModelForCausalLM

    if int8_from is not None:
        from engine.checkpoint import load_model
        from engine.quantize import quantize_blocks, quantize_head

        hf = hf_model(load_model(int8_from, dtype=torch.float32)[0])
        quantize_blocks(hf.model.layers)
        quantize_head(hf)
        return hf
    p = model.embed_tokens.weight
    with torch.device(p.device):  # built where it runs (fast on a GPU), then our weights copied over its init
        hf = AutoModelForCausalLM.from_config(hf_config(model.cfg), attn_implementation="sdpa", dtype=p.dtype)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and model.cfg.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weight names do not map: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return hf.eval()


@torch.inference_mode()
def generate(hf: Any, prompt: Tensor, n: int, end_id: int) -> Tensor:
    """Greedy generate of exactly n new tokens [B, n] with the KV cache (min_new_tokens = max_new_tokens = n)."""
    out = hf.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
        do_sample=False, use_cache=True, eos_token_id=end_id, pad_token_id=end_id,
    )
    new = out[:, prompt.shape[1] :]
    if new.shape[1] != n:
        raise RuntimeError(f"generate made {new.shape[1]} tokens, not {n}")
    return new
