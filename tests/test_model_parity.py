"""Our DiffusionLM against the `transformers` implementation of the same architecture, causal mask removed.

Each external family gets a tiny random checkpoint directory that carries the family's real tensor names and
config keys; engine.checkpoint.load_model reads it, and the logits must equal those of LlamaForCausalLM (LLaDA's
shape) or Qwen2ForCausalLM (Dream family, Open-dCoder) given an all-visible 4D attention mask, to 1e-4 in fp32.
The same tensors run through transformers' default (causal) path must differ from ours, so a causal model could
not pass. LLaDA is also checked against a direct transcription of LLaDA's own block (modeling_llada.py), which is
what pins down that `ff_proj` is the gate. The last tests check the KV-cache block mode of DiffusionLM.forward.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from engine.checkpoint import load_model
from engine.config import ModelConfig
from engine.external import apply_logits_shift
from engine.model import DiffusionLM

HIDDEN, LAYERS, HEADS, KV_HEADS, INTER, VOCAB = 64, 2, 4, 2, 96, 80
TOL = 1e-4


def write_tokenizer(path: Path, specials: list[str], words: int = 40) -> dict[str, int]:
    """A WordLevel tokenizer.json with [UNK], the family's special tokens and `words` plain words; returns its vocab."""
    vocab = {"[UNK]": 0}
    for s in specials:
        vocab[s] = len(vocab)
    for i in range(words):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.save(str(path))
    return vocab


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Weights big enough that every part of the block moves the logits (HF's 0.02 init would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def random_ids(seed: int, vocab_size: int, batch: int = 2, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g)


def hf_logits(hf: torch.nn.Module, ids: torch.Tensor, causal: bool) -> torch.Tensor:
    """transformers logits; causal=False passes an all-zeros additive 4D mask, which transformers uses as given."""
    with torch.no_grad():
        if causal:
            return hf(input_ids=ids).logits
        b, t = ids.shape
        return hf(input_ids=ids, attention_mask=torch.zeros(b, 1, t, t)).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def ours(model: DiffusionLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


def assert_parity_and_not_causal(mine: torch.Tensor, hf: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    ref = hf_logits(hf, ids, causal=False)
    assert max_diff(mine, ref) < TOL
    causal = hf_logits(hf, ids, causal=True)
    # A causal model would match `causal`; ours must differ clearly.
    assert max_diff(mine, causal) > 1e-2
    return ref


# ------------------------------------------------------------------------------------------------------------
# LLaDA


LLADA_SPECIALS = ["<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"]


def llada_config_json(vocab: dict[str, int]) -> dict:
    """The keys of GSAI-ML/LLaDA-8B-Instruct's config.json, at a tiny size."""
    return {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": HIDDEN,
        "embedding_dropout": 0.0,
        "embedding_size": VOCAB,
        "eos_token_id": vocab["<|endoftext|>"],
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": vocab["<|mdm_mask|>"],
        "max_sequence_length": 256,
        "mlp_hidden_size": INTER,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": HEADS,
        "n_kv_heads": KV_HEADS,
        "n_layers": LAYERS,
        "pad_token_id": vocab["<|endoftext|>"],
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": VOCAB,
        "weight_tying": False,
    }


# LLaDA tensor name (per layer) -> transformers Llama name.
LLADA_TO_LLAMA_LAYER = {
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "attn_out.weight": "self_attn.o_proj.weight",
    "ff_proj.weight": "mlp.gate_proj.weight",
    "up_proj.weight": "mlp.up_proj.weight",
    "ff_out.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ff_norm.weight": "post_attention_layernorm.weight",
}


def llada_random_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA-8B's tensor names and shapes (d_model, kv = n_kv_heads * head_dim, mlp)."""
    g = torch.Generator().manual_seed(seed)
    kv = KV_HEADS * HIDDEN // HEADS

    def mat(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) / math.sqrt(cols)

    def norm() -> torch.Tensor:
        return 1.0 + 0.3 * torch.randn(HIDDEN, generator=g)

    t = {"model.transformer.wte.weight": mat(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.transformer.blocks.{i}."
        t[p + "attn_norm.weight"] = norm()
        t[p + "q_proj.weight"] = mat(HIDDEN, HIDDEN)
        t[p + "k_proj.weight"] = mat(kv, HIDDEN)
        t[p + "v_proj.weight"] = mat(kv, HIDDEN)
        t[p + "attn_out.weight"] = mat(HIDDEN, HIDDEN)
        t[p + "ff_norm.weight"] = norm()
        t[p + "ff_proj.weight"] = mat(INTER, HIDDEN)
        t[p + "up_proj.weight"] = mat(INTER, HIDDEN)
        t[p + "ff_out.weight"] = mat(HIDDEN, INTER)
    t["model.transformer.ln_f.weight"] = norm()
    t["model.transformer.ff_out.weight"] = mat(VOCAB, HIDDEN)
    return t


def llada_reference_logits(w: dict[str, torch.Tensor], c: dict, ids: torch.Tensor) -> torch.Tensor:
    """A line-by-line transcription of LLaDAModel.forward with LLaDALlamaBlock (modeling_llada.py), fp32."""
    d, nh, nkv = c["d_model"], c["n_heads"], c["n_kv_heads"]
    hs = d // nh
    b, t = ids.shape
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, hs, 2, dtype=torch.float) / hs))
    freqs = torch.einsum("i , j -> i j", torch.arange(t, dtype=torch.float), inv_freq)
    positions = torch.cat((freqs, freqs), dim=-1)
    pos_sin, pos_cos = positions.sin()[None, None], positions.cos()[None, None]

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        B, n, T, s = x.size()
        x1, x2 = x.view(B, n, T, 2, s // 2).unbind(dim=-2)
        return torch.cat((-x2, x1), dim=-1)

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["rms_norm_eps"])
        return weight * x

    x = F.embedding(ids, w["model.transformer.wte.weight"])
    for i in range(c["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        x_normed = rms(x, w[p + "attn_norm.weight"])
        q = F.linear(x_normed, w[p + "q_proj.weight"]).view(b, t, nh, hs).transpose(1, 2)
        k = F.linear(x_normed, w[p + "k_proj.weight"]).view(b, t, nkv, hs).transpose(1, 2)
        v = F.linear(x_normed, w[p + "v_proj.weight"]).view(b, t, nkv, hs).transpose(1, 2)
        q = q * pos_cos + rotate_half(q) * pos_sin
        k = k * pos_cos + rotate_half(k) * pos_sin
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + F.linear(att.transpose(1, 2).reshape(b, t, d), w[p + "attn_out.weight"])
        h = rms(x, w[p + "ff_norm.weight"])
        h, h_up = F.linear(h, w[p + "ff_proj.weight"]), F.linear(h, w[p + "up_proj.weight"])
        h = F.silu(h) * h_up
        x = x + F.linear(h, w[p + "ff_out.weight"])
    x = rms(x, w["model.transformer.ln_f.weight"])
    return F.linear(x, w["model.transformer.ff_out.weight"])


def test_llada_matches_llama_and_llada_reference(tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    vocab = write_tokenizer(tmp_path / "tokenizer.json", LLADA_SPECIALS)
    config = llada_config_json(vocab)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = llada_random_tensors(seed=1)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    model, tok = load_model(tmp_path)
    assert model.cfg.family == "llada" and model.cfg.logits_shift == 0
    assert tok.mask_id == vocab["<|mdm_mask|>"] and tok.end_id == vocab["<|endoftext|>"]

    hf_cfg = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    )
    hf_cfg._attn_implementation = "eager"
    hf = tf.LlamaForCausalLM(hf_cfg).eval()
    llama_sd = {"model.embed_tokens.weight": tensors["model.transformer.wte.weight"],
                "model.norm.weight": tensors["model.transformer.ln_f.weight"],
                "lm_head.weight": tensors["model.transformer.ff_out.weight"]}
    for i in range(LAYERS):
        for llada_name, llama_name in LLADA_TO_LLAMA_LAYER.items():
            llama_sd[f"model.layers.{i}.{llama_name}"] = tensors[f"model.transformer.blocks.{i}.{llada_name}"]
    hf.load_state_dict(llama_sd, strict=True)

    ids = random_ids(0, VOCAB)
    mine = ours(model, ids)
    assert_parity_and_not_causal(mine, hf, ids)
    assert max_diff(mine, llada_reference_logits(tensors, config, ids)) < TOL
    # The shift is 0 for LLaDA: aligned logits are the raw ones.
    assert torch.equal(apply_logits_shift(mine, model.cfg.logits_shift), mine)


# ------------------------------------------------------------------------------------------------------------
# Qwen2-shaped families: Dream (Dream, DiffuCoder, Dream-Coder, DreamOn) and Open-dCoder


def qwen2_hf(tf, tie: bool, seed: int):  # type: ignore[no-untyped-def]
    cfg = tf.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=tie,
        use_sliding_window=False,
        hidden_act="silu",
    )
    cfg._attn_implementation = "eager"
    hf = tf.Qwen2ForCausalLM(cfg).eval()
    randomize_(hf, seed)
    return hf


def dream_config_json(vocab: dict[str, int]) -> dict:
    """The keys of Dream-org/Dream-v0-Base-7B's config.json (DiffuCoder and Dream-Coder share them), tiny."""
    return {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "mask_token_id": vocab["<|mask|>"],
        "max_position_embeddings": 256,
        "max_window_layers": LAYERS,
        "model_type": "Dream",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pad_token_id": vocab["<|endoftext|>"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }


def open_dcoder_config_json(vocab: dict[str, int]) -> dict:
    """The keys of fredzzp/open-dcoder-0.5B's config.json (a Qwen2.5-Coder-0.5B config), tiny."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTER,
        "max_position_embeddings": 256,
        "max_window_layers": LAYERS,
        "model_type": "qwen2",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 256,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }


def assert_shift(mine: torch.Tensor, ref: torch.Tensor, shift: int) -> None:
    """With shift 1 the prediction for position i is the output at i-1 (position 0 keeps its own)."""
    assert shift == 1
    aligned = apply_logits_shift(mine, shift)
    assert max_diff(aligned[:, 1:], ref[:, :-1]) < TOL
    assert max_diff(aligned[:, 0], ref[:, 0]) < TOL
    assert max_diff(aligned[:, 1:], ref[:, 1:]) > 1e-2  # the shift really moved something


def test_dream_matches_qwen2_with_shift(tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    vocab = write_tokenizer(tmp_path / "tokenizer.json", ["<|endoftext|>", "<|im_end|>", "<|mask|>"])
    (tmp_path / "config.json").write_text(json.dumps(dream_config_json(vocab)))
    hf = qwen2_hf(tf, tie=False, seed=2)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.0.self_attn.q_proj.bias" in sd and "lm_head.weight" in sd  # the real Dream names
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    model, tok = load_model(tmp_path)
    assert model.cfg.family == "Dream" and model.cfg.qkv_bias and not model.cfg.tie_embeddings
    assert tok.mask_id == vocab["<|mask|>"] and tok.end_id == vocab["<|endoftext|>"]
    ids = random_ids(1, VOCAB)
    mine = ours(model, ids)
    ref = assert_parity_and_not_causal(mine, hf, ids)
    assert_shift(mine, ref, model.cfg.logits_shift)


@pytest.mark.parametrize("with_head", [False, True])
def test_open_dcoder_matches_qwen2_with_shift(tmp_path: Path, with_head: bool) -> None:
    tf = pytest.importorskip("transformers")
    vocab = write_tokenizer(tmp_path / "tokenizer.json", ["<|endoftext|>", "<|im_end|>", "<M>"])
    (tmp_path / "config.json").write_text(json.dumps(open_dcoder_config_json(vocab)))
    hf = qwen2_hf(tf, tie=True, seed=3)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    sd = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    if with_head:  # some exports keep the tied head as its own tensor; it is the embedding either way
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    model, tok = load_model(tmp_path)
    assert model.cfg.family == "open-dcoder" and model.cfg.tie_embeddings
    assert model.lm_head.weight is model.embed_tokens.weight
    assert tok.mask_id == vocab["<M>"]
    ids = random_ids(2, VOCAB)
    mine = ours(model, ids)
    ref = assert_parity_and_not_causal(mine, hf, ids)
    assert_shift(mine, ref, model.cfg.logits_shift)


# ------------------------------------------------------------------------------------------------------------
# KV-cache block mode


def tiny_model(seed: int = 0, **kw) -> DiffusionLM:  # type: ignore[no-untyped-def]
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=3, num_heads=HEADS, num_kv_heads=KV_HEADS,
                      intermediate_size=INTER, **kw)
    model = DiffusionLM(cfg)
    randomize_(model, seed)
    return model.eval()


def clone_cache(cache):  # type: ignore[no-untyped-def]
    return type(cache)([k.clone() for k in cache.keys], [v.clone() for v in cache.values])


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_block_mode_with_fresh_cache_equals_full_forward(qkv_bias: bool) -> None:
    model = tiny_model(qkv_bias=qkv_bias)
    ids = random_ids(5, VOCAB, batch=2, length=16)
    start, stop = 5, 11
    with torch.no_grad():
        full, cache = model(ids, fill_cache=True)
        plain, none = model(ids)
        assert none is None and max_diff(full, plain) < 1e-5  # filling the cache changes nothing
        block, _ = model(ids[:, start:stop], cache=clone_cache(cache), start=start)
    assert block.shape == (2, stop - start, VOCAB)
    assert max_diff(block, full[:, start:stop]) < TOL


def test_block_mode_tracks_a_changed_block_only_through_a_fresh_cache() -> None:
    model = tiny_model(seed=1)
    ids = random_ids(6, VOCAB, batch=1, length=16)
    start, stop = 4, 9
    changed = ids.clone()
    changed[:, start:stop] = (changed[:, start:stop] + 7) % VOCAB
    with torch.no_grad():
        _, stale = model(ids, fill_cache=True)
        full_new, fresh = model(changed, fill_cache=True)
        from_fresh, _ = model(changed[:, start:stop], cache=clone_cache(fresh), start=start)
        from_stale, _ = model(changed[:, start:stop], cache=clone_cache(stale), start=start)
    assert max_diff(from_fresh, full_new[:, start:stop]) < TOL
    # The stale cache holds the context's deeper-layer keys computed with the old block: an approximation.
    assert max_diff(from_stale, full_new[:, start:stop]) > 1e-4


def test_block_mode_respects_key_mask() -> None:
    model = tiny_model(seed=2)
    ids = random_ids(7, VOCAB, batch=2, length=12)
    key_mask = torch.ones(2, 12, dtype=torch.bool)
    key_mask[1, 9:] = False  # the second window is padded at the end
    start, stop = 3, 7
    with torch.no_grad():
        full, cache = model(ids, key_mask=key_mask, fill_cache=True)
        block, _ = model(ids[:, start:stop], key_mask=key_mask, cache=clone_cache(cache), start=start)
        # Padding really is ignored: the real tokens' logits do not depend on what the pad positions hold.
        other = ids.clone()
        other[1, 9:] = (other[1, 9:] + 3) % VOCAB
        full_other, _ = model(other, key_mask=key_mask)
    assert max_diff(block, full[:, start:stop]) < TOL
    assert max_diff(full[1, :9], full_other[1, :9]) < TOL


# ------------------------------------------------------------------------------------------------------------
# Fused projections (inference): q/k/v and gate/up as one matmul each


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_fused_projections_fill_the_same_and_keep_the_checkpoint_names(qkv_bias: bool) -> None:
    import copy

    model = tiny_model(seed=3, qkv_bias=qkv_bias)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    ids = random_ids(8, VOCAB, batch=2, length=16)
    fused = copy.deepcopy(model).fuse_projections()
    layer = fused.layers[0]
    assert layer.attn.qkv_proj is not None and not hasattr(layer.attn, "q_proj")
    assert layer.mlp.gate_up_proj is not None and not hasattr(layer.mlp, "gate_proj")
    with torch.no_grad():
        want, want_cache = model(ids, fill_cache=True)
        got, got_cache = fused(ids, fill_cache=True)
        block, _ = fused(ids[:, 4:9], cache=clone_cache(got_cache), start=4)
    assert max_diff(got, want) < 1e-5
    assert all(max_diff(a, b) < 1e-5 for a, b in zip(got_cache.keys, want_cache.keys, strict=True))
    assert max_diff(block, want[:, 4:9]) < TOL
    # The checkpoint layout comes back whole: what save_model and the transformers baseline read.
    back = fused.plain_state_dict()
    assert set(back) == set(plain) and all(torch.equal(back[k], plain[k]) for k in plain)
    assert fused.fuse_projections() is fused  # a second call changes nothing
