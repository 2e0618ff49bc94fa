"""JavaScript for the training corpus (training/npm.py): which files of an npm tarball are kept, licenses, syntax
spans, and packing them beside the Python data. Tarballs are made here; nothing is downloaded."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from engine.tokenizer import CodeTokenizer
from training.corpus import gather
from training.dataset import TokenArrays, tokenize_split
from training.device_data import load_split, pack
from training.npm import keep_js, package_license, read_list, read_tarball

JS = """'use strict';

const path = require('path');

function joinAll(parts, sep) {
  const out = [];
  for (const part of parts) {
    if (part) {
      out.push(part.trim());
    }
  }
  return out.join(sep || path.sep);
}

class Registry {
  constructor() {
    this.items = new Map();
  }

  add(name, value) {
    this.items.set(name, value);
    return this;
  }
}

module.exports = { joinAll, Registry };
"""


def make_tarball(path: Path, meta: dict, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in {"package.json": json.dumps(meta), **files}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_keep_js_keeps_hand_written_source_only() -> None:
    assert keep_js("package/lib/router.js") and keep_js("package/index.mjs") and keep_js("package/src/a.jsx")
    for rel in ["package/dist/app.js", "package/lib/app.min.js", "package/test/a.js", "package/lib/a.test.js",
                "package/examples/demo.js", "package/node_modules/x/index.js", "package/lib/cjs/a.js",
                "package/types/index.d.ts", "package/README.md", "package/lib/a.spec.js"]:
        assert not keep_js(rel), rel


def test_package_license_forms() -> None:
    assert package_license({"license": "MIT"}) == "MIT"
    assert package_license({"license": {"type": "BSD-3-Clause", "url": "x"}}) == "BSD-3-Clause"
    assert package_license({"licenses": [{"type": "MIT"}, {"type": "Apache-2.0"}]}) == "MIT OR Apache-2.0"
    assert package_license({}) == ""


def test_gather_reads_tarballs_and_keeps_permissive_packages(tmp_path: Path) -> None:
    good = make_tarball(tmp_path / "good-1.0.0.tgz", {"name": "good", "version": "1.0.0", "license": "ISC"},
                        {"lib/registry.js": JS, "dist/bundle.js": "var a=1;" * 50, "test/t.js": "it('x', f);\n"})
    gpl = make_tarball(tmp_path / "gpl-2.0.0.tgz", {"name": "gpl", "version": "2.0.0", "license": "GPL-3.0"},
                       {"index.js": JS.replace("Registry", "Other")})
    name, lic, texts = read_tarball(good)
    assert (name, lic, texts) == ("good 1.0.0", "ISC", [JS])
    corpus = gather([good, gpl], suffixes=(".js",))
    assert corpus.train + corpus.valid == [JS]
    assert corpus.sources == [{"name": "good 1.0.0", "license": "ISC", "files": "1"}]


def test_javascript_gets_its_own_syntax_spans(tmp_path: Path) -> None:
    from training.bpe import train_bpe

    train_bpe([JS] * 20, 400, tmp_path / "tokenizer.json")
    tok = CodeTokenizer.from_file(tmp_path / "tokenizer.json")
    arrays = tokenize_split([JS], tok, language="javascript")
    assert len(arrays.spans) > 10 and arrays.spans.max() <= len(arrays.tokens)
    # A span covers whole syntax nodes: the method `add(...) { ... }` is one of them.
    texts = {tok.decode(arrays.tokens[a:b].tolist()) for a, b in arrays.spans}
    assert any(t.strip().startswith("add(name, value)") and t.strip().endswith("}") for t in texts)
    python_spans = tokenize_split([JS], tok, language="python").spans  # the wrong grammar finds other nodes
    assert not np.array_equal(python_spans, arrays.spans)


def test_pack_adds_extra_training_documents_and_sources(tmp_path: Path) -> None:
    from training.bpe import train_bpe

    py = ["def add(a, b):\n    return a + b\n", "class Box:\n    def __init__(self):\n        self.x = 1\n"]
    data, js = tmp_path / "data", tmp_path / "js"
    (data / "corpus").mkdir(parents=True)
    (js / "corpus").mkdir(parents=True)
    train_bpe((py + [JS]) * 10, 400, data / "tokenizer.json")
    (js / "tokenizer.json").write_bytes((data / "tokenizer.json").read_bytes())
    tok = CodeTokenizer.from_file(data / "tokenizer.json")
    tokenize_split(py * 3, tok).save(data / "train.npz")
    tokenize_split(py[:1], tok).save(data / "valid.npz")
    tokenize_split([JS] * 2, tok, language="javascript").save(js / "train.npz")
    (data / "corpus" / "sources.json").write_text(json.dumps([{"name": "stdlib", "license": "PSF", "files": "6"}]))
    (js / "corpus" / "sources.json").write_text(
        json.dumps([{"name": "good 1.0.0", "license": "MIT", "files": "2", "language": "javascript"}]))
    out = tmp_path / "out"
    report = pack(data, out, preset=1, extra=[js])
    train = load_split(out, "train")
    want = TokenArrays.load(data / "train.npz").tokens.tolist() + TokenArrays.load(js / "train.npz").tokens.tolist()
    assert train.tokens.tolist() == want and report["splits"]["train"]["documents"] == 8
    assert load_split(out, "valid").tokens.tolist() == TokenArrays.load(data / "valid.npz").tokens.tolist()
    assert [s["name"] for s in json.loads((out / "sources.json").read_text())] == ["stdlib", "good 1.0.0"]
    # Data made with another tokenizer cannot join: its ids would mean other text.
    train_bpe([JS] * 10, 300, js / "tokenizer.json")
    with pytest.raises(ValueError, match="another tokenizer"):
        pack(data, tmp_path / "out2", preset=1, extra=[js])


def test_the_package_list_is_pinned() -> None:
    specs = read_list()
    assert len(specs) > 50 and all("@" in s.lstrip("@") for s in specs)
