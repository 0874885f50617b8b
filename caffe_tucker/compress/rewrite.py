"""Stage 5, rewrite graph: replace each compressed layer by its method's new layers.

Each method (:mod:`caffe_tucker.compress.methods`) says which layers replace
a layer ``L`` (``L_tk1``, ``L_tk2``, ...): intermediate blobs are named like
their layers and the last new layer writes ``L``'s top blob, so every other
layer (in-place followers included) is unchanged.

The same :class:`Replacement` rewrites the deploy net (with blobs) and the
train_val net (definitions only), so the two stay in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe_tucker.analysis.shapes import ConvGeometry, LayerShapes
from caffe_tucker.compress.methods import Method, get_method
from caffe_tucker.errors import CaffeTuckerError, where
from caffe_tucker.graph import Layer, Net

__all__ = ["Replacement", "replacement_for", "rewrite_net"]


@dataclass(frozen=True, eq=False)
class Replacement:
    """Everything needed to replace one layer, independent of which net it is in."""

    layer: str
    method: Method
    ranks: tuple[int, ...]
    geometry: ConvGeometry   # of the layer seen as a convolution, from the deploy net's shapes
    blobs: tuple[tuple[np.ndarray, ...], ...] | None = None

    def without_blobs(self) -> "Replacement":
        return Replacement(self.layer, self.method, self.ranks, self.geometry)


def replacement_for(layer: Layer, info: LayerShapes, method: str, ranks,
                    blobs=None) -> Replacement:
    """The :class:`Replacement` of ``layer`` whose (deploy) shapes are ``info``."""
    m = get_method(method)
    return Replacement(layer=layer.name, method=m, ranks=tuple(ranks),
                       geometry=m.geometry(layer, info), blobs=blobs)


def _replace(net: Net, layer: Layer, r: Replacement) -> list[Layer]:
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        raise CaffeTuckerError(f"{where(net.source, layer.line, layer.name)}only layers with one "
                               "bottom and one top can be decomposed")
    return r.method.new_layers(layer, r.geometry, r.ranks, r.blobs)


def rewrite_net(net: Net, replacements: dict[str, Replacement]) -> Net:
    """Return ``net`` with every layer named in ``replacements`` replaced by its new layers.

    Layers of the same name in several phases (a train_val net) are each replaced.

    Raises
    ------
    CaffeTuckerError
        If a new layer or blob name is already used in the net, or a layer of
        ``replacements`` is missing.
    """
    used_layers = {l.name for l in net.layers}
    used_blobs = {b for l in net.layers for b in l.tops + l.bottoms}
    for name, r in replacements.items():
        if name not in used_layers:
            raise CaffeTuckerError(f"{net.source}: layer '{name}' to be compressed is not in this net")
        for new in r.method.new_layer_names(name):
            if new in used_layers or new in used_blobs:
                raise CaffeTuckerError(f"{net.source}: the name '{new}' for a new layer is already "
                                       "used in the net; hint: rename that layer or blob")
    layers = []
    for layer in net.layers:
        r = replacements.get(layer.name)
        layers.extend(_replace(net, layer, r) if r is not None else [layer])
    return net.with_layers(layers)
