"""PNG plots of benchmark results (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


COLORS = {"diffusion cache on": "#1f5fbf", "diffusion cache off": "#7fa8e0", "ar-ours": "#c0392b",
          "ar-hf": "#e67e22"}


def plot_engine(result: dict[str, Any], out: Path) -> Path:
    """Generated tokens/s against span length: a panel per dtype and batch size, a line per method (and cache);
    the prototypes of engine changes in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = sorted({r["batch"] for r in rows})
    dtypes = [d for d in ("float32", "bfloat16") if any(r["dtype"] == d for r in rows)]
    dtypes += sorted({r["dtype"] for r in rows} - set(dtypes))
    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(len(dtypes), len(batches), figsize=(5.2 * len(batches), 3.8 * len(dtypes)),
                             squeeze=False, sharex=True)
    for i, dtype in enumerate(dtypes):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            series: dict[str, list[tuple[int, float]]] = {}
            for r in rows:
                if r["batch"] != batch or r["dtype"] != dtype:
                    continue
                cache = "" if r.get("cache") is None else (" cache on" if r["cache"] else " cache off")
                series.setdefault(f"{r['method']}{cache}", []).append((r["k"], r["tokens_per_s"]))
            for label, pts in sorted(series.items()):
                pts.sort()
                proto = label not in COLORS
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ":" if proto else "-", marker="o",
                        color="#999999" if proto else COLORS[label], alpha=0.7 if proto else 1.0,
                        markersize=3 if proto else 5, label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_title(f"{dtype}, batch {batch}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(dtypes) - 1:
                ax.set_xlabel("tokens generated per fill (k)")
            if j == 0:
                ax.set_ylabel("generated tokens/s (median)")
            ax.legend(fontsize=7)
    hw = result.get("hardware", {})
    model = result.get("model", {})
    where = hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('torch_threads', '?')} threads"
    fig.suptitle(f"codefill bench engine: {model.get('weights', '?')}\n{where}; torch {hw.get('torch', '?')}; "
                 f"load average {(hw.get('load_average') or ['?'])[0]}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def plot_lsp(result: dict[str, Any], out: Path) -> Path:
    """Request-to-answer latency per hole kind: median and p95 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(rows)), 4.4))
    names = [r["hole"].replace(", ", "\n") for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["median_ms"] for r in rows], width=0.4, label="median")
    ax.bar([i + 0.2 for i in x], [r["p95_ms"] for r in rows], width=0.4, label="p95")
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("request to answer (ms)")
    ax.set_title("codefill bench lsp: textDocument/inlineCompletion", fontsize=9)
    ax.legend()
    fig.tight_layout()
    return _save(fig, out)


def plot_device(result: dict[str, Any], out: Path) -> Path:
    """GPU benchmark: median time to fill k tokens per method and variant, a panel per model and batch size;
    the diffusion rows blue, the autoregressive ones red and orange, as in plot_engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "median_ms" in r]
    panels = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda mb: (mb[0] != "open-dcoder-0.5b", mb))
    if not panels:
        raise ValueError("no measured rows to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.9), squeeze=False)
    for ax, (model, batch) in zip(axes[0], panels):
        mine = [r for r in rows if r["model"] == model and r["batch"] == batch]
        labels = [f"{r['method']} {r['variant']}" for r in mine]
        colors = [COLORS["ar-hf"] if r["method"] == "ar-hf" else COLORS["ar-ours"] if r["method"] == "ar-ours"
                  else COLORS["diffusion cache on"] for r in mine]
        ax.barh(range(len(mine)), [r["median_ms"] for r in mine], color=colors)
        ax.set_yticks(range(len(mine)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"median ms to fill {mine[0]['k']} tokens")
        ax.set_title(f"{model}, batch {batch}", fontsize=9)
    hw = result.get("hardware", {})
    fig.suptitle(f"codefill bench device: {hw.get('gpu') or hw.get('cpu', '')}, torch {hw.get('torch', '')}",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig: Any, out: Path) -> Path:
    """Write the figure as a PNG (making the folders above it) and free it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
