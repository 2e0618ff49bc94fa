"""Int8 weights on the CPU: close to the float layers they replace, and the engine uses them by default there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine import quantize
from engine.api import Engine
from engine.checkpoint import load_model
from engine.runner import wants_int8

needs_int8 = pytest.mark.skipif(not quantize.available(), reason="no int8 matmul kernels in this torch on this CPU")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@needs_int8
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_is_close_to_the_float_layer(bias: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(96, 200, bias=bias)
    q = quantize.Int8Linear(lin)
    for shape in [(7, 96), (2, 5, 96)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            assert rel_err(q(x), lin(x)) < 0.03
            assert q(x).shape == lin(x).shape
    assert "int8" in repr(q)


def quantized_close(tiny_model_dir: Path, change) -> nn.Module:  # type: ignore[no-untyped-def]
    """Load the tiny model, apply change(model), and check its logits stay close to the float model's."""
    model, _ = load_model(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(0, model.cfg.vocab_size - 2, (2, 40))
    with torch.inference_mode():
        ref, _ = model(ids)
        embedded = model.embed_tokens(ids)
    change(model)
    with torch.inference_mode():
        out, _ = model(ids)
        assert torch.equal(model.embed_tokens(ids), embedded)  # the embedding stays float either way
    assert rel_err(out, ref) < 0.05
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    return model


@needs_int8
def test_quantize_blocks_replaces_the_layers_linears_only(tiny_model_dir: Path) -> None:
    def change(model: nn.Module) -> None:
        linears = sum(isinstance(m, nn.Linear) for m in model.layers.modules())
        assert quantize.quantize_blocks(model.layers) == linears > 0

    model = quantized_close(tiny_model_dir, change)
    assert not any(isinstance(m, nn.Linear) for m in model.layers.modules())
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.embed_tokens.weight


@needs_int8
def test_quantize_head_keeps_the_embedding_float(tiny_model_dir: Path) -> None:
    model = quantized_close(tiny_model_dir, quantize.quantize_head)
    assert isinstance(model.lm_head, quantize.Int8Linear) and isinstance(model.embed_tokens.weight, nn.Parameter)
    with pytest.raises(ValueError, match="CPU"):
        quantize.quantize_head(model)  # already int8: not an nn.Linear any more


@needs_int8
def test_engine_takes_int8_on_the_cpu_unless_told_otherwise(tiny_model_dir: Path) -> None:
    auto = Engine.from_pretrained(tiny_model_dir, device="cpu")
    assert auto.runner.precision == "int8"
    assert isinstance(auto.runner.model.lm_head, quantize.Int8Linear)
    assert Engine.from_pretrained(tiny_model_dir, device="cpu", dtype="int8").runner.precision == "int8"
    fp32 = Engine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    assert fp32.runner.precision == "float32"
    a = auto.fill("def add(a, b):\n    return ", "\n", 8, single_line=True)
    assert a.tokens and "\n" not in a.text


def test_int8_is_for_the_cpu_only() -> None:
    with pytest.raises(ValueError, match="CPU"):
        wants_int8("int8", torch.device("cuda"))
    assert not wants_int8("auto", torch.device("cuda"))
    assert not wants_int8("bfloat16", torch.device("cpu"))


def test_without_kernels_the_engine_stays_in_float(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize, "available", lambda: False)
    assert Engine.from_pretrained(tiny_model_dir, device="cpu").runner.precision == "float32"
    assert Engine.from_pretrained(tiny_model_dir, device="cpu", dtype="int8").runner.precision == "float32"


def test_int8_of_fused_projections_equals_int8_of_the_separate_ones() -> None:
    """Per-output-channel weight scales and one activation scale per call: fusing q/k/v (and gate/up) before
    quantizing gives the same int8 layers, bit for bit, with fewer activation quantizations."""
    import copy

    from engine.config import ModelConfig
    from engine.model import DiffusionLM

    if not quantize.available():
        pytest.skip("int8 kernels unavailable here")
    cfg = ModelConfig(vocab_size=90, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                      qkv_bias=True)
    model = DiffusionLM(cfg)
    model.init_weights(seed=4)
    model.eval()
    separate, fused = copy.deepcopy(model), copy.deepcopy(model).fuse_projections()
    assert quantize.quantize_blocks(separate.layers) == 2 * 7 and quantize.quantize_blocks(fused.layers) == 2 * 4
    ids = torch.randint(0, 90, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(separate(ids)[0], fused(ids)[0])
