"""The VS Code extension: its unit tests (npm test), and its activation code against the real server.

The second runs editors/vscode/test/server-e2e.js: the extension's compiled code (from the packaged .vsix when
there is one, else from out/) with a stubbed `vscode` module, starting the real `python -m lsp_server` of this
repository through vscode-languageclient 11. It needs Node and a built extension (bash editors/vscode/build.sh);
without them it skips, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine.model_dir import BUILTIN_MODEL, MODELS_DIR

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "editors" / "vscode"
VSIX = EXT / "codefill.vsix"
FAKE_ENGINE = f"{REPO / 'tests' / 'lsp_fixtures' / 'fake_engine.py'}:make_engine"
BUILTIN_CONFIG = MODELS_DIR / BUILTIN_MODEL / "config.json"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    return node


def _built() -> None:
    if not (EXT / "node_modules" / "vscode-languageclient").is_dir():
        pytest.skip("editors/vscode is not built (run: bash editors/vscode/build.sh)")
    if not (EXT / "out" / "extension.js").is_file():
        pytest.skip("editors/vscode/out is missing (run: bash editors/vscode/build.sh)")


def _e2e(*args: str, timeout: float = 90) -> dict:
    node = _node()
    _built()
    target = ["--vsix", str(VSIX)] if VSIX.is_file() and shutil.which("unzip") else ["--extension-dir", str(EXT)]
    cmd = [node, str(EXT / "test" / "server-e2e.js"), *target, "--python", sys.executable, "--repo", str(REPO), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=EXT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from {cmd}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert proc.returncode == 0 and result["ok"], f"{result.get('error')}\nstderr: {proc.stderr[-3000:]}"
    return result


def test_build_is_current() -> None:
    """out/ is compiled from today's src/, and codefill.vsix packs today's package.json and out/: the other tests run
    that code, so a stale build would test old code. Rebuild with `bash editors/vscode/build.sh`."""
    _built()
    stale = []
    for ts in sorted((EXT / "src").rglob("*.ts")):
        js = EXT / "out" / ts.relative_to(EXT / "src").with_suffix(".js")
        if not js.is_file() or js.stat().st_mtime < ts.stat().st_mtime:
            stale.append(str(js.relative_to(EXT)))
    assert not stale, f"older than their sources (run bash editors/vscode/build.sh): {stale}"
    if not VSIX.is_file():
        pytest.skip("no codefill.vsix (run: bash editors/vscode/build.sh)")
    with zipfile.ZipFile(VSIX) as vsix:
        packed = {name[len("extension/"):]: vsix.read(name) for name in vsix.namelist()
                  if name == "extension/package.json" or (name.startswith("extension/out/") and name.endswith(".js"))}
    local = {"package.json": (EXT / "package.json").read_bytes()}
    local.update({f"out/{js.name}": js.read_bytes() for js in (EXT / "out").glob("*.js")})
    differ = sorted(name for name in local.keys() | packed.keys() if local.get(name) != packed.get(name))
    assert not differ, f"codefill.vsix differs from the tree in {differ} (run bash editors/vscode/build.sh)"


def test_unit_tests() -> None:
    """npm test: settings conversion, server path resolution, status text (node's test runner, no VS Code)."""
    _node()
    _built()
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    proc = subprocess.run([npm, "test", "--silent"], capture_output=True, text=True, timeout=120, cwd=EXT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout


def test_extension_against_real_server() -> None:
    """Activation, $/progress, inline completion, Fill Selection, settings, restart, against the real server."""
    result = _e2e("--engine-factory", FAKE_ENGINE)
    assert result["checks"] == [
        "initialize", "status ready", "inline completion", "fill selection", "didChangeConfiguration",
        "candidates", "restart", "deactivate",
    ]
    assert result["candidates"] == [2, 1]  # codefill.candidates reaches the server
    assert result["inline"][0]["insertText"] == "return a + b"
    assert result["fillSelection"]["result"] == {"applied": True, "text": "a * b + 0"}


@pytest.mark.skipif(not BUILTIN_CONFIG.is_file(), reason="the built-in model is not there yet (engine/models)")
@pytest.mark.skipif(os.environ.get("CODEFILL_SLOW") != "1", reason="loads the real model; set CODEFILL_SLOW=1")
def test_extension_against_real_model() -> None:
    """The same with the built-in model: mechanics only (the fill's text is whatever the model writes)."""
    result = _e2e("--real-model", "--timeout", "240", timeout=300)
    assert "fill selection" in result["checks"]
