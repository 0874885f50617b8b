"""PNG figures: singular-value spectra of the kernel unfoldings with the chosen ranks marked."""

from __future__ import annotations

import io
import logging
import math

from caffe_tucker.compress.methods import get_method

__all__ = ["ranks_png", "sparsify_png", "pyplot", "png_bytes"]


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed).

    Imported here, not at module level: matplotlib takes about a second to import and most
    commands draw nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # matplotlib logs to stderr through the root handler when its font cache is incomplete
    # ("findfont: Font family ... not found", one line per font): the tool's stderr is its own
    # one-line messages, and a fallback font changes no figure this tool draws
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
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


def sparsify_png(rows, record) -> bytes:
    """``sparsify.png``: loss, the small-weight energy in both domains and the coefficients
    against iterations (the fine-tuning phase shaded), and per-layer sparsity in both domains."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_loss, ax_energy), (ax_coef, ax_layers) = axes
    it = [r.iteration for r in rows]
    finetune = [r.iteration for r in rows if r.phase == "finetune"]
    for ax in (ax_loss, ax_energy, ax_coef):
        if finetune:
            ax.axvspan(min(finetune) - 0.5, max(finetune) + 0.5, color="0.92", lw=0)
        ax.set_xlabel("iteration (shaded: fine-tuning with masks)")
    if rows:
        ax_loss.plot(it, [r.loss for r in rows], lw=0.8, color="tab:blue")
        if all(r.loss > 0 for r in rows):
            ax_loss.set_yscale("log")
        measured = [(r.iteration, r.metric) for r in rows if r.metric is not None]
        if measured:
            twin = ax_loss.twinx()
            twin.plot(*zip(*measured), "o-", color="tab:red", ms=3)
            twin.set_ylabel(record.measures[0].metric, color="tab:red")
        ax_energy.plot(it, [100 * r.small_energy_spatial for r in rows], label="spatial: energy "
                       f"of the {100 * record.targets['spatial']:.0f}% smallest")
        ax_energy.plot(it, [100 * r.small_energy_winograd for r in rows], label="Winograd: energy "
                       f"of the {100 * record.targets['winograd']:.0f}% smallest")
        ax_energy.plot(it, [100 * r.spatial_zeros for r in rows], label="spatial zeros")
        ax_energy.legend(fontsize=8)
        for key, label in (("coefficient_spatial", "exp(w_S)"), ("coefficient_winograd", "exp(w_W)")):
            pts = [(r.iteration, getattr(r, key)) for r in rows if getattr(r, key) is not None]
            if pts:
                ax_coef.plot(*zip(*pts), label=label)
        if ax_coef.lines:
            ax_coef.set_yscale("log")
            ax_coef.legend(fontsize=8)
    ax_loss.set_title("training loss")
    ax_energy.set_title("small-weight energy and zeros (%)")
    ax_coef.set_title("learnt penalty coefficients")
    names = [l.name for l in record.layers]
    x = range(len(names))
    ax_layers.bar([i - 0.2 for i in x], [100 * l.spatial_sparsity for l in record.layers], 0.4,
                  label="spatial")
    ax_layers.bar([i + 0.2 for i in x], [100 * (l.winograd_sparsity or 0) for l in record.layers],
                  0.4, label=f"Winograd {record.tile} (deployed)")
    ax_layers.set_xticks(list(x))
    ax_layers.set_xticklabels(names, rotation=90, fontsize=7)
    ax_layers.set_ylim(0, 100)
    ax_layers.set_title("zeros per layer (%)")
    ax_layers.legend(fontsize=8)
    fig.suptitle(f"{record.model}: {record.method} sparsity, "
                 f"targets spatial {record.targets['spatial']:.2f} / Winograd "
                 f"{record.targets['winograd']:.2f}")
    fig.tight_layout()
    return png_bytes(fig)
