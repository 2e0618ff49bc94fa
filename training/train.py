"""The diffusion training loop: time-budgeted, resumable, with periodic checkpoints.

A run directory holds a loadable model (config.json, model.safetensors, tokenizer.json) and the training state
(train_state.safetensors for the optimizer, train_state.json for counters), so any later session, on the CPU or a
lent GPU, continues the same model.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from engine.config import ModelConfig
from engine.model import DiffusionLM
from engine.tokenizer import CodeTokenizer
from training.dataset import TokenArrays
from training.objective import Batch, ExampleSampler, ObjectiveConfig

PRESETS: dict[str, ModelConfig] = {
    # ~6.8M parameters: what two CPU cores can train in about an hour.
    "cpu": ModelConfig(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=4, intermediate_size=688),
    # ~30M parameters: for a lent GPU.
    "gpu": ModelConfig(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1376),
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


@dataclass
class TrainState:
    """Counters carried across resumptions."""

    step: int = 0
    tokens_seen: int = 0
    seconds: float = 0.0
    sessions: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Warmup, then constant, then a linear decay over the last decay_share of the budget (progress in [0, 1])."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
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


def _save_model(model: DiffusionLM, tokenizer_path: Path, out: Path) -> None:
    """Temporary writer of the model directory format (config.json, model.safetensors, tokenizer.json)."""
    out.mkdir(parents=True, exist_ok=True)
    model.cfg.save(out / "config.json")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(tokenizer_path, out / "tokenizer.json")


def _load_model(run: Path, device: torch.device) -> DiffusionLM:
    """Temporary reader of the model directory format."""
    cfg = ModelConfig.from_dict(json.loads((run / "config.json").read_text()))
    model = DiffusionLM(cfg)
    sd = load_file(str(run / "model.safetensors"))
    model.load_state_dict(sd, strict=not cfg.tie_embeddings)
    return model.to(device)


def save_state(run: Path, model: DiffusionLM, opt: torch.optim.Optimizer, state: TrainState, cfg: TrainConfig,
               tokenizer_path: Path) -> None:
    """Write the model and the optimizer state atomically (into a temporary directory, then renamed)."""
    tmp = run.with_name(run.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_model(model, tokenizer_path, tmp)
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
    if run.exists():
        run.rename(old)
    tmp.rename(run)
    if old.exists():
        shutil.rmtree(old)


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


def train(run: Path, data_dir: Path, cfg: TrainConfig, device_name: str = "auto") -> TrainState:
    """Train (or resume) the model in run, for cfg.minutes of wall time."""
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          ("cpu" if device_name == "auto" else device_name))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer_path = data_dir / "tokenizer.json"
    tok = CodeTokenizer.from_file(tokenizer_path)
    if (run / "train_state.json").exists():
        model = _load_model(run, device)
        opt = make_optimizer(model, cfg)
        state = load_state(run, model, opt)
        print(f"resuming {run} at step {state.step}, {state.tokens_seen / 1e6:.1f}M tokens seen", file=sys.stderr)
    else:
        mcfg = ModelConfig(**{**asdict(PRESETS[cfg.preset]), "vocab_size": tok.vocab_size})
        model = DiffusionLM(mcfg)
        model.init_weights(cfg.seed)
        model.to(device)
        opt = make_optimizer(model, cfg)
        state = TrainState()
    model.train()
    # bf16 autocast on GPUs; on this CPU bf16 matmuls measured no faster than fp32 (no AMX), so fp32 there.
    autocast = device.type == "cuda"
    train_data = TokenArrays.load(data_dir / "train.npz")
    valid_data = TokenArrays.load(data_dir / "valid.npz")
    seed = cfg.seed + state.step
    sampler = ExampleSampler(train_data, cfg.objective, tok.mask_id, tok.end_id, set(tok.newline_ids), seed=seed)
    vsampler = ExampleSampler(valid_data, cfg.objective, tok.mask_id, tok.end_id, set(tok.newline_ids), seed=1234)
    vbatches = [vsampler.batch(cfg.batch_size) for _ in range(4)]
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model {nparams / 1e6:.2f}M parameters on {device}; budget {cfg.minutes:.0f} min", file=sys.stderr)
    budget = cfg.minutes * 60.0
    t0 = time.time()
    last_ckpt = t0
    session = {"start_step": state.step, "device": str(device), "hardware": hardware_name(device)}
    tok_window = 0
    t_window = time.time()
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget or (cfg.max_steps and state.step >= cfg.max_steps):
            break
        progress = elapsed / budget if not cfg.max_steps else state.step / cfg.max_steps
        lr = lr_at(cfg, state.step - session["start_step"], progress)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = sampler.batch(cfg.batch_size)
        loss = masked_loss(model, batch, device, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state.step += 1
        ntok = batch.ids.numel()
        state.tokens_seen += ntok
        tok_window += ntok
        if state.step % 10 == 0:
            now = time.time()
            rate = tok_window / max(now - t_window, 1e-6)
            tok_window, t_window = 0, now
            left = budget - (now - t0)
            print(f"\rstep {state.step} loss {loss.item():.3f} lr {lr:.2e} {rate:,.0f} tok/s "
                  f"{state.tokens_seen / 1e6:.1f}M tokens elapsed {fmt_time(now - t0)} left {fmt_time(left)}",
                  end="", file=sys.stderr, flush=True)
        if state.step % cfg.eval_every == 0:
            vl = validation_loss(model, vbatches, device, autocast)
            state.history.append({"step": state.step, "tokens": state.tokens_seen, "valid_loss": round(vl, 4)})
            print(f"\nvalid loss {vl:.4f} at step {state.step}", file=sys.stderr, flush=True)
        if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            state.seconds += time.time() - last_ckpt
            last_ckpt = time.time()
            save_state(run, model, opt, state, cfg, tokenizer_path)
    state.seconds += time.time() - last_ckpt
    session.update(end_step=state.step, minutes=round((time.time() - t0) / 60, 1))
    state.sessions.append(session)
    vl = validation_loss(model, vbatches, device, autocast)
    state.history.append({"step": state.step, "tokens": state.tokens_seen, "valid_loss": round(vl, 4)})
    save_state(run, model, opt, state, cfg, tokenizer_path)
    print(f"\ndone: step {state.step}, {state.tokens_seen / 1e6:.1f}M tokens, valid loss {vl:.4f}", file=sys.stderr)
    return state


def hardware_name(device: torch.device) -> str:
    """A short description of where training ran."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
