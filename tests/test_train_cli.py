"""`codefill train` as a user meets it: Ctrl-C, resuming (the same shape, the same tokenizer), run directories
that are not runs, bad numbers, sources that add nothing, and what the corpus reads. Tiny models, a few steps."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from training.objective import ObjectiveConfig
from training.train import TrainConfig, save_state, train

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "def area(w, h):\n    if w < 0 or h < 0:\n        raise ValueError('negative')\n    return w * h\n",
]

TINY = TrainConfig(preset="tiny", batch_size=2, lr=1e-3, warmup_steps=2, minutes=5, eval_every=1000, threads=1,
                   objective=ObjectiveConfig(window=64, max_middle=16, max_ends=8))


def make_data(out: Path, texts: list[str], vocab: int = 400) -> Path:
    from engine.tokenizer import CodeTokenizer
    from training.bpe import train_bpe
    from training.dataset import tokenize_split

    out.mkdir(parents=True)
    train_bpe(texts * 20, vocab, out / "tokenizer.json")
    tok = CodeTokenizer.from_file(out / "tokenizer.json")
    tokenize_split(texts * 4, tok).save(out / "train.npz")
    tokenize_split(texts[:2], tok).save(out / "valid.npz")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("train-cli") / "data", SNIPPETS)


def cli_args(run: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "--run", str(run), "--data", str(data), "--device", "cpu", "--threads", "1", "--batch-size", "2",
            "--warmup-steps", "2", *extra]


def saved_step(run: Path) -> int:
    return json.loads((run / "train_state.json").read_text())["state"]["step"]


def interrupt_at_call(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C (a real SIGINT to this process) during the n-th training step's loss."""
    import training.train as t

    calls = {"n": 0}
    real = t.masked_loss

    def loss(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(t, "masked_loss", loss)


def test_ctrl_c_saves_the_run_and_the_same_command_resumes_it(data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    interrupt_at_call(monkeypatch, 3)
    try:
        state = train(run, data, replace(TINY, max_steps=1000), "cpu")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped train() and the steps trained were not saved")
    # The step in progress finishes, then the run is saved as at the end, and says so.
    assert state.step == 3 and state.sessions[-1]["interrupted"] == "SIGINT"
    assert saved_step(run) == 3
    assert "interrupted (SIGINT), saved: step 3" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    monkeypatch.undo()
    # The command line: exit status 130 after saving; the same command continues the run.
    interrupt_at_call(monkeypatch, 2)
    assert main(cli_args(run, data, "--max-steps", "1000")) == 130
    assert saved_step(run) == 5
    monkeypatch.undo()
    assert main(cli_args(run, data, "--max-steps", "7")) == 0
    assert "resuming" in capsys.readouterr().err and saved_step(run) == 7


def test_resume_keeps_the_runs_shape_and_refuses_another(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(cli_args(run, data, "--preset", "tiny", "--max-steps", "2")) == 0
    before = (run / "model.safetensors").read_bytes()
    # --preset naming another shape: refused before anything runs (it used to be ignored without a word).
    assert main(cli_args(run, data, "--preset", "cpu", "--max-steps", "4")) == 2
    assert saved_step(run) == 2 and (run / "model.safetensors").read_bytes() == before
    # No --preset: the run's own shape, and its preset kept in the record.
    assert main(cli_args(run, data, "--max-steps", "3")) == 0
    meta = json.loads((run / "train_state.json").read_text())
    assert meta["state"]["step"] == 3 and meta["config"]["preset"] == "tiny"
    assert main(cli_args(run, data, "--preset", "tiny", "--max-steps", "4")) == 0


def test_resume_refuses_data_with_another_tokenizer(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, data, replace(TINY, max_steps=2), "cpu")
    other = make_data(tmp_path / "other", [s.upper() for s in SNIPPETS], vocab=330)
    with pytest.raises(ValueError, match="tokenizer"):
        train(run, other, replace(TINY, max_steps=4), "cpu")
    assert saved_step(run) == 2
    assert (run / "tokenizer.json").read_text() == (data / "tokenizer.json").read_text()


def test_a_directory_that_is_not_a_run_is_not_replaced(data: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="no training state"):
        train(mine, data, replace(TINY, max_steps=2), "cpu")
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "mine.old").exists()
    # A run directory under a file: said before any training, not at the first save.
    (tmp_path / "afile").write_text("")
    assert main(cli_args(tmp_path / "afile" / "run", data, "--max-steps", "2")) == 1


def test_a_save_cut_short_is_recovered_not_restarted(data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    train(run, data, replace(TINY, max_steps=2), "cpu")
    old = tmp_path / "run.old"
    # Cut between the two renames of a save: the state sits in run.old and run is gone. Resuming picks it up.
    run.rename(old)
    state = train(run, data, replace(TINY, max_steps=3), "cpu")
    assert state.sessions[-1]["start_step"] == 2 and saved_step(run) == 3 and not old.exists()
    # Cut after the last rename: a stale run.old beside the newer run no longer makes every later save fail.
    old.mkdir()
    (old / "x").write_text("stale")
    state = train(run, data, replace(TINY, max_steps=4), "cpu")
    assert saved_step(run) == 4 and not old.exists()
    assert callable(save_state)


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--eval-every", "0"], ["--minutes", "0"],
                                    ["--minutes", "-1"], ["--max-steps", "-3"], ["--threads", "-2"],
                                    ["--workers", "-1"], ["--lr", "0"], ["--lr", "nan"], ["--vocab", "0"],
                                    ["--checkpoint-minutes", "0"], ["--shard-mb", "-1"]])
def test_bad_numbers_are_usage_errors(data: Path, tmp_path: Path, option: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(cli_args(tmp_path / "run", data, "--max-steps", "2", *option))
    assert exc.value.code == 2 and option[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_no_warmup_and_unknown_devices(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli_args(tmp_path / "run", data, "--warmup-steps", "0", "--max-steps", "2")) == 0
    with pytest.raises(SystemExit) as stop:  # a usage error (exit 2), before anything loads
        main(cli_args(tmp_path / "run2", data, "--device", "foo"))
    assert stop.value.code == 2 and "expected auto, cpu, cuda, cuda:N or mps, got 'foo'" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_sources_that_would_be_ignored_or_add_nothing_are_errors(data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.py").write_text("def scale(values, factor):\n    return [v * factor for v in values]\n")
    # Built data is never rebuilt: --source with it used to be dropped without a word.
    assert main(cli_args(tmp_path / "run", data, "--source", str(src))) == 2
    assert "already built" in capsys.readouterr().err
    assert main(cli_args(tmp_path / "run", tmp_path / "new", "--source", str(tmp_path / "nope"))) == 2
    assert "no such directory" in capsys.readouterr().err
    # A source none of whose files make it into the corpus (here binary): an error, and no corpus saved.
    import training.pipeline as pipeline

    monkeypatch.setattr(pipeline, "default_roots", lambda wheels: [])  # no standard library: fast
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.py").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="no file of it"):
        pipeline.prepare_data(tmp_path / "d", [src, junk], None, 300)
    assert not (tmp_path / "d" / "corpus" / "train.jsonl").exists()


def test_the_corpus_reads_declared_encodings_and_skips_binary_files(tmp_path: Path) -> None:
    from training.corpus import gather

    root = tmp_path / "src"
    root.mkdir()
    (root / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\ndef caf\xe9():\n    return 'na\xefve r\xe9sum\xe9'\n")
    (root / "bom.py").write_bytes(b"\xef\xbb\xbfdef plain(x):\n    return x + 1\n")
    (root / "bad.py").write_bytes(b"def broken():\n    return '\xff\xfe not utf-8'\n")
    (root / "binary.py").write_bytes(b"\x00\x01compiled\x00" * 50 + b"abc" * 100)
    corpus = gather([root], valid_share=False)
    assert sorted(corpus.train) == ["# -*- coding: latin-1 -*-\ndef caf\u00e9():\n    return 'na\u00efve r\u00e9sum\u00e9'\n",
                                    "def plain(x):\n    return x + 1\n"]
    assert not any("\ufffd" in t for t in corpus.train)
    with pytest.raises(ValueError, match="no such directory"):
        gather([tmp_path / "nope"])


def test_token_arrays_are_saved_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.dataset import TokenArrays

    arrays = TokenArrays(np.arange(10, dtype=np.uint16), np.array([0, 10]), np.zeros((0, 2), dtype=np.int64))

    def cut_short(path, **kwargs):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", cut_short)
    with pytest.raises(KeyboardInterrupt):
        arrays.save(tmp_path / "train.npz")
    assert not (tmp_path / "train.npz").exists()  # the pipeline would have taken it for finished


def test_sigterm_to_the_whole_process_group_saves(data: Path, tmp_path: Path) -> None:
    """`timeout` or a job control signal reaches the batch loader's workers too: they leave it to the trainer, which
    saves (a worker killed by it used to fail the run unsaved)."""
    import os
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-u", "-m", "engine.cli", *cli_args(run, data, "--preset", "tiny",
                             "--workers", "1", "--max-steps", "1000000", "--log-seconds", "0.2")],
                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:  # the workers are drawing batches once steps are logged
            if line.startswith("step ") or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGTERM)
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "interrupted (SIGTERM), saved" in err and "killed by signal" not in err
    assert saved_step(run) > 0
