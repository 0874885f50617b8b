"""The compression record: what ``convert`` did, as one typed object.

``convert`` builds a :class:`CompressionRecord` (per layer: method, ranks and
group ranks, weights and FLOPs before and after, reconstruction error, new
layer names; totals; source files).  ``report.json`` is its versioned JSON
(:meth:`CompressionRecord.to_json`, paths relative to the output directory);
``verify``, ``bench``, ``reproduce`` and ``report.md`` read the record, never
dict keys.  The four-file form of ``verify``/``bench`` builds the same record
from the two nets (:func:`record_from_nets`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe_tucker.analysis.cost import Analysis, analyze
from caffe_tucker.compress.methods import get_method, method_names
from caffe_tucker.compress.policy import PolicyDecision
from caffe_tucker.errors import InputFileError
from caffe_tucker.model import Model

__all__ = ["LayerRecord", "Totals", "CompressionRecord", "record_from_nets", "RECORD_VERSION",
           "read_record"]

#: Version of the ``report.json`` layout; bumped on any incompatible change.  (Keys added
#: since, which older readers ignore and :meth:`CompressionRecord.from_json` defaults:
#: ``vbmf_solver``, ``rank_policy`` and a layer's ``policy``.)
RECORD_VERSION = 1
_FORMAT = "caffe_tucker compression record"


def _ratio(before: int, after: int) -> float:
    return before / after if after else float("inf")


@dataclass(frozen=True)
class LayerRecord:
    """One planned layer: compressed (``skipped_reason is None``) or left untouched."""

    name: str
    method: str
    ranks: tuple[int, ...]
    group_ranks: tuple[tuple[int, ...], ...]
    full_ranks: tuple[int, ...]
    rank_source: str
    in_channels: int | None
    out_channels: int | None
    kernel: tuple[int, ...] | None
    group: int | None
    weights_before: int
    flops_before: int
    weights_after: int
    flops_after: int
    new_layers: tuple[str, ...] = ()
    weights_parts: tuple[int, ...] = ()
    flops_parts: tuple[int, ...] = ()
    rel_error: float | None = None
    skipped_reason: str | None = None
    # -- issue 13: the latency rank policy's decision and predicted times (compress/policy.py);
    # None under the default policy, and then absent from report.json.
    policy: PolicyDecision | None = None

    @property
    def compressed(self) -> bool:
        return self.skipped_reason is None

    flops_ratio = property(lambda self: _ratio(self.flops_before, self.flops_after))
    weights_ratio = property(lambda self: _ratio(self.weights_before, self.weights_after))

    def to_json(self) -> dict:
        d = self._to_json()
        if self.policy is not None:  # issue 13
            d["policy"] = self.policy.to_json()
        return d

    def _to_json(self) -> dict:
        return {"name": self.name, "method": self.method, "ranks": list(self.ranks),
                "group_ranks": [list(r) for r in self.group_ranks],
                "full_ranks": list(self.full_ranks), "rank_source": self.rank_source,
                "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel": list(self.kernel) if self.kernel else None, "group": self.group,
                "weights_before": self.weights_before, "flops_before": self.flops_before,
                "new_layers": list(self.new_layers), "weights_parts": list(self.weights_parts),
                "flops_parts": list(self.flops_parts), "weights_after": self.weights_after,
                "flops_after": self.flops_after,
                "rel_error": None if self.rel_error is None else round(self.rel_error, 6),
                "skipped_reason": self.skipped_reason}

    @classmethod
    def from_json(cls, d: dict) -> "LayerRecord":
        tup = lambda v: tuple(v) if v is not None else None  # noqa: E731
        return cls(name=d["name"], method=d["method"], ranks=tuple(d["ranks"]),
                   group_ranks=tuple(tuple(r) for r in d["group_ranks"]),
                   full_ranks=tuple(d["full_ranks"]), rank_source=d["rank_source"],
                   in_channels=d["in_channels"], out_channels=d["out_channels"],
                   kernel=tup(d["kernel"]), group=d["group"],
                   weights_before=d["weights_before"], flops_before=d["flops_before"],
                   weights_after=d["weights_after"], flops_after=d["flops_after"],
                   new_layers=tuple(d["new_layers"]), weights_parts=tuple(d["weights_parts"]),
                   flops_parts=tuple(d["flops_parts"]), rel_error=d["rel_error"],
                   skipped_reason=d["skipped_reason"],
                   policy=PolicyDecision.from_json(d["name"], d["policy"]) if d.get("policy")
                   else None)


@dataclass(frozen=True)
class Totals:
    """Whole-net weights and FLOPs (kernel multiply-adds; bias additions apart)."""

    weights_before: int
    weights_after: int
    flops_before: int
    flops_after: int
    bias_flops_before: int
    bias_flops_after: int

    @classmethod
    def of(cls, before: Analysis, after: Analysis) -> "Totals":
        return cls(weights_before=before.total_weights, weights_after=after.total_weights,
                   flops_before=before.total_flops, flops_after=after.total_flops,
                   bias_flops_before=before.total_bias_flops,
                   bias_flops_after=after.total_bias_flops)

    flops_ratio = property(lambda self: _ratio(self.flops_before, self.flops_after))
    weights_ratio = property(lambda self: _ratio(self.weights_before, self.weights_after))

    def to_json(self) -> dict:
        return {"weights_before": self.weights_before, "weights_after": self.weights_after,
                "flops_before": self.flops_before, "flops_after": self.flops_after,
                "bias_flops_before": self.bias_flops_before,
                "bias_flops_after": self.bias_flops_after}


@dataclass(frozen=True)
class CompressionRecord:
    """What was compressed, how, and what it cost; see the module docstring.

    ``source_prototxt`` and ``source_weights`` are the original files as paths
    usable from the current directory (absolute once read back from a
    ``report.json``).  ``vbmf_solver`` is the solver VBMF ranks were chosen
    with (``"reference"`` or ``"global"``), None when ``rank_method`` is not
    ``vbmf``.
    """

    model: str
    preset: str
    rank_method: str
    weaken: float
    layers: tuple[LayerRecord, ...]
    total: Totals
    source_prototxt: Path | None = None
    source_weights: Path | None = None
    vbmf_solver: str | None = None
    rank_policy: str = "vbmf"  # issue 13: "latency" is recorded; "vbmf" is left out of the JSON

    @property
    def compressed(self) -> tuple[LayerRecord, ...]:
        """The layers that were replaced, in net order."""
        return tuple(l for l in self.layers if l.compressed)

    def layer(self, name: str) -> LayerRecord:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def ranks_json(self) -> dict:
        """What ``ranks.json`` holds: the ranks of every compressed layer."""
        return {l.name: get_method(l.method).ranks_file_value(l.ranks) for l in self.compressed}

    def to_json(self, out_dir=None) -> dict:
        """The ``report.json`` object; source paths relative to ``out_dir`` when given."""
        def path(p):
            if p is None:
                return None
            if out_dir is None:
                return str(p)
            return Path(os.path.relpath(Path(p).resolve(), Path(out_dir).resolve())).as_posix()

        d = {"format": _FORMAT, "version": RECORD_VERSION, "model": self.model,
             "source": {"prototxt": path(self.source_prototxt),
                        "weights": path(self.source_weights)},
             "preset": self.preset, "rank_method": self.rank_method, "weaken": self.weaken,
             "vbmf_solver": self.vbmf_solver}
        if self.rank_policy != "vbmf":  # issue 13
            d["rank_policy"] = self.rank_policy
        d.update(layers=[l.to_json() for l in self.layers], total=self.total.to_json())
        return d

    @classmethod
    def from_json(cls, data: dict, out_dir=None) -> "CompressionRecord":
        """Read :meth:`to_json`'s object; relative source paths are resolved against ``out_dir``."""
        base = Path(out_dir) if out_dir is not None else Path(".")

        def path(p):
            if p is None:
                return None
            q = Path(p)
            return q if q.is_absolute() else (base / q).resolve()

        src = data.get("source") or {}
        # A record written before "vbmf_solver" was recorded had its VBMF ranks from the only
        # solver there was then, the global one.
        solver = data.get("vbmf_solver", "global" if data["rank_method"] == "vbmf" else None)
        return cls(model=data.get("model") or "", preset=data["preset"],
                   rank_method=data["rank_method"], weaken=data.get("weaken", 1.0),
                   vbmf_solver=solver,
                   layers=tuple(LayerRecord.from_json(l) for l in data["layers"]),
                   total=Totals(**data["total"]), source_prototxt=path(src.get("prototxt")),
                   source_weights=path(src.get("weights")),
                   rank_policy=data.get("rank_policy", "vbmf"))


def read_record(out_dir) -> CompressionRecord:
    """The record in ``out_dir/report.json``, with one-line errors for what is not one."""
    out = Path(out_dir)
    path = out / "report.json"
    if not path.is_file():
        raise InputFileError(f"{out}: not a convert output directory (no report.json); hint: "
                             "give the four files instead")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version", RECORD_VERSION) > RECORD_VERSION:
            raise InputFileError(f"{path}: record version {data['version']} is newer than this "
                                 f"caffe_tucker reads ({RECORD_VERSION}); hint: upgrade caffe_tucker")
        return CompressionRecord.from_json(data, out)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputFileError(f"{path}: not a caffe_tucker compression record ({type(exc).__name__}: "
                             f"{exc}); hint: run convert again") from None


def _new_layers_of(name: str, names: set) -> int:
    """How many consecutive ``name_tk1``, ``name_tk2``, ... the compressed net has."""
    k = 0
    while f"{name}_tk{k + 1}" in names:
        k += 1
    return k


def record_from_nets(original: Model, compressed: Model) -> CompressionRecord:
    """The record of a compressed net, told from the two nets alone (four-file verify/bench).

    A layer ``L`` of the original that the compressed net lacks, replaced by
    ``L_tk1`` ... ``L_tkn``, is matched to the registered method that writes
    ``n`` layers of those types; its ranks are read off the new layers and
    its reconstruction error computed from their blobs.
    """
    before = analyze(original.net, original.shapes)
    after = analyze(compressed.net, compressed.shapes)
    c_layers = {l.name: l for l in compressed.net.layers}
    rows = []
    for layer in original.net.layers:
        count = _new_layers_of(layer.name, set(c_layers))
        if layer.name in c_layers or count == 0:
            continue
        info = original.shapes.layers[layer.name]
        for name in method_names():
            method = get_method(name)
            new = [c_layers[n] for n in method.new_layer_names(layer.name)
                   if n in c_layers]
            if method.n_layers == count and method.matches(layer, info, new):
                break
        else:
            continue
        group = info.geometry.group if info.geometry is not None else 1
        ranks = method.ranks_from_layers(new, group)
        b = before.row(layer.name)
        parts = [after.row(n.name) for n in new]
        rel = None
        if layer.blobs and all(n.blobs for n in new):
            k = method.kernel_from_blobs([n.blobs for n in new], group)
            w = layer.blobs[0].astype(np.float64)
            k = k.reshape(w.shape)
            norm = float(np.linalg.norm(w))
            rel = float(np.linalg.norm(w - k) / norm) if norm > 0 else 0.0
        rows.append(LayerRecord(
            name=layer.name, method=method.name, ranks=ranks, group_ranks=(ranks,),
            full_ranks=method.full_ranks(layer, info), rank_source="read from the compressed net",
            in_channels=b.in_channels, out_channels=b.out_channels, kernel=b.kernel,
            group=b.group, weights_before=b.weights, flops_before=b.flops,
            weights_after=sum(p.weights for p in parts), flops_after=sum(p.flops for p in parts),
            new_layers=tuple(n.name for n in new), weights_parts=tuple(p.weights for p in parts),
            flops_parts=tuple(p.flops for p in parts), rel_error=rel))
    return CompressionRecord(model=original.net.name, preset="unknown",
                             rank_method="unknown (read from the compressed net)", weaken=1.0,
                             layers=tuple(rows), total=Totals.of(before, after),
                             source_prototxt=original.prototxt, source_weights=original.weights)
