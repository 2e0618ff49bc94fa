"""The diffusion training loop: time-budgeted, resumable, with periodic checkpoints.

A run directory holds a loadable model (config.json, model.safetensors, tokenizer.json) and the training state
(train_state.safetensors for the optimizer, train_state.json for counters), so any later session, on the CPU or a
lent GPU, continues the same model.

A lent GPU cannot send the optimizer state back (its files are too large to return), so a device session instead
starts from a model directory's weights with a fresh optimizer (train(init_from=...)) and exports its result as a
small model directory (export_dir: bf16 shards under the return size limit, plus training.json with the counters
of every session so far). training/device_train.sh drives that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from safetensors.torch import load_file, save_file

from engine.checkpoint import load_model, save_model
from engine.config import ModelConfig
from engine.model import DiffusionLM
from engine.tokenizer import CodeTokenizer
from training.dataset import TokenArrays
from training.device_data import load_split
from training.objective import Batch, ExampleSampler, ObjectiveConfig

PRESETS: dict[str, ModelConfig] = {
    # ~6.8M parameters: what two CPU cores can train in about an hour.
    "cpu": ModelConfig(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=4, intermediate_size=688),
    # ~19.4M parameters (8,192-token vocabulary): for a lent GPU. Sized by the device's transfer limits, not its
    # speed: the model travels back to the next device in the working tree (64 MiB in all), in bf16 (37 MiB) beside
    # the packed training data (~20 MiB, training/device_data.py) and the rest of the repository. Deep and narrow:
    # 10 layers of width 384 (6 heads of 64, 3 key/value heads).
    "gpu": ModelConfig(hidden_size=384, num_layers=10, num_heads=6, num_kv_heads=3, intermediate_size=1024),
    # A few thousand parameters beside the embedding: for smoke runs and tests.
    "tiny": ModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64),
}


@dataclass
class TrainConfig:
    """Settings of a training run."""

    preset: str = "cpu"
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    minutes: float = 60.0
    max_steps: int = 0  # 0: until the time budget is spent
    decay_share: float = 0.2  # last share of the budget spent decaying the learning rate
    checkpoint_minutes: float = 5.0
    eval_every: int = 200
    seed: int = 0
    threads: int = 0
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    workers: int = 0  # processes drawing batches in the background (0: the training process draws them)
    compile: bool = False  # torch.compile the model's forward (falls back to eager if compiling fails)
    log_seconds: float = 0.0  # > 0: a progress line every this many seconds instead of a \r line every 10 steps


@dataclass
class TrainState:
    """Counters carried across resumptions."""

    step: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0
    sessions: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


class FastSampler(ExampleSampler):
    """ExampleSampler with the document draw done by a precomputed CDF: the same random stream and the same
    examples (Generator.choice with p draws one uniform and searches the normalised cumulative sum), 2.5-3.5 times
    as many examples per second (~3,500/s on one core here, against ~1,100-1,500)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        cdf = self.doc_p.cumsum()
        cdf /= cdf[-1]
        self.doc_cdf = cdf

    def window(self) -> tuple[np.ndarray, int]:
        """A window of up to cfg.window tokens inside one document, and its global start."""
        d = int(self.doc_cdf.searchsorted(self.rng.random(), side="right"))
        a, b = int(self.data.doc_starts[d]), int(self.data.doc_starts[d + 1])
        w = self.cfg.window
        start = a if b - a <= w else int(self.rng.integers(a, b - w + 1))
        return self.data.tokens[start : min(b, start + w)].astype(np.int64), start


def data_ready(data_dir: Path) -> bool:
    """Whether data_dir already holds what train() reads (a tokenizer and both splits, plain or packed)."""
    return (data_dir / "tokenizer.json").exists() and all(
        (data_dir / f"{s}.npz").exists() or (data_dir / f"{s}.pack.npz").exists() for s in ("train", "valid"))


class _BatchStream(torch.utils.data.IterableDataset):
    """Endless batches from one FastSampler per loader worker, each seeded differently."""

    def __init__(self, data: TokenArrays, cfg: TrainConfig, tok: CodeTokenizer, seed: int) -> None:
        self.data, self.cfg, self.seed = data, cfg, seed
        self.mask_id, self.end_id, self.newlines = tok.mask_id, tok.end_id, set(tok.newline_ids)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        sampler = FastSampler(self.data, self.cfg.objective, self.mask_id, self.end_id, self.newlines,
                              seed=self.seed * 1009 + 7919 * (wid + 1))
        while True:
            b = sampler.batch(self.cfg.batch_size)
            yield b.ids, b.targets, b.weights


def _ignore_stop_signals(_worker_id: int) -> None:
    """A loader worker leaves Ctrl-C and SIGTERM to the training process, which stops the workers itself after
    saving (a signal to the whole process group killed the workers, and the trainer then failed unsaved)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batch_source(data: TokenArrays, cfg: TrainConfig, tok: CodeTokenizer, seed: int,
                 pin: bool) -> Iterator[Batch]:
    """Training batches: drawn in this process (cfg.workers 0, the exact stream of ExampleSampler(seed)) or by
    cfg.workers background processes."""
    if cfg.workers <= 0:
        sampler = FastSampler(data, cfg.objective, tok.mask_id, tok.end_id, set(tok.newline_ids), seed=seed)
        while True:
            yield sampler.batch(cfg.batch_size)
    loader = torch.utils.data.DataLoader(_BatchStream(data, cfg, tok, seed), batch_size=None,
                                         num_workers=cfg.workers, pin_memory=pin, prefetch_factor=4,
                                         persistent_workers=False, worker_init_fn=_ignore_stop_signals)
    for ids, targets, weights in loader:
        yield Batch(ids, targets, weights)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Warmup, then constant, then a linear decay over the last decay_share of the budget (progress in [0, 1])."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    start_decay = 1.0 - cfg.decay_share
    if progress <= start_decay:
        return cfg.lr * warm
    frac = min(1.0, (progress - start_decay) / cfg.decay_share)
    return cfg.lr * warm * (1.0 - frac * (1.0 - cfg.min_lr_ratio))


def masked_loss(model: DiffusionLM, batch: Batch, device: torch.device, autocast: bool) -> torch.Tensor:
    """The 1/t-weighted cross-entropy on masked positions, averaged over the batch."""
    ids, targets, weights = batch.ids.to(device), batch.targets.to(device), batch.weights.to(device)
    sel = weights > 0  # [B, T]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        hidden, _ = model(ids, hidden_only=True)  # [B, T, H]
        logits = model.lm_head(hidden[sel]).float()  # [N, V]: the head only where the loss is taken
    ce = F.cross_entropy(logits, targets[sel], reduction="none")  # [N]
    return (ce * weights[sel]).sum() / ids.shape[0]


def save_state(run: Path, model: DiffusionLM, opt: torch.optim.Optimizer, state: TrainState, cfg: TrainConfig,
               tokenizer_path: Path) -> None:
    """Write the model and the optimizer state atomically (into a temporary directory, then renamed)."""
    tmp = run.with_name(run.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tokenizer_path, tmp)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"{names[id(p)]}.{key}"] = st[key].detach().cpu().contiguous()
    save_file(tensors, str(tmp / "train_state.safetensors"))
    meta = {"state": asdict(state), "config": asdict(cfg)}
    (tmp / "train_state.json").write_text(json.dumps(meta, indent=1) + "\n")
    for extra in ("MODEL_CARD.md",):
        if (run / extra).exists():
            shutil.copy(run / extra, tmp / extra)
    old = run.with_name(run.name + ".old")
    if old.exists() and run.exists():  # left by a save cut short after its last rename: run is the newer copy
        shutil.rmtree(old)
    if run.exists():
        run.rename(old)
    tmp.rename(run)
    if old.exists():
        shutil.rmtree(old)


def recover_run(run: Path) -> bool:
    """Put back the last saved state when a save was cut short between its two renames (run missing, run.old
    holding the state): resuming must not silently start over. Returns whether it did."""
    old = run.with_name(run.name + ".old")
    if run.exists() or not (old / "train_state.json").is_file():
        return False
    old.rename(run)
    print(f"note: {run} restored from {old} (a save was cut short)", file=sys.stderr)
    return True


def model_shape(cfg: ModelConfig) -> dict[str, int]:
    """What a preset fixes about a model (everything but the vocabulary)."""
    return {k: getattr(cfg, k) for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                         "intermediate_size")}


def check_output_dir(path: Path, what: str) -> None:
    """Raise ValueError now, before any training, when path (a directory train() replaces whole when it saves)
    cannot be written there: a file in the way, or a parent that cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: not a directory")
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"{what} {path}: {above} is not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=path.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot write beside it in {path.parent} "
                         f"({exc.strerror or exc})") from None


class _StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during training: the first asks the loop to stop after the step in progress
    and save; a second one interrupts at once (KeyboardInterrupt), saving nothing more."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.saved: dict[int, object] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: stopping after this step and saving (again to stop at once, unsaved)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def load_state(run: Path, model: DiffusionLM, opt: torch.optim.Optimizer) -> TrainState:
    """Restore optimizer moments and counters written by save_state."""
    meta = json.loads((run / "train_state.json").read_text())
    tensors = load_file(str(run / "train_state.safetensors"))
    for name, p in model.named_parameters():
        st = opt.state[p]
        if f"{name}.exp_avg" in tensors:
            st["exp_avg"] = tensors[f"{name}.exp_avg"].to(p.device)
            st["exp_avg_sq"] = tensors[f"{name}.exp_avg_sq"].to(p.device)
            st["step"] = torch.tensor(float(meta["state"]["step"]))
    return TrainState(**meta["state"])


def make_optimizer(model: DiffusionLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with no decay on norms and biases."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=False,
    )


@torch.no_grad()
def validation_loss(model: DiffusionLM, batches: list[Batch], device: torch.device, autocast: bool) -> float:
    """Mean masked loss over fixed validation batches."""
    model.eval()
    out = float(np.mean([masked_loss(model, b, device, autocast).item() for b in batches]))
    model.train()
    return out


def fmt_time(s: float) -> str:
    """Seconds -> H:MM:SS."""
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def init_model_from(src: Path, tok: CodeTokenizer, device: torch.device) -> tuple[DiffusionLM, TrainState]:
    """A model directory's weights (float32, on device) and its counters from training.json when it has one.

    The directory's tokenizer must be the training data's: the same ids for the same text.
    """

    model, src_tok = load_model(src, device="cpu", dtype=torch.float32)
    if (src_tok.tok.get_vocab() != tok.tok.get_vocab() or src_tok.mask_id != tok.mask_id
            or src_tok.end_id != tok.end_id):
        raise ValueError(f"{src}: its tokenizer.json is not the training data's; training would scramble the model")
    model.to(device)
    model.train()
    state = TrainState()
    record = Path(src) / TRAINING_RECORD
    if record.exists():
        state = TrainState(**json.loads(record.read_text())["state"])
    return model, state


TRAINING_RECORD = "training.json"  # in an exported model directory: the counters of every session so far


def export_model(model: DiffusionLM, tokenizer_path: Path, out: Path, state: TrainState, cfg: TrainConfig,
                 shard_mb: float = 0.0, save_dtype: str | None = None) -> Path:
    """Write a loadable model directory (config.json, weights, tokenizer.json, training.json), replacing out whole.

    shard_mb > 0 splits the weights into shards of at most that many MiB; save_dtype ("bfloat16") casts them. No
    optimizer state: a later run continues from it with train(init_from=out).
    """

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    dtype = getattr(torch, save_dtype) if save_dtype else None
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {save_dtype!r}")
    save_model(model, tokenizer_path, tmp, dtype=dtype,
               max_shard_bytes=int(shard_mb * 2**20) if shard_mb else None)
    record = {"state": asdict(state), "config": asdict(cfg)}
    (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
    return out


def check_export(model: DiffusionLM, shard_mb: float = 0.0, save_dtype: str | None = None) -> None:
    """Raise now if export_model could not write this model with these settings (unknown dtype, a tensor larger
    than a shard)."""
    from engine.checkpoint import _plan_shards

    dtype = getattr(torch, save_dtype) if save_dtype else None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"unknown floating dtype {save_dtype!r}")
    if shard_mb:
        meta = {n: torch.empty(t.shape, dtype=dtype or t.dtype, device="meta")
                for n, t in model.state_dict().items()}
        _plan_shards(meta, {"format": "pt", "family": model.cfg.family}, int(shard_mb * 2**20))


def train(run: Path, data_dir: Path, cfg: TrainConfig, device_name: str = "auto", init_from: Path | None = None,
          export_dir: Path | None = None, shard_mb: float = 0.0, save_dtype: str | None = None) -> TrainState:
    """Train (or resume) the model in run, for cfg.minutes of wall time.

    A run directory with training state is resumed (optimizer included). Otherwise init_from, a model directory,
    gives the starting weights (with a fresh optimizer and the counters of its training.json, if any); else the
    model starts from scratch with cfg.preset's shape. export_dir, when given, receives the model as a small
    directory at every checkpoint and at the end (see export_model).

    Ctrl-C (SIGINT) or SIGTERM stops the run after the step in progress and saves it as at the end (the last
    session then records "interrupted"); a second one stops at once without saving. A run directory that exists
    without training state is refused rather than replaced.
    """
    from engine.runner import pick_device

    device = pick_device(device_name)
    run = Path(run)
    recover_run(run)
    resuming = (run / "train_state.json").exists()
    if not resuming and run.is_dir() and any(run.iterdir()):
        raise ValueError(f"run directory {run} exists but holds no training state (train_state.json), so there is "
                         "nothing to resume and saving would replace what is there: give a new run directory"
                         + (" (or start from the model there with --init-from)" if (run / "config.json").exists()
                            else ""))
    check_output_dir(run, "run directory")
    if export_dir is not None:
        check_output_dir(Path(export_dir), "export directory")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer_path = data_dir / "tokenizer.json"
    tok = CodeTokenizer.from_file(tokenizer_path)
    if resuming:
        model, run_tok = load_model(run, device=str(device), dtype=torch.float32)
        model.train()
        if (run_tok.tok.get_vocab() != tok.tok.get_vocab() or run_tok.mask_id != tok.mask_id
                or run_tok.end_id != tok.end_id):
            raise ValueError(f"{data_dir}: its tokenizer.json is not the one run {run} was trained with; resuming on "
                             "this data would scramble the model (give the run's own data, or a new run)")
        opt = make_optimizer(model, cfg)
        state = load_state(run, model, opt)
        print(f"resuming {run} at step {state.step}, {state.tokens_seen / 1e6:.1f}M tokens seen", file=sys.stderr)
        if init_from is not None:
            print(f"note: {run} has training state, so init_from {init_from} is not used", file=sys.stderr)
    elif init_from is not None:
        model, state = init_model_from(Path(init_from), tok, device)
        opt = make_optimizer(model, cfg)
        print(f"starting from the weights of {init_from} (step {state.step}, {state.tokens_seen / 1e6:.1f}M tokens "
              f"seen), fresh optimizer", file=sys.stderr)
    else:
        mcfg = ModelConfig(**{**asdict(PRESETS[cfg.preset]), "vocab_size": tok.vocab_size})
        model = DiffusionLM(mcfg)
        model.init_weights(cfg.seed)
        model.to(device)
        opt = make_optimizer(model, cfg)
        state = TrainState()
    model.train()
    if export_dir is not None:  # a setting that cannot be exported fails now, not after the whole budget
        check_export(model, shard_mb, save_dtype)
    # bf16 autocast on GPUs; on this CPU bf16 matmuls measured no faster than fp32 (no AMX), so fp32 there.
    autocast = device.type == "cuda"
    train_data = load_split(data_dir, "train")
    valid_data = load_split(data_dir, "valid")
    seed = cfg.seed + state.step
    batches = batch_source(train_data, cfg, tok, seed, pin=device.type == "cuda")
    vsampler = ExampleSampler(valid_data, cfg.objective, tok.mask_id, tok.end_id, set(tok.newline_ids), seed=1234)
    vbatches = [vsampler.batch(cfg.batch_size) for _ in range(4)]
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model {nparams / 1e6:.2f}M parameters on {device}; budget {cfg.minutes:g} min", file=sys.stderr)
    fwd = model
    if cfg.compile:
        fwd = torch.compile(model)  # type: ignore[assignment]
    budget = cfg.minutes * 60.0
    t0 = time.time()
    last_ckpt = t0
    session: dict = {"start_step": state.step, "device": str(device), "hardware": hardware_name(device),
                     "parameters": nparams, "batch_size": cfg.batch_size, "window": cfg.objective.window,
                     "lr": cfg.lr, "init_from": str(init_from) if init_from is not None else None,
                     "start_tokens": state.tokens_seen}
    tok_window = 0
    t_window = time.time()
    rates: list[float] = []

    def session_so_far() -> dict:
        now = time.time()
        tokens = state.tokens_seen - session["start_tokens"]
        steady = sorted(rates[1:] or rates)
        return {**session, "end_step": state.step, "minutes": round((now - t0) / 60, 2), "tokens": tokens,
                "tokens_per_s": round(tokens / max(now - t0, 1e-6)),
                "tokens_per_s_steady": round(steady[len(steady) // 2]) if steady else None}

    def snapshot() -> TrainState:
        return TrainState(**{**asdict(state), "sessions": [*state.sessions, session_so_far()]})

    with _StopRequest() as stop:  # Ctrl-C: stop after this step, then save as at the end
        while True:
            elapsed = time.time() - t0
            if stop.signal or elapsed >= budget or (cfg.max_steps and state.step >= cfg.max_steps):
                break
            progress = elapsed / budget if not cfg.max_steps else state.step / cfg.max_steps
            lr = lr_at(cfg, state.step - session["start_step"], progress)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = next(batches)
            if fwd is not model and "compiled" not in session:
                try:  # the first compiled step: fall back to eager if compiling fails
                    loss = masked_loss(fwd, batch, device, autocast)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    session["compiled"] = True
                except Exception as exc:  # noqa: BLE001 - any compiler failure
                    print(f"\ntorch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); training eagerly",
                          file=sys.stderr, flush=True)
                    fwd = model
                    session["compiled"] = False
                    loss = masked_loss(fwd, batch, device, autocast)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
            else:
                loss = masked_loss(fwd, batch, device, autocast)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            if "first_loss" not in session:
                session["first_loss"] = round(loss.item(), 6)
                print(f"first step loss {session['first_loss']:.4f}", file=sys.stderr, flush=True)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state.step += 1
            ntok = batch.ids.numel()
            state.tokens_seen += ntok
            tok_window += ntok
            now = time.time()
            if cfg.log_seconds > 0:
                if now - t_window >= cfg.log_seconds:
                    rate = tok_window / max(now - t_window, 1e-6)
                    rates.append(rate)
                    tok_window, t_window = 0, now
                    session["last_loss"] = round(loss.item(), 4)
                    print(f"step {state.step} loss {session['last_loss']:.3f} lr {lr:.2e} {rate:,.0f} tok/s "
                          f"{state.tokens_seen / 1e6:.1f}M tokens elapsed {fmt_time(now - t0)} "
                          f"left {fmt_time(budget - (now - t0))}", file=sys.stderr, flush=True)
            elif state.step % 10 == 0:
                rate = tok_window / max(now - t_window, 1e-6)
                rates.append(rate)
                tok_window, t_window = 0, now
                left = budget - (now - t0)
                print(f"\rstep {state.step} loss {loss.item():.3f} lr {lr:.2e} {rate:,.0f} tok/s "
                      f"{state.tokens_seen / 1e6:.1f}M tokens elapsed {fmt_time(now - t0)} left {fmt_time(left)}",
                      end="", file=sys.stderr, flush=True)
            if state.step % cfg.eval_every == 0:
                vl = validation_loss(model, vbatches, device, autocast)
                state.history.append({"step": state.step, "tokens": state.tokens_seen, "valid_loss": round(vl, 4)})
                nl = "" if cfg.log_seconds > 0 else "\n"  # the \r progress line needs ending first
                print(f"{nl}valid loss {vl:.4f} at step {state.step}", file=sys.stderr, flush=True)
            if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
                state.seconds += time.time() - last_ckpt
                last_ckpt = time.time()
                save_state(run, model, opt, state, cfg, tokenizer_path)
                if export_dir is not None:
                    export_model(model, tokenizer_path, export_dir, snapshot(), cfg, shard_mb, save_dtype)
        state.seconds += time.time() - last_ckpt
        batches.close()  # stops the loader's worker processes, if any
        vl = validation_loss(model, vbatches, device, autocast)
        session.update(session_so_far())
        session.update(minutes=round((time.time() - t0) / 60, 1), valid_loss=round(vl, 4))
        if state.step > session["start_step"]:
            session["last_loss"] = round(loss.item(), 4)
        if stop.signal:
            session["interrupted"] = stop.signal
        state.sessions.append(session)
        state.history.append({"step": state.step, "tokens": state.tokens_seen, "valid_loss": round(vl, 4)})
        save_state(run, model, opt, state, cfg, tokenizer_path)
        if export_dir is not None:
            export_model(model, tokenizer_path, export_dir, state, cfg, shard_mb, save_dtype)
    nl = "" if cfg.log_seconds > 0 or stop.signal else "\n"
    what = f"interrupted ({stop.signal}), saved" if stop.signal else "done"
    print(f"{nl}{what}: step {state.step}, {state.tokens_seen / 1e6:.1f}M tokens, valid loss {vl:.4f} in {run}"
          + (" (the same command resumes it)" if stop.signal else ""), file=sys.stderr)
    return state


def hardware_name(device: torch.device) -> str:
    """A short description of where training ran."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
