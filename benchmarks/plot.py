"""PNG plots of benchmark results (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_engine(result: dict[str, Any], out: Path) -> Path:
    """Generated tokens/s against span length, one panel per batch size; a line per method, cache and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.2 * len(batches), 4.6), squeeze=False)
    styles = {"float32": "-", "bfloat16": "--"}
    for ax, batch in zip(axes[0], batches):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["batch"] != batch:
                continue
            cache = "" if r.get("cache") is None else (" cache on" if r["cache"] else " cache off")
            series.setdefault(f"{r['method']}{cache} {r['dtype']}", []).append((r["k"], r["tokens_per_s"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            dtype = label.rsplit(" ", 1)[1]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(dtype, ":"), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ks = sorted({r["k"] for r in rows})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("tokens generated per fill (k)")
        ax.set_ylabel("generated tokens/s (median)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    hw = result.get("hardware", {})
    model = result.get("model", {})
    fig.suptitle(f"codefill bench engine: {model.get('weights', '?')}; {hw.get('cpu', '?')}"
                 f"{', ' + hw['gpu'] if hw.get('gpu') else ''}; torch {hw.get('torch', '?')}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_lsp(result: dict[str, Any], out: Path) -> Path:
    """Request-to-answer latency per hole kind: median and p95 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    names = [r["hole"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["median_ms"] for r in rows], width=0.4, label="median")
    ax.bar([i + 0.2 for i in x], [r["p95_ms"] for r in rows], width=0.4, label="p95")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("request to answer (ms)")
    ax.set_title("codefill bench lsp: textDocument/inlineCompletion", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
