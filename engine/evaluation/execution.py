"""Run a generated program in a child process, never in this one.

Each program runs as `python -I prog.py` (isolated mode: no PYTHON* variables, no user site, no script directory on
sys.path) in a fresh temporary directory that is removed afterwards, with a minimal environment, stdin closed (or a
file, for stdin/stdout tests), stdout and stderr written to files in that directory, and these limits:

- wall clock: `timeout` seconds, then the whole process group (start_new_session) is killed;
- address space (RLIMIT_AS): `memory_mb`, so a memory hog gets MemoryError instead of taking the machine;
- CPU time (RLIMIT_CPU): timeout + 1 s, a backstop should the wall clock be missed;
- file size (RLIMIT_FSIZE): `output_limit` bytes for any file written, stdout and stderr included;
- no core files.

The limits are set in preexec_fn, which only calls resource.setrlimit (imported here, before any fork).
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_OUTPUT_LIMIT = 16 * 1024 * 1024
STDERR_TAIL = 2000


@dataclass
class ExecResult:
    """How a child program ended."""

    status: str  # "ok" (exit 0), "error" (non-zero exit), "timeout", "memory", "output-limit"
    returncode: int | None
    stdout: str
    stderr: str  # the last STDERR_TAIL characters
    seconds: float

    @property
    def ok(self) -> bool:
        """Exited with status 0 within the limits."""
        return self.status == "ok"

    def error_line(self) -> str:
        """The last non-empty line of stderr (the exception, usually), or the status."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1][:300] if lines else self.status


def _limit_child(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    """Runs in the forked child before exec: resource limits only (no imports, no locks)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_text(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_program(source: str, stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                memory_mb: int = DEFAULT_MEMORY_MB, output_limit: int = DEFAULT_OUTPUT_LIMIT,
                python: str | None = None) -> ExecResult:
    """Run `source` as a Python program in a sandboxed child process; stdin is closed unless given."""
    limits = functools.partial(_limit_child, memory_mb * 1024 * 1024, int(timeout) + 1, output_limit)
    with tempfile.TemporaryDirectory(prefix="codefill-eval-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        (root / "prog.py").write_text(source, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp,
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if stdin is not None:
            (root / "stdin.txt").write_text(stdin, encoding="utf-8")
        out_path, err_path = root / "stdout.txt", root / "stderr.txt"
        with open(out_path, "wb") as out, open(err_path, "wb") as err, \
                open(root / "stdin.txt" if stdin is not None else os.devnull, "rb") as inp:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-B", "prog.py"], cwd=tmp, env=env, stdin=inp, stdout=out,
                # preexec_fn runs in the forked child while the pool's other threads exist: _limit_child only
                # calls resource.setrlimit (a C call, module imported above), taking no lock a thread could hold.
                stderr=err, preexec_fn=limits, start_new_session=True, close_fds=True,  # noqa: PLW1509
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            finally:
                _kill_group(proc.pid)  # anything the program left running in its session
            seconds = time.perf_counter() - t0
        stdout = _read_text(out_path, output_limit)
        stderr = _read_text(err_path, output_limit)[-STDERR_TAIL:]
    rc = proc.returncode
    if timed_out or rc == -signal.SIGXCPU:
        status = "timeout"
    elif rc == 0:
        status = "ok"
    elif rc == -signal.SIGXFSZ:
        status = "output-limit"
    elif "MemoryError" in stderr:
        status = "memory"
    else:
        status = "error"
    return ExecResult(status, None if timed_out else rc, stdout, stderr, seconds)
