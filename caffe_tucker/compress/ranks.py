"""Stage 3, select ranks: global analytic VBMF on the kernel unfoldings (Kim et al., Sec. 3.2).

A Caffe convolution kernel is a blob of shape ``(T, S/g, D, D)``.  For
Tucker-2 the paper takes R3 from the mode-3 unfolding (S × D²T: one row per
input channel) and R4 from the mode-4 unfolding (T × D²S: one row per output
channel); Tucker-1 needs only R4; a fully connected layer's SVD rank comes
from its weight matrix (N × K).  Each group of a grouped convolution is its
own kernel; the layer takes the largest of its groups' ranks so the emitted
grouped layers stay uniform, and the report keeps every group's rank.

Rank methods
------------
``vbmf``
    The rank the empirical VBMF of Nakajima et al. (2013) estimates, the
    noise variance estimated too (:func:`caffe_tucker.compress.vbmf.evbmf`);
    ``weaken`` scales that variance (> 1 keeps fewer components).
``energy:F``
    The smallest rank keeping a fraction F of the squared singular values.
``ratio:F``
    ``ceil(F · full rank)``.

A rank of 0 (VBMF finds no component above the noise) is never clamped to
1: the layer is left untouched and the report says why.  So is a layer whose
chosen ranks would not reduce both its weights and its FLOPs (ranks fixed by
the user are applied as given, full rank included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from math import prod

import numpy as np

from caffe_tucker.analysis.cost import layer_cost
from caffe_tucker.analysis.shapes import ShapeInfo
from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.vbmf import evbmf
from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.graph import Net

__all__ = ["RankChoice", "parse_rank_method", "select_ranks", "check_manual_ranks", "ranks_json"]


@dataclass(frozen=True)
class RankChoice:
    """The ranks chosen for one layer and how.

    ``ranks`` has one entry per rank label of the method (``Method.rank_labels``,
    e.g. ``(R3, R4)``); ``group_ranks`` has one such tuple per group; ``spectra``
    maps each of the method's unfoldings to its singular values per group.
    """

    layer: str
    method: str
    ranks: tuple[int, ...]
    full: tuple[int, ...]
    group_ranks: tuple[tuple[int, ...], ...]
    source: str
    spectra: dict = field(default_factory=dict, compare=False)
    skipped_reason: str | None = None


def parse_rank_method(text: str) -> tuple[str, float | None]:
    """``"vbmf"`` -> ("vbmf", None); ``"energy:0.95"`` -> ("energy", 0.95); ``"ratio:0.25"``."""
    name, _, arg = text.partition(":")
    if name == "vbmf" and not arg:
        return "vbmf", None
    if name in ("energy", "ratio"):
        try:
            value = float(arg)
        except ValueError:
            value = None
        check_param("rank-method", text, value is not None and 0 < value <= 1,
                    f"'{name}:F' with F in (0, 1]", "convert", exc=CaffeTuckerError)
        return name, value
    check_param("rank-method", text, False, "one of 'vbmf', 'energy:F', 'ratio:F'", "convert",
                exc=CaffeTuckerError)


def _rank_of(values: np.ndarray, how: str, arg) -> int:
    """Rank by ``energy:F`` or ``ratio:F`` from an unfolding's singular values."""
    if how == "energy":
        energy = np.cumsum(values.astype(np.float64) ** 2)
        if energy[-1] == 0:
            return 0
        return int(np.searchsorted(energy / energy[-1], arg - 1e-12) + 1)
    return int(math.ceil(arg * len(values)))


def check_manual_ranks(net: Net, shapes: ShapeInfo, plan: dict, ranks: dict,
                       source: str = "ranks file") -> dict[str, tuple[int, ...]]:
    """Validate ``--ranks`` values: shape (pair or number) and range [1, full]."""
    out = {}
    for name, value in ranks.items():
        if name not in plan:
            if name not in shapes.layers:
                raise CaffeTuckerError(f"{source}: layer '{name}' is not in the net "
                                       f"{net.source}; hint: check the layer names with 'info'")
            raise CaffeTuckerError(f"{source}: layer '{name}' cannot be compressed here")
        method = get_method(plan[name])
        labels = method.rank_labels
        values = value if isinstance(value, list) else [value]
        shape = ("one integer" if len(labels) == 1 else
                 f"{'a pair' if len(labels) == 2 else 'a list'} [{', '.join(labels)}]")
        check_param("ranks", value, len(values) == len(labels) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in values),
            f"{shape} for the {method.name} layer '{name}'", source, exc=CaffeTuckerError)
        full = method.full_ranks(net.layer(name), shapes.layers[name])
        for v, f, label in zip(values, full, labels if len(labels) > 1 else ("rank",)):
            check_param(f"{label}", v, 1 <= v <= f, f"an int in [1, {f}] for layer '{name}'", source,
                        exc=CaffeTuckerError)
        out[name] = tuple(values)
    return out


def select_ranks(net: Net, shapes: ShapeInfo, plan: dict, rank_method: str = "vbmf",
                 weaken: float = 1.0, fixed: dict | None = None, progress=None,
                 spectra: bool = True) -> dict[str, RankChoice]:
    """Choose ranks for every layer of ``plan`` (``fixed`` ranks win).

    The singular values of every unfolding are computed for the report and
    its plot; with ``spectra=False`` they are skipped for layers whose ranks
    are fixed, which then need no SVD at all.

    Returns a mapping layer name -> :class:`RankChoice`, with ``skipped_reason``
    set for layers that will be left untouched.
    """
    how, arg = parse_rank_method(rank_method)
    check_param("weaken", weaken, isinstance(weaken, (int, float)) and weaken > 0, "a float > 0",
                "convert", exc=CaffeTuckerError)
    fixed = fixed or {}
    out = {}
    for name, method_name in plan.items():
        method = get_method(method_name)
        layer, info = net.layer(name), shapes.layers[name]
        found: dict[str, list] = {}
        per_group = []
        groups = method.kernel_groups(layer, info) if (spectra or name not in fixed) else ()
        for kernel in groups:
            mats = method.unfoldings(kernel.astype(np.float64, copy=False))
            chosen = []
            for mode, matrix in mats.items():
                result = evbmf(matrix, weaken=weaken) if how == "vbmf" else None
                values = result.singular_values if result is not None else \
                    np.linalg.svd(matrix, compute_uv=False)
                found.setdefault(mode, []).append(values)
                chosen.append(result.rank if result is not None else
                              _rank_of(values, how, arg))
            per_group.append(tuple(chosen))
        full = method.full_ranks(layer, info)
        if name in fixed:
            ranks, source = fixed[name], "file"
        else:
            ranks = tuple(max(r[i] for r in per_group) for i in range(len(per_group[0])))
            ranks = tuple(min(r, f) for r, f in zip(ranks, full))
            source = rank_method
        reason = None
        if min(ranks) == 0:
            reason = ("VBMF found no component above the estimated noise (rank 0); the layer is "
                      "left untouched rather than clamped to rank 1")
        else:
            w, f = method.cost(layer, info, ranks)
            w0 = prod(info.params[0])
            f0 = layer_cost(layer, shapes).flops
            # Ranks the user fixed are honoured (a full-rank rewrite is a useful check);
            # ranks chosen automatically must pay for themselves.
            if (sum(w) >= w0 or sum(f) >= f0) and source != "file":
                reason = (f"ranks {list(ranks)} would not reduce both weights ({w0} -> {sum(w)}) "
                          f"and FLOPs ({f0} -> {sum(f)})")
        out[name] = RankChoice(layer=name, method=method.name, ranks=ranks, full=full,
                               group_ranks=tuple(per_group), source=source,
                               spectra={k: tuple(v) for k, v in found.items()},
                               skipped_reason=reason)
        if progress is not None:
            progress.update(1, name)
    return out


def ranks_json(choices: dict[str, RankChoice]) -> dict:
    """What ``ranks.json`` holds for these choices: the ranks of every layer to be compressed."""
    return {name: get_method(c.method).rank_value(c.ranks) for name, c in choices.items()
            if c.skipped_reason is None}
