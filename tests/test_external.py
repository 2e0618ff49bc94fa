"""External families: config translation from the real published config.json files, and the tensor-name tables."""

from __future__ import annotations

import pytest
import torch

from engine import external
from engine.config import ModelConfig
from engine.errors import CheckpointError
from engine.model import DiffusionLM
from engine.tokenizer import FAMILY_TOKENS

# The architecture keys of GSAI-ML/LLaDA-8B-Instruct's config.json.
LLADA_8B = {
    "activation_type": "silu", "alibi": False, "architectures": ["LLaDAModelLM"], "attention_layer_norm": False,
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_size": 126464, "eos_token_id": 126081, "include_bias": False, "include_qkv_bias": False,
    "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": 126336,
    "max_sequence_length": 4096, "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada",
    "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081,
    "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
    "scale_logits": False, "vocab_size": 126464, "weight_tying": False,
}

# Dream-org/Dream-v0-Base-7B (DiffuCoder-7B and Dream-Coder-7B carry the same shape).
DREAM_7B = {
    "architectures": ["DreamModel"], "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
    "mask_token_id": 151666, "max_position_embeddings": 131072, "model_type": "Dream", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "use_sliding_window": False, "vocab_size": 152064,
}

# fredzzp/open-dcoder-0.5B: the Qwen2.5-Coder-0.5B shape.
OPEN_DCODER_05B = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
    "max_position_embeddings": 131072, "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936,
}


def test_model_types() -> None:
    assert external.family_of_model_type("codefill") == "codefill"
    assert external.family_of_model_type("llada") == "llada"
    assert external.family_of_model_type("Dream") == "Dream"
    assert external.family_of_model_type("dream") == "Dream"
    assert external.family_of_model_type("qwen2") == "open-dcoder"
    for other in ("llama", "qwen3", "lladamoe", None, 3):
        assert external.family_of_model_type(other) is None


def test_llada_8b_config() -> None:
    cfg = external.translate_config(LLADA_8B, "llada")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (4096, 32, 32, 32)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_position) == (12288, 126464, 4096)
    assert cfg.rope_theta == 500000.0 and cfg.norm_eps == 1e-5
    assert not cfg.qkv_bias and not cfg.tie_embeddings and cfg.logits_shift == 0
    assert (cfg.family, cfg.mask_token, cfg.end_token) == ("llada", "<|mdm_mask|>", "<|endoftext|>")
    assert cfg.num_parameters() == 8_015_581_184  # "8B": 6.98B in the blocks, 2 x 126464 x 4096 in wte/ff_out


def test_dream_7b_config() -> None:
    cfg = external.translate_config(DREAM_7B, "Dream")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (3584, 28, 28, 4)
    assert (cfg.intermediate_size, cfg.vocab_size) == (18944, 152064)
    assert cfg.rope_theta == 1e6 and cfg.norm_eps == 1e-6
    assert cfg.qkv_bias and not cfg.tie_embeddings and cfg.logits_shift == 1
    assert (cfg.family, cfg.mask_token, cfg.end_token) == ("Dream", "<|mask|>", "<|endoftext|>")
    assert cfg.num_parameters() == 7_615_616_512  # Qwen2.5-7B's published count


def test_open_dcoder_config() -> None:
    cfg = external.translate_config(OPEN_DCODER_05B, "open-dcoder")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (896, 24, 14, 2)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.head_dim) == (4864, 151936, 64)
    assert cfg.qkv_bias and cfg.tie_embeddings and cfg.logits_shift == 1
    assert (cfg.family, cfg.mask_token) == ("open-dcoder", "<M>")
    assert cfg.num_parameters() == 494_032_768  # Qwen2.5-0.5B's published count


def test_llada_defaults_follow_llada_model_config() -> None:
    """Absent keys take LLaDA's own dataclass defaults, as LLaDAConfig(**config_json) does."""
    base = {k: v for k, v in LLADA_8B.items() if k not in ("n_kv_heads", "mlp_hidden_size", "embedding_size")}
    cfg = external.translate_config(base, "llada")
    assert cfg.num_kv_heads == 32  # n_kv_heads None -> n_heads
    assert cfg.intermediate_size == 4 * 4096  # mlp_ratio * d_model
    assert cfg.vocab_size == 50304  # LLaDA's embedding_size default
    mqa = external.translate_config({**LLADA_8B, "multi_query_attention": True}, "llada")
    assert mqa.num_kv_heads == 1
    with pytest.raises(CheckpointError, match="rope"):
        external.translate_config({k: v for k, v in LLADA_8B.items() if k != "rope"}, "llada")  # default False


@pytest.mark.parametrize("key, value", [
    ("block_type", "sequential"), ("activation_type", "swiglu"), ("layer_norm_type", "default"),
    ("include_bias", True), ("alibi", True), ("attention_layer_norm", True), ("scale_logits", True),
    ("block_group_size", 2), ("input_emb_norm", True), ("bias_for_layer_norm", True),
])
def test_llada_refuses_what_our_block_cannot_run(key: str, value: object) -> None:
    with pytest.raises(CheckpointError, match=f"cfg.json: .*{key}"):
        external.translate_config({**LLADA_8B, key: value}, "llada", "cfg.json")


def test_llada_qkv_bias_is_carried() -> None:
    cfg = external.translate_config({**LLADA_8B, "include_qkv_bias": True}, "llada")
    assert cfg.qkv_bias
    assert "model.transformer.blocks.0.q_proj.bias" in external.tensor_name_map(cfg)


def test_qwen2_rope_parameters_and_refusals() -> None:
    v5 = {k: v for k, v in OPEN_DCODER_05B.items() if k != "rope_theta"}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0}  # transformers 5 spelling
    assert external.translate_config(v5, "open-dcoder").rope_theta == 1234.0
    bad = [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "yarn"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "linear"),
        ({"use_sliding_window": True}, "sliding"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"head_dim": 64}, "head_dim"),  # Dream-7B has 3584 / 28 = 128
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"rms_norm_eps": "small"}, "rms_norm_eps"),
        ({"num_key_value_heads": 3}, "not divisible"),
    ]
    for change, fragment in bad:
        with pytest.raises(CheckpointError, match=fragment):
            external.translate_config({**DREAM_7B, **change}, "Dream", "config.json")
    kv_null = external.translate_config({**DREAM_7B, "num_key_value_heads": None}, "Dream")
    assert kv_null.num_kv_heads == 28


def small(family: str, tie: bool, bias: bool) -> ModelConfig:
    return ModelConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=24, tie_embeddings=tie, qkv_bias=bias, family=family)


def test_llada_tensor_names() -> None:
    names = external.tensor_name_map(small("llada", tie=False, bias=False))
    block = "model.transformer.blocks.1."
    assert names[block + "q_proj.weight"] == "layers.1.attn.q_proj.weight"
    assert names[block + "k_proj.weight"] == "layers.1.attn.k_proj.weight"
    assert names[block + "v_proj.weight"] == "layers.1.attn.v_proj.weight"
    assert names[block + "attn_out.weight"] == "layers.1.attn.o_proj.weight"
    assert names[block + "ff_proj.weight"] == "layers.1.mlp.gate_proj.weight"  # LLaDA activates ff_proj
    assert names[block + "up_proj.weight"] == "layers.1.mlp.up_proj.weight"
    assert names[block + "ff_out.weight"] == "layers.1.mlp.down_proj.weight"
    assert names[block + "attn_norm.weight"] == "layers.1.input_norm.weight"
    assert names[block + "ff_norm.weight"] == "layers.1.post_attn_norm.weight"
    assert names["model.transformer.wte.weight"] == "embed_tokens.weight"
    assert names["model.transformer.ln_f.weight"] == "norm.weight"
    assert names["model.transformer.ff_out.weight"] == "lm_head.weight"
    tied = external.tensor_name_map(small("llada", tie=True, bias=False))
    assert "model.transformer.ff_out.weight" not in tied  # weight_tying: logits use wte


@pytest.mark.parametrize("family", ["Dream", "open-dcoder"])
def test_qwen2_tensor_names(family: str) -> None:
    names = external.tensor_name_map(small(family, tie=False, bias=True))
    layer = "model.layers.0."
    for proj in ("q", "k", "v"):
        assert names[f"{layer}self_attn.{proj}_proj.weight"] == f"layers.0.attn.{proj}_proj.weight"
        assert names[f"{layer}self_attn.{proj}_proj.bias"] == f"layers.0.attn.{proj}_proj.bias"
    assert names[layer + "self_attn.o_proj.weight"] == "layers.0.attn.o_proj.weight"
    assert layer + "self_attn.o_proj.bias" not in names
    for proj in ("gate", "up", "down"):
        assert names[f"{layer}mlp.{proj}_proj.weight"] == f"layers.0.mlp.{proj}_proj.weight"
    assert names[layer + "input_layernorm.weight"] == "layers.0.input_norm.weight"
    assert names[layer + "post_attention_layernorm.weight"] == "layers.0.post_attn_norm.weight"
    assert names["model.embed_tokens.weight"] == "embed_tokens.weight"
    assert names["model.norm.weight"] == "norm.weight"
    assert names["lm_head.weight"] == "lm_head.weight"
    assert external.ignorable_tensors(small(family, tie=True, bias=True)) == {"lm_head.weight": "embed_tokens.weight"}


@pytest.mark.parametrize("family, tie, bias", [("llada", False, False), ("llada", True, True),
                                               ("Dream", False, True), ("open-dcoder", True, True)])
def test_name_map_covers_exactly_our_parameters(family: str, tie: bool, bias: bool) -> None:
    cfg = small(family, tie, bias)
    with torch.device("meta"):
        model = DiffusionLM(cfg)
    ours = set(model.state_dict()) - ({"lm_head.weight"} if tie else set())
    names = external.tensor_name_map(cfg)
    assert sorted(names.values()) == sorted(ours)  # one external tensor per parameter, none left over


def test_family_tokens_known() -> None:
    for family in ("llada", "Dream", "open-dcoder"):
        cfg = external.translate_config({"llada": LLADA_8B, "Dream": DREAM_7B}.get(family, OPEN_DCODER_05B), family)
        assert cfg.mask_token == FAMILY_TOKENS[family]["mask"][0]
        assert cfg.end_token in FAMILY_TOKENS[family]["end"]


def test_apply_logits_shift() -> None:
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    assert external.apply_logits_shift(logits, 0) is logits
    shifted = external.apply_logits_shift(logits, 1)
    assert torch.equal(shifted[:, 0], logits[:, 0])
    assert torch.equal(shifted[:, 1:], logits[:, :-1])
    with pytest.raises(ValueError):
        external.apply_logits_shift(logits, 2)


def test_unknown_family_has_no_translation() -> None:
    with pytest.raises(CheckpointError, match="gpt2"):
        external.translate_config({}, "gpt2")
