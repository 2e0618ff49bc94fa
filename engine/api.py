"""The engine's Python API: load a model once, fill holes from prefix and suffix text."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.config import EngineConfig
from engine.errors import CheckpointError
from engine.model_dir import ENGINE_FILE, LANGUAGES_KEY, read_engine_json, resolve_model_path
from engine.runner import Runner, pick_device, pick_dtype, pick_threads, retain_freed_memory, wants_int8
from engine.sampler import SamplerConfig
from engine.tokenizer import CodeTokenizer
from engine.window import Window, build_window


@dataclass
class FillRequest:
    """One hole to fill."""

    prefix: str
    suffix: str
    max_tokens: int = 32
    single_line: bool = False
    steps: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    cancel: threading.Event | None = None


@dataclass
class Fill:
    """A fill and what it cost."""

    text: str
    tokens: list[int]
    forward_passes: int
    seconds: float
    span_len: int = 0
    cut: dict[str, int] = field(default_factory=dict)  # prefix_chars / suffix_chars left out of the window
    ended: bool = True  # the model ended the fill (end token or, single-line, line break) before its budget ran out


class Engine:
    """A loaded model plus decoding defaults; safe to call from several threads."""

    def __init__(self, runner: Runner, config: EngineConfig, path: Path | None = None) -> None:
        self.runner = runner
        self.config = config
        self.path = path

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "auto", dtype: str = "auto",
                        **settings: object) -> "Engine":
        """Load a model directory (or the built-in model) onto a device; settings override EngineConfig fields."""
        from engine.checkpoint import load_model  # heavy imports stay lazy for callers that only need types

        known = {f.name for f in dataclasses.fields(EngineConfig)}
        bad = sorted(set(settings) - known)
        if bad:
            raise TypeError(f"unknown engine settings: {', '.join(bad)}")
        model_path = resolve_model_path(path)
        # A model directory may carry the decoding settings chosen for it (engine.json); the caller's win, except
        # steps=0, which means "the default".
        chosen = _model_defaults(model_path, known)
        given = {k: v for k, v in settings.items() if not (k == "steps" and not v)}
        config = EngineConfig(device=device, dtype=dtype, **{**chosen, **given})  # type: ignore[arg-type]
        dev = pick_device(config.device)
        dt = pick_dtype(config.dtype, dev)
        int8 = wants_int8(config.dtype, dev)
        model, tok = load_model(model_path, device=str(dev), dtype=dt)
        if dev.type == "cpu":
            torch.set_num_threads(pick_threads(config.threads, model.cfg.num_parameters()))
            retain_freed_memory()
        runner = Runner(model, tok, dev, dt, cuda_graphs=config.cuda_graphs, int8=int8, compile_steps=config.compile)
        return cls(runner, config, model_path)

    @property
    def tokenizer(self) -> CodeTokenizer:
        """The model's tokenizer."""
        return self.runner.tok

    def count_tokens(self, text: str) -> int:
        """Tokens the model's tokenizer makes of text."""
        return len(self.tokenizer.encode(text))

    @property
    def tokens_per_step(self) -> int:
        """Tokens committed per step when steps are not given: the setting, or by device (3 on the CPU, 2 on a GPU,
        where steps are cheap; chosen on held-out lines of the corpus, see the README)."""
        return self.config.tokens_per_step or (3 if self.runner.device.type == "cpu" else 2)

    @property
    def refresh_every(self) -> int:
        """Steps between whole-window passes with the context cache: the setting, or by device (8 on the CPU, where
        a whole-window pass costs ~5 span passes, 4 on a GPU)."""
        return self.config.refresh_every or (8 if self.runner.device.type == "cpu" else 4)

    def sampler_config(self, req: FillRequest) -> SamplerConfig:
        """Decoding settings for one request: the engine's defaults, overridden by the request."""
        c = self.config
        return SamplerConfig(
            steps=req.steps if req.steps is not None else c.steps,
            order=c.order, threshold=c.threshold, block=c.block,
            temperature=req.temperature or c.temperature, seed=req.seed, end_penalty=c.end_penalty,
            min_tokens=c.min_tokens,
            tokens_per_step=self.tokens_per_step,
        )

    def fill(self, prefix: str, suffix: str, max_tokens: int = 32, single_line: bool = False, *,
             steps: int | None = None, temperature: float = 0.0, seed: int | None = None,
             cancel: threading.Event | None = None) -> Fill:
        """Fill the hole between prefix and suffix with at most max_tokens tokens."""
        req = FillRequest(prefix, suffix, max_tokens, single_line, steps, temperature, seed, cancel)
        return self.fill_batch([req])[0]

    def fill_batch(self, requests: list[FillRequest]) -> list[Fill]:
        """Fill several holes in one pass of forward calls; requests must share steps, temperature and mode.

        With the default step count, fills are made in two stages: first with a budget of config.line_stage
        tokens (single-line) or config.block_stage (multi-line), then, only for fills the model has not ended by
        then, the rest of the budget after what was written. Most fills are short, so most cost a fraction of the
        steps of the whole budget.
        """
        if not requests:
            return []
        stage = self.config.line_stage if requests[0].single_line else self.config.block_stage
        if not (stage > 0 and not requests[0].steps and not self.config.steps):
            return self._fill_batch(requests)
        fills = self._fill_batch([dataclasses.replace(r, max_tokens=min(r.max_tokens, stage)) for r in requests])
        going = [i for i, (r, f) in enumerate(zip(requests, fills)) if not f.ended and r.max_tokens > len(f.tokens)]
        if going:
            rest = self._fill_batch([dataclasses.replace(requests[i], prefix=requests[i].prefix + fills[i].text,
                                                         max_tokens=requests[i].max_tokens - len(fills[i].tokens))
                                     for i in going])
            for i, more in zip(going, rest):
                f = fills[i]
                fills[i] = Fill(text=f.text + more.text, tokens=f.tokens + more.tokens,
                                forward_passes=f.forward_passes + more.forward_passes,
                                seconds=f.seconds + more.seconds, span_len=f.span_len + more.span_len, cut=f.cut,
                                ended=more.ended)
        return fills

    def _fill_batch(self, requests: list[FillRequest]) -> list[Fill]:
        """One batch of forward calls for the requests as they are."""
        tok = self.tokenizer
        c = self.config
        windows = []
        for r in requests:
            if r.max_tokens < 1:
                raise ValueError("max_tokens must be at least 1")
            windows.append(build_window(tok, r.prefix, r.suffix, min(r.max_tokens, c.max_span), c.window, c.max_span,
                                        heal=c.heal))
        first = requests[0]
        stop_ids = set(tok.end_ids)
        if first.single_line:
            stop_ids |= tok.newline_ids
        cancel = first.cancel if len(requests) == 1 else _batch_cancel([r.cancel for r in requests])
        result, seconds = self.runner.run(windows, self.sampler_config(first), sorted(stop_ids), cache=c.cache,
                                          refresh_every=self.refresh_every, cancel=cancel,
                                          first_allowed=_first_allowed(tok, windows, stop_ids))
        fills = []
        for i, (r, w) in enumerate(zip(requests, windows)):
            n = min(result.lengths[i], w.span_len)
            ids = [int(t) for t in result.span[i, :n].tolist()]
            text = tok.decode(ids)
            # Byte tokens that do not make whole characters decode to U+FFFD: the fill ends before the first.
            broken = text.find("\ufffd")
            if broken >= 0:
                text = text[:broken]
            if w.healed:  # the first token re-wrote the prefix's last one: keep only what comes after the cursor
                text = text[len(w.healed):] if text.startswith(w.healed) else ""
            fills.append(Fill(text=text, tokens=ids, forward_passes=result.forward_passes,
                              seconds=seconds, span_len=w.span_len,
                              cut={"prefix_chars": w.prefix_cut_chars, "suffix_chars": w.suffix_cut_chars},
                              ended=result.lengths[i] < w.span_len or broken >= 0))
        return fills


def _first_allowed(tok: CodeTokenizer, windows: list[Window], stop_ids: set[int]) -> torch.Tensor | None:
    """[B, V] bool: the ids each window's first span position may hold (all for a window with nothing healed)."""
    if not any(w.healed for w in windows):
        return None
    allowed = torch.ones(len(windows), tok.vocab_size, dtype=torch.bool)
    for i, w in enumerate(windows):
        if w.healed:
            ids = sorted(tok.ids_starting_with(w.healed) - stop_ids)
            allowed[i] = False
            allowed[i, ids] = True
    return allowed


def _model_defaults(model_path: Path, known: set[str]) -> dict[str, object]:
    """Decoding settings from <model>/engine.json, if the directory has one (unknown keys are an error); its
    "languages" entry is the model's description, not a setting."""
    data = {k: v for k, v in read_engine_json(model_path).items() if k != LANGUAGES_KEY}
    if set(data) - known or {"device", "dtype"} & set(data):
        raise CheckpointError(f"{model_path / ENGINE_FILE}: expected an object of decoding settings "
                              f"({', '.join(sorted(known))}) and {LANGUAGES_KEY!r}")
    return data


class _AllOf(threading.Event):
    """Set when every one of several events is set (a batch stops only when all its requests are cancelled)."""

    def __init__(self, events: list[threading.Event]) -> None:
        super().__init__()
        self.events = events

    def is_set(self) -> bool:  # type: ignore[override]
        return bool(self.events) and all(e.is_set() for e in self.events)


def _batch_cancel(events: list[threading.Event | None]) -> threading.Event | None:
    """An event for a batch: set when all its requests' events are set."""
    real = [e for e in events if e is not None]
    return _AllOf(real) if len(real) == len(events) and real else None
