"""Figures: codec throughput (the paper's Fig. 6) and byte distributions (its Fig. 4).

matplotlib is an optional extra (`pip install dispersiond[plots]`): it is imported
only when a figure is drawn, so the daemon never pays for it, and a missing
install ends in one actionable message rather than a traceback.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DispersiondError

BASELINE = "aes-128-cbc"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DispersiondError("--plot needs matplotlib, which is not installed: "
                               "pip install 'dispersiond[plots]' (or pip install matplotlib)"
                               ) from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_path: str) -> None:
    try:
        fig.savefig(out_path, dpi=120)
    except OSError as exc:
        raise DispersiondError(f"cannot write the plot to {out_path}: {exc.strerror}") from None
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def bench_plot(results: dict[str, float], out_path: str) -> None:
    """Bars of MB/s per algorithm, each annotated with its ratio to AES-128-CBC."""
    if not results:
        raise ValueError("no benchmark results to plot")
    plt = _pyplot()
    names = list(results)
    mbps = [results[n] for n in names]
    base = results.get(BASELINE)
    colours = ["#7f7f7f" if n.startswith("aes") else "#1f77b4" if n.startswith("se2")
               else "#d62728" for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names)), 4.2))
    bars = ax.bar(names, mbps, color=colours)
    for bar, v in zip(bars, mbps, strict=True):
        label = f"{v:.0f} MB/s"
        if base:
            label += f"\n{v / base:.2f}x"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_ylabel("MB/s (10^6 bytes of plaintext per second)")
    title = "Codec throughput"
    if base:
        title += " (ratio to AES-128-CBC above each bar)"
        ax.axhline(base, color="#7f7f7f", linestyle=":", linewidth=1)
    ax.set_title(title)
    ax.set_ylim(0, max(mbps) * 1.25)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    _save(fig, out_path)


def distribution_plot(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
                      out_path: str) -> None:
    """One row per file, one panel per byte histogram (input, then each public fragment).

    The y axis is the probability of each byte value on a log scale, with the
    uniform 1/256 dashed: a protected fragment lies flat on it, an input does not.
    """
    if not rows:
        raise ValueError("nothing to plot")
    plt = _pyplot()
    ncol = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(4.2 * ncol, 2.8 * len(rows)),
                             squeeze=False, sharey=True)
    x = np.arange(256)
    for r, (label, panels) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            if c >= len(panels):
                ax.axis("off")
                continue
            title, hist = panels[c]
            total = max(int(hist.sum()), 1)
            pdf = hist / total
            ax.bar(x, np.where(pdf > 0, pdf, np.nan), width=1.0, color="#1f77b4")
            ax.axhline(1 / 256, color="k", linestyle="--", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xlim(-1, 256)
            ax.set_title(f"{label}: {title}" if c == 0 else title, fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("byte value")
            if c == 0:
                ax.set_ylabel("probability")
    fig.tight_layout()
    _save(fig, out_path)
