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
        "restart", "deactivate",
    ]
    assert result["inline"][0]["insertText"] == "return a + b"
    assert result["fillSelection"]["result"] == {"applied": True, "text": "a * b + 0"}


@pytest.mark.skipif(not BUILTIN_CONFIG.is_file(), reason="the built-in model is not there yet (engine/models)")
@pytest.mark.skipif(os.environ.get("CODEFILL_SLOW") != "1", reason="loads the real model; set CODEFILL_SLOW=1")
def test_extension_against_real_model() -> None:
    """The same with the built-in model: mechanics only (the fill's text is whatever the model writes)."""
    result = _e2e("--real-model", "--timeout", "240", timeout=300)
    assert "fill selection" in result["checks"]
