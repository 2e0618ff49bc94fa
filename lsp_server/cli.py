"""`codefill-lsp`: run the language server over stdio (default) or TCP."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.cli import VersionAction, device_name
from engine.wire import is_loopback
from lsp_server.engine_client import EngineSpec, parse_engine_mode
from lsp_server.options import Settings


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _engine_mode(value: str) -> str:
    try:
        return parse_engine_mode(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected auto, inprocess, unix:/path or tcp:127.0.0.1:PORT ({exc})")


def build_parser() -> argparse.ArgumentParser:
    """The command line of codefill-lsp."""
    p = argparse.ArgumentParser(prog="codefill-lsp", description="codefill code-infill language server")
    p.add_argument("--version", action=VersionAction)
    p.add_argument("--tcp", metavar="HOST:PORT", type=_host_port,
                   help="listen on TCP instead of stdio (loopback), for one client: the server exits when it disconnects")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow --tcp on a non-loopback address (anyone who can connect can use the server)")
    p.add_argument("--stdio", action="store_true", help="use stdio (the default; accepted because many clients pass it)")
    p.add_argument("--log-file", metavar="PATH", help="also write logs to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--model", metavar="PATH", help="model directory (default: the built-in model)")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--steps", type=int, default=0, help="denoising steps per fill (0: the engine's default)")
    p.add_argument("--debounce-ms", type=int, default=None, help="wait this long after typing before a fill")
    p.add_argument("--engine", type=_engine_mode, default="inprocess", metavar="auto|inprocess|ADDRESS",
                   help="where the model runs: in this process (default); auto: a shared engine process, joined "
                        "or started on first use; or an engine you started: unix:/path or tcp:127.0.0.1:PORT")
    p.add_argument("--engine-token-file", metavar="PATH",
                   help="token of a TCP engine (default: the one `codefill serve --tcp` writes for that port)")
    p.add_argument("--engine-idle-exit-minutes", type=float, default=EngineSpec.idle_exit_minutes, metavar="N",
                   help="an engine started by --engine auto exits after N minutes without clients (0: never)")
    p.add_argument("--engine-timeout", type=float, default=EngineSpec.timeout_s, metavar="SECONDS",
                   help="a shared engine's fill that takes longer is answered null; an engine that then misses a "
                        "health check is restarted")
    p.add_argument("--engine-factory", metavar="MODULE:NAME",
                   help="build the engine with this callable(path, device, steps) instead of engine.api")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of codefill-lsp."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tcp and not args.allow_remote and not is_loopback(args.tcp[0]):
        parser.error(f"--tcp {args.tcp[0]}: not a loopback address; add --allow-remote to listen there")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("codefill-lsp %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[stderr])
    logging.getLogger("codefill").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose:
        logging.getLogger("pygls").setLevel(logging.DEBUG)

    from lsp_server.protocol import FramingGuard
    from lsp_server.server import make_server  # after logging is set up

    settings = Settings(model_path=args.model, device=args.device, steps=max(args.steps, 0),
                        log_file=args.log_file)
    if args.debounce_ms is not None:
        settings = Settings(**{**settings.__dict__, "debounce_ms": max(args.debounce_ms, 0)})
    spec = EngineSpec(mode=args.engine, token_file=args.engine_token_file,
                      idle_exit_minutes=max(args.engine_idle_exit_minutes, 0.0),
                      timeout_s=max(args.engine_timeout, 0.1))
    server = make_server(settings, engine_factory=args.engine_factory, engine_spec=spec)
    server.set_log_file(args.log_file)
    try:
        if args.tcp:
            server.start_tcp(*args.tcp)
        else:
            server.start_io(FramingGuard(sys.stdin.buffer))
    finally:
        server.stop_fills()  # the client has gone: the interpreter must not wait for queued fills at exit
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
