"""Write MODEL_CARD.md for a trained model directory from its own records, so every figure in it is measured.

    python -m training.model_card --model engine/models/codefill-base --sources data/corpus/sources.json \
        --eval eval-summary.json [--eval more.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.config import ModelConfig


def _eval_rows(summaries: list[dict]) -> list[str]:
    rows = []
    for summary in summaries:
        steps = summary.get("decoding", {}).get("steps")
        how = f", `--steps {steps}`" if isinstance(steps, int) else ""
        for name, s in summary.get("results", {}).items():
            rows.append(f"| {name}{how} | {s['n']} | {s['pass_at_1']:.2f} | {s['exact']:.2f} | "
                        f"{s['empty']:.2f} | {s['median_latency_ms']} |")
    return rows


def _one_line(text: str) -> str:
    """A license field's first line (some packages put their whole license text in it)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def render(model: Path, sources: list[dict], summaries: list[dict], notes: str) -> str:
    """The card's markdown."""
    cfg = ModelConfig.from_dict(json.loads((model / "config.json").read_text()))
    state_path = model / "training.json"
    meta = json.loads(state_path.read_text()) if state_path.exists() else {}
    state = meta.get("state", {})
    train_cfg = meta.get("config", {})
    sessions = state.get("sessions", [])
    hardware = sorted({s.get("hardware", "?") for s in sessions}) or ["not recorded"]
    history = state.get("history", [])
    lines = [
        f"# {model.name}",
        "",
        "A small bidirectional transformer trained by codefill's own recipe (`codefill train`) for masked-diffusion",
        "code infill. It is the model `Engine.from_pretrained()` loads when no path is given.",
        "",
        "## Shape",
        "",
        f"- {cfg.num_parameters() / 1e6:.2f}M parameters: width {cfg.hidden_size}, {cfg.num_layers} layers, "
        f"{cfg.num_heads} heads ({cfg.num_kv_heads} key/value heads), SwiGLU {cfg.intermediate_size}, "
        f"tied embeddings: {cfg.tie_embeddings}",
        f"- byte-level BPE of {cfg.vocab_size} tokens (line breaks and indentation are tokens of their own), "
        f"special tokens `{cfg.mask_token}` and `{cfg.end_token}`",
        "",
        "## Training",
        "",
        f"- tokens seen: {state.get('tokens_seen', 0) / 1e6:.1f}M in {state.get('step', 0)} steps of "
        f"{train_cfg.get('batch_size', '?')} windows of 256 tokens",
        f"- time: {state.get('seconds', 0) / 60:.0f} minutes on {', '.join(hardware)}",
        f"- optimizer: AdamW, peak learning rate {train_cfg.get('lr', '?')}, weight decay "
        f"{train_cfg.get('weight_decay', '?')}, linear decay over the last {train_cfg.get('decay_share', '?')} "
        "of the time budget",
        "- objective: masked diffusion with infill in mind: 70% of windows mask part of 1-3 contiguous middles "
        "(whole lines, rests of lines, tree-sitter syntax nodes or random spans) each followed by 0-32 end "
        "tokens; 30% mask the whole window at rate t ~ U(0.05, 1); loss on masked positions weighted by 1/t",
    ]
    if history:
        last = history[-1]
        lines.append(f"- validation loss (held-out files, same objective): {history[0]['valid_loss']} after "
                     f"{history[0]['tokens'] / 1e6:.1f}M tokens, {last['valid_loss']} at the end")
    languages = list(dict.fromkeys(s.get("language", "python") for s in sources)) or ["python"]
    names = {"python": "Python", "javascript": "JavaScript"}
    kinds = " and ".join(names.get(lang, lang) for lang in languages)
    lines += ["", "## Data", "",
              f"{kinds} source files, de-duplicated, tests (and for JavaScript bundles, minified and transpiled "
              "copies) left out; 1% of files held out for validation. Never the benchmarks." if len(languages) > 1
              else f"{kinds} source files, de-duplicated, test directories left out; 1% of files held out for "
              "validation. Never the benchmarks.", ""]
    if len(languages) > 1:
        lines += ["| source | language | license | files |", "| --- | --- | --- | --- |"]
        lines += [f"| {s['name']} | {names.get(s.get('language', 'python'), s.get('language'))} | "
                  f"{_one_line(s['license'])} | {s['files']} |" for s in sources]
    else:
        lines += ["| source | license | files |", "| --- | --- | --- |"]
        lines += [f"| {s['name']} | {_one_line(s['license'])} | {s['files']} |" for s in sources]
    lines += ["", "## Evaluation", ""]
    rows = _eval_rows(summaries)
    if rows:
        lines += ["Greedy decoding; protocol in the README (`codefill eval`).", "",
                  "| task set | n | pass@1 % | exact % | empty % | median latency ms |", "| --- | --- | --- | --- | --- | --- |"]
        lines += rows
    else:
        lines.append("Not evaluated yet.")
    if notes:
        lines += ["", "## Notes", "", notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write <model>/MODEL_CARD.md."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--sources", required=True)
    p.add_argument("--eval", action="append", default=[])
    p.add_argument("--notes", default="")
    args = p.parse_args(argv)
    model = Path(args.model)
    sources = json.loads(Path(args.sources).read_text())
    summaries = [json.loads(Path(e).read_text()) for e in args.eval]
    (model / "MODEL_CARD.md").write_text(render(model, sources, summaries, args.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
