"""Emacs with eglot, set up as editors/README.md says, against the real server and the real built-in model.

`emacs --batch` loads the README's elisp snippet (read out of editors/README.md, so that the two cannot drift) and
tests/emacs/codefill-e2e.el, which does what a user does on a copy of examples/inventory.py: M-x eglot (the snippet
names `codefill-lsp`, found on PATH: this interpreter's bin directory is put first), C-M-i at a hole, *Fill
selection* through M-x eglot-code-actions (and eglot-code-action-rewrite), the README's settings form sent with M-x
eglot-signal-didChangeConfiguration, and a C file in the same project. The driver records what happened as JSON; the
assertions are here. The model's text is not asserted as such: it is compared with what `codefill fill` prints for
the same position (greedy, deterministic), so that the test holds for any model that fills these holes.

Emacs 28.2 with Debian 12's elpa-eglot 1.9 (`apt-get install emacs-nox elpa-eglot`; .ci/run installs them when it
can); eglot is built into Emacs 29+. Skips, saying why, without emacs, eglot or the installed console scripts.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "emacs" / "codefill-e2e.el"
BIN = Path(sys.executable).parent  # the venv's bin: codefill-lsp and codefill, as `pip install -e .` put them
EMACS = shutil.which("emacs")

# 0-based (line, column) positions in the subject, a copy of examples/inventory.py with one more hole:
COMPLETE = (7, 0)  # line 8, col 1: the README's `codefill fill examples/inventory.py:8:1` (`self.name = name`)
SELECT = ((13, 28), (13, 41))  # `self.quantity` in `return self.price * self.quantity`
COMPLETE2 = (29, 15)  # after `return ` in Inventory.get, whose `self.items[name]` the subject leaves out
HOLE2 = ("        return self.items[name]\n", "        return \n")
SETTINGS_STEPS = 8  # what the README's settings form sets


def _env(tmp: Path) -> dict[str, str]:
    """PATH with this interpreter's bin first (codefill-lsp as the snippet names it); HOME in tmp, so that no user
    configuration comes in and nothing is written to the real one."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp)}


def _eglot_problem(tmp: Path) -> str | None:
    """Why eglot cannot be loaded in `emacs --batch` (None: it can)."""
    probe = ('(progn (unless (locate-library "eglot") (package-initialize)) (require (quote eglot)) '
             '(princ "eglot-ok"))')
    try:
        run = subprocess.run([EMACS, "--batch", "--eval", probe], env=_env(tmp), capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return "emacs --batch did not load eglot within 60 s"
    if "eglot-ok" in run.stdout:
        return None
    errors = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith(" ")]  # no backtrace
    return ("eglot cannot be loaded in emacs --batch (Emacs 29+ has it built in; on Debian 12: apt-get install "
            f"elpa-eglot): {(errors or ['?'])[-1]}")


def readme_emacs() -> tuple[str, str]:
    """The Emacs section's elisp snippet, and the settings form shown in its comment."""
    readme = (REPO / "editors" / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Emacs (eglot)\n", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```elisp\n", 1)[1].split("```", 1)[0]
    start = snippet.index("(setq-default eglot-workspace-configuration")
    depth = 0
    for end, char in enumerate(snippet[start:], start):  # the form's closing parenthesis
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            break
    form = snippet[start:end + 1]
    assert "eglot-signal-didChangeConfiguration" in section, "the README should say how the change is sent"
    return snippet, form


def codefill_fill(cwd: Path, env: dict[str, str], *args: str) -> dict:
    """`codefill fill ... --json`: what the command line prints for a position (the exact fill an editor gets)."""
    run = subprocess.run([str(BIN / "codefill"), "fill", *args, "--json"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=180, check=False)
    assert run.returncode in (0, 1) and run.stdout, run.stderr  # 1: no fill (the JSON says so too)
    return json.loads(run.stdout)


def _at(at: tuple[int, int]) -> str:
    """A 0-based (line, column) as the command line's 1-based LINE:COL."""
    return f"{at[0] + 1}:{at[1] + 1}"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One Emacs run (a model load costs seconds): its results, with the subject and the command line's fills."""
    tmp = tmp_path_factory.mktemp("emacs")
    if EMACS is None:
        pytest.skip("emacs is not installed (Debian 12: apt-get install emacs-nox elpa-eglot)")
    missing = [name for name in ("codefill-lsp", "codefill") if not (BIN / name).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in {BIN} (pip install -e .)")
    problem = _eglot_problem(tmp)
    if problem:
        pytest.skip(problem)
    snippet, form = readme_emacs()
    source = (REPO / "examples" / "inventory.py").read_text(encoding="utf-8")
    assert HOLE2[0] in source
    text = source.replace(HOLE2[0], HOLE2[1])
    subject = tmp / "inventory.py"
    subject.write_text(text, encoding="utf-8")
    (tmp / "add.c").write_text("int add(int a, int b) {\n    \n}\n", encoding="utf-8")
    (tmp / "snippet.el").write_text(snippet, encoding="utf-8")
    out = tmp / "out.json"
    params = {"snippet": str(tmp / "snippet.el"), "settings_form": form, "file": str(subject),
              "c_file": str(tmp / "add.c"), "complete": COMPLETE, "complete2": COMPLETE2, "select": SELECT,
              "out": str(out), "ready_timeout": 120, "deadline": 170}
    (tmp / "params.json").write_text(json.dumps(params), encoding="utf-8")
    env = _env(tmp)
    # What the command line prints for the same holes, computed meanwhile (each loads the model once).
    name = subject.name
    with ThreadPoolExecutor(max_workers=1) as pool:
        expected = pool.submit(lambda: {
            "a": codefill_fill(tmp, env, f"{name}:{_at(COMPLETE)}"),
            "b": codefill_fill(tmp, env, f"{name}:{_at(SELECT[0])}", "--to", _at(SELECT[1])),
            "c": codefill_fill(tmp, env, f"{name}:{_at(COMPLETE2)}", "--steps", str(SETTINGS_STEPS)),
            "c_default": codefill_fill(tmp, env, f"{name}:{_at(COMPLETE2)}"),
        })
        try:
            run = subprocess.run([EMACS, "--batch", "-l", str(DRIVER)], cwd=tmp,
                                 env={**env, "CODEFILL_E2E": str(tmp / "params.json")}, capture_output=True,
                                 text=True, timeout=200, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"emacs did not finish in 200 s: {exc.stderr!r}") from None
        fills = expected.result(timeout=600)
    assert out.exists(), f"no results (exit status {run.returncode}): {run.stderr[-3000:]}"
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results.get("error") is None and run.returncode == 0, (results.get("error"), run.stderr[-3000:])
    return {"results": results, "text": text, "fills": fills}


def _filled(text: str, fill: dict) -> str:
    """The text with `codefill fill --json`'s insert_text in place."""
    return text[:fill["start"]] + fill["insert_text"] + text[fill["end"]:]


def test_eglot_starts_codefill_lsp_from_the_readme_snippet(session) -> None:
    r = session["results"]
    assert r["command"] == ["codefill-lsp"]
    assert r["server_name"] == "codefill"
    assert r["language_id"] == "python"
    assert r["init_options"] == {"maxTokens": 128}
    assert not [m for m in r["shown"] if "invalid settings" in m], r["shown"]


def test_completion_at_point_inserts_the_fill(session) -> None:
    """C-M-i at line 8: the candidate is the fill `codefill fill inventory.py:8:1` prints; choosing it inserts the
    whole fill (the item's text edit: indentation included) in the buffer and in the server's copy."""
    r, text, expected = session["results"], session["text"], session["fills"]["a"]
    assert expected["insert_text"].strip(), expected  # the model fills this hole (README: `self.name = name`)
    a = r["a"]
    assert a["items"], f"eglot got no fill at line 8 once the model was loaded: {r['log']}"
    assert a["items"][0] == expected["insert_text"], (a, expected)
    assert a["candidates"][0] == expected["insert_text"].strip().split("\n")[0]
    assert a["buffer"] == _filled(text, expected)
    assert r["a_server_text"] == a["buffer"]
    ast.parse(a["buffer"])


def test_fill_selection_code_action_edits_the_buffer(session) -> None:
    """*Fill selection* (M-x eglot-code-actions, the action picked from eglot's menu): the server's
    workspace/applyEdit replaces exactly the selection with `codefill fill --to`'s text, in the buffer and in the
    server's copy."""
    r, text, expected = session["results"], session["text"], session["fills"]["b"]
    b = r["b"]
    assert b["selected"] == "self.quantity"
    assert b["result"]["applied"] is True, b
    assert b["result"]["text"] == expected["insert_text"], (b, expected)
    want = _filled(text, expected)
    assert b["buffer"] == want and b["server_text"] == want
    if expected["insert_text"] != b["selected"]:
        assert b["buffer"] != text  # the edit shows (the model may rewrite the selection as it was)
    ast.parse(b["buffer"])
    prompts = r["prompts"]
    assert any("Fill selection" in p for p in prompts[:r["b_prompts"]]), prompts  # eglot's menu offered it
    if r["confirm_edits"]:  # eglot 1.9's default: it asks before applying a server's edit (the README says so)
        assert any("Server wants to edit" in p for p in prompts[:r["b_prompts"]]), prompts
    b2 = r["b2"]
    if r["eglot"] == "1.9":  # its eglot-code-action-rewrite gets the actions and runs none (the README says so)
        assert b2["returned_titles"] == ["Fill selection"] and b2["result"] is None and b2["buffer"] == text, b2
    else:
        assert b2["buffer"] in (text, want)


def test_workspace_configuration_reaches_the_server(session) -> None:
    """The README's `(setq-default eglot-workspace-configuration '(:codefill (:steps 8)))`, then M-x
    eglot-signal-didChangeConfiguration: the next fill (at a hole not asked before, so that no earlier fill is
    reused) is the one `codefill fill --steps 8` prints, not the one of the default steps."""
    r, text = session["results"], session["text"]
    expected, default = session["fills"]["c"], session["fills"]["c_default"]
    assert r["c_sent"] == {"codefill": {"steps": SETTINGS_STEPS}}
    assert not [m for m in r["shown"] if "invalid settings" in m], r["shown"]
    assert expected["insert_text"].strip(), expected  # the model fills this hole with 8 steps
    c = r["c"]
    assert c["items"], f"eglot got no fill at line 30 after the settings changed: {r['log']}"
    assert c["items"][0] == expected["insert_text"], (c, expected)
    assert c["buffer"] == _filled(text, expected)
    if default["insert_text"] != expected["insert_text"]:  # (today: `self.items[item.name]` / `self.get(name)`)
        assert c["items"][0] != default["insert_text"]  # made with the new setting, not the old one
    assert r["c_models_after"] == r["c_models_before"], r["log"]  # steps go with each fill: no reload


def test_each_language_gets_its_own_server_and_language_id(session) -> None:
    """A C file opened in the same project: its own server, which gets it as `c` (eglot 1.9 sends every buffer of a
    server with the languageId of the one that started it); the Python server got only Python."""
    r = session["results"]
    assert r["d"] == {"language_id": "c", "same_server": False, "opened_as": ["c"]}, r["d"]
    assert r["opened_as"] == ["python"], r["opened_as"]
    assert r["shutdown_error"] is None and r["d_shutdown_error"] is None, r
    assert r["server_alive"] is False
