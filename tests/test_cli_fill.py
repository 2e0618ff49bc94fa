"""`codefill fill FILE:LINE:COL` as a user runs it: the README's first command, and bad input.

Each case starts the real command line in a child process (python -m engine.cli), as the README does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.model_dir import BUILTIN_MODEL, MODELS_DIR
from lsp_server import languages

REPO = Path(__file__).resolve().parent.parent


def codefill(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_readme_first_command_fills_the_example():
    """The fill the README's first command asks for exists, is not empty, and leaves the file parsing cleanly."""
    if not (MODELS_DIR / BUILTIN_MODEL / "config.json").exists():
        pytest.skip("no built-in model")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"codefill fill (examples/\S+?):(\d+):(\d+)", readme)
    assert match, "the README's first command names no example position"
    path, line, col = match.group(1), int(match.group(2)), int(match.group(3))
    run = codefill("fill", f"{path}:{line}:{col}")
    assert run.returncode == 0, run.stderr
    fill = run.stdout
    assert fill.strip(), "the example's fill is empty"
    text = (REPO / path).read_text(encoding="utf-8")
    lines = text.split("\n")
    offset = sum(len(s) + 1 for s in lines[: line - 1]) + col - 1
    filled = text[:offset] + fill.rstrip("\n") + text[offset:]
    spec = languages.spec_for("python")
    assert spec is not None
    assert languages.count_syntax_errors(spec, filled) == 0, filled


@pytest.mark.parametrize(
    "make, location, message",
    [
        (lambda d: (d / "a.py").write_text("x = 1\n"), "a.py:9:1", "line 9 is past the end of the file (2 lines)"),
        (lambda d: (d / "a.py").write_text("x = 1\n"), "a.py:1:40", "column 40 is past the end of line 1"),
        (lambda d: None, "missing.py:1:1", "missing.py: no such file"),
        (lambda d: (d / "b.py").write_bytes(b"x = '\xff\xfe'\n"), "b.py:1:1", "b.py: not UTF-8 text (byte 5)"),
        (lambda d: (d / "pkg").mkdir(), "pkg:1:1", "pkg: is a directory"),
        (lambda d: None, "a.py:0:1", "a.py:0:1"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, make, location, message):
    """Bad positions and unreadable files: exit status 2 and a message that names the problem, no traceback."""
    make(tmp_path)
    run = codefill("fill", str(tmp_path / location) if not location.startswith("a.py:0") else location,
                   cwd=tmp_path)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_a_language_the_model_does_not_know_gets_a_note(tmp_path):
    """The built-in model knows Python only: a Go file still gets the model's answer, with a note on stderr."""
    if not (MODELS_DIR / BUILTIN_MODEL / "config.json").exists():
        pytest.skip("no built-in model")
    (tmp_path / "main.go").write_text("package main\n\nfunc add(a int, b int) int {\n\treturn \n}\n")
    run = codefill("fill", str(tmp_path / "main.go") + ":4:9")
    assert run.returncode in (0, 1), run.stderr  # a fill, or none that keeps the file parsing: both are answers
    assert "note: the model codefill-base was trained on python code only" in run.stderr
    assert "Traceback" not in run.stderr
    py = codefill("fill", "examples/inventory.py:8:1")
    assert "note:" not in py.stderr
