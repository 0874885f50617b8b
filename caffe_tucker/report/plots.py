"""PNG figures: singular-value spectra of the kernel unfoldings with the chosen ranks marked."""

from __future__ import annotations

import io
import math

from caffe_tucker.compress.methods import get_method

__all__ = ["ranks_png", "pyplot", "png_bytes"]


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed).

    Imported here, not at module level: matplotlib takes about a second to import and most
    commands draw nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, without metadata that changes between runs; closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def ranks_png(choices: dict) -> bytes:
    """One panel per layer: normalised singular values per unfolding, chosen rank as a line."""
    plt = pyplot()
    items = list(choices.values())
    cols = min(4, max(1, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.flat, items):
        method = get_method(c.method)
        labels = method.unfolding_labels
        marked = method.unfolding_ranks(c.ranks)
        modes = list(c.spectra)
        colors = {mode: _COLORS[i % len(_COLORS)] for i, mode in enumerate(labels)}
        for i, mode in enumerate(modes):
            for g, values in enumerate(c.spectra[mode]):
                if len(values) == 0 or values[0] == 0:
                    continue
                ax.semilogy(range(1, len(values) + 1), values / values[0], color=colors[mode],
                            lw=1, alpha=0.9 if g == 0 else 0.5,
                            label=labels.get(mode, mode) if g == 0 else None)
            rank = marked[i] if i < len(marked) else None
            if rank:
                ax.axvline(rank, color=colors[mode], ls="--", lw=1)
        status = "untouched" if c.skipped_reason else f"ranks {list(c.ranks)}"
        ax.set_title(f"{c.layer} ({c.method}): {status}", fontsize=9)
        ax.set_xlabel("index", fontsize=8)
        ax.set_ylabel("σ / σ₁", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)
