"""`codefill bench engine`: fill latency and generated tokens/s of the diffusion engine against autoregressive
baselines of the same size, over span lengths, batch sizes, the context cache and the dtype.

Every fill makes exactly k tokens: the end token is penalised (EngineConfig.end_penalty) so no fill stops early,
and every run takes the same fixed number of steps; only the k generated tokens per fill count in tokens/s. The
autoregressive baselines generate the same k tokens after a prompt of the same context tokens with a KV cache:
our causal decoder over the same weights, and transformers' generate over a LLaMA/Qwen2 model holding them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from benchmarks import hf as hf_baseline
from benchmarks.causal import CausalDecoder
from benchmarks.proto import StaticDenoiser
from benchmarks.timing import make_sync, summarize, time_interleaved, time_runs
from benchmarks.workload import HoleText, ModelSource, code_text, holes

END_PENALTY = 1e4  # subtracted from the end tokens' logits: no fill ends early, every fill makes k tokens


@dataclass
class EngineBenchConfig:
    """What `codefill bench engine` runs."""

    ks: list[int] = field(default_factory=lambda: [8, 32, 128])
    batches: list[int] = field(default_factory=lambda: [1, 8])
    caches: list[bool] = field(default_factory=lambda: [True, False])
    dtypes: list[str] = field(default_factory=lambda: default_dtypes("cpu"))
    reps: int = 5
    warmup: int = 1
    steps: int = 0  # 0: engine.sampler.default_steps(k): ceil(k/4) between 4 and 32
    refresh_every: int = 4
    device: str = "cpu"
    window: int = 256
    baselines: list[str] = field(default_factory=lambda: ["ours", "hf"])
    ar_prompt: str = "context"  # "context": the window's prefix and suffix tokens; "prefix": the prefix only
    proto: bool = False  # also time the prototypes of engine changes (benchmarks/proto.py)
    proto_compile: bool = False  # and the fixed-shape step under torch.compile (inductor; compiles take minutes)
    max_minutes: float = 0.0  # > 0: skip what is left once this much time has passed
    threads: int = 0  # CPU threads (EngineConfig.threads); 0: the engine's choice (one for small models)


def default_dtypes(device: str) -> list[str]:
    """float32 against int8 weights on the CPU (bf16 measured slower there, README); float32 against bf16 on a GPU."""
    return ["float32", "int8"] if device == "cpu" else ["float32", "bfloat16"]


def steps_for(k: int, steps: int) -> int:
    """The fixed step count for a span of k tokens."""
    from engine.sampler import default_steps

    return steps or default_steps(k)


def _row(method: str, dtype: str, batch: int, k: int, seconds: list[float], **extra: Any) -> dict[str, Any]:
    stats = summarize(seconds)
    return {"method": method, "dtype": dtype, "batch": batch, "k": k, **extra, **stats.to_dict(),
            "tokens_per_s": batch * k / (stats.median_ms / 1000.0)}


def _ar_prompts(engine: Any, texts: list[HoleText], k: int, how: str) -> torch.Tensor:
    """Prompts [B, L] of the same context tokens as the diffusion windows, cut to a common length L."""
    from engine.window import build_window

    c = engine.config
    rows = []
    for h in texts:
        w = build_window(engine.tokenizer, h.prefix, h.suffix, k, c.window, c.max_span)
        # suffix first, then prefix, so the k new tokens continue the prefix (a suffix-prefix-middle layout)
        rows.append(w.suffix_ids + w.prefix_ids if how == "context" else w.prefix_ids)
    length = min(len(r) for r in rows)
    return torch.tensor([r[-length:] for r in rows], dtype=torch.long, device=engine.runner.device)


def _window_tokens(engine: Any, texts: list[HoleText], k: int) -> int:
    """Length of the laid-out batch window (the shape every whole-window step runs on)."""
    from engine.runner import lay_out
    from engine.window import build_window

    c, tok = engine.config, engine.tokenizer
    windows = [build_window(tok, h.prefix, h.suffix, k, c.window, c.max_span) for h in texts]
    return int(lay_out(windows, tok.mask_id, tok.pad_id, torch.device("cpu")).ids.shape[1])


def run(cfg: EngineBenchConfig, source: ModelSource, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)
        ) -> dict[str, Any]:
    """Run the whole matrix; returns rows, speed-ups and problems (JSON-ready)."""
    from engine.api import Engine, FillRequest

    started = time.perf_counter()
    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes > 0 else None
    all_texts = holes(code_text(), max(cfg.batches))
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    skipped: list[str] = []
    hf_reason = hf_baseline.available() if "hf" in cfg.baselines else "not asked for"
    if hf_reason and "hf" in cfg.baselines:
        problems.append(f"transformers baseline skipped: {hf_reason}")
    sync = make_sync(cfg.device)

    def out_of_time(what: str) -> bool:
        if deadline is not None and time.perf_counter() > deadline:
            skipped.append(what)
            return True
        return False

    for dtype in cfg.dtypes:
        engine = Engine.from_pretrained(source.path, device=cfg.device, dtype=dtype, end_penalty=END_PENALTY,
                                        window=cfg.window, refresh_every=cfg.refresh_every, threads=cfg.threads)
        # The engine sets torch's (process-wide) thread count; the baselines below run with the same.
        common_threads = torch.get_num_threads()
        tok = engine.tokenizer
        model = engine.runner.model
        hf_model = None
        if "hf" in cfg.baselines and not hf_reason:
            hf_model = hf_baseline.hf_model(model, int8_from=source.path if engine.runner.int8 else None)
        for k in cfg.ks:
            steps = steps_for(k, cfg.steps)
            for batch in cfg.batches:
                tag = f"{dtype} b{batch} k{k}"
                if out_of_time(tag):
                    continue
                texts = all_texts[:batch]
                reqs = [FillRequest(h.prefix, h.suffix, max_tokens=k, steps=steps) for h in texts]
                window_tokens = _window_tokens(engine, texts, k)
                common = dict(steps=steps, window_tokens=window_tokens, threads=common_threads)

                variants = _diffusion_variants(engine, reqs, texts, k, steps, cfg)
                for name, (method, cache, fn, check) in variants.items():
                    if check:
                        fills = fn()
                        short = [len(f.tokens) for f in fills if len(f.tokens) != k]
                        if short or fills[0].forward_passes != steps:
                            problems.append(f"{tag} {name}: fills of {short or k} tokens in "
                                            f"{fills[0].forward_passes} passes (wanted {k} tokens, {steps} passes)")
                timed = time_interleaved({n: v[2] for n, v in variants.items()}, cfg.reps, cfg.warmup, sync)
                for name, (method, cache, _, _) in variants.items():
                    rows.append(_row(method, dtype, batch, k, timed[name], cache=cache, **common,
                                     forward_passes=steps))
                    log(_progress(rows[-1]))

                prompt = _ar_prompts(engine, texts, k, cfg.ar_prompt)
                ar_common = dict(steps=k, prompt_tokens=int(prompt.shape[1]), window_tokens=int(prompt.shape[1]) + k,
                                 threads=torch.get_num_threads())
                ours_tokens = None
                if "ours" in cfg.baselines:
                    decoder = CausalDecoder(model, batch, prompt.shape[1] + k, suppress=sorted(tok.end_ids))
                    ours_tokens = decoder.generate(prompt, k)
                    seconds = time_runs(lambda: decoder.generate(prompt, k), cfg.reps, cfg.warmup, sync)
                    rows.append(_row("ar-ours", dtype, batch, k, seconds, cache=None, **ar_common))
                    log(_progress(rows[-1]))
                if hf_model is not None:
                    hf_tokens = hf_baseline.generate(hf_model, prompt, k, tok.end_id)
                    seconds = time_runs(lambda: hf_baseline.generate(hf_model, prompt, k, tok.end_id), cfg.reps,
                                        cfg.warmup, sync)
                    same = None if ours_tokens is None else float((hf_tokens == ours_tokens).float().mean())
                    rows.append(_row("ar-hf", dtype, batch, k, seconds, cache=None, **ar_common,
                                     same_tokens_as_ours=same))
                    log(_progress(rows[-1]))
        engine = model = hf_model = None  # free this dtype's copies before the next
    return {"rows": rows, "speedups": speedups(rows), "problems": problems, "skipped": skipped,
            "wall_s": time.perf_counter() - started}


def _diffusion_variants(engine: Any, reqs: list[Any], texts: list[HoleText], k: int, steps: int,
                        cfg: EngineBenchConfig) -> dict[str, tuple[str, bool, Callable[[], Any], bool]]:
    """name -> (method, cache, run one batch, whether its fills can be checked): the engine as it is, cache on
    and off, and with --proto the prototypes of engine changes (benchmarks/proto.py)."""
    from engine.runner import lay_out
    from engine.window import build_window

    def fill(cache: bool, refresh_every: int | None = None) -> Callable[[], Any]:
        def run() -> Any:
            engine.config.cache = cache
            engine.config.refresh_every = refresh_every or cfg.refresh_every
            try:
                return engine.fill_batch(reqs)
            finally:
                engine.config.refresh_every = cfg.refresh_every

        return run

    out: dict[str, tuple[str, bool, Callable[[], Any], bool]] = {}
    for cache in cfg.caches:
        out[f"diffusion cache={cache}"] = ("diffusion", cache, fill(cache), True)
    if not cfg.proto:
        return out
    c, tok = engine.config, engine.tokenizer
    windows = [build_window(tok, h.prefix, h.suffix, k, c.window, c.max_span) for h in texts]
    lay = lay_out(windows, tok.mask_id, tok.pad_id, engine.runner.device)
    for cache in cfg.caches:
        den = StaticDenoiser(engine.runner.model, lay, steps, tok.mask_id, sorted(tok.end_ids), END_PENALTY,
                             cache=cache, refresh_every=cfg.refresh_every)
        den.prepare()
        out[f"static cache={cache}"] = ("diffusion static-step", cache, den.fill, False)
        if cfg.proto_compile:
            den = StaticDenoiser(engine.runner.model, lay, steps, tok.mask_id, sorted(tok.end_ids), END_PENALTY,
                                 cache=cache, refresh_every=cfg.refresh_every, mode="compile")
            den.prepare()
            out[f"static compiled cache={cache}"] = ("diffusion static-step compiled", cache, den.fill, False)
    if True in cfg.caches:
        out["refresh-once"] = ("diffusion refresh-once", True, fill(True, refresh_every=10**6), True)
    return out


def _progress(row: dict[str, Any]) -> str:
    cache = "" if row.get("cache") is None else f" cache={'on' if row['cache'] else 'off'}"
    return (f"  {row['dtype']:8} b{row['batch']} k{row['k']:<3} {row['method']}{cache}: "
            f"median {row['median_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, {row['tokens_per_s']:.0f} tok/s")


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Diffusion against each autoregressive baseline per dtype, batch, k and cache: ratio of median latencies
    for the same generated tokens (> 1: diffusion is faster)."""
    out = []
    ar = {(r["method"], r["dtype"], r["batch"], r["k"]): r for r in rows if r["method"].startswith("ar-")}
    for r in rows:
        if r["method"] != "diffusion":
            continue
        for base in ("ar-ours", "ar-hf"):
            b = ar.get((base, r["dtype"], r["batch"], r["k"]))
            if b is None:
                continue
            out.append({"dtype": r["dtype"], "batch": r["batch"], "k": r["k"], "cache": r["cache"],
                        "baseline": base, "speedup": b["median_ms"] / r["median_ms"],
                        "diffusion_tokens_per_s": r["tokens_per_s"], "baseline_tokens_per_s": b["tokens_per_s"]})
    return out


def table(rows: list[dict[str, Any]], speed: list[dict[str, Any]]) -> str:
    """The rows and the speed-ups as fixed-width text."""
    head = f"{'dtype':9}{'batch':>5}{'k':>5}{'steps':>6}  {'method':36}{'cache':>6}{'tokens':>7}" \
           f"{'median ms':>11}{'p95 ms':>10}{'tok/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cache = "-" if r.get("cache") is None else ("on" if r["cache"] else "off")
        lines.append(f"{r['dtype']:9}{r['batch']:>5}{r['k']:>5}{r['steps']:>6}  {r['method']:36}{cache:>6}"
                     f"{r['window_tokens']:>7}{r['median_ms']:>11.1f}{r['p95_ms']:>10.1f}{r['tokens_per_s']:>9.0f}")
    if speed:
        lines += ["", "diffusion speed-up over autoregressive decoding (ratio of median latencies, same k tokens)",
                  f"{'dtype':9}{'batch':>5}{'k':>5}{'cache':>6}  {'vs ar-ours':>10}{'vs ar-hf':>10}"]
        keyed: dict[tuple, dict[str, float]] = {}
        for s in speed:
            keyed.setdefault((s["dtype"], s["batch"], s["k"], s["cache"]), {})[s["baseline"]] = s["speedup"]
        for (dtype, batch, k, cache), v in keyed.items():
            fmt = lambda x: f"{x:>9.2f}x" if x is not None else f"{'-':>10}"  # noqa: E731
            lines.append(f"{dtype:9}{batch:>5}{k:>5}{'on' if cache else 'off':>6}  "
                         f"{fmt(v.get('ar-ours'))}{fmt(v.get('ar-hf'))}")
    return "\n".join(lines)


def config_dict(cfg: EngineBenchConfig) -> dict[str, Any]:
    """The settings, for the results."""
    return {**asdict(cfg), "end_penalty": END_PENALTY}
