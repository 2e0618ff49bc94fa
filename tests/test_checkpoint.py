"""Model directories: our own save/load round trip, shards, and every way a directory can be broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from engine import external
from engine.checkpoint import load_model, read_safetensors_header, save_model
from engine.config import ModelConfig
from engine.errors import CheckpointError, EngineError
from engine.model import DiffusionLM
from engine.tokenizer import CodeTokenizer

VOCAB = 48


def make_tokenizer(specials: list[str] | None = None) -> Tokenizer:
    specials = specials or ["<|end|>", "<|mask|>"]
    vocab = {"[UNK]": 0}
    for s in specials:
        vocab[s] = len(vocab)
    for i in range(30):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def make_model(tie: bool = True, seed: int = 0, **kw) -> DiffusionLM:  # type: ignore[no-untyped-def]
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, tie_embeddings=tie, **kw)
    model = DiffusionLM(cfg)
    model.init_weights(seed)
    with torch.no_grad():  # norms and biases away from their init, so a mix-up would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return model.eval()


def logits(model: DiffusionLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


IDS = torch.tensor([[3, 4, 5, 2, 2, 9, 10, 1], [7, 7, 2, 2, 2, 8, 1, 1]])


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, DiffusionLM]:
    model = make_model()
    out = save_model(model, make_tokenizer(), tmp_path / "m")
    return out, model


# ------------------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_tied(saved: tuple[Path, DiffusionLM]) -> None:
    out, model = saved
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "codefill" and config == model.cfg.to_dict()
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        names = set(fh.keys())
    assert "lm_head.weight" not in names  # the tied head is the embedding; it is not written twice
    assert names == set(model.state_dict()) - {"lm_head.weight"}

    loaded, tok = load_model(out)
    assert not loaded.training
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    assert loaded.cfg == model.cfg
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    assert (tok.mask_id, tok.end_id) == (2, 1)


def test_round_trip_untied_with_bias(tmp_path: Path) -> None:
    model = make_model(tie=False, qkv_bias=True, seed=3)
    out = save_model(model, make_tokenizer(), tmp_path / "m")
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert "lm_head.weight" in fh.keys() and "layers.1.attn.q_proj.bias" in fh.keys()
    loaded, _ = load_model(out)
    assert loaded.lm_head.weight is not loaded.embed_tokens.weight
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


def test_save_in_bfloat16_and_load_in_any_dtype(tmp_path: Path) -> None:
    model = make_model()
    out = save_model(model, make_tokenizer(), tmp_path / "m", dtype=torch.bfloat16)
    assert {e.dtype for e in read_safetensors_header(out / "model.safetensors").values()} == {"BF16"}
    as_stored, _ = load_model(out)  # dtype None keeps the checkpoint's precision
    assert as_stored.embed_tokens.weight.dtype == torch.bfloat16
    assert as_stored.inv_freq.dtype == torch.float32  # rotary frequencies stay float32
    widened, _ = load_model(out, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in widened.parameters())
    assert (logits(widened, IDS) - logits(model, IDS)).abs().max() < 0.05
    by_name, _ = load_model(out, dtype="float32")
    assert load_model(out, dtype="auto")[0].norm.weight.dtype == torch.bfloat16
    assert by_name.norm.weight.dtype == torch.float32


def test_tokenizer_may_be_a_path_or_a_code_tokenizer(tmp_path: Path) -> None:
    model = make_model()
    src = tmp_path / "tok.json"
    make_tokenizer().save(str(src))
    a = save_model(model, src, tmp_path / "a")
    assert (a / "tokenizer.json").read_text() == src.read_text()
    save_model(model, a / "tokenizer.json", a)  # saving over itself keeps the tokenizer
    assert (a / "tokenizer.json").read_text() == src.read_text()
    _, code_tok = load_model(a)
    assert isinstance(code_tok, CodeTokenizer)
    b = save_model(model, code_tok, tmp_path / "b")
    _, tok_b = load_model(b)
    assert tok_b.encode("w1 w2 <|mask|>") == code_tok.encode("w1 w2 <|mask|>")
    with pytest.raises(CheckpointError, match="missing.json"):
        save_model(model, tmp_path / "missing.json", tmp_path / "c")


def test_sharded_checkpoint_loads_like_a_single_file(saved: tuple[Path, DiffusionLM], tmp_path: Path) -> None:
    out, model = saved
    sharded = shard(out, tmp_path / "sharded")
    loaded, _ = load_model(sharded)
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


def shard(src: Path, dst: Path) -> Path:
    """Copy a saved model into two shards plus model.safetensors.index.json."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    with safe_open(str(src / "model.safetensors"), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in parts.items():
        save_file({k: tensors[k] for k in part}, str(dst / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_external_model_converts_to_our_format(tmp_path: Path) -> None:
    """A Dream-family directory loads, saves in our format with its family and shift, and reloads the same."""
    model = make_model(tie=False, qkv_bias=True, seed=5)
    cfg = model.cfg
    cfg.family, cfg.logits_shift = external.DREAM, 1
    ours_to_theirs = {v: k for k, v in external.tensor_name_map(cfg).items()}
    src = tmp_path / "dream"
    src.mkdir()
    tensors = {ours_to_theirs[k]: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(src / "model.safetensors"))
    make_tokenizer(["<|endoftext|>", "<|mask|>"]).save(str(src / "tokenizer.json"))
    (src / "config.json").write_text(json.dumps({
        "model_type": "Dream", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 48, "vocab_size": VOCAB, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "tie_word_embeddings": False, "max_position_embeddings": cfg.max_position,
        "mask_token_id": 2,
    }))
    dream, tok = load_model(src)
    assert dream.cfg.family == "Dream" and dream.cfg.logits_shift == 1 and tok.mask_id == 2
    assert torch.equal(logits(dream, IDS), logits(model, IDS))
    converted = save_model(dream, tok, tmp_path / "converted")
    again, tok2 = load_model(converted)
    assert again.cfg == dream.cfg and again.cfg.mask_token == "<|mask|>" and again.cfg.end_token == "<|endoftext|>"
    assert torch.equal(logits(again, IDS), logits(model, IDS))
    assert tok2.mask_id == 2


# ------------------------------------------------------------------------------------------------------------
# Broken directories: each gives a CheckpointError whose message names the file and the problem


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert isinstance(info.value, EngineError)
    return msg


def rewrite_config(out: Path, **changes) -> None:  # type: ignore[no-untyped-def]
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))


def rewrite_weights(out: Path, edit) -> None:  # type: ignore[no-untyped-def]
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"))


def test_missing_directory(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope", str(tmp_path / "nope"), "not found")


def test_pickle_files_are_refused(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    expect_error(out, "pytorch_model.bin", "only loads safetensors", "never unpickles")
    expect_error(out / "pytorch_model.bin", "pytorch_model.bin", "only loads safetensors")


def test_missing_config(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    (out / "config.json").unlink()
    expect_error(out, str(out / "config.json"), "missing config.json")


@pytest.mark.parametrize("text, problem", [("{not json", "invalid JSON"), ("[1, 2]", "must be a JSON object"),
                                           (b"\xff\xfe{", "not UTF-8")])
def test_invalid_config(saved: tuple[Path, DiffusionLM], text, problem: str) -> None:  # type: ignore[no-untyped-def]
    out, _ = saved
    path = out / "config.json"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    expect_error(out, str(path), problem)


def test_unknown_model_type(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    rewrite_config(out, model_type="gpt2")
    expect_error(out, str(out / "config.json"), "unknown model_type 'gpt2'", "llada", "Dream")
    config = json.loads((out / "config.json").read_text())
    del config["model_type"]
    (out / "config.json").write_text(json.dumps(config))
    expect_error(out, str(out / "config.json"), "no model_type")


def test_bad_codefill_config_values(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    rewrite_config(out, hidden_sise=3)
    expect_error(out, str(out / "config.json"), "hidden_sise")
    rewrite_config(out, hidden_sise=None)
    config = json.loads((out / "config.json").read_text())
    del config["hidden_sise"]
    config["num_heads"] = 5
    (out / "config.json").write_text(json.dumps(config))
    expect_error(out, str(out / "config.json"), "not divisible")


def test_missing_or_broken_tokenizer(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    tok = out / "tokenizer.json"
    text = tok.read_text()
    tok.unlink()
    expect_error(out, str(tok), "missing tokenizer.json")
    tok.write_text("{}")
    expect_error(out, str(tok), "not a valid tokenizer.json")
    tok.write_text(text.replace("<|mask|>", "<|masq|>"))
    expect_error(out, str(tok), "no mask token")


def test_missing_weights(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    (out / "model.safetensors").unlink()
    expect_error(out, str(out), "missing weights", "model.safetensors")


def test_truncated_safetensors(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    path = out / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the tail of the last tensor is gone
    expect_error(out, str(path), "truncated", "ends at data byte")
    path.write_bytes(data[:200])  # cut inside the header
    expect_error(out, str(path), "truncated", "header length", "bigger than the file")
    path.write_bytes(data[:5])  # not even the header length
    expect_error(out, str(path), "truncated")
    path.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    expect_error(out, str(path), "header length 1000000000000 is bigger than the file")
    n = int.from_bytes(data[:8], "little")
    path.write_bytes(data[:8] + b"#" * n + data[8 + n :])
    expect_error(out, str(path), "header is not valid JSON")


def test_missing_tensor(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    rewrite_weights(out, lambda t: t.pop("layers.1.mlp.up_proj.weight"))
    expect_error(out, str(out / "model.safetensors"), "missing tensor 'layers.1.mlp.up_proj.weight'")


def test_unexpected_tensor(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    rewrite_weights(out, lambda t: t.update({"layers.0.attn.q_norm.weight": torch.ones(8)}))
    expect_error(out, str(out / "model.safetensors"), "unexpected tensor 'layers.0.attn.q_norm.weight'")


def test_tied_head_written_twice_is_unexpected_in_our_format(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    rewrite_weights(out, lambda t: t.update({"lm_head.weight": t["embed_tokens.weight"].clone()}))
    expect_error(out, str(out / "model.safetensors"), "unexpected tensor 'lm_head.weight'")


def test_wrong_shape_names_both_shapes(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    rewrite_weights(out, lambda t: t.update({"layers.0.attn.k_proj.weight": torch.zeros(24, 32)}))
    expect_error(out, str(out / "model.safetensors"), "'layers.0.attn.k_proj.weight'", "[24, 32]", "[16, 32]")


def test_integer_weights_are_refused(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    rewrite_weights(out, lambda t: t.update({"norm.weight": torch.ones(32, dtype=torch.int8)}))
    expect_error(out, str(out / "model.safetensors"), "'norm.weight'", "I8", "quantized")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(saved: tuple[Path, DiffusionLM], bad: float) -> None:
    """Garbled bytes read as NaN or infinity: refused at load, naming the file and the tensor."""
    out, _ = saved

    def garble(tensors: dict[str, torch.Tensor]) -> None:
        tensors["layers.1.mlp.up_proj.weight"][3, 5] = bad

    rewrite_weights(out, garble)
    expect_error(out, str(out / "model.safetensors"), "'layers.1.mlp.up_proj.weight'", "NaN or infinite values")


def test_shard_index_pointing_at_a_missing_shard(saved: tuple[Path, DiffusionLM], tmp_path: Path) -> None:
    out, _ = saved
    sharded = shard(out, tmp_path / "sharded")
    (sharded / "model-00002-of-00002.safetensors").unlink()
    expect_error(sharded, str(sharded / "model.safetensors.index.json"), "model-00002-of-00002.safetensors", "missing")


def test_shard_index_inconsistencies(saved: tuple[Path, DiffusionLM], tmp_path: Path) -> None:
    out, _ = saved
    sharded = shard(out, tmp_path / "sharded")
    index = sharded / "model.safetensors.index.json"
    good = json.loads(index.read_text())

    def write(weight_map) -> None:  # type: ignore[no-untyped-def]
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    first = "model-00001-of-00002.safetensors"
    in_second = next(k for k, v in good["weight_map"].items() if v != first)
    write({**good["weight_map"], in_second: first})  # the index puts a tensor in the wrong shard
    expect_error(sharded, str(sharded / first), f"missing tensor {in_second!r}")
    write({k: v for k, v in good["weight_map"].items() if k != in_second})  # a shard holds an unlisted tensor
    expect_error(sharded, f"unexpected tensor {in_second!r}", "not listed")
    write({**good["weight_map"], in_second: "../elsewhere.safetensors"})
    expect_error(sharded, str(index), "outside the model directory")
    write({**good["weight_map"], in_second: "pytorch_model-00002.bin"})
    expect_error(sharded, "pytorch_model-00002.bin", "only loads safetensors")
    index.write_text(json.dumps({"metadata": {}}))
    expect_error(sharded, str(index), "no weight_map")
    index.write_text("{")
    expect_error(sharded, str(index), "invalid JSON")


def test_qwen2_without_mask_token_is_refused(tmp_path: Path) -> None:
    make_tokenizer(["<|endoftext|>", "<|im_end|>"]).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 32}))
    expect_error(tmp_path, str(tmp_path / "config.json"), "Open-dCoder", "<M>", str(tmp_path / "tokenizer.json"))


def test_unsupported_external_config_names_the_file(tmp_path: Path) -> None:
    make_tokenizer(["<|endoftext|>", "<|mdm_mask|>"]).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada", "block_type": "sequential"}))
    expect_error(tmp_path, str(tmp_path / "config.json"), "block_type", "sequential")


def test_external_missing_and_mis_shaped_tensors(tmp_path: Path) -> None:
    """External names are checked the same way, and the message uses the checkpoint's own tensor names."""
    model = make_model(tie=False, qkv_bias=True)
    cfg = model.cfg
    cfg.family, cfg.logits_shift = external.DREAM, 1
    theirs = {v: k for k, v in external.tensor_name_map(cfg).items()}
    tensors = {theirs[k]: v.contiguous() for k, v in model.state_dict().items()}
    make_tokenizer(["<|endoftext|>", "<|mask|>"]).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "Dream", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 48, "vocab_size": VOCAB, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta}))
    weights = tmp_path / "model.safetensors"
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.v_proj.bias"}, str(weights))
    expect_error(tmp_path, str(weights), "missing tensor 'model.layers.1.self_attn.v_proj.bias'")
    save_file({**tensors, "model.layers.0.mlp.gate_proj.weight": torch.zeros(40, 32)}, str(weights))
    expect_error(tmp_path, str(weights), "'model.layers.0.mlp.gate_proj.weight'", "[40, 32]", "[48, 32]")
    save_file({**tensors, "model.transformer.wte.weight": torch.zeros(VOCAB, 32)}, str(weights))
    expect_error(tmp_path, str(weights), "unexpected tensor 'model.transformer.wte.weight'")
    save_file({**tensors, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}, str(weights))
    loaded, _ = load_model(tmp_path)  # old exports' saved rotary buffers are skipped
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


def test_mask_id_outside_the_vocabulary(saved: tuple[Path, DiffusionLM]) -> None:
    out, _ = saved
    tok = make_tokenizer(["<|end|>"] + [f"x{i}" for i in range(60)] + ["<|mask|>"])
    tok.save(str(out / "tokenizer.json"))
    expect_error(out, str(out / "tokenizer.json"), "mask token id", f"vocabulary of {VOCAB}")


def test_loading_does_not_import_the_compiler(saved: tuple[Path, DiffusionLM]) -> None:
    # Building the model on the meta device once ran Python meta kernels (Embedding's normal_, arange) that import
    # torch._dynamo: two of the five seconds of a `codefill fill`. A fresh interpreter shows whether it came back.
    import subprocess
    import sys

    code = (
        "import sys; from engine.checkpoint import load_model; "
        f"m, _ = load_model({str(saved[0])!r}); "
        "assert not m.inv_freq.is_meta; print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_default_construction_still_initialises_the_embedding() -> None:
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      intermediate_size=48)
    weight = DiffusionLM(cfg).embed_tokens.weight
    assert 0.5 < float(weight.detach().std()) < 1.5  # nn.Embedding's N(0, 1), not uninitialised memory
