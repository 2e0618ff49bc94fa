"""`codefill`: fill, eval, bench, train, serve."""

from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from lsp_server.options import is_device
from lsp_server.positions import line_starts

EXTENSION_LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascriptreact", ".ts": "typescript", ".tsx": "typescriptreact", ".go": "go", ".rs": "rust",
    ".java": "java", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp",
}


DTYPE_HELP = "auto (int8 weights on the CPU, bfloat16 on a GPU), float32, bfloat16, float16 or int8"
DEVICE_HELP = "auto (default: CUDA when present, else the CPU), cpu, cuda, cuda:N or mps"
DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "int8")  # engine.runner.pick_dtype's


def device_name(value: str) -> str:
    """An argparse type: a device codefill can run on, checked before anything loads."""
    if is_device(value):
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {value!r}")


def dtype_name(value: str) -> str:
    """An argparse type: a dtype the engine knows, checked before anything loads."""
    if value in DTYPE_NAMES:
        return value
    raise argparse.ArgumentTypeError(f"expected auto, float32, bfloat16, float16 or int8, got {value!r}")


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (and at most `maximum`; argparse names the option in
    its error)."""

    def parse(text: str) -> int:
        if (not re.fullmatch(r"[+-]?[0-9]+", text.strip()) or int(text) < minimum
                or (maximum is not None and int(text) > maximum)):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {text!r}")
        return int(text)

    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def output_file(text: str) -> Path:
    """An argparse type: a file that results will be written to, checked before any work (a long run must not end
    in "No such file or directory"). Missing folders above it are fine: they are made when it is written."""
    path = Path(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    above = next((p for p in path.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {above} is not a directory")
    writable = os.access(path, os.W_OK) if path.exists() else above is not None and os.access(above, os.W_OK | os.X_OK)
    if not writable:
        raise argparse.ArgumentTypeError(f"{text}: no permission to write " + ("it" if path.exists() else f"in {above}"))
    return path


def open_output(path: Path) -> IO[str]:
    """Open an output_file for writing, making the folders above it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8")


def package_version() -> str:
    """The installed codefill's version, from the package metadata ("unknown (not installed)" without it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codefill")
    except PackageNotFoundError:
        return "unknown (not installed)"


class VersionAction(argparse.Action):
    """`--version`: prints "PROG VERSION" and exits; the package metadata is read only then (reading it costs ~30 ms,
    which every start of codefill and codefill-lsp paid when the version was formatted into the parser)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        sys.stdout.write(f"{parser.prog} {package_version()}\n")
        parser.exit()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _is_number(text: str) -> bool:
    return re.fullmatch(r"[0-9]+", text) is not None  # str.isdigit() also takes "²", which int() refuses


def parse_location(spec: str) -> tuple[Path, int, int]:
    """FILE:LINE:COL (1-based) -> (path, line, col)."""
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not _is_number(parts[1]) or not _is_number(parts[2]):
        raise UsageError(f"{spec}: expected FILE:LINE:COL with 1-based line and column")
    if not parts[0]:
        raise UsageError(f"{spec}: no file name")
    line, col = int(parts[1]), int(parts[2])
    if line < 1 or col < 1:
        raise UsageError(f"{spec}: line and column start at 1")
    return Path(parts[0]), line, col


def parse_line_col(spec: str) -> tuple[int, int]:
    """LINE:COL (1-based)."""
    parts = spec.split(":")
    if len(parts) != 2 or not all(_is_number(p) for p in parts) or min(int(p) for p in parts) < 1:
        raise UsageError(f"--to {spec}: expected LINE:COL, 1-based")
    return int(parts[0]), int(parts[1])


def offset_of(text: str, line: int, col: int, what: str) -> int:
    """Character offset of a 1-based line and column (column counted in characters).

    Lines end at \\n, \\r\\n or \\r (as in LSP, lsp_server.positions); a line break is not a column. A file of N
    lines that ends with a line break also has position N+1:1, its end.
    """
    starts = line_starts(text)
    if line > len(starts):
        ended = not text or text.endswith(("\n", "\r"))  # the last start is the end of the file, not a line
        lines = len(starts) - 1 if ended else len(starts)
        raise UsageError(f"{what}: line {line} is past the end of the file ({_plural(lines, 'line')})")
    start = starts[line - 1]
    end = starts[line] if line < len(starts) else len(text)
    width = len(text[start:end].rstrip("\r\n"))
    if col > width + 1:
        raise UsageError(f"{what}: column {col} is past the end of line {line} ({_plural(width, 'character')})")
    return start + col - 1


STDIN = "-"  # FILE in FILE:LINE:COL: read the code from standard input


@dataclass
class Source:
    """The code a fill is asked for, as read."""

    text: str  # after a UTF-8 byte-order mark, which is not part of the code (nor a column of line 1)
    bom: bool  # the bytes began with that mark (written back by --write and --whole)
    name: str  # for messages: the path, or "standard input"


def read_source(path: Path) -> Source:
    """A source file (or standard input, for "-") as text; UsageError when it is missing or not UTF-8."""
    name = "standard input" if str(path) == STDIN else str(path)
    try:
        data = sys.stdin.buffer.read() if str(path) == STDIN else path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory") from None
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror})") from None
    bom = data.startswith(codecs.BOM_UTF8)
    skip = len(codecs.BOM_UTF8) if bom else 0  # "utf-8-sig", with file byte offsets
    try:
        return Source(data[skip:].decode("utf-8"), bom, name)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}: not UTF-8 text (byte {skip + exc.start})") from None


def write_back(path: Path, source: Source, text: str) -> None:
    """Replace the file with text, whole or not at all (a temporary file beside it, renamed over it; its mode kept,
    and a symbolic link's target rewritten rather than the link). Refused when the file no longer holds what the
    fill was made from (an editor saved it meanwhile): that would lose the newer text."""
    import shutil
    import tempfile

    target = path.resolve()
    bom = codecs.BOM_UTF8 if source.bom else b""
    try:
        if target.read_bytes() != bom + source.text.encode("utf-8"):
            raise UsageError(f"{path}: changed while the fill was made; not written (the fill is printed)")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it back ({exc.strerror or exc}); not written") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".codefill", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(bom + text.encode("utf-8"))
            shutil.copymode(target, tmp)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the fill back ({exc.strerror or exc}); the file is unchanged (the fill is printed)") from None


def engine_mode(text: str) -> str:
    """An argparse type: inprocess, auto, unix:PATH or tcp:HOST:PORT."""
    from lsp_server.engine_client import parse_engine_mode

    try:
        return parse_engine_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fill_engine(args: argparse.Namespace):  # noqa: ANN202 - an engine.api.Engine or a RemoteEngine
    """The engine `codefill fill` asks: loaded here, or a shared one (`codefill serve`) joined or started."""
    if args.engine == "inprocess":
        from engine.api import Engine

        settings = {"steps": args.steps} if args.steps else {}
        return Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype, **settings)
    if args.dtype != "auto":
        raise UsageError("--dtype is the shared engine's own (codefill serve picks it): drop --dtype with --engine")
    from engine import wire
    from engine.errors import EngineError
    from lsp_server.remote_engine import RemoteEngine

    def say(_level: int, message: str) -> None:
        print(f"codefill: {message}", file=sys.stderr)

    engine = RemoteEngine(args.engine, args.model, args.device, args.steps, fill_timeout=60.0, load_timeout=600.0,
                          notify=say)
    try:
        engine.load()
    except EngineError as exc:
        engine.close()
        where = "the shared engine" if args.engine == "auto" else f"the engine at {args.engine}"
        raise EngineError(f"{where}: {exc}") from None
    if engine.process is not None:
        print(f"codefill: note: started a shared engine (pid {engine.process.pid}); it keeps the model loaded for the "
              f"next fill and exits {wire.AUTO_IDLE_EXIT_MINUTES:g} minutes after its last client (now: codefill serve "
              f"--stop --unix {engine.address.path})", file=sys.stderr)
    return engine


def cmd_fill(args: argparse.Namespace) -> int:
    """Print the fill for the hole at FILE:LINE:COL (or the range up to --to); --write applies it to FILE, --whole
    prints the whole text with it."""
    from engine.model_dir import language_note
    from lsp_server.completion import complete_at
    from lsp_server.languages import LANGUAGE_IDS, spec_for

    path, line, col = parse_location(args.location)
    stdin = str(path) == STDIN
    if args.write and stdin:
        raise UsageError("--write rewrites a FILE: with - (standard input), --whole prints the filled text instead")
    if args.whole and (args.write or args.json):
        raise UsageError(f"--whole and --{'write' if args.write else 'json'}: choose one (--whole prints the filled "
                         "text, --write rewrites FILE, --json describes the fill)")
    source = read_source(path)
    text = source.text
    where = args.location.replace(f"{STDIN}:", "<stdin>:", 1) if stdin else args.location
    start = offset_of(text, line, col, where)
    end = None
    if args.to:
        tl, tc = parse_line_col(args.to)
        end = offset_of(text, tl, tc, f"--to {args.to}")
        if end < start:
            raise UsageError(f"--to {args.to} is before {line}:{col}")
    language = args.language or (None if stdin else EXTENSION_LANGUAGES.get(path.suffix.lower()))
    engine = _fill_engine(args) if text.strip() else None  # no code: nothing to fill from, no model to load
    spec = spec_for(language)
    note = language_note(args.model, spec.name, how_to_switch="--model DIR") if spec is not None else None
    unchecked = "the hole is found by indentation and the fill is not syntax-checked"
    if args.language and spec is None:
        note = f"no grammar for --language {args.language!r} (known: {', '.join(sorted(LANGUAGE_IDS))}): {unchecked}"
    elif stdin and not args.language:
        note = ("standard input has no file extension to tell its language: give --language ID for its grammar "
                f"(without one {unchecked})")
    elif spec is None:
        note = (f"no grammar for {path.name!r} (known extensions: {', '.join(sorted(EXTENSION_LANGUAGES))}; or give "
                f"--language ID): {unchecked}")
    if note:
        print(f"codefill: note: {note}", file=sys.stderr)
    try:
        result = complete_at(engine, text, start, language, selection_end=end, max_tokens=args.max_tokens,
                             candidates=args.candidates)
    finally:
        if args.engine != "inprocess" and engine is not None:  # a shared engine: disconnect (it stays up)
            engine.close()
    filled = text[: result.hole.start] + result.insert_text + text[result.hole.end :] if result else text
    if args.json:  # the JSON either way; the exit status says whether there is a fill, as without --json
        print(json.dumps(result.to_json(), indent=1), flush=True)
    elif args.whole:  # a filter (an editor's "replace the buffer with this"): the text, unchanged without a fill
        sys.stdout.flush()
        sys.stdout.buffer.write((codecs.BOM_UTF8 if source.bom else b"") + filled.encode("utf-8"))
        sys.stdout.buffer.flush()
    elif result:
        sys.stdout.write(result.insert_text if result.insert_text.endswith("\n") else result.insert_text + "\n")
        sys.stdout.flush()
    if result and args.write:  # after printing: a fill that cannot be written back is not lost
        write_back(path, source, filled)
    if not result and not args.json:  # nothing survived post-processing: say what the model proposed, on stderr
        raw = ", ".join(repr(r) for r in result.raw) or "nothing"
        why = (f"no fill for this {result.hole.kind} hole (the model proposed {raw}; it repeated the code after the "
               "hole, made the file parse worse or did nothing)") if result.engine_calls else \
            "no fill: there is no code in the file to fill from"
        print(f"codefill: {why}" + ("; the file is unchanged" if args.write else ""), file=sys.stderr)
    return 0 if result else 1


def non_negative_float(text: str) -> float:
    """An argparse type: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def _train_preset(args: argparse.Namespace, run: Path) -> str:
    """The preset the run trains with. A resumed run keeps its own model's shape: --preset may name it, and is
    refused when it names another (it used to be ignored without a word)."""
    from engine.config import ModelConfig
    from training.train import PRESETS, model_shape

    if args.preset is not None and args.preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}")
    state_file = run / "train_state.json"
    if not state_file.is_file():
        return args.preset or "cpu"
    saved = json.loads(state_file.read_text()).get("config", {}).get("preset")
    if args.preset is not None:
        try:
            have = model_shape(ModelConfig.from_dict(json.loads((run / "config.json").read_text())))
        except (OSError, ValueError, TypeError):
            return args.preset  # a broken run directory: resuming it reports what is wrong
        if have != model_shape(PRESETS[args.preset]):
            shape = ", ".join(f"{k} {v}" for k, v in have.items())
            raise UsageError(f"--preset {args.preset}: run {run} holds a model of another shape ({shape}) and a "
                             "resumed run keeps its shape; drop --preset to resume it, or give a new --run to train "
                             f"a {args.preset} model")
        return args.preset
    return saved if saved in PRESETS else "cpu"


def cmd_train(args: argparse.Namespace) -> int:
    """Build the corpus and tokenizer when missing, then train (or resume) a run."""
    from training.train import TrainConfig, data_ready, recover_run, train

    if args.init_from and not Path(args.init_from, "config.json").is_file():
        raise UsageError(f"--init-from {args.init_from}: not a model directory (no config.json)")
    if args.save_dtype and args.save_dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError("--save-dtype must be float32, bfloat16 or float16")
    if args.decay_share is not None and not 0.0 < args.decay_share <= 1.0:
        raise UsageError("--decay-share must be in (0, 1]")
    for option, value in (("--run", args.run), ("--data", args.data), ("--export", args.export)):
        if value and Path(value).exists() and not Path(value).is_dir():
            raise UsageError(f"{option} {value}: not a directory")
    for option, value in [*(("--source", s) for s in args.source), ("--wheels", args.wheels)]:
        if value and not Path(value).is_dir():
            raise UsageError(f"{option} {value}: " + ("not a directory" if Path(value).exists() else
                                                      "no such directory"))
    run = Path(args.run)
    recover_run(run)
    preset = _train_preset(args, run)
    data = Path(args.data)
    if args.source or args.wheels:
        built = [p for p in ("corpus/train.jsonl", "train.npz", "valid.npz", "train.pack.npz", "valid.pack.npz")
                 if (data / p).exists()]
        if built:  # the corpus and token arrays are built once: sources given later would be ignored
            raise UsageError(f"--data {data} is already built ({', '.join(built)}), so --source/--wheels would not "
                             "be read; give a new --data directory to train on other sources")
    if not data_ready(data) or args.source or args.wheels:  # packed data (training/device_data.py) is ready as is
        from training.pipeline import prepare_data

        # Continuing a model: its data must be tokenized with its own tokenizer.
        tokenizer = Path(args.init_from, "tokenizer.json") if args.init_from else None
        prepare_data(data, [Path(p) for p in args.source], Path(args.wheels) if args.wheels else None, args.vocab,
                     tokenizer)
    extra = {"warmup_steps": args.warmup_steps, "decay_share": args.decay_share, "eval_every": args.eval_every,
             "checkpoint_minutes": args.checkpoint_minutes}
    cfg = TrainConfig(preset=preset, batch_size=args.batch_size, lr=args.lr, minutes=args.minutes,
                      max_steps=args.max_steps, seed=args.seed, threads=args.threads, workers=args.workers,
                      compile=args.compile, log_seconds=args.log_seconds,
                      **{k: v for k, v in extra.items() if v is not None})
    state = train(run, data, cfg, args.device, init_from=Path(args.init_from) if args.init_from else None,
                  export_dir=Path(args.export) if args.export else None, shard_mb=args.shard_mb,
                  save_dtype=args.save_dtype)
    return 130 if state.sessions and state.sessions[-1].get("interrupted") else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="codefill", description="Code infill with a masked-diffusion model.")
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fill", help="print the fill for the hole at FILE:LINE:COL (1-based)",
                       description="Print the text that replaces the hole at FILE:LINE:COL (1-based). The hole may "
                                   "take in text after the cursor (the auto-closed `)` of `f(|)`, which the fill "
                                   "writes again): --json gives the range it replaces, --whole the filled text. "
                                   "Exit status: 0 with a fill, 1 without one (or when the model cannot load), 2 "
                                   "for a bad position, file or option.")
    f.add_argument("location", metavar="FILE:LINE:COL", help="FILE - reads the code from standard input")
    f.add_argument("--to", metavar="LINE:COL", help="fill the range from FILE:LINE:COL up to here instead")
    f.add_argument("--max-tokens", type=positive_int, default=None,
                   help="token budget, at most the hole kind's (a line 32, an empty body 96, a block 128; "
                        "the default)")
    f.add_argument("--steps", type=non_negative_int, default=0,
                   help="denoising steps (default 0: from the span length)")
    f.add_argument("--model", default=None, help="model directory (default: the built-in model)")
    f.add_argument("--device", type=device_name, default="auto", help=DEVICE_HELP)
    f.add_argument("--dtype", type=dtype_name, default="auto", help=DTYPE_HELP)
    f.add_argument("--language", default=None, help="language id (default: from the file extension)")
    f.add_argument("--candidates", type=int_at_least(1, 10), default=1, metavar="N",
                   help="look for up to N different fills (other lengths, then samples), as an editor's manual "
                        "trigger does; the best is printed, --json lists them all")
    f.add_argument("--engine", type=engine_mode, default="inprocess", metavar="inprocess|auto|ADDRESS",
                   help="where the model runs: loaded by this command (default); auto: the shared engine for this "
                        "model, device and steps (`codefill serve`), joined or started, which stays loaded for "
                        "the next fill; or unix:PATH / tcp:127.0.0.1:PORT of one you started")
    f.add_argument("--json", action="store_true",
                   help="print the fill, its range (character offsets) and timings as JSON; exit 1 when no fill")
    f.add_argument("--write", action="store_true",
                   help="also apply the fill to FILE (rewritten whole; left unchanged when there is no fill)")
    f.add_argument("--whole", action="store_true",
                   help="print the whole text with the fill in place instead of the fill alone (a filter: "
                        "`codefill fill -:LINE:COL --language ID --whole` reads standard input)")
    f.set_defaults(func=cmd_fill)

    t = sub.add_parser("train", help="train or resume a model")
    t.add_argument("--run", default="runs/codefill",
                   help="run directory (resumed when it holds training state; Ctrl-C stops after the step in "
                        "progress and saves it there)")
    t.add_argument("--data", default="data",
                   help="corpus, tokenizer and token arrays (built when missing, from the standard library, "
                        "--wheels and --source; never rebuilt)")
    t.add_argument("--source", action="append", default=[],
                   help="extra source directory of .py files, beside the standard library (repeatable; only when "
                        "--data is built)")
    t.add_argument("--wheels", default=None, help="directory of permissively licensed wheels to add")
    t.add_argument("--vocab", type=positive_int, default=8192, help="tokenizer size when --data is built")
    t.add_argument("--preset", default=None,
                   help="model shape: cpu (6.84M parameters, the default), gpu (19.4M) or tiny (for smoke runs); "
                        "a resumed run keeps its own")
    t.add_argument("--batch-size", type=positive_int, default=16)
    t.add_argument("--lr", type=positive_float, default=1.5e-3)
    t.add_argument("--minutes", type=positive_float, default=60.0, help="wall-time budget of this session")
    t.add_argument("--max-steps", type=non_negative_int, default=0,
                   help="stop at this total step count (0: when --minutes is spent)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)")
    t.add_argument("--device", type=device_name, default="auto", help=DEVICE_HELP)
    t.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from this model directory's weights with a fresh optimizer (when --run has no state)")
    t.add_argument("--export", default=None, metavar="DIR",
                   help="also write the model here (no optimizer state) at each checkpoint and at the end")
    t.add_argument("--shard-mb", type=non_negative_float, default=0.0,
                   help="--export: weight shards of at most this many MiB")
    t.add_argument("--save-dtype", default=None, help="--export: cast the weights (bfloat16 halves them)")
    t.add_argument("--workers", type=non_negative_int, default=0, help="background processes drawing batches")
    t.add_argument("--compile", action="store_true", help="torch.compile the forward (eager if that fails)")
    t.add_argument("--log-seconds", type=non_negative_float, default=0.0, help="a progress line every N seconds")
    t.add_argument("--warmup-steps", type=non_negative_int, default=None)
    t.add_argument("--decay-share", type=float, default=None,
                   help="last share of the time budget over which the learning rate decays linearly (default 0.2)")
    t.add_argument("--eval-every", type=positive_int, default=None, help="steps between validation losses")
    t.add_argument("--checkpoint-minutes", type=positive_float, default=None)
    t.set_defaults(func=cmd_train)

    for name, module, helptext in [
        ("eval", "engine.evaluate", "pass@1 and exact match on HumanEval-Infilling and SAFIM"),
        ("bench", "benchmarks.bench", "latency and tokens/s against baselines"),
        ("serve", "engine.serve", "run the engine as a resident process for several editors"),
    ]:
        s = sub.add_parser(name, help=helptext, add_help=False)
        s.set_defaults(func=None, delegate=module)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `codefill`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fill"] and "--" not in argv:  # -:LINE:COL (standard input) would read as an option to argparse
        stdin = [a for a in argv if re.fullmatch(re.escape(STDIN) + r":[0-9]+:[0-9]+", a)]
        argv = [a for a in argv if a not in stdin] + (["--", *stdin] if stdin else [])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "delegate", None):
            import importlib

            status = int(importlib.import_module(args.delegate).main(rest) or 0)
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        else:
            status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except UsageError as exc:
        print(f"codefill: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left (`codefill fill ... | head -1`): stop quietly, as a shell tool would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE
    except Exception as exc:  # engine errors and the like: one line, no traceback
        from engine.errors import EngineError

        if isinstance(exc, (EngineError, ValueError, OSError)):
            print(f"codefill: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
