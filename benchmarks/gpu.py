"""`codefill bench device`: GPU figures for benchmarks/device.sh (the built-in model and an Open-dCoder-0.5B-shaped
model with random weights, batch 1 and 8, fills of 64 tokens in a 256-token window).

For each model and batch it times, most important first, writing the JSON after every figure so a run cut short
still leaves its results:
  - the fixed-shape, sync-free denoising loop (benchmarks/proto.StaticDenoiser), eager and as CUDA graphs, with
    the context cache off (every step a whole-window pass: the step time to set against the compute bound,
    2 x parameters x window tokens FLOPs at the peak given by --peak-tflops) and on;
  - the engine as it is (engine.api.Engine.fill_batch): with its CUDA graphs on CUDA, then eager with the cache
    on and off, when the engine imports;
  - the autoregressive baselines: our causal KV-cache decoder over the same weights (eager and as a CUDA graph)
    and transformers' generate when transformers imports;
  - last, while the time budget lasts: torch.compile, alone and captured as CUDA graphs.
Runs with --smoke on the CPU with a tiny shape (CUDA graphs are skipped there; compile uses the eager backend).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.causal import CausalDecoder
from benchmarks.proto import GraphedDecoder, StaticDenoiser
from benchmarks.timing import describe_hardware, hardware, make_sync, summarize, time_runs
from benchmarks.workload import SHAPES, code_text, holes

END_PENALTY = 1e4


def build_parser() -> argparse.ArgumentParser:
    """The parser of `codefill bench device`."""
    p = argparse.ArgumentParser(prog="codefill bench device", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-device"), help="folder for device.json")
    p.add_argument("--models", default="open-dcoder-0.5b,built-in",
                   help="comma-separated: built-in (the shipped model, else random weights of its shape), "
                        "open-dcoder-0.5b, codefill-base, tiny")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--k", type=int, default=64, help="tokens per fill")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--steps", type=int, default=0, help="denoising steps (default ceil(k/2) in [4, 32])")
    p.add_argument("--refresh-every", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="dense bf16 peak of the card for the compute bound (H100 SXM ~790 without sparsity)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--no-eager", action="store_true",
                   help="on CUDA, skip the eager variants of the loop and our decoder (so compile gets the time)")
    p.add_argument("--profile", action="store_true",
                   help="also print where the time of one eager fill goes (torch.profiler), per model at batch 1")
    p.add_argument("--smoke", action="store_true", help="tiny shape, CPU allowed, one run each")
    return p


@dataclass
class Workload:
    """One model and batch: the laid-out windows, the autoregressive prompts, and the ids that matter."""

    lay: Any  # ids, positions, key_mask [B, T]; span_start, span_len
    prompt: torch.Tensor  # [B, P]
    mask_id: int
    end_ids: list[int]
    texts: list[Any]


@dataclass
class SimpleLayout:
    """engine.runner.Layout's fields, for machines where the engine (and its tokenizer library) cannot import."""

    ids: torch.Tensor
    positions: torch.Tensor
    key_mask: torch.Tensor
    span_start: int
    span_len: int


class Recorder:
    """Rows of results, written to device.json after every addition."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "rows": [], "notes": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")

    def add(self, row: dict[str, Any]) -> None:
        self.data["rows"].append(row)
        self.write()
        print(_line(row), flush=True)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.write()
        print(f"note: {text}", flush=True)


def _line(r: dict[str, Any]) -> str:
    name = f"{r['model']:16} b{r['batch']} {r['method']:22} {r.get('variant', ''):14}"
    if "error" in r:
        return f"{name} ERROR {r['error']}"
    if "skipped" in r:
        return f"{name} skipped: {r['skipped']}"
    extra = ""
    if r.get("step_ms") is not None:
        extra = (f", step {r['step_ms']:.3f} ms (bound {r['bound_step_ms']:.3f} ms, "
                 f"{100 * r['peak_fraction']:.1f}% of peak)")
    return f"{name} median {r['median_ms']:8.2f} ms p95 {r['p95_ms']:8.2f} ms {r['tokens_per_s']:9.0f} tok/s{extra}"


# ----------------------------------------------------------------------------------------------------------------
# Models and inputs


def engine_importable() -> str | None:
    """None when the engine's API imports (it needs the tokenizers library), else why not."""
    try:
        import engine.api  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def build_model(name: str, device: torch.device, dtype: torch.dtype, smoke: bool) -> tuple[Any, Any, str]:
    """(DiffusionLM on device, CodeTokenizer or None, description of the weights)."""
    from engine.config import ModelConfig
    from engine.model import DiffusionLM

    tok = None
    if name == "built-in":
        try:
            from engine.model_dir import resolve_model_path
            from engine.checkpoint import load_model

            model, tok = load_model(resolve_model_path(None), device=str(device), dtype=dtype)
            return model.eval().fuse_projections(), tok, "built-in"
        except Exception as exc:
            weights = f"random weights of the built-in shape (the built-in model did not load: {exc})"
            name = "codefill-base"
    else:
        weights = f"random weights ({name} shape)"
    if name not in SHAPES:
        raise ValueError(f"unknown model {name!r}")
    fields = dict(SHAPES[name])
    if engine_importable() is None:
        from benchmarks.workload import bench_tokenizer
        from engine.tokenizer import CodeTokenizer

        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tok = CodeTokenizer.from_file(bench_tokenizer(Path(tmp), smoke))
        fields["vocab_size"] = max(fields.get("vocab_size", 0), tok.vocab_size)
    else:
        fields.setdefault("vocab_size", 8192)
    cfg = ModelConfig(**fields)
    with torch.device(device):
        model = DiffusionLM(cfg)  # default init, on the device (fast); speed does not depend on the weights
    # Fused as the engine runs it (Runner would fuse it in place at the first engine row), so every row, the
    # fixed-shape loop and our autoregressive decoder included, runs the same layers; transformers gets the
    # checkpoint layout back (DiffusionLM.plain_state_dict).
    return model.to(dtype).eval().fuse_projections(), tok, weights


def make_workload(tok: Any, vocab: int, batch: int, k: int, window: int, device: torch.device) -> Workload:
    """Windows of real code around batch holes; the engine's own layout when its tokenizer is there, else byte
    ids laid out the same way (k masks first, then a prefix of two thirds of the rest and the suffix)."""
    texts = holes(code_text(), batch)
    if tok is not None:
        from engine.runner import lay_out
        from engine.window import build_window

        windows = [build_window(tok, h.prefix, h.suffix, k, window, 128) for h in texts]
        lay = lay_out(windows, tok.mask_id, tok.pad_id, device)
        rows = [w.suffix_ids + w.prefix_ids for w in windows]
        mask_id, end_ids = tok.mask_id, sorted(tok.end_ids)
    else:
        mask_id, end_ids = 0, [1]
        budget = window - k
        p_len = budget * 2 // 3
        pre = [[2 + b for b in h.prefix.encode()][-p_len:] for h in texts]
        suf = [[2 + b for b in h.suffix.encode()][: budget - p_len] for h in texts]
        # Span first, like engine.runner.lay_out: the positions say where each token sits in the text.
        ids = torch.tensor([[mask_id] * k + p + s for p, s in zip(pre, suf)], device=device)
        t = ids.shape[1]
        order = list(range(p_len, p_len + k)) + list(range(p_len)) + list(range(p_len + k, t))
        positions = torch.tensor(order, device=device).expand(batch, t).contiguous()
        lay = SimpleLayout(ids, positions, torch.ones(batch, t, dtype=torch.bool, device=device), 0, k)
        rows = [s + p for p, s in zip(pre, suf)]
    length = min(len(r) for r in rows)
    prompt = torch.tensor([r[-length:] for r in rows], dtype=torch.long, device=device) % vocab
    return Workload(lay, prompt, mask_id, end_ids, texts)


# ----------------------------------------------------------------------------------------------------------------
# The run


def main(argv: list[str] | None = None) -> int:
    """Entry point of `codefill bench device`."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("codefill bench device: no CUDA device here; use --smoke to check the script on the CPU",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    k, window, reps, warmup = args.k, args.window, args.reps, args.warmup
    if args.smoke:
        models = ["tiny"]
        batches = [min(b, 2) for b in batches][:2]
        k, window, reps, warmup = min(k, 8), min(window, 64), 1, 0
    steps = args.steps or max(4, min(32, math.ceil(k / 2)))
    backend = "inductor" if cuda else "eager"  # on the CPU (smoke) only check that the step traces whole
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    hw = hardware()
    print(f"hardware: {describe_hardware(hw)}", flush=True)
    settings = {"k": k, "window": window, "steps": steps, "refresh_every": args.refresh_every,
                "dtype": args.dtype, "reps": reps, "warmup": warmup, "peak_tflops": args.peak_tflops,
                "batches": batches, "models": models, "budget_s": args.budget_s, "compile_backend": backend,
                "end_penalty": END_PENALTY}
    print(f"settings: {json.dumps(settings)}", flush=True)
    rec = Recorder(args.out / "device.json", {"benchmark": "device", "created": _now(), "hardware": hw,
                                                "settings": settings, "models": {}})
    why_no_engine = engine_importable()
    if why_no_engine:
        rec.note(f"the engine does not import here ({why_no_engine}): engine rows skipped, byte ids used")
    why_no_hf = "--no-hf given" if args.no_hf else None
    if why_no_hf is None:
        from benchmarks import hf as hf_baseline

        why_no_hf = hf_baseline.available()
    if why_no_hf:
        rec.note(f"transformers baseline skipped: {why_no_hf}")
    sync = make_sync(device)
    later: list[Callable[[], None]] = []  # compile variants, run when the rest is done

    for name in models:
        try:
            model, tok, weights = build_model(name, device, dtype, args.smoke)
        except Exception as exc:
            rec.note(f"model {name} could not be built: {exc}")
            continue
        cfg = model.cfg
        params = cfg.num_parameters()
        rec.data["models"][name] = {"weights": weights, "parameters": params, "config": cfg.to_dict()}
        rec.write()
        print(f"model {name}: {weights}; {params / 1e6:.1f}M parameters", flush=True)
        for batch in batches:
            w = make_workload(tok, cfg.vocab_size, batch, k, window, device)
            engine_setup = (tok, window, device, dtype) if why_no_engine is None and tok is not None else None
            case = Case(rec, model, name, w, batch, k, steps, args.refresh_every, reps, warmup, sync, deadline,
                        args.peak_tflops, backend, engine_setup)
            if args.profile and batch == batches[0]:
                case.profile()
            # The figures that matter most first, so a short budget still gets them: on CUDA the graph-captured
            # loop and decoder, the engine as it is and transformers; the eager variants after them.
            fast = "graph" if cuda else "eager"
            # 1. the fixed-shape loop, cache off (step time) and on
            for cache in (False, True):
                case.static(cache, fast)
            # 2. the engine as it is
            if engine_setup is not None:
                case.engine(eager=not (cuda and args.no_eager))
            # 3. autoregressive baselines
            case.ar_ours(fast)
            if not why_no_hf:
                case.ar_hf(tok)
            # 4. the eager variants of 1 and 3 on CUDA
            if cuda and not args.no_eager:
                for cache in (False, True):
                    case.static(cache, "eager")
                case.ar_ours("eager")
            # 5. torch.compile, queued for the end
            if not args.no_compile:
                later.append(case.compiled if cuda else case.compiled_smoke)
    for job in later:
        if time.perf_counter() > deadline:
            rec.note("compile variants left out: time budget spent")
            break
        job()
    rec.data["wall_s"] = time.perf_counter() - started
    rec.write()
    try:  # matplotlib may be missing on the device machine: the JSON is what matters
        from benchmarks.plot import plot_device

        plot_device(rec.data, args.out / "device.png")
    except Exception as exc:  # noqa: BLE001
        print(f"no plot: {exc}", flush=True)
    print(summary(rec.data))
    return 0


class Case:
    """One model at one batch size: every measurement of it, each appended to the recorder as it finishes."""

    def __init__(self, rec: Recorder, model: Any, name: str, w: Workload, batch: int, k: int, steps: int,
                 refresh_every: int, reps: int, warmup: int, sync: Callable[[], None], deadline: float,
                 peak_tflops: float, backend: str,
                 engine_setup: tuple[Any, int, torch.device, torch.dtype] | None = None) -> None:
        """engine_setup: (tokenizer, window, device, dtype) for the engine's rows; None where it does not import."""
        self.rec, self.model, self.w, self.batch, self.k, self.steps = rec, model, w, batch, k, steps
        self.refresh_every, self.reps, self.warmup, self.sync = refresh_every, reps, warmup, sync
        self.deadline, self.backend = deadline, backend
        t_window = int(w.lay.ids.shape[1])
        params = model.cfg.num_parameters()
        self.bound_ms = 2.0 * params * t_window * batch / (peak_tflops * 1e12) * 1e3
        self.base = {"model": name, "batch": batch, "k": k, "steps": steps, "window_tokens": t_window,
                     "bound_step_ms": self.bound_ms}
        self.max_len = int(w.prompt.shape[1]) + k
        self.ar_base = {"prompt_tokens": int(w.prompt.shape[1])}
        self.engine_setup = engine_setup

    def measure(self, method: str, variant: str, fn: Callable[[], Any], per_step: int = 0,
                prepare: Callable[[], Any] | None = None, **extra: Any) -> None:
        """Prepare (compile, capture), time fn, and record a row; an error is recorded, not raised."""
        row = {**self.base, "method": method, "variant": variant, **extra}
        if time.perf_counter() > self.deadline:
            self.rec.add({**row, "skipped": "time budget spent"})
            return
        try:
            t0 = time.perf_counter()
            if prepare is not None:
                prepare()
            self.sync()
            row["prepare_s"] = time.perf_counter() - t0
            seconds = time_runs(fn, self.reps, self.warmup, self.sync, deadline=self.deadline + 60)
        except Exception as exc:  # one broken variant must not cost the rest
            self.rec.add({**row, "error": f"{type(exc).__name__}: {exc}"[:500],
                          "trace": traceback.format_exc()[-1500:]})
            return
        stats = summarize(seconds)
        row.update(stats.to_dict())
        row["tokens_per_s"] = self.batch * self.k / (stats.median_ms / 1000)
        if per_step:
            row["step_ms"] = stats.median_ms / per_step
            row["peak_fraction"] = self.bound_ms / row["step_ms"]
        self.rec.add(row)

    def static(self, cache: bool, mode: str) -> None:
        """The fixed-shape loop; with the cache off every step is a whole-window pass, so step time is reported."""
        w = self.w
        den = StaticDenoiser(self.model, w.lay, self.steps, w.mask_id, w.end_ids, END_PENALTY, cache=cache,
                             refresh_every=self.refresh_every, mode=mode, backend=self.backend)
        self.measure("static-step", f"{mode} cache={'on' if cache else 'off'}", den.fill,
                     per_step=0 if cache else self.steps, prepare=den.prepare)

    def _engine(self, mode: str, cache: bool) -> tuple[Any, Any, list[Any]]:
        """The runner, engine and requests of one engine variant ("eager", "graph", "compile+graph")."""
        import dataclasses

        from engine.api import Engine, FillRequest
        from engine.config import EngineConfig
        from engine.runner import Runner

        assert self.engine_setup is not None
        tok, window, device, dtype = self.engine_setup
        graphed, compiled = "graph" in mode, "compile" in mode
        cfg = EngineConfig(device=str(device), dtype=str(dtype).removeprefix("torch."), window=window,
                           end_penalty=END_PENALTY, refresh_every=self.refresh_every)
        runner = Runner(self.model, tok, device, dtype, cuda_graphs=graphed, compile_steps=compiled)
        engine = Engine(runner, dataclasses.replace(cfg, cache=cache, cuda_graphs=graphed, compile=compiled))
        reqs = [FillRequest(h.prefix, h.suffix, max_tokens=self.k, steps=self.steps) for h in self.w.texts]
        return runner, engine, reqs

    def engine(self, eager: bool = True, modes: tuple[str, ...] | None = None) -> None:
        """engine.api.Engine.fill_batch as it is: with its CUDA graphs (on CUDA), then (unless eager is False) eager
        with the cache on and off; each checks that the static loop makes the same tokens. modes replaces the list
        (e.g. ("compile+graph",): EngineConfig.compile, steps compiled before they are captured)."""
        w = self.w
        variants = [("graph", True)] if self.engine_setup[2].type == "cuda" else []
        variants += [("eager", True), ("eager", False)] if eager else []
        if modes is not None:
            variants = [(m, True) for m in modes]
        for mode, cache in variants:
            runner, engine, reqs = self._engine(mode, cache)
            try:
                fills = engine.fill_batch(reqs)
                den = StaticDenoiser(self.model, w.lay, self.steps, w.mask_id, w.end_ids, END_PENALTY, cache=cache,
                                     refresh_every=self.refresh_every)
                same: Any = den.fill().tolist() == [f.tokens for f in fills]
            except Exception as exc:
                same = f"check failed: {exc}"
            extra = {"graphs_in_use": runner.graphs is not None} if "graph" in mode else {}
            self.measure("engine", f"{mode} cache={'on' if cache else 'off'}", lambda: engine.fill_batch(reqs),
                         static_loop_same_tokens=same, **extra)

    def profile(self) -> None:
        """Print the operators that take the time of one eager fill (static loop, cache off), and of one engine
        fill when the engine imports: device time where there is a GPU, else CPU time."""
        from torch.profiler import ProfilerActivity, profile

        w = self.w
        den = StaticDenoiser(self.model, w.lay, self.steps, w.mask_id, w.end_ids, END_PENALTY, cache=False,
                             refresh_every=self.refresh_every, mode="eager", backend=self.backend)
        jobs: list[tuple[str, Callable[[], Any]]] = [("static loop, eager, cache off", den.fill)]
        if self.engine_setup is not None:
            _, engine, reqs = self._engine("eager", cache=True)
            jobs.append(("engine, eager, cache on", lambda: engine.fill_batch(reqs)))
        gpu = w.lay.ids.device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        for label, fn in jobs:
            try:
                fn()  # warm
                self.sync()
                with profile(activities=activities) as prof:
                    fn()
                    self.sync()
                key = "self_cuda_time_total" if gpu else "self_cpu_time_total"
                table = prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60)
                print(f"== profile: {self.base['model']} batch {self.batch}, {label}, {self.steps} steps\n{table}",
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - a profile is a bonus, never a reason to stop
                print(f"== profile: {label} failed: {type(exc).__name__}: {exc}", flush=True)

    def ar_ours(self, mode: str, backend: str | None = None) -> None:
        """Our causal KV-cache decoder: eager, or its decode step as a CUDA graph and/or compiled."""
        w, k = self.w, self.k
        if mode == "eager":
            plain = CausalDecoder(self.model, self.batch, self.max_len, suppress=w.end_ids)
            self.measure("ar-ours", mode, lambda: plain.generate(w.prompt, k), **self.ar_base)
            return
        dec = GraphedDecoder(CausalDecoder(self.model, self.batch, self.max_len, suppress=w.end_ids), mode,
                             backend or self.backend)
        self.measure("ar-ours", mode, lambda: dec.generate(w.prompt, k), prepare=lambda: dec.prepare(w.prompt),
                     **self.ar_base)

    def ar_hf(self, tok: Any) -> None:
        """transformers generate (LLaMA/Qwen2 of the same shape and weights), eager, default dynamic cache."""
        from benchmarks import hf as hf_baseline

        try:
            hf = hf_baseline.hf_model(self.model)
        except Exception as exc:
            self.rec.note(f"transformers model could not be built: {exc}")
            return
        end_id = tok.end_id if tok is not None else 1
        w, k = self.w, self.k
        self.measure("ar-hf", "generate", lambda: hf_baseline.generate(hf, w.prompt, k, end_id), **self.ar_base)


    def compiled(self) -> None:
        """torch.compile (inductor), captured as CUDA graphs and alone, for the loop and the decoder; and the
        engine with its steps compiled (EngineConfig.compile), when it was measured before."""
        self.static(False, "compile+graph")
        if self.engine_setup is not None:
            self.engine(modes=("compile+graph",))
        self.ar_ours("compile+graph")
        self.static(False, "compile")

    def compiled_smoke(self) -> None:
        """On the CPU: check that the steps trace as whole graphs (eager backend)."""
        self.static(False, "compile")
        self.ar_ours("compile")


def summary(data: dict[str, Any]) -> str:
    """The results as a table, with the speed-up of the best diffusion loop over the best autoregressive one."""
    lines = ["", f"{'model':17}{'batch':>5}  {'method':12}{'variant':22}{'median ms':>10}{'p95 ms':>9}"
                 f"{'tok/s':>9}{'step ms':>9}{'bound ms':>9}{'%peak':>7}"]
    for r in data["rows"]:
        if "median_ms" not in r:
            lines.append(f"{r['model']:17}{r['batch']:>5}  {r['method']:12}{r.get('variant', ''):22}  "
                         f"{'ERROR ' + r['error'][:60] if 'error' in r else 'skipped'}")
            continue
        step = f"{r['step_ms']:>9.3f}{r['bound_step_ms']:>9.3f}{100 * r['peak_fraction']:>6.1f}%" \
            if r.get("step_ms") else ""
        lines.append(f"{r['model']:17}{r['batch']:>5}  {r['method']:12}{r.get('variant', ''):22}"
                     f"{r['median_ms']:>10.2f}{r['p95_ms']:>9.2f}{r['tokens_per_s']:>9.0f}{step}")
    best: dict[tuple[str, int], dict[str, float]] = {}
    for r in data["rows"]:
        if "median_ms" not in r:
            continue
        side = "ar" if r["method"].startswith("ar-") else "diffusion"
        slot = best.setdefault((r["model"], r["batch"]), {})
        slot[side] = min(slot.get(side, math.inf), r["median_ms"])
    lines.append("")
    for (model, batch), v in best.items():
        if "ar" in v and "diffusion" in v:
            lines.append(f"{model} batch {batch}: fastest diffusion fill {v['diffusion']:.2f} ms vs fastest "
                         f"autoregressive {v['ar']:.2f} ms: {v['ar'] / v['diffusion']:.2f}x")
    for n in data.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
