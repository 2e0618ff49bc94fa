"""training/device_train.sh around `codefill train`'s stop on SIGTERM, with a stand-in trainer (no torch, seconds):
the hard limit's SIGTERM must reach the trainer alone (not its batch-loading workers), a saved stop must come back
as the model with "interrupted" in run.json, an export killed between its renames must not lose the model, and the
script must never exit 124/137 (the device tool would read those as its own timeout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "training" / "device_train.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")

# The stand-in for `python -m engine.cli train`: one "loader worker" in its process group, like the DataLoader's.
# On SIGTERM it saves (writes --export) and exits 130 if the worker survived, and fails without saving if the
# worker was killed too (what a SIGTERM to the whole group did to the real trainer). FAKE_MODE=killed-mid-export
# leaves a complete model.tmp and an older model.old, no model/, and dies of SIGKILL.
FAKE_TRAIN = r'''
import json, os, signal, subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
export = Path(args[args.index("--export") + 1])

def write_model(path, interrupted):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    session = {"start_step": 0, "end_step": 5, "tokens": 10}
    if interrupted:
        session["interrupted"] = "SIGTERM"
    record = {"state": {"step": 5, "tokens_seen": 10, "sessions": [session], "history": []}}
    (path / "training.json").write_text(json.dumps(record))

if os.environ.get("FAKE_MODE") == "killed-mid-export":
    write_model(export.with_name(export.name + ".tmp"), interrupted=True)
    write_model(export.with_name(export.name + ".old"), interrupted=False)
    os.kill(os.getpid(), signal.SIGKILL)

worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("training", flush=True)
while not stop:
    time.sleep(0.05)
time.sleep(0.5)
if worker.poll() is not None:
    print("DataLoader worker is killed by signal: Terminated", flush=True)
    sys.exit(1)
worker.kill()
write_model(export, interrupted=True)
print("interrupted (SIGTERM), saved", flush=True)
sys.exit(130)
'''


def run_script(tmp_path: Path, mode: str) -> tuple[int, str, Path]:
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    wrapper = tmp_path / "python"
    wrapper.write_text("#!/usr/bin/env bash\n"
                       'case " $* " in *" engine.cli train "*) exec "$REAL_PY" "$FAKE_TRAIN" "$@" ;; esac\n'
                       'exec "$REAL_PY" "$@"\n')
    wrapper.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("tokenizer.json", "train.npz", "valid.npz"):
        (data / name).write_text("")
    init = tmp_path / "init"
    init.mkdir()
    (init / "config.json").write_text("{}")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(wrapper), "REAL_PY": sys.executable, "FAKE_TRAIN": str(fake),
           "FAKE_MODE": mode, "SMOKE": "1", "DATA": str(data), "INIT": str(init), "OUT": str(out),
           "RUN_DIR": str(tmp_path / "run"), "HARD_S": "1"}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr, out


def test_hard_limit_sigterm_saves_and_the_model_comes_back(tmp_path: Path) -> None:
    rc, log, out = run_script(tmp_path, "sigterm")
    assert "DataLoader worker is killed" not in log, log  # the SIGTERM reached the trainer alone
    assert "interrupted (SIGTERM), saved" in log, log
    assert rc == 5, log  # stopped early, model back; not timeout's 124
    assert json.loads((out / "run.json").read_text())["interrupted"] == "SIGTERM"
    assert "stopped early (status 124, SIGTERM" in log, log


def test_export_killed_between_renames_keeps_the_new_model(tmp_path: Path) -> None:
    rc, log, out = run_script(tmp_path, "killed-mid-export")
    assert rc == 5, log  # not 137
    assert "model/ restored from" in log, log
    assert json.loads((out / "run.json").read_text())["interrupted"] == "SIGTERM"  # model.tmp, the newer copy
    assert not (out / "model.tmp").exists() and not (out / "model.old").exists()


def test_device_bench_cut_by_its_hard_timeout_exits_5_not_124(tmp_path: Path) -> None:
    """benchmarks/device.sh run on its own: its hard timeout must not surface as 124/137 (the device tool's own
    timeout status); the log says what happened."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\n"
                    'case "$*" in *benchmarks.bench*) sleep 30 ;; *) echo "python 3 torch fake" ;; esac\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(out), "TIMEOUT_S": "1"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "device.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    log = (out / "device.log").read_text()
    assert "hard timeout (1 s) cut it short" in log
