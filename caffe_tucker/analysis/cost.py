"""Stage 2b, analyze (cost): weights and multiply-adds per layer, as the paper counts them.

Kim et al. (2016) count, for a D×D convolution from S to T channels with an
H'×W' output, ``D²ST`` weights and ``D²STH'W'`` multiply-adds ("FLOPs"), and
for a fully connected layer one multiply-add per weight.  This module counts
exactly that, per input image:

* Convolution: ``weights = T · S/group · Π kernel``, ``flops = weights · Π output spatial``;
* Deconvolution: ``weights = S · T/group · Π kernel``, ``flops = weights · Π input spatial``;
* InnerProduct: ``weights = K · N`` (K inputs per sample), ``flops = weights``
  (times the extent of any axes between the batch axis and ``axis``);
* Embed, Scale and PReLU count their multiplicative parameters as weights
  (no FLOPs); BatchNorm's running statistics are not weights;
* ``bias`` counts additive parameters (bias terms, Scale's and Bias's β);
* ``bias_flops`` counts the additions of a Convolution/Deconvolution/
  InnerProduct bias, one per output value.  Kernel multiply-adds alone are
  the paper's per-layer formula; the paper's network totals (Table 1) and its
  VGG-16 rows (Table 5) match ``flops + bias_flops`` (see the README);
* every other layer: 0 weights and 0 FLOPs (the paper's totals count
  convolutions and fully connected layers only).

The batch dimension never enters: a net declared with batch 10 reports the
same FLOPs as with batch 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod
from typing import Mapping

from caffe_tucker.graph import Net
from caffe_tucker.analysis.shapes import ShapeInfo, infer_shapes

__all__ = ["LayerCost", "Analysis", "analyze", "layer_cost"]

_COUNTED = {"Convolution", "Deconvolution", "InnerProduct"}


@dataclass(frozen=True)
class LayerCost:
    """One row of the ``info`` report; :meth:`to_dict` is the JSON contract."""

    name: str
    type: str
    bottom: tuple[str, ...]
    top: tuple[str, ...]
    in_channels: int | None
    out_channels: int | None
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    pad: tuple[int, ...] | None
    dilation: tuple[int, ...] | None
    group: int | None
    output_shape: tuple[int, ...] | None
    weights: int
    bias: int
    flops: int
    bias_flops: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("bottom", "top", "kernel", "stride", "pad", "dilation", "output_shape"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


@dataclass(frozen=True)
class Analysis:
    """Per-layer costs of a net and their totals."""

    model: str
    input: Mapping[str, tuple[int, ...]]
    layers: tuple[LayerCost, ...]
    problems: tuple[str, ...] = ()

    @property
    def total_weights(self) -> int:
        return sum(r.weights for r in self.layers)

    @property
    def total_bias(self) -> int:
        return sum(r.bias for r in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.layers)

    @property
    def total_bias_flops(self) -> int:
        return sum(r.bias_flops for r in self.layers)

    def row(self, name: str) -> LayerCost:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input": {k: list(v) for k, v in self.input.items()},
            "layers": [r.to_dict() for r in self.layers],
            "total": {"weights": self.total_weights, "bias": self.total_bias,
                      "flops": self.total_flops, "bias_flops": self.total_bias_flops},
            "problems": list(self.problems),
        }


def _channels(shape) -> int | None:
    return int(shape[1]) if shape is not None and len(shape) > 1 else None


def layer_cost(layer, info: ShapeInfo) -> LayerCost:
    """The :class:`LayerCost` of one layer of a net whose shapes are ``info``."""
    s = info.layers[layer.name]
    x = s.inputs[0] if s.inputs else None
    y = s.outputs[0] if s.outputs else None
    geo = s.geometry
    kernel = stride = pad = dilation = group = None
    in_ch, out_ch = _channels(x), _channels(y)
    weights = bias = flops = bias_flops = 0
    if geo is not None:
        kernel, stride, pad, dilation = geo.kernel, geo.stride, geo.pad, geo.dilation
        group = geo.group
    if layer.type in _COUNTED and x is not None and y is not None:
        weights = prod(s.params[0])
        bias = prod(s.params[1]) if len(s.params) > 1 else 0
        if layer.type == "Convolution":
            in_ch, out_ch = x[geo.axis], geo.num_output
            flops = weights * prod(y[geo.axis + 1:]) * prod(y[1:geo.axis])
        elif layer.type == "Deconvolution":
            in_ch, out_ch = x[geo.axis], geo.num_output
            flops = weights * prod(x[geo.axis + 1:]) * prod(x[1:geo.axis])
        else:
            p = layer.spec.inner_product_param
            axis = p.axis + len(x) if p.axis < 0 else p.axis
            in_ch, out_ch = x[axis], p.num_output
            kernel = tuple(x[axis + 1:]) or (1, 1)
            stride, pad, dilation, group = (1,) * len(kernel), (0,) * len(kernel), \
                (1,) * len(kernel), 1
            flops = weights * prod(x[1:axis])
        if bias:
            bias_flops = prod(y[1:])
    elif s.params and all(p is not None for p in s.params):
        if layer.type in ("Scale", "PReLU", "Embed"):
            weights = prod(s.params[0])
            bias = sum(prod(p) for p in s.params[1:])
        elif layer.type == "Bias":
            bias = prod(s.params[0])
    return LayerCost(
        name=layer.name, type=layer.type, bottom=layer.bottoms, top=layer.tops,
        in_channels=in_ch, out_channels=out_ch, kernel=kernel, stride=stride, pad=pad,
        dilation=dilation, group=group,
        output_shape=tuple(int(d) for d in y) if y is not None else None,
        weights=int(weights), bias=int(bias), flops=int(flops), bias_flops=int(bias_flops))


def analyze(net: Net, shapes: ShapeInfo | None = None, input_shapes=None) -> Analysis:
    """Per-layer weights and FLOPs of a phase-filtered net (shapes inferred if not given)."""
    info = shapes if shapes is not None else infer_shapes(net, input_shapes)
    rows = tuple(layer_cost(layer, info) for layer in net.layers)
    return Analysis(model=net.name, input=dict(info.inputs), layers=rows, problems=info.problems)
