"""Stage 3, select ranks: analytic empirical VBMF on the kernel unfoldings (Kim et al., Sec. 3.2).

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
    ``weaken`` scales that variance (> 1 keeps fewer components) and
    ``vbmf_solver`` says how it is estimated: ``"reference"`` (default) as
    the public Python port of Nakajima's code that Tucker tools call, so the
    ranks are theirs, or ``"global"``, the global minimum of the free energy.
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
from caffe_tucker.compress.linalg import singular_values
from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.vbmf import SOLVERS, evbmf
from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.graph import Net

__all__ = ["RankChoice", "parse_rank_method", "select_ranks", "check_manual_ranks",
           "split_ranks_entries", "ranks_json"]


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


def split_ranks_entries(ranks: dict, source: str = "ranks file") -> tuple[dict, dict]:
    """A ranks file's entries as ``(methods, values)``.

    An entry is plain ranks (``R``, ``[R3, R4]``) for the layer's planned
    method, or ``{"method": NAME, "ranks": R or [...]}``, which also says the
    method; ``methods`` holds the layers whose entry names one.
    """
    methods, values = {}, {}
    for name, value in ranks.items():
        if isinstance(value, dict):
            check_param("ranks", value, set(value) == {"method", "ranks"} and
                        isinstance(value["method"], str),
                        f'ranks, or {{"method": NAME, "ranks": ...}} for layer \'{name}\'', source,
                        exc=CaffeTuckerError)
            methods[name] = get_method(value["method"], source).name
            value = value["ranks"]
        values[name] = value
    return methods, values


def check_manual_ranks(net: Net, shapes: ShapeInfo, plan: dict, ranks: dict,
                       source: str = "ranks file") -> dict[str, tuple[int, ...]]:
    """Validate ``--ranks`` values with each layer's method (``Method.check_ranks``)."""
    out = {}
    for name, value in ranks.items():
        if name not in plan:
            if name not in shapes.layers:
                raise CaffeTuckerError(f"{source}: layer '{name}' is not in the net "
                                       f"{net.source}; hint: check the layer names with 'info'")
            raise CaffeTuckerError(f"{source}: layer '{name}' cannot be compressed here")
        out[name] = get_method(plan[name]).check_ranks(value, net.layer(name), shapes.layers[name],
                                                       name, source)
    return out


def select_ranks(net: Net, shapes: ShapeInfo, plan: dict, rank_method: str = "vbmf",
                 weaken: float = 1.0, fixed: dict | None = None, progress=None,
                 spectra: bool = True, method_options: dict | None = None,
                 vbmf_solver: str = "reference") -> dict[str, RankChoice]:
    """Choose ranks for every layer of ``plan`` (``fixed`` ranks win).

    A rank is chosen on each of the method's unfoldings, per group; the
    method turns those into its own ranks (``Method.auto_ranks``, given
    ``method_options`` such as ``{"blocks": 4}``), for each group and for the
    layer (from the largest of the groups' unfolding ranks).

    The singular values of every unfolding are computed for the report and
    its plot; with ``spectra=False`` they are skipped for layers whose ranks
    are fixed, which then need no SVD at all.

    ``vbmf_solver`` (``"reference"`` or ``"global"``) is passed to
    :func:`~caffe_tucker.compress.vbmf.evbmf` as its ``solver`` for
    ``rank_method="vbmf"``.

    Returns a mapping layer name -> :class:`RankChoice`, with ``skipped_reason``
    set for layers that will be left untouched.
    """
    how, arg = parse_rank_method(rank_method)
    check_param("weaken", weaken, isinstance(weaken, (int, float)) and weaken > 0, "a float > 0",
                "convert", exc=CaffeTuckerError)
    check_param("vbmf-solver", vbmf_solver, isinstance(vbmf_solver, str) and vbmf_solver in SOLVERS,
                "one of " + ", ".join(map(repr, SOLVERS)), "convert", exc=CaffeTuckerError)
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
                # a fixed layer needs only the spectrum (for the report), not VBMF's rank
                result = (evbmf(matrix, weaken=weaken, solver=vbmf_solver)
                          if how == "vbmf" and name not in fixed else None)
                values = result.singular_values if result is not None else \
                    singular_values(matrix)
                found.setdefault(mode, []).append(values)
                chosen.append(result.rank if result is not None else
                              0 if name in fixed else _rank_of(values, how, arg))
            per_group.append(tuple(chosen))
        full = method.full_ranks(layer, info)
        options = method_options or {}
        if name in fixed:
            ranks, source = fixed[name], "file"
        else:
            found_ranks = tuple(max(r[i] for r in per_group) for i in range(len(per_group[0])))
            ranks = method.auto_ranks(found_ranks, layer, info, options)
            source = rank_method
        per_group = ([tuple(ranks)] * len(groups) if source == "file" else
                     [method.auto_ranks(r, layer, info, options) for r in per_group])
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
    return {name: get_method(c.method).ranks_file_value(c.ranks) for name, c in choices.items()
            if c.skipped_reason is None}
