"""External checkpoint families mapped onto our one DiffusionLM class.

Each family is a config translation (its config.json keys -> ModelConfig) and a tensor-name map (its safetensors
names -> our parameter names). The shapes of the three families are all the same block as ours: pre-norm RMSNorm,
rotary positions (rotate-half convention), SwiGLU, grouped-query attention, no causal mask. Nothing here reads
weights; engine/checkpoint.py does that.

Sources checked (the names and keys below are the ones those files use):

- LLaDA (GSAI-ML/LLaDA-8B-Instruct, -Base, LLaDA-1.5). The model code ships with the checkpoint as
  modeling_llada.py / configuration_llada.py (https://huggingface.co/GSAI-ML/LLaDA-8B-Instruct/tree/main); read
  through the verbatim copy in github.com/ZHZisZZ/dllm-trainer, dllm/pipelines/llada/models/. The HF wrapper
  LLaDAModelLM keeps the network in `self.model` (base_model_prefix "model"), and LLaDAModel keeps its modules in
  an nn.ModuleDict `transformer` holding `wte`, `blocks` (a ModuleList when block_group_size == 1), `ln_f` and,
  only when weight_tying is false, the output head `ff_out`. LLaDALlamaBlock (block_type "llama") owns
  `attn_norm`, `q_proj`, `k_proj`, `v_proj` (bias only with include_bias or include_qkv_bias), `attn_out`,
  `ff_norm`, `ff_proj`, `up_proj`, `ff_out`, and computes `ff_out(act(ff_proj(x)) * up_proj(x))`: so `ff_proj`
  is the GATE (the activated one), `up_proj` the up projection and `ff_out` the down projection. With
  activation_type "silu" that is exactly SwiGLU. Attention is SDPA with is_causal=False; GQA repeats kv heads
  with repeat_interleave (same grouping as ours); RoPE uses the rotate-half layout and inv_freq computed from
  d_model // n_heads; RMSLayerNorm returns weight * x_normed (cast back to the input dtype), like ours.
  The 8B config.json: d_model 4096, n_layers 32, n_heads 32, n_kv_heads 32, mlp_hidden_size 12288,
  vocab_size = embedding_size = 126464, rope_theta 500000, rms_norm_eps 1e-5, weight_tying false,
  include_bias false, include_qkv_bias false, block_type "llama", layer_norm_type "rms", activation_type "silu",
  rope true, block_group_size 1, mask_token_id 126336 (<|mdm_mask|>), eos_token_id 126081 (<|endoftext|>).
  Keys absent from a config.json take the defaults of LLaDA's own ModelConfig dataclass (configuration_llada.py),
  because that is what LLaDAConfig(**json) does; those defaults are in LLADA_DEFAULTS below.
- Dream family (Dream-org/Dream-v0-Base-7B and -Instruct, apple/DiffuCoder-7B-*, Dream-org/Dream-Coder-v0-*,
  DreamOn). model_type "Dream", architectures ["DreamModel"]; code in modeling_dream.py / configuration_dream.py
  shipped with the checkpoints (read through github.com/ZHZisZZ/dllm-trainer, dllm/pipelines/dream/models/).
  DreamModel holds `model` (DreamBaseModel: `embed_tokens`, `layers.N.{self_attn.{q,k,v,o}_proj,
  mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}`, `norm`) and `lm_head`: the Qwen2 names.
  DreamAttention hard-codes bias=True on q/k/v and bias=False on o_proj, and calls SDPA with is_causal=False.
  The generation code (generation_utils.py) reads the prediction for position i from the output at i-1:
  `logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)`, hence logits_shift = 1. DreamConfig defaults:
  vocab 151936, hidden 4096, intermediate 22016, 32 layers, 32 heads, 32 kv heads, rms_norm_eps 1e-6,
  rope_theta 10000, tie_word_embeddings false, mask_token_id 151666 (<|mask|>), pad_token_id 151643.
  The 7B checkpoints: hidden 3584, 28 layers, 28 heads, 4 kv heads, intermediate 18944, vocab 152064,
  rope_theta 1e6. DiffuCoder-Instruct pads the tail of a fill with <|dlm_pad|> (seen in its published usage).
- Open-dCoder (fredzzp/open-dcoder-0.5B; training and sampling code in github.com/pengzhangzhi/Open-dLLM).
  Continued from Qwen/Qwen2.5-Coder-0.5B and saved as a plain Qwen2 checkpoint: model_type "qwen2",
  architectures ["Qwen2ForCausalLM"], hidden 896, 24 layers, 14 heads, 2 kv heads, intermediate 4864,
  vocab 151936, rope_theta 1e6, tie_word_embeddings true (configs/model_configs/qwen/Qwen2-0.5B.json), Qwen2
  tensor names. Its training script adds the mask token with `tokenizer.add_special_tokens({"mask_token":
  "<M>"})` (tasks/train_torch.py), so the `<M>` token in tokenizer.json is what tells it apart from an
  autoregressive Qwen2. It ALSO shifts: training drops the last hidden state and the first label ("tokens < n
  predict n", veomni/models/transformers/qwen2/modeling_qwen2.py), and its sampler shifts logits exactly like
  Dream ("CRITICAL: Shift logits ...", veomni/models/transformers/qwen2/generation_utils.py). So logits_shift = 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor
import torch

from engine.config import ModelConfig
from engine.errors import CheckpointError
from engine.tokenizer import FAMILY_TOKENS

LLADA = "llada"
DREAM = "Dream"
OPEN_DCODER = "open-dcoder"
CODEFILL = "codefill"

# Open-dCoder's mask token (added to the Qwen2 tokenizer by its training script).
OPEN_DCODER_MASK = "<M>"

# Defaults of LLaDA's ModelConfig dataclass (configuration_llada.py) for the keys we read.
LLADA_DEFAULTS: dict[str, Any] = {
    "d_model": 768,
    "n_heads": 12,
    "n_kv_heads": None,
    "n_layers": 12,
    "mlp_ratio": 4,
    "mlp_hidden_size": None,
    "activation_type": "swiglu",
    "block_type": "sequential",
    "block_group_size": 1,
    "alibi": False,
    "rope": False,
    "multi_query_attention": None,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "layer_norm_type": "default",
    "layer_norm_with_affine": True,
    "rms_norm_eps": 1e-5,
    "max_sequence_length": 1024,
    "rope_theta": 10000.0,
    "include_qkv_bias": False,
    "include_bias": False,
    "bias_for_layer_norm": None,
    "scale_logits": False,
    "vocab_size": 50257,
    "embedding_size": 50304,
    "weight_tying": True,
}

# Defaults of DreamConfig (configuration_dream.py) and of transformers' Qwen2Config for the keys we read.
DREAM_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "use_sliding_window": False,
}
QWEN2_DEFAULTS: dict[str, Any] = dict(DREAM_DEFAULTS)


def family_of_model_type(model_type: Any) -> str | None:
    """The family a config.json's model_type names, or None when we do not load it.

    "qwen2" maps to Open-dCoder here; the caller must still check the tokenizer for the `<M>` mask token.
    """
    if not isinstance(model_type, str):
        return None
    key = model_type.lower()
    if key == "codefill":
        return CODEFILL
    if key == "llada":
        return LLADA
    if key == "dream":  # published checkpoints spell it "Dream"; some ports write "dream"
        return DREAM
    if key == "qwen2":
        return OPEN_DCODER
    return None


KNOWN_MODEL_TYPES = ("codefill", "llada", "Dream", "qwen2 (Open-dCoder, with a <M> mask token)")


def _get(raw: dict[str, Any], defaults: dict[str, Any], key: str) -> Any:
    """raw[key], or the family default when the key is absent (a present null stays null)."""
    return raw[key] if key in raw else defaults[key]


def _int(raw: dict[str, Any], defaults: dict[str, Any], key: str, source: str) -> int:
    value = _get(raw, defaults, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{source}: {key} must be a positive integer, not {value!r}")
    return value


def _float(raw: dict[str, Any], defaults: dict[str, Any], key: str, source: str) -> float:
    value = _get(raw, defaults, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{source}: {key} must be a positive number, not {value!r}")
    return float(value)


def _family_tokens(family: str) -> tuple[str, str]:
    names = FAMILY_TOKENS[family]
    return names["mask"][0], names["end"][0]


def _finish(cfg: ModelConfig, source: str) -> ModelConfig:
    try:
        cfg.validate()
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return cfg


def llada_config(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate a LLaDA config.json (model_type "llada") into a ModelConfig."""
    d = LLADA_DEFAULTS
    refusals = [
        ("block_type", "llama", "only LLaDA's llama block is supported"),
        ("layer_norm_type", "rms", "only RMS norm is supported"),
        ("activation_type", "silu", "only the silu gate (SwiGLU with ff_proj/up_proj) is supported"),
        ("rope", True, "only rotary positions are supported"),
        ("alibi", False, "ALiBi is not supported"),
        ("include_bias", False, "biases on every linear layer are not supported"),
        ("attention_layer_norm", False, "q/k layer norms are not supported"),
        ("input_emb_norm", False, "scaled input embeddings are not supported"),
        ("scale_logits", False, "scaled logits are not supported"),
        ("block_group_size", 1, "grouped blocks (block_groups.N) are not supported"),
        ("layer_norm_with_affine", True, "norms without weights are not supported"),
    ]
    for key, wanted, why in refusals:
        value = _get(raw, d, key)
        if value != wanted:
            raise CheckpointError(f"{source}: LLaDA {key} is {value!r}; {why} ({key} must be {wanted!r})")
    if _get(raw, d, "bias_for_layer_norm"):
        raise CheckpointError(f"{source}: LLaDA bias_for_layer_norm is set; norms with a bias are not supported")

    hidden = _int(raw, d, "d_model", source)
    heads = _int(raw, d, "n_heads", source)
    kv = _get(raw, d, "n_kv_heads")
    mqa = _get(raw, d, "multi_query_attention")
    if mqa:  # LLaDA's effective_n_kv_heads
        kv = 1
    elif kv is None:
        kv = heads
    if isinstance(kv, bool) or not isinstance(kv, int) or kv <= 0:
        raise CheckpointError(f"{source}: n_kv_heads must be a positive integer, not {kv!r}")
    mlp = _get(raw, d, "mlp_hidden_size")
    if mlp is None:
        mlp = _int(raw, d, "mlp_ratio", source) * hidden
    if isinstance(mlp, bool) or not isinstance(mlp, int) or mlp <= 0:
        raise CheckpointError(f"{source}: mlp_hidden_size must be a positive integer, not {mlp!r}")
    vocab = _get(raw, d, "embedding_size") or _int(raw, d, "vocab_size", source)  # wte has embedding_size rows
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab <= 0:
        raise CheckpointError(f"{source}: embedding_size must be a positive integer, not {vocab!r}")
    mask, end = _family_tokens(LLADA)
    cfg = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=_int(raw, d, "n_layers", source),
        num_heads=heads,
        num_kv_heads=kv,
        intermediate_size=mlp,
        max_position=_int(raw, d, "max_sequence_length", source),
        rope_theta=_float(raw, d, "rope_theta", source),
        norm_eps=_float(raw, d, "rms_norm_eps", source),
        qkv_bias=bool(_get(raw, d, "include_qkv_bias")),
        tie_embeddings=bool(_get(raw, d, "weight_tying")),
        logits_shift=0,
        family=LLADA,
        mask_token=mask,
        end_token=end,
    )
    return _finish(cfg, source)


def _rope_theta(raw: dict[str, Any], defaults: dict[str, Any], source: str) -> float:
    """rope_theta from a Qwen2-style config: top level (transformers 4.x) or rope_parameters (5.x)."""
    scaling = raw.get("rope_scaling", defaults["rope_scaling"])
    params = raw.get("rope_parameters")
    for what in (scaling, params):
        if isinstance(what, dict):
            kind = what.get("rope_type", what.get("type", "default"))
            if kind != "default":
                raise CheckpointError(f"{source}: rope scaling {kind!r} is not supported (only plain rotary)")
        elif what is not None:
            raise CheckpointError(f"{source}: rope_scaling/rope_parameters must be an object or null")
    if "rope_theta" not in raw and isinstance(params, dict) and "rope_theta" in params:
        return _float(params, defaults, "rope_theta", source)
    return _float(raw, defaults, "rope_theta", source)


def qwen2_config(raw: dict[str, Any], family: str, source: str = "config.json") -> ModelConfig:
    """Translate a Qwen2-shaped config.json (Dream family, Open-dCoder) into a ModelConfig."""
    d = DREAM_DEFAULTS if family == DREAM else QWEN2_DEFAULTS
    act = _get(raw, d, "hidden_act")
    if act != "silu":
        raise CheckpointError(f"{source}: hidden_act is {act!r}; only 'silu' (SwiGLU) is supported")
    if _get(raw, d, "use_sliding_window"):
        raise CheckpointError(f"{source}: use_sliding_window is true; sliding-window attention is not supported")
    hidden = _int(raw, d, "hidden_size", source)
    heads = _int(raw, d, "num_attention_heads", source)
    kv = raw.get("num_key_value_heads", d["num_key_value_heads"])
    if kv is None:  # both DreamConfig and Qwen2Config fall back to the head count
        kv = heads
    if isinstance(kv, bool) or not isinstance(kv, int) or kv <= 0:
        raise CheckpointError(f"{source}: num_key_value_heads must be a positive integer, not {kv!r}")
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        raise CheckpointError(
            f"{source}: head_dim {head_dim} differs from hidden_size / num_attention_heads = {hidden // heads};"
            " only head_dim = hidden_size / num_attention_heads is supported"
        )
    mask, end = _family_tokens(family)
    cfg = ModelConfig(
        vocab_size=_int(raw, d, "vocab_size", source),
        hidden_size=hidden,
        num_layers=_int(raw, d, "num_hidden_layers", source),
        num_heads=heads,
        num_kv_heads=kv,
        intermediate_size=_int(raw, d, "intermediate_size", source),
        max_position=_int(raw, d, "max_position_embeddings", source),
        rope_theta=_rope_theta(raw, d, source),
        norm_eps=_float(raw, d, "rms_norm_eps", source),
        qkv_bias=True,  # Qwen2Attention and DreamAttention both hard-code bias=True on q/k/v
        tie_embeddings=bool(_get(raw, d, "tie_word_embeddings")),
        logits_shift=1,  # both read the prediction for position i from the output at i-1
        family=family,
        mask_token=mask,
        end_token=end,
    )
    return _finish(cfg, source)


def translate_config(raw: dict[str, Any], family: str, source: str = "config.json") -> ModelConfig:
    """ModelConfig for an external family's config.json dict."""
    if family == LLADA:
        return llada_config(raw, source)
    if family in (DREAM, OPEN_DCODER):
        return qwen2_config(raw, family, source)
    raise CheckpointError(f"{source}: no translation for family {family!r}")


def _our_layer_names(cfg: ModelConfig, i: int) -> dict[str, str]:
    """Short external-agnostic keys -> our parameter names for layer i."""
    p = f"layers.{i}."
    names = {
        "q.w": p + "attn.q_proj.weight",
        "k.w": p + "attn.k_proj.weight",
        "v.w": p + "attn.v_proj.weight",
        "o.w": p + "attn.o_proj.weight",
        "gate.w": p + "mlp.gate_proj.weight",
        "up.w": p + "mlp.up_proj.weight",
        "down.w": p + "mlp.down_proj.weight",
        "norm1.w": p + "input_norm.weight",
        "norm2.w": p + "post_attn_norm.weight",
    }
    if cfg.qkv_bias:
        names.update({"q.b": p + "attn.q_proj.bias", "k.b": p + "attn.k_proj.bias", "v.b": p + "attn.v_proj.bias"})
    return names


_LLADA_LAYER = {
    "q.w": "q_proj.weight",
    "k.w": "k_proj.weight",
    "v.w": "v_proj.weight",
    "q.b": "q_proj.bias",
    "k.b": "k_proj.bias",
    "v.b": "v_proj.bias",
    "o.w": "attn_out.weight",
    "gate.w": "ff_proj.weight",  # activated: act(ff_proj(x)) * up_proj(x)
    "up.w": "up_proj.weight",
    "down.w": "ff_out.weight",
    "norm1.w": "attn_norm.weight",
    "norm2.w": "ff_norm.weight",
}

_QWEN2_LAYER = {
    "q.w": "self_attn.q_proj.weight",
    "k.w": "self_attn.k_proj.weight",
    "v.w": "self_attn.v_proj.weight",
    "q.b": "self_attn.q_proj.bias",
    "k.b": "self_attn.k_proj.bias",
    "v.b": "self_attn.v_proj.bias",
    "o.w": "self_attn.o_proj.weight",
    "gate.w": "mlp.gate_proj.weight",
    "up.w": "mlp.up_proj.weight",
    "down.w": "mlp.down_proj.weight",
    "norm1.w": "input_layernorm.weight",
    "norm2.w": "post_attention_layernorm.weight",
}


def tensor_name_map(cfg: ModelConfig) -> dict[str, str]:
    """External tensor name -> our parameter name, for every tensor the checkpoint must hold.

    With tied embeddings the output head is the embedding, so no head tensor is required (see ignorable_tensors).
    """
    out: dict[str, str] = {}
    if cfg.family == LLADA:
        out["model.transformer.wte.weight"] = "embed_tokens.weight"
        out["model.transformer.ln_f.weight"] = "norm.weight"
        if not cfg.tie_embeddings:
            out["model.transformer.ff_out.weight"] = "lm_head.weight"
        for i in range(cfg.num_layers):
            for short, ours in _our_layer_names(cfg, i).items():
                out[f"model.transformer.blocks.{i}.{_LLADA_LAYER[short]}"] = ours
        return out
    if cfg.family in (DREAM, OPEN_DCODER):
        out["model.embed_tokens.weight"] = "embed_tokens.weight"
        out["model.norm.weight"] = "norm.weight"
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = "lm_head.weight"
        for i in range(cfg.num_layers):
            for short, ours in _our_layer_names(cfg, i).items():
                out[f"model.layers.{i}.{_QWEN2_LAYER[short]}"] = ours
        return out
    raise CheckpointError(f"no tensor-name map for family {cfg.family!r}")


def ignorable_tensors(cfg: ModelConfig) -> dict[str, str]:
    """Tensors a checkpoint of this family may hold that we do not load: name -> the parameter whose shape it has.

    With tied embeddings, HF checkpoints sometimes still carry the head (the tie overwrites it on load).
    """
    if cfg.tie_embeddings and cfg.family in (DREAM, OPEN_DCODER):
        return {"lm_head.weight": "embed_tokens.weight"}
    if cfg.tie_embeddings and cfg.family == LLADA:
        return {"model.transformer.ff_out.weight": "embed_tokens.weight"}
    return {}


def is_ignorable_buffer(name: str) -> bool:
    """Old HF exports sometimes saved the rotary inv_freq buffer; it is recomputed from rope_theta."""
    return name.endswith("rotary_emb.inv_freq")


def apply_logits_shift(logits: Tensor, shift: int) -> Tensor:
    """Align logits [B, T, V] so that row i is the prediction for position i.

    shift 0: unchanged. shift 1 (Dream family, Open-dCoder): row i takes the model's output at i-1, and row 0 keeps
    the output at 0, the same convention as their own samplers (`cat([logits[:, :1], logits[:, :-1]], 1)`).
    """
    if shift == 0:
        return logits
    if shift != 1:
        raise ValueError(f"logits_shift must be 0 or 1, not {shift}")
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def describe(path: Path | str, cfg: ModelConfig) -> str:
    """One line naming what was loaded, for logs."""
    return (
        f"{path}: family {cfg.family}, {cfg.num_layers} layers x {cfg.hidden_size}, heads {cfg.num_heads}/"
        f"{cfg.num_kv_heads}, vocab {cfg.vocab_size}, shift {cfg.logits_shift}"
    )
