"""`codefill bench`: engine latency and tokens/s against autoregressive baselines, end-to-end LSP latency, and the
GPU device benchmark. Benchmarks print figures with the hardware named; they are not tests.

    codefill bench engine [--model PATH] [--out results.json] [--plot bench.png] [--smoke]
    codefill bench lsp    [--model PATH] [--out lsp.json] [--plot lsp.png] [--smoke]
    codefill bench device [--out DIR] [--smoke]      (what benchmarks/device.sh runs on a GPU machine)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from engine.cli import non_negative_int, output_file, positive_int


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _words(allowed: set[str]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> list[str]:
        values = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(bad)}: expected some of {', '.join(sorted(allowed))}")
        return values

    return parse


DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "int8": "int8"}


def build_parser() -> argparse.ArgumentParser:
    """The parser of `codefill bench`."""
    p = argparse.ArgumentParser(prog="codefill bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)

    e = sub.add_parser("engine", help="fill latency and tokens/s against autoregressive baselines")
    e.add_argument("--model", default=None,
                   help="model directory, or random[:SHAPE] for random weights (default: the built-in model; "
                        "until it exists, the training run's checkpoint, else random weights of its shape)")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    e.add_argument("--ks", type=_ints, default=[8, 32, 128], help="tokens per fill (default 8,32,128)")
    e.add_argument("--batches", type=_ints, default=[1, 8], help="batch sizes (default 1,8)")
    e.add_argument("--cache", type=_words({"on", "off"}), default=["on", "off"], help="context cache: on,off")
    e.add_argument("--dtypes", type=_words(set(DTYPE_NAMES)), default=None,
                   help="float32, bfloat16, int8 (int8 weights, CPU only); default float32,int8 on the CPU and "
                        "float32,bfloat16 elsewhere")
    e.add_argument("--steps", type=non_negative_int, default=0,
                   help="denoising steps, the same for every fill of k tokens (default 0: ceil(k/4) between 4 and "
                        "32 on every device, not the engine's own default, which aims at 3 tokens a step on the CPU "
                        "and 2 on a GPU)")
    e.add_argument("--window", type=positive_int, default=256,
                   help="window tokens: prefix + span + suffix (default 256)")
    e.add_argument("--refresh-every", type=positive_int, default=4,
                   help="full-window pass every N steps with the cache")
    e.add_argument("--reps", type=positive_int, default=5, help="timed runs per setting (default 5)")
    e.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first (default 1)")
    e.add_argument("--baselines", type=_words({"ours", "hf", "none"}), default=["ours", "hf"],
                   help="autoregressive baselines: ours (causal decoder, same weights), hf (transformers)")
    e.add_argument("--ar-prompt", choices=["context", "prefix"], default="context",
                   help="autoregressive prompt: the window's context (suffix then prefix; default) or the prefix")
    e.add_argument("--proto", action="store_true", help="also time prototypes of engine changes")
    e.add_argument("--proto-compile", action="store_true",
                   help="with --proto, also the fixed-shape step under torch.compile (compiling takes minutes)")
    e.add_argument("--threads", type=non_negative_int, default=0,
                   help="CPU threads (EngineConfig.threads; default: the engine's choice, one for small models)")
    e.add_argument("--omp-passive", action="store_true",
                   help="set OMP_WAIT_POLICY=PASSIVE before torch loads (on a busy CPU, spinning OpenMP threads "
                        "make every op wait for a descheduled thread)")
    e.add_argument("--max-minutes", type=float, default=0.0, help="skip what is left after this long")
    e.add_argument("--out", type=output_file, default=None, help="write results as JSON here")
    e.add_argument("--plot", type=output_file, default=None, help="write a PNG plot here")
    e.add_argument("--smoke", action="store_true", help="a tiny random model and a few short runs")

    s = sub.add_parser("lsp", help="request-to-answer latency through the language server over stdio")
    s.add_argument("--model", default=None, help="as for engine")
    s.add_argument("--device", default="cpu")
    s.add_argument("--steps", type=non_negative_int, default=0,
                   help="server's steps setting (0: the engine's default)")
    s.add_argument("--reps", type=positive_int, default=10)
    s.add_argument("--warmup", type=non_negative_int, default=2)
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server to load")
    s.add_argument("--pause-ms", type=non_negative_int, default=400,
                   help="next line: how long the user reads a suggestion before accepting it and pressing Enter")
    s.add_argument("--debounce-ms", type=non_negative_int, default=0,
                   help="the server's debounceMs (0: the fill alone; the server's default is 75), counted in the "
                   "latency")
    s.add_argument("--out", type=output_file, default=None, help="write results as JSON here")
    s.add_argument("--plot", type=output_file, default=None, help="write a PNG plot here")
    s.add_argument("--omp-passive", action="store_true", help="start the server with OMP_WAIT_POLICY=PASSIVE")
    s.add_argument("--smoke", action="store_true")

    d = sub.add_parser("device", help="the GPU benchmark that benchmarks/device.sh runs", add_help=False)
    d.set_defaults(rest=True)
    return p


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """Write results (creating the folder)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def set_omp_passive(on: bool) -> None:
    """OMP_WAIT_POLICY=PASSIVE for this process (effective only if torch has not loaded yet) and its children."""
    if not on:
        return
    if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: torch was already loaded; --omp-passive reaches only child processes", file=sys.stderr)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def cmd_engine(args: argparse.Namespace) -> int:
    """`codefill bench engine`."""
    set_omp_passive(args.omp_passive)
    from benchmarks import engine_bench
    from benchmarks.timing import describe_hardware, hardware
    from benchmarks.workload import prepare_model

    cfg = engine_bench.EngineBenchConfig(
        ks=args.ks, batches=args.batches, caches=[c == "on" for c in args.cache],
        dtypes=[DTYPE_NAMES[d] for d in dict.fromkeys(args.dtypes or engine_bench.default_dtypes(args.device))],
        reps=args.reps, warmup=args.warmup,
        steps=args.steps, refresh_every=args.refresh_every, device=args.device, window=args.window,
        baselines=[b for b in args.baselines if b != "none"], ar_prompt=args.ar_prompt,
        proto=args.proto or args.proto_compile, proto_compile=args.proto_compile, threads=args.threads,
        max_minutes=args.max_minutes,
    )
    if args.smoke:
        cfg.ks = [k for k in cfg.ks if k <= 8] or [8]
        cfg.batches = [min(b, 2) for b in dict.fromkeys(cfg.batches)]  # batch 8 becomes 2: batching, kept cheap
        cfg.batches = list(dict.fromkeys(cfg.batches))
        cfg.reps, cfg.warmup = 1, 0
        cfg.window = min(cfg.window, 64)
        if "hf" in cfg.baselines and args.baselines == ["ours", "hf"]:
            cfg.baselines = ["ours"]  # importing transformers costs seconds; ask with --baselines to include it
    source = prepare_model(args.model, smoke=args.smoke)
    hw = hardware()
    model = source.describe()
    print(f"hardware: {describe_hardware(hw)}")
    c = model["config"]
    print(f"model: {model['weights']}: {c['num_layers']} layers, hidden {c['hidden_size']}, heads "
          f"{c['num_heads']}/{c['num_kv_heads']}, vocab {c['vocab_size']} ({_params(c) / 1e6:.2f}M parameters)")
    print(f"settings: device {cfg.device}, dtypes {','.join(cfg.dtypes)}, window {cfg.window}, k {cfg.ks}, "
          f"batch {cfg.batches}, steps {cfg.steps or 'ceil(k/4) in [4, 32]'}, cache refresh every "
          f"{cfg.refresh_every}, {cfg.reps} timed runs after {cfg.warmup} warm-up, end token penalised so every "
          f"fill makes k tokens; tokens/s counts generated tokens only (batch x k)")
    print(f"baselines: {', '.join(cfg.baselines) or 'none'}; autoregressive prompt: {cfg.ar_prompt}", flush=True)
    result = engine_bench.run(cfg, source)
    data = {"benchmark": "engine", "created": _now(), "hardware": hw, "model": model,
            "settings": engine_bench.config_dict(cfg), **result}
    used = sorted({r["threads"] for r in result["rows"]})
    hw["torch_threads"] = used[0] if len(used) == 1 else used  # what the runs used, not torch's start-up default
    print(f"threads used: {', '.join(map(str, used))} ({'as asked' if cfg.threads else 'the engine chose'})")
    print(engine_bench.table(result["rows"], result["speedups"]))
    for line in result["problems"]:
        print(f"note: {line}")
    if result["skipped"]:
        print(f"skipped (out of time): {', '.join(result['skipped'])}")
    write_json(args.out, data)
    if args.plot:
        from benchmarks.plot import plot_engine

        plot_engine(data, args.plot)
    return 0


def cmd_lsp(args: argparse.Namespace) -> int:
    """`codefill bench lsp`."""
    set_omp_passive(args.omp_passive)
    from benchmarks import lsp_bench
    from benchmarks.timing import describe_hardware, hardware
    from benchmarks.workload import prepare_model

    source = prepare_model(args.model, smoke=args.smoke)
    if args.smoke:
        args.reps, args.warmup = min(args.reps, 2), min(args.warmup, 1)
    hw = hardware()
    print(f"hardware: {describe_hardware(hw)}")
    print(f"model: {source.weights}; device {args.device}; server debounce {args.debounce_ms} ms; steps "
          f"{args.steps or 'engine default'}; {args.reps} timed requests per hole kind after {args.warmup} warm-up",
          flush=True)
    result = lsp_bench.run(source.path, device=args.device, steps=args.steps, reps=args.reps, warmup=args.warmup,
                           load_timeout=args.timeout, pause_s=args.pause_ms / 1000, debounce_ms=args.debounce_ms)
    data = {"benchmark": "lsp", "created": _now(), "hardware": hw, "model": source.describe(),
            "settings": {"device": args.device, "steps": args.steps, "reps": args.reps, "warmup": args.warmup,
                         "debounce_ms": args.debounce_ms, "pause_ms": args.pause_ms}, **result}
    print(lsp_bench.table(result))
    write_json(args.out, data)
    if args.plot:
        from benchmarks.plot import plot_lsp

        plot_lsp(data, args.plot)
    return 0


def _params(c: dict[str, Any]) -> int:
    from engine.config import ModelConfig

    return ModelConfig.from_dict(c).num_parameters()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `codefill bench`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "device":
        from benchmarks import gpu

        return gpu.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # found before the run, not after it
        parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib "
                     "(or the project's bench extra: pip install -e '.[bench]')")
    if args.what == "engine":
        return cmd_engine(args)
    return cmd_lsp(args)


if __name__ == "__main__":
    sys.exit(main())
