"""The ``sparsify`` report: per-layer sparsity in both domains, multiply counts, measures.

:func:`sparsity_record` turns a :class:`~caffe_tucker.sparsity.schedule.SparsifyRun` into a
:class:`SparsityRecord`; ``sparsify.json`` is its versioned JSON.  Multiply counts are per image
at the deploy net's input size and count the products only (the paper's "complexity"): spatial
dense = every weight once per output pixel, spatial sparse = the non-zero weights, Winograd dense
/ sparse = the element-wise products of the Winograd tiles (all / the non-zero filter entries).
Layers that are not stride-1 3x3 convolutions are counted spatially in the Winograd columns too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from caffe_tucker.analysis.shapes import infer_shapes
from caffe_tucker.sparsity.prune import sparsity
from caffe_tucker.sparsity.winograd import layer_multiplies, to_winograd, winograd_tile

__all__ = ["LayerSparsity", "SparsityRecord", "sparsity_record", "RECORD_VERSION"]

RECORD_VERSION = 1


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    type: str
    shape: tuple                          # weights' shape
    winograd: bool                        # computed in the Winograd domain when deployed so
    reason: str | None                    # why not, if not
    spatial_sparsity: float               # exact zeros of the sparse spatial weights
    winograd_natural: float | None        # exact zeros of G g G^T of those weights
    winograd_sparsity: float | None       # zeros of the deployed (pruned) Winograd filters
    spatial_dense: int                    # multiplies per image
    spatial_sparse: int
    winograd_dense: int
    winograd_sparse: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class SparsityRecord:
    """Everything ``sparsify`` reports (``sparsify.json``)."""

    model: str
    method: str
    tile: str
    targets: dict                         # {"spatial": r_S, "winograd": r_W}
    options: dict
    layers: tuple
    measures: tuple                       # Measure per stage
    form_error: float
    coefficients: dict | None

    def totals(self) -> dict:
        keys = ("spatial_dense", "spatial_sparse", "winograd_dense", "winograd_sparse")
        t = {k: int(sum(getattr(l, k) for l in self.layers)) for k in keys}
        dense = t["spatial_dense"]
        t["spatial_speedup"] = dense / t["spatial_sparse"] if t["spatial_sparse"] else None
        t["winograd_speedup"] = dense / t["winograd_sparse"] if t["winograd_sparse"] else None
        weights = sum(int(np.prod(l.shape)) for l in self.layers)
        zeros = sum(l.spatial_sparsity * int(np.prod(l.shape)) for l in self.layers)
        t["spatial_sparsity"] = zeros / weights if weights else 0.0
        return t

    def measure(self, stage: str):
        return next((m.value for m in self.measures if m.stage == stage), None)

    def to_dict(self) -> dict:
        return {"version": RECORD_VERSION, "model": self.model, "method": self.method,
                "tile": self.tile, "targets": dict(self.targets), "options": self.options,
                "layers": [l.to_dict() for l in self.layers],
                "measures": [m.to_dict() for m in self.measures],
                "totals": self.totals(), "winograd_form_max_rel_error": self.form_error,
                "coefficients": self.coefficients}

    def rows(self) -> list[dict]:
        return [l.to_dict() for l in self.layers]


def _per_image_hw(shapes, name) -> tuple:
    out = shapes.layers[name].outputs[0]
    return tuple(out[2:]) if len(out) > 2 else ()


def sparsity_record(run, model_name: str) -> SparsityRecord:
    """The record of a finished run."""
    net = run.deploy
    shapes = infer_shapes(net)
    tile = winograd_tile(run.options.tile)
    rows = []
    for name in run.layers:
        layer = net.layer(name)
        w = np.asarray(layer.blobs[0])
        hw = _per_image_hw(shapes, name)
        pixels = int(np.prod(hw)) if hw else 1
        spatial_dense = pixels * w.size
        spatial_sparse = pixels * int(np.count_nonzero(w))
        if name in run.winograd_layers:
            u = run.winograd_filters[name]
            counts = layer_multiplies(w, hw, tile, winograd=u)
            natural = sparsity(to_winograd(w, tile))
            rows.append(LayerSparsity(name, layer.type, tuple(w.shape), True, None,
                                      sparsity(w), natural, sparsity(u),
                                      counts.spatial_dense, counts.spatial_sparse,
                                      counts.winograd_dense, counts.winograd_sparse))
        else:
            rows.append(LayerSparsity(name, layer.type, tuple(w.shape), False,
                                      run.skipped.get(name), sparsity(w), None, None,
                                      spatial_dense, spatial_sparse, spatial_dense,
                                      spatial_sparse))
    return SparsityRecord(model_name, run.options.method, tile.name,
                          {"spatial": run.options.spatial, "winograd": run.options.winograd},
                          run.options.to_dict(), tuple(rows), run.measures, run.form_error,
                          run.coefficients.to_dict() if run.coefficients else None)
