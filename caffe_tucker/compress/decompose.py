"""Stage 4, decompose: factorize a layer's kernel with its method and lay out the new blobs.

The method (:mod:`caffe_tucker.compress.methods`) knows the algebra; this
module runs it over a layer's groups, measures the relative reconstruction
error ``‖W − Ŵ‖_F / ‖W‖_F`` over all groups, and returns a
:class:`Decomposition`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe_tucker.analysis.shapes import LayerShapes
from caffe_tucker.compress.linalg import sum_squares
from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.ranks import RankChoice
from caffe_tucker.graph import Layer

__all__ = ["Decomposition", "decompose_layer"]


@dataclass(frozen=True, eq=False)
class Decomposition:
    """The factors of one layer, per group, and the blobs of its new layers.

    ``blobs`` holds one tuple of float32 blobs per new layer, in order, in
    Caffe layout (the original bias goes with the last new layer).
    """

    layer: str
    method: str
    ranks: tuple[int, ...]
    groups: tuple[tuple[np.ndarray, ...], ...]
    blobs: tuple[tuple[np.ndarray, ...], ...]
    rel_error: float


def decompose_layer(layer: Layer, info: LayerShapes, choice: RankChoice) -> Decomposition:
    """Decompose one layer with the chosen ranks and lay out the new layers' blobs."""
    method = get_method(choice.method)
    groups = []
    err2 = norm2 = 0.0
    for kernel in method.kernel_groups(layer, info):
        factors = method.factorize(kernel, choice.ranks)
        # ‖W − Ŵ‖² in place on the reconstruction, ‖W‖² in blocks: no float64 copy of the
        # kernel and no temporaries the kernel's size (fc6: 1.2 GB of them before, issue 13)
        diff = np.asarray(method.reconstruct(factors), dtype=np.float64)
        diff -= kernel
        err2 += sum_squares(diff)
        norm2 += sum_squares(kernel)
        del diff
        groups.append(tuple(factors))
    rel = float(np.sqrt(err2 / norm2)) if norm2 > 0 else 0.0
    blobs = method.layer_blobs(groups, tuple(layer.blobs[1:2]))
    return Decomposition(layer=layer.name, method=method.name, ranks=choice.ranks,
                         groups=tuple(groups), blobs=blobs, rel_error=rel)
