"""Held-out evaluation: file collection from a fake site-packages, the same figures for the same model, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.checkpoint import load_model
from tests.conftest import write_tiny_model
from training.heldout import (
    FIGURES,
    collect_files,
    evaluate,
    load_models,
    main,
    make_masks,
    pick_windows,
    score,
    summarize,
    trained_names,
)

CODE = "".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n" for i in range(40))  # long enough for a window
WINDOW = 32


@pytest.fixture
def site(tmp_path: Path, fake_distribution) -> Path:  # type: ignore[no-untyped-def]
    """A site-packages with one held-out project, one trained project and codefill itself."""
    root = tmp_path / "site-packages"
    fake_distribution(root, "Fake_Pkg", {
        "fake_pkg/__init__.py": CODE.replace("f", "g"),
        "fake_pkg/core.py": CODE,
        "fake_pkg/tests/helpers.py": CODE,
        "fake_pkg/test_core.py": CODE,
        "fake_pkg/conftest.py": CODE,
        "fake_pkg/_vendor/six.py": CODE,
        "fake_pkg/big.py": CODE * 150,  # over 200 KB
        "fake_pkg/notes.txt": CODE,
    })
    fake_distribution(root, "Trained.Pkg", {"trained_pkg/mod.py": CODE.replace("a", "x")})
    fake_distribution(root, "codefill", {"codefill/engine.py": CODE.replace("a", "y")})
    return root


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A sources.json as training writes it, naming the trained project in another spelling."""
    path = tmp_path / "sources.json"
    path.write_text(json.dumps([{"name": "trained_pkg", "license": "MIT", "files": "1"}]))
    return path


@pytest.fixture(scope="module")
def two_copies(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The tiny model directory twice, under different names."""
    root = tmp_path_factory.mktemp("copies")
    return [Path(shutil.copytree(tiny_model_dir, root / name)) for name in ("old", "new")]


def test_trained_names_normalised(sources: Path) -> None:
    assert trained_names([sources]) == {"trained-pkg", "codefill"}


def test_collect_skips_trained_projects_tests_vendored_and_big_files(site: Path, sources: Path) -> None:
    files = collect_files([site], trained_names([sources]))
    assert files == {"fake-pkg": [site / "fake_pkg/__init__.py", site / "fake_pkg/core.py"]}


def test_collect_without_sources_keeps_other_projects_but_not_codefill(site: Path) -> None:
    files = collect_files([site], trained_names([]))
    assert sorted(files) == ["fake-pkg", "trained-pkg"]


def test_pick_windows_caps_per_project_and_is_seeded(site: Path, tiny_model_dir: Path) -> None:
    _, tok = load_model(tiny_model_dir)
    files = collect_files([site], {"codefill"})
    one = pick_windows(files, tok, per_project=1, max_files=10, seed=3, window=WINDOW)
    assert sorted(w.project for w in one) == ["fake-pkg", "trained-pkg"]
    assert all(len(w.ids) == WINDOW for w in one)
    again = pick_windows(files, tok, per_project=1, max_files=10, seed=3, window=WINDOW)
    assert [(w.path, w.start) for w in again] == [(w.path, w.start) for w in one]
    assert len(pick_windows(files, tok, per_project=5, max_files=2, seed=3, window=WINDOW)) == 2
    assert len(pick_windows(files, tok, per_project=5, max_files=10, seed=3, window=WINDOW)) == 3


def test_score_matches_full_logits(tiny_model_dir: Path) -> None:
    model, tok = load_model(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(0, tok.mask_id, (5, WINDOW), generator=torch.Generator().manual_seed(0))
    masks = make_masks(5, WINDOW, seed=0)
    got = summarize(score(model, tok.mask_id, ids, masks, batch=2))
    m = masks["0.5"]
    logits, _ = model(torch.where(m, tok.mask_id, ids))
    want = F.cross_entropy(logits[m], ids[m]).item()
    assert got["ce@0.5"] == pytest.approx(want, rel=1e-5)
    span = masks["span"]
    logits, _ = model(torch.where(span, tok.mask_id, ids))
    assert got["span_acc"] == pytest.approx((logits[span].argmax(-1) == ids[span]).float().mean().item())
    assert span.sum(1).tolist() == [16] * 5


def test_identical_models_give_identical_figures(site: Path, two_copies: list[Path]) -> None:
    report = evaluate(two_copies, [], [site], max_files=10, per_project=5, seed=0, window=WINDOW,
                      exclude=("trained_pkg",))
    assert list(report["projects"]) == ["fake-pkg"]
    old, new = report["figures"]["old"], report["figures"]["new"]
    assert old == new
    assert report["difference"] == {k: 0.0 for k in FIGURES}
    assert 0 < old["ce@0.15"] < 20 and 0 <= old["span_acc"] <= 1
    assert old["ce_mean"] == pytest.approx(sum(old[f"ce@{t}"] for t in (0.15, 0.5, 0.85)) / 3)


def test_different_tokenizers_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = write_tiny_model(tmp_path / "other", vocab=300)
    with pytest.raises(ValueError, match="different tokenizers"):
        load_models([tiny_model_dir, other])


def test_cli_writes_json(site: Path, sources: Path, two_copies: list[Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    rc = main(["--models", *map(str, two_copies), "--sources", str(sources), "--root", str(site),
               "--window", str(WINDOW), "--threads", "1", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert list(report["projects"]) == ["fake-pkg"]
    assert report["projects"]["fake-pkg"]["files"] == 2
    assert len(report["windows"]) == 2
    assert set(report["figures"]["old"]) == set(FIGURES)
    printed = capsys.readouterr().out
    assert "difference = new - old" in printed and "fake-pkg (2)" in printed


def test_cli_reports_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", str(tmp_path / "nowhere"), "--root", str(tmp_path)]) == 1
    assert "heldout:" in capsys.readouterr().err


def test_javascript_from_npm_tarballs_leaves_out_trained_packages(two_copies: list[Path], tmp_path: Path) -> None:
    from tests.test_npm_corpus import JS, make_tarball
    from training.heldout import collect_npm

    npm = tmp_path / "npm"
    npm.mkdir()
    js = JS * 3  # long enough for a window
    make_tarball(npm / "fresh-1.0.0.tgz", {"name": "fresh", "version": "1.0.0", "license": "MIT"},
                 {"lib/a.js": js, "dist/a.min.js": js, "test/a.js": js})
    make_tarball(npm / "seen-2.0.0.tgz", {"name": "seen", "version": "2.0.0", "license": "MIT"}, {"index.js": js})
    sources = tmp_path / "sources.json"  # as training.npm writes it: "name version"
    sources.write_text(json.dumps([{"name": "seen 2.0.0", "license": "MIT", "files": "1", "language": "javascript"}]))
    assert "seen" in trained_names([sources])
    files = collect_npm(npm, trained_names([sources]), tmp_path / "out")
    assert list(files) == ["fresh"] and [p.read_text() for p in files["fresh"]] == [js]
    report = evaluate(two_copies, [sources], [], max_files=10, per_project=5, seed=0, window=WINDOW, npm=npm)
    assert list(report["projects"]) == ["fresh"] and report["figures"]["old"] == report["figures"]["new"]
