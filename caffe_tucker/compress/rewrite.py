"""Stage 5, rewrite graph: replace each compressed layer by its 1×1 → D×D → 1×1 sequence.

A layer ``L`` compressed with

* ``tucker2`` becomes three Convolution layers ``L_tk1`` (1×1, S → g·R3, no
  bias), ``L_tk2`` (D×D, g·R3 → g·R4, the original stride, pad, dilation,
  no bias) and ``L_tk3`` (1×1, g·R4 → T, the original bias), all with the
  original ``group`` g.  A fully connected layer reading an (N, C, H, W) map
  is treated as an H×W convolution over that map (its output becomes
  (N, T, 1, 1), which the InnerProduct, ReLU, Dropout and Softmax layers
  after it read exactly as (N, T)).
* ``tucker1`` becomes ``L_tk1`` (D×D, S → g·R4, the original geometry, no
  bias) and ``L_tk2`` (1×1, g·R4 → T, the original bias).
* ``svd`` becomes two InnerProduct layers ``L_tk1`` (K → R, no bias) and
  ``L_tk2`` (R → N, the original bias).

Intermediate blobs are named like their layers; the last new layer writes
the original top blob, so every other layer (in-place followers included)
is unchanged.  The original ``param`` multipliers carry over: the weight
multipliers to every new layer, the bias multipliers to the last one (a
``param`` name, which would make the new layers share blobs, does not).

The same :class:`Replacement` rewrites the deploy net (with blobs) and the
train_val net (definitions only), so the two stay in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe_tucker.io.caffe_pb2 import LayerParameter, ParamSpec
from caffe_tucker.errors import CaffeTuckerError, where
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.analysis.shapes import ConvGeometry, ShapeInfo

__all__ = ["Replacement", "replacement_for", "rewrite_net", "new_layer_names"]


@dataclass(frozen=True, eq=False)
class Replacement:
    """Everything needed to replace one layer, independent of which net it is in."""

    layer: str
    method: str
    ranks: tuple[int, ...]
    geometry: ConvGeometry   # of the layer seen as a convolution (fc: its input map or 1×1)
    blobs: tuple[tuple[np.ndarray, ...], ...] | None = None


def new_layer_names(name: str, method: str) -> list[str]:
    """The names of the layers (and intermediate blobs) that replace ``name``."""
    n = 3 if method == "tucker2" else 2
    return [f"{name}_tk{i}" for i in range(1, n + 1)]


def replacement_for(net: Net, shapes: ShapeInfo, name: str, method: str, ranks,
                    blobs=None) -> Replacement:
    """Build the :class:`Replacement` of layer ``name`` from the (deploy) net's shapes."""
    layer = net.layer(name)
    info = shapes.layers[name]
    if layer.type == "InnerProduct":
        x = info.inputs[0]
        p = layer.spec.inner_product_param
        kernel = tuple(x[2:]) if method == "tucker2" else (1, 1)
        k = len(kernel)
        geo = ConvGeometry(kernel=kernel, stride=(1,) * k, pad=(0,) * k, dilation=(1,) * k,
                           group=1, num_output=p.num_output, axis=p.axis, bias_term=p.bias_term)
    else:
        geo = info.geometry
    return Replacement(layer=name, method=method, ranks=tuple(ranks), geometry=geo, blobs=blobs)


def _params(layer: Layer, with_bias: bool) -> list[ParamSpec]:
    out = []
    for i, p in enumerate(layer.spec.param[: 2 if with_bias else 1]):
        q = ParamSpec()
        q.CopyFrom(p)
        q.ClearField("name")
        q.ClearField("share_mode")
        out.append(q)
    return out


def _conv_param(num_output, kernel, stride=None, pad=None, dilation=None, group=1, bias=False):
    p = {"num_output": int(num_output), "bias_term": bool(bias), "group": int(group)}
    if len(set(kernel)) == 1:
        p["kernel_size"] = [int(kernel[0])]
    else:
        p["kernel_size"] = [int(k) for k in kernel]
    if stride and any(s != 1 for s in stride):
        p["stride"] = [int(s) for s in stride] if len(set(stride)) > 1 else [int(stride[0])]
    if pad and any(v != 0 for v in pad):
        p["pad"] = [int(v) for v in pad] if len(set(pad)) > 1 else [int(pad[0])]
    if dilation and any(d != 1 for d in dilation):
        p["dilation"] = [int(d) for d in dilation] if len(set(dilation)) > 1 else [int(dilation[0])]
    return p


def _replace(net: Net, layer: Layer, r: Replacement) -> list[Layer]:
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        raise CaffeTuckerError(f"{where(net.source, layer.line, layer.name)}only layers with one "
                               "bottom and one top can be decomposed")
    names = new_layer_names(layer.name, r.method)
    bottoms = [layer.bottoms[0]] + names[:-1]
    tops = names[:-1] + [layer.tops[0]]
    has_bias = (layer.spec.convolution_param.bias_term if layer.type == "Convolution"
                else layer.spec.inner_product_param.bias_term)
    base = LayerParameter()
    for rule in layer.spec.include:
        base.include.add().CopyFrom(rule)
    for rule in layer.spec.exclude:
        base.exclude.add().CopyFrom(rule)
    geo = r.geometry
    g = geo.group
    ones = (1,) * len(geo.kernel)
    if r.method == "tucker2":
        r3, r4 = r.ranks
        convs = [
            _conv_param(g * r3, ones, group=g),
            _conv_param(g * r4, geo.kernel, geo.stride, geo.pad, geo.dilation, group=g),
            _conv_param(geo.num_output, ones, group=g, bias=has_bias),
        ]
        kinds = [("Convolution", "convolution_param", c) for c in convs]
    elif r.method == "tucker1":
        (r4,) = r.ranks
        kinds = [
            ("Convolution", "convolution_param",
             _conv_param(g * r4, geo.kernel, geo.stride, geo.pad, geo.dilation, group=g)),
            ("Convolution", "convolution_param",
             _conv_param(geo.num_output, ones, group=g, bias=has_bias)),
        ]
    else:
        (rank,) = r.ranks
        axis = layer.spec.inner_product_param.axis
        kinds = [
            ("InnerProduct", "inner_product_param",
             {"num_output": rank, "bias_term": False, "axis": axis}),
            ("InnerProduct", "inner_product_param",
             {"num_output": geo.num_output, "bias_term": has_bias, "axis": axis}),
        ]
    out = []
    for i, (name, (typ, pname, params)) in enumerate(zip(names, kinds)):
        last = i == len(names) - 1
        spec = make_spec(name, typ, [bottoms[i]], [tops[i]], base=base,
                         **{pname: params, "param": _params(layer, with_bias=last and has_bias)})
        blobs = r.blobs[i] if r.blobs is not None else ()
        out.append(Layer(spec=spec, blobs=tuple(blobs), line=layer.line))
    return out


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
        for new in new_layer_names(name, r.method):
            if new in used_layers or new in used_blobs:
                raise CaffeTuckerError(f"{net.source}: the name '{new}' for a new layer is already "
                                       "used in the net; hint: rename that layer or blob")
    layers = []
    for layer in net.layers:
        r = replacements.get(layer.name)
        layers.extend(_replace(net, layer, r) if r is not None else [layer])
    return net.with_layers(layers)
