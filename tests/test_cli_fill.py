"""`codefill fill FILE:LINE:COL` as a user runs it: the README's first command, and bad input.

Each case starts the real command line in a child process (python -m engine.cli), as the README does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import cli
from engine.cli import UsageError, offset_of, parse_location, read_source
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
        (lambda d: (d / "a.py").write_text("x = 1\n"), "a.py:9:1", "line 9 is past the end of the file (1 line)"),
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
    assert "(another model: --model DIR)" in run.stderr and "modelPath" not in run.stderr  # the server's wording
    assert "Traceback" not in run.stderr
    py = codefill("fill", "examples/inventory.py:8:1")
    assert "note:" not in py.stderr
    typo = codefill("fill", "examples/inventory.py:8:1", "--language", "pyhton")
    assert "no grammar for --language 'pyhton'" in typo.stderr and "not syntax-checked" in typo.stderr
    assert "note:" not in codefill("fill", "examples/inventory.py:8:1", "--language", "PYTHON").stderr


def test_the_reader_leaving_early_is_not_an_error():
    """`codefill fill ... | head -1`: a closed stdout ends the command quietly (status 141, as SIGPIPE would)."""
    if not (MODELS_DIR / BUILTIN_MODEL / "config.json").exists():
        pytest.skip("no built-in model")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "fill", "examples/inventory.py:8:1", "--json"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert err == ""


# ------------------------------------------------------------------------------------------------------------
# Positions, line breaks and the byte-order mark (no model)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_lines_break_at_every_newline(newline):
    """\\n, \\r\\n and \\r end lines alike (as in LSP); a line break is never a column."""
    text = newline.join(["ab", "", "cde", ""])  # three lines and a final line break
    assert offset_of(text, 1, 3, "w") == 2
    assert offset_of(text, 2, 1, "w") == 2 + len(newline)
    assert offset_of(text, 3, 4, "w") == text.index("cde") + 3
    assert offset_of(text, 4, 1, "w") == len(text)  # the end, after the final line break
    with pytest.raises(UsageError, match="column 2 is past the end of line 2 \\(0 characters\\)"):
        offset_of(text, 2, 2, "w")
    with pytest.raises(UsageError, match="column 5 is past the end of line 3 \\(3 characters\\)"):
        offset_of(text, 3, 5, "w")
    with pytest.raises(UsageError, match="line 5 is past the end of the file \\(3 lines\\)"):
        offset_of(text, 5, 1, "w")


def test_line_and_character_counts_read_right():
    with pytest.raises(UsageError, match="\\(1 line\\)"):
        offset_of("x\n", 3, 1, "w")
    with pytest.raises(UsageError, match="\\(2 lines\\)"):
        offset_of("x\ny", 3, 1, "w")
    with pytest.raises(UsageError, match="\\(0 lines\\)"):
        offset_of("", 2, 1, "w")
    with pytest.raises(UsageError, match="\\(1 character\\)"):
        offset_of("x\n", 1, 3, "w")


def test_a_byte_order_mark_is_not_text(tmp_path):
    """A UTF-8 BOM is dropped: not a column of line 1, not in what the model reads; byte offsets stay the file's."""
    (tmp_path / "bom.py").write_bytes(b"\xef\xbb\xbfx = 1\n")
    assert read_source(tmp_path / "bom.py").text == "x = 1\n" and read_source(tmp_path / "bom.py").bom
    (tmp_path / "bad.py").write_bytes(b"\xef\xbb\xbfx = '\xff'\n")
    with pytest.raises(UsageError, match="byte 8"):
        read_source(tmp_path / "bad.py")


@pytest.mark.parametrize("spec, message", [("a.py:\u00b2:1", "expected FILE:LINE:COL"), (":1:1", "no file name")])
def test_bad_locations(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_location(spec)


# ------------------------------------------------------------------------------------------------------------
# The command in this process, with a scripted engine


class _ScriptedEngine:
    """Answers every hole with `text` and records what it was asked."""

    def __init__(self, text: str) -> None:
        self.text, self.asked = text, []  # type: ignore[var-annotated]

    def fill(self, prefix, suffix, max_tokens, single_line=False, **_):  # type: ignore[no-untyped-def]
        self.asked.append((prefix, suffix))
        return SimpleNamespace(text=self.text)


@pytest.fixture()
def scripted(monkeypatch):  # type: ignore[no-untyped-def]
    """Run `codefill fill` in this process with an engine that answers `text`: (exit status, stdout, stderr, engine)."""
    from engine.api import Engine

    def run(capsys, text: str, *args: str):  # type: ignore[no-untyped-def]
        engine = _ScriptedEngine(text)
        monkeypatch.setattr(Engine, "from_pretrained", classmethod(lambda cls, *a, **k: engine))
        status = cli.main(["fill", *args])
        out, err = capsys.readouterr()
        return status, out, err, engine

    return run


def test_json_exits_1_without_a_fill(tmp_path, scripted, capsys):
    """--json prints the JSON either way; as without it, there being no fill is exit status 1."""
    (tmp_path / "a.py").write_text("x = \n")
    status, out, _, _ = scripted(capsys, "", f"{tmp_path / 'a.py'}:1:5", "--json")
    assert status == 1 and json.loads(out)["insert_text"] == ""
    status, out, _, _ = scripted(capsys, "1", f"{tmp_path / 'a.py'}:1:5", "--json")
    assert status == 0 and json.loads(out)["insert_text"] == "1"


def test_an_empty_file_is_not_filled(tmp_path, scripted, capsys):
    """With no code on either side the model can only make something up: no engine call, exit 1, and why."""
    (tmp_path / "empty.py").write_text("\n\n")
    status, out, err, engine = scripted(capsys, "isisherher", f"{tmp_path / 'empty.py'}:1:1")
    assert status == 1 and out == "" and engine.asked == []
    assert err == "codefill: no fill: there is no code in the file to fill from\n"


def test_a_file_with_no_grammar_gets_a_note(tmp_path, scripted, capsys):
    """As with --language of no grammar: the fill comes with a note that it was not syntax-checked."""
    (tmp_path / "prog.cobol").write_text("x = 1\ny = \n")
    status, out, err, _ = scripted(capsys, "2", f"{tmp_path / 'prog.cobol'}:2:5")
    assert status == 0 and out == "2\n"
    assert "no grammar for 'prog.cobol'" in err and "not syntax-checked" in err


def test_candidates_ask_again_and_json_lists_the_distinct_fills(tmp_path, scripted, capsys):
    (tmp_path / "a.py").write_text("x = \n")
    status, out, _, engine = scripted(capsys, "1", f"{tmp_path / 'a.py'}:1:5", "--json", "--candidates", "3")
    assert status == 0 and json.loads(out)["candidates"] == ["1"]  # the same fill every time: listed once
    assert len(engine.asked) == 4  # greedy, two shorter budgets, one sample: at most candidates + 1 calls
    status, out, _, engine = scripted(capsys, "1", f"{tmp_path / 'a.py'}:1:5")
    assert status == 0 and out == "1\n" and len(engine.asked) == 1  # one call by default


def test_crlf_and_bom_offsets_in_json(tmp_path, scripted, capsys):
    """On an empty CRLF line the range is empty and starts at the line; --json offsets count from after a BOM."""
    (tmp_path / "crlf.py").write_bytes(b"def f():\r\n    a = 1\r\n\r\n    return a\r\n")
    _, out, _, _ = scripted(capsys, "", f"{tmp_path / 'crlf.py'}:3:1", "--json")
    data = json.loads(out)
    assert data["start"] == data["end"] == len("def f():\r\n    a = 1\r\n")
    status, _, err, _ = scripted(capsys, "", f"{tmp_path / 'crlf.py'}:3:2", "--json")
    assert status == 2 and "column 2 is past the end of line 3 (0 characters)" in err
    (tmp_path / "bom.py").write_bytes(b"\xef\xbb\xbfx = \n")
    _, out, _, engine = scripted(capsys, "1", f"{tmp_path / 'bom.py'}:1:5", "--json")
    data = json.loads(out)
    assert data["start"] == 4 and data["insert_text"] == "1"
    assert engine.asked and not any("\ufeff" in prefix for prefix, _ in engine.asked)


# ------------------------------------------------------------------------------------------------------------
# --write, --whole and standard input


def _stdin(monkeypatch, data: bytes) -> None:  # type: ignore[no-untyped-def]
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_write_applies_the_fill_keeping_bom_line_breaks_and_mode(tmp_path, scripted, capsys):
    path = tmp_path / "a.py"
    path.write_bytes(b"\xef\xbb\xbfdef f():\r\n    x = \r\n    return x\r\n")
    path.chmod(0o640)
    status, out, err, _ = scripted(capsys, "41", f"{path}:2:9", "--write")
    assert status == 0 and out == "41\n" and err == ""  # the fill is still printed
    assert path.read_bytes() == b"\xef\xbb\xbfdef f():\r\n    x = 41\r\n    return x\r\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.py"]  # no temporary file left beside it


def test_write_through_a_link_rewrites_its_target(tmp_path, scripted, capsys):
    (tmp_path / "real.py").write_text("x = \n")
    (tmp_path / "link.py").symlink_to("real.py")
    status, _, _, _ = scripted(capsys, "1", f"{tmp_path / 'link.py'}:1:5", "--write")
    assert status == 0 and (tmp_path / "link.py").is_symlink()
    assert (tmp_path / "real.py").read_text() == "x = 1\n"


def test_write_without_a_fill_leaves_the_file_alone(tmp_path, scripted, capsys):
    path = tmp_path / "a.py"
    path.write_text("x = \n")
    status, out, err, _ = scripted(capsys, "", f"{path}:1:5", "--write")
    assert status == 1 and out == "" and "the file is unchanged" in err
    assert path.read_text() == "x = \n"


def test_write_refuses_a_file_that_changed_meanwhile(tmp_path, scripted, capsys, monkeypatch):
    """An editor saved the file while the model worked: writing would lose that; the fill is printed instead."""
    path = tmp_path / "a.py"
    path.write_text("x = \n")
    real_complete = __import__("lsp_server.completion", fromlist=["complete_at"]).complete_at

    def saved_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_complete(*args, **kwargs)
        path.write_text("x = 2  # typed meanwhile\n")
        return result

    monkeypatch.setattr("lsp_server.completion.complete_at", saved_meanwhile)
    status, out, err, _ = scripted(capsys, "1", f"{path}:1:5", "--write")
    assert status == 2 and out == "1\n" and "changed while the fill was made; not written" in err
    assert path.read_text() == "x = 2  # typed meanwhile\n"


def test_standard_input_with_whole_is_a_filter(scripted, capsys, monkeypatch):
    """`codefill fill -:LINE:COL --language ID --whole`: the text in, the text with the fill out (an editor's
    filter command); without a fill the text comes out unchanged, so a filter never empties a buffer."""
    _stdin(monkeypatch, b"def f():\n    x = \n    return x\n")
    status, out, err, engine = scripted(capsys, "41", "-:2:9", "--language", "python", "--whole")
    assert status == 0 and out == "def f():\n    x = 41\n    return x\n" and err == ""
    assert engine.asked[0][0].endswith("x = ")
    _stdin(monkeypatch, b"\xef\xbb\xbfx = \n")
    status, out, err, _ = scripted(capsys, "", "-:1:5", "--whole")
    assert status == 1 and out == "\ufeffx = \n"
    assert "give --language ID" in err and "no fill for this" in err


def test_standard_input_errors_name_it(scripted, capsys, monkeypatch):
    _stdin(monkeypatch, b"x = '\xff'\n")
    status, _, err, _ = scripted(capsys, "1", "-:1:1", "--language", "python")
    assert status == 2 and "standard input: not UTF-8 text (byte 5)" in err
    _stdin(monkeypatch, b"x = 1\n")
    status, _, err, _ = scripted(capsys, "1", "-:3:1")
    assert status == 2 and "<stdin>:3:1: line 3 is past the end of the file (1 line)" in err


@pytest.mark.parametrize("args, message", [
    (["-:1:1", "--write"], "--write rewrites a FILE"),
    (["a.py:1:1", "--whole", "--write"], "--whole and --write: choose one"),
    (["a.py:1:1", "--whole", "--json"], "--whole and --json: choose one"),
])
def test_conflicting_output_options(tmp_path, scripted, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.py").write_text("x = 1\n")
    status, out, err, engine = scripted(capsys, "1", *args)
    assert status == 2 and message in err and out == "" and not engine.asked
    assert (tmp_path / "a.py").read_text() == "x = 1\n"


def test_the_real_model_fills_standard_input():
    """The real command and model, as a pipe: the example file through standard input, the whole text back."""
    if not (MODELS_DIR / BUILTIN_MODEL / "config.json").exists():
        pytest.skip("no built-in model")
    text = (REPO / "examples" / "inventory.py").read_text(encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "engine.cli", "fill", "-:8:1", "--language", "python", "--whole"],
                         cwd=REPO, input=text, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = text.split("\n")
    assert run.stdout.split("\n")[:7] == lines[:7] and run.stdout.endswith("\n".join(lines[8:]))
    assert len(run.stdout) > len(text)
    spec = languages.spec_for("python")
    assert spec is not None and languages.count_syntax_errors(spec, run.stdout) == 0



def test_a_tab_indented_file_gets_the_fill_it_gets_with_spaces():
    """The README's example written with tabs: the model reads it in spaces (it learnt from such code) and the
    fill comes back indented with the file's tabs; shown tabs, the built-in model had answered `name`."""
    if not (MODELS_DIR / BUILTIN_MODEL / "config.json").exists():
        pytest.skip("no built-in model")
    spaces = (REPO / "examples" / "inventory.py").read_text(encoding="utf-8")
    tabs = spaces.replace("    ", "\t")
    fills = [subprocess.run([sys.executable, "-m", "engine.cli", "fill", "-:8:1", "--language", "python"], cwd=REPO,
                            input=text, capture_output=True, text=True, timeout=300) for text in (spaces, tabs)]
    assert all(run.returncode == 0 for run in fills), [run.stderr for run in fills]
    assert fills[1].stdout == fills[0].stdout.replace("    ", "\t") and fills[1].stdout.startswith("\t\tself.")


# ------------------------------------------------------------------------------------------------------------
# --engine: a shared engine (codefill serve) instead of loading the model in the command


def test_fill_through_an_engine_started_by_hand(tmp_path):
    """--engine unix:PATH: the fill comes from that engine (a scripted one here), which keeps running."""
    from lsp_fixtures.harness import FAKE_ENGINE, server_env

    sock = tmp_path / "e.sock"
    serve = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--unix", str(sock), "--engine-factory",
                              FAKE_ENGINE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env(),
                             cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "a.py").write_text('x = \n# codefill-fake: "41"\n')
        run = codefill("fill", f"{tmp_path / 'a.py'}:1:5", "--engine", f"unix:{sock}")
        assert run.returncode == 0 and run.stdout == "41\n", run.stderr
        assert "started a shared engine" not in run.stderr
        assert serve.poll() is None  # the command disconnected; the engine stays up for its other clients
        status = json.loads(codefill("serve", "--status", "--unix", str(sock)).stdout)
        assert status["fills_completed"] == 1 and status["clients"] == 0
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def test_an_engine_that_is_not_there_is_one_line(tmp_path):
    run = codefill("fill", "examples/mean.py:4:20", "--engine", f"unix:{tmp_path / 'none.sock'}")
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith(f"codefill: the engine at unix:{tmp_path / 'none.sock'}: ")
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    bad = codefill("fill", "examples/mean.py:4:20", "--engine", "udp:1")
    assert bad.returncode == 2 and "argument --engine" in bad.stderr
    dtype = codefill("fill", "examples/mean.py:4:20", "--engine", "auto", "--dtype", "float32")
    assert dtype.returncode == 2 and "drop --dtype with --engine" in dtype.stderr


def test_auto_starts_the_shared_engine_once_and_later_fills_join_it(tmp_path):
    """--engine auto with the real model: the first fill starts `codefill serve` (and says so), the second joins it
    and gets the same fill as a fill without it."""
    if not (MODELS_DIR / BUILTIN_MODEL / "config.json").exists():
        pytest.skip("no built-in model")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}  # this test's own socket, not a running user's

    def fill() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", "fill", "examples/mean.py:4:20", "--engine", "auto"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    first = fill()
    try:
        assert first.returncode == 0, first.stderr
        assert "note: started a shared engine" in first.stderr
        second = fill()
        assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
        assert "started a shared engine" not in second.stderr
        assert first.stdout == codefill("fill", "examples/mean.py:4:20").stdout  # the same model, the same fill
        status = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--status"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["fills_completed"] == 2
    finally:
        subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--stop"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
