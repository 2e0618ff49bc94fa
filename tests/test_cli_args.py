"""The command lines' arguments: numbers out of range are usage errors naming the option, devices are checked before
anything loads, and both commands say their version. No model is loaded here."""

from __future__ import annotations

import pytest
import torch

from engine import cli
from engine.errors import DeviceError, EngineError
from engine.runner import pick_device


def _usage_error(capsys: pytest.CaptureFixture[str], main, argv: list[str]) -> str:  # type: ignore[no-untyped-def]
    """Run a command line that argparse must refuse; its stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["fill", "a.py:1:1", "--steps", "-1"], "--steps"),
    (["fill", "a.py:1:1", "--max-tokens", "0"], "--max-tokens"),
    (["fill", "a.py:1:1", "--max-tokens", "-5"], "--max-tokens"),
    (["fill", "a.py:1:1", "--candidates", "0"], "--candidates"),
    (["fill", "a.py:1:1", "--candidates", "11"], "--candidates"),
    (["eval", "--steps", "-1"], "--steps"),
    (["eval", "--limit", "0"], "--limit"),
    (["eval", "--sample", "-2"], "--sample"),
    (["eval", "--batch-size", "0"], "--batch-size"),
    (["eval", "--workers", "0"], "--workers"),
    (["eval", "--timeout", "0"], "--timeout"),
    (["eval", "--memory-mb", "32"], "--memory-mb"),
    (["serve", "--steps", "-3"], "--steps"),
    (["serve", "--max-batch", "0"], "--max-batch"),
    (["bench", "engine", "--steps", "-1"], "--steps"),
    (["bench", "lsp", "--steps", "-1"], "--steps"),
])
def test_numbers_out_of_range_are_usage_errors(capsys, argv, option):  # type: ignore[no-untyped-def]
    """Refused by argparse (exit status 2, before any header or model), naming the option."""
    err = _usage_error(capsys, cli.main, argv)
    assert f"argument {option}: expected a " in err
    assert "Traceback" not in err and "must not be negative" not in err


@pytest.mark.parametrize("argv, option", [
    (["eval", "--out", "{dir}"], "--out"),
    (["eval", "--summary-json", "{file}/x.json"], "--summary-json"),
    (["eval", "--out", "{file}/deeper/x.jsonl"], "--out"),
    (["bench", "engine", "--out", "{dir}"], "--out"),
    (["bench", "engine", "--plot", "{file}/plot.png"], "--plot"),
    (["bench", "lsp", "--out", "{file}/lsp.json"], "--out"),
])
def test_output_files_that_cannot_be_written_are_usage_errors(tmp_path, capsys, argv,  # type: ignore[no-untyped-def]
                                                              option):
    """Refused before any model loads or any task runs: a long run must not end in "No such file or directory"."""
    (tmp_path / "file").write_text("")
    err = _usage_error(capsys, cli.main, [a.format(dir=tmp_path, file=tmp_path / "file") for a in argv])
    assert f"argument {option}: " in err and "Traceback" not in err
    assert "is a directory" in err or "is not a directory" in err


def test_version(capsys):  # type: ignore[no-untyped-def]
    from lsp_server.cli import build_parser

    for run, prog in ((cli.main, "codefill"), (build_parser().parse_args, "codefill-lsp")):
        with pytest.raises(SystemExit) as info:
            run(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out == f"{prog} {cli.package_version()}\n"


def test_help_names_every_dtype_and_the_bench_steps(capsys):  # type: ignore[no-untyped-def]
    for argv in (["fill", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert "float16" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        cli.main(["bench", "engine", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ceil(k/4) between 4 and 32 on every device, not the engine's own default" in text


def test_unknown_and_absent_devices_are_engine_errors(monkeypatch):  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceError, match=r"unknown device 'bogus': use auto, cpu, cuda, cuda:N or mps"):
        pick_device("bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=f"device {name}: no CUDA device is available"):
            pick_device(name)
    with pytest.raises(DeviceError, match="no MPS"):
        pick_device("mps")
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"device cuda:2: no such CUDA device \(this machine has cuda:0 to cuda:1\)"):
        pick_device("cuda:2")
    assert issubclass(DeviceError, EngineError)


def test_a_bad_device_is_one_line_before_the_model_loads(tmp_path, tiny_model_dir, capsys,  # type: ignore[no-untyped-def]
                                                         monkeypatch):
    import engine.checkpoint

    monkeypatch.setattr(engine.checkpoint, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(SystemExit) as stop:  # a usage error (exit 2), before anything loads
        cli.main(["fill", f"{tmp_path / 'a.py'}:1:1", "--model", str(tiny_model_dir), "--device", "bogus"])
    assert stop.value.code == 2
    assert "argument --device: expected auto, cpu, cuda, cuda:N or mps, got 'bogus'" in capsys.readouterr().err


def test_train_data_must_be_a_directory(tmp_path, capsys):  # type: ignore[no-untyped-def]
    (tmp_path / "a.py").write_text("x = 1\n")
    assert cli.main(["train", "--data", str(tmp_path / "a.py"), "--run", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"codefill: --data {tmp_path / 'a.py'}: not a directory\n"
