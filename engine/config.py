"""Model shape (saved as config.json beside the weights) and engine settings."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    """Shape of the bidirectional transformer; enough to rebuild it from config.json alone."""

    vocab_size: int = 8192
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 688
    max_position: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = True
    # Dream-family checkpoints read the prediction for position i from the output at i-1.
    logits_shift: int = 0
    # Where the checkpoint came from: "codefill", "llada", "Dream", "open-dcoder".
    family: str = "codefill"
    # Special token strings; ids are resolved from the tokenizer (see engine/tokenizer.py).
    mask_token: str = "<|mask|>"
    end_token: str = "<|end|>"

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Raise ValueError when the shape is inconsistent."""
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.logits_shift not in (0, 1):
            raise ValueError(f"logits_shift must be 0 or 1, not {self.logits_shift}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for config.json."""
        return {"model_type": "codefill", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a config.json dict; unknown keys are an error, so typos do not pass silently."""
        data = dict(data)
        data.pop("model_type", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def save(self, path: Path) -> None:
        """Write config.json."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def num_parameters(self) -> int:
        """Parameter count implied by the shape."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_kv_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2 + (h + 2 * kv if self.qkv_bias else 0)
        layer = attn + 3 * h * i + 2 * h
        emb = v * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + emb + h


@dataclass
class EngineConfig:
    """How the engine runs a model: device, precision, decoding defaults."""

    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"...
    dtype: str = "auto"  # "auto" (bf16 on a GPU, int8 weights on the CPU), "float32", "bfloat16", "int8"
    window: int = 256  # tokens in the window: prefix + span + suffix
    max_span: int = 128
    steps: int = 0  # 0: choose from the span length (see sampler.default_steps)
    tokens_per_step: int = 0  # what steps=0 aims at; 0: 3 on the CPU, 2 on a GPU
    order: str = "confidence"  # confidence, margin, entropy
    threshold: float = 0.0  # > 0: each step also commits every masked position above this confidence
    temperature: float = 0.0
    end_penalty: float = 0.0  # subtracted from the end token's logit
    block: int = 0  # > 0: only the first `block` still-masked positions may be committed (semi-autoregressive)
    min_tokens: int = 1  # a fill may not end before this many tokens
    heal: bool = True  # the prefix's last token is re-chosen with the fill (see engine.window.build_window)
    line_stage: int = 16  # single-line fills: this many tokens first, the rest of the budget only if the line goes on
    block_stage: int = 32  # the same for multi-line fills (0: one stage)
    cache: bool = True  # reuse the context's keys and values between refreshes
    refresh_every: int = 0  # recompute the whole window every N steps; 0: 8 on the CPU, 4 on a GPU
    threads: int = 0  # CPU threads for torch; 0: auto (see runner.pick_threads)
    cuda_graphs: bool = True  # on a GPU, replay each step as a captured CUDA graph (engine.graphs)
    compile: bool = False  # with cuda_graphs: torch.compile each step shape before capturing it (fewer kernels)
