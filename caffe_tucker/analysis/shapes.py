"""Stage 2a, analyze (shapes): blob shapes through a net, as Caffe's ``Reshape`` computes them.

:func:`infer_shapes` walks a phase-filtered :class:`caffe_tucker.graph.Net`
in order and computes every top blob's shape and every layer's expected
parameter-blob shapes, using Caffe's own rules (convolution floor rounding,
pooling ceil rounding with its clipping rule, ``axis`` handling, legacy
``concat_dim`` / ``slice_dim``).  :func:`fit_weights` then checks the blobs
read from a caffemodel against those expected shapes, accepting the legacy
4-D blob dims as Caffe does.

A layer type this module does not know is reported in
``ShapeInfo.problems`` (by name and type); its tops, and everything computed
from them, have unknown shape (``None``) and the walk goes on.  The Caffe-SSD
fork's Permute, PriorBox and Normalize are inferred; DetectionOutput, whose
output size depends on the data, is known but gives unknown (``None``) shapes;
ReLU6 and ShuffleChannel of other forks keep their input's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil, prod
from typing import Mapping, Sequence

import numpy as np

from caffe_tucker.analysis.validate import validate_net
from caffe_tucker.errors import ShapeError, WeightsMismatchError, where
from caffe_tucker.graph import Layer, Net

__all__ = ["ConvGeometry", "LayerShapes", "ShapeInfo", "conv_geometry", "infer_shapes",
           "fit_weights", "parse_input_shapes", "KNOWN_TYPES", "prior_count"]

Shape = tuple  # of ints


@dataclass(frozen=True)
class ConvGeometry:
    """The resolved geometry of a Convolution/Deconvolution (or Pooling) layer."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]
    group: int
    num_output: int
    axis: int
    bias_term: bool


@dataclass(frozen=True)
class LayerShapes:
    name: str
    type: str
    inputs: tuple  # shape or None per bottom
    outputs: tuple  # shape or None per top
    params: tuple  # expected shape per parameter blob
    geometry: ConvGeometry | None = None


@dataclass(frozen=True)
class ShapeInfo:
    """Result of :func:`infer_shapes`.

    ``blobs`` maps each blob name to its (last) shape, ``layers`` maps layer
    names to :class:`LayerShapes` in net order, ``problems`` lists one line
    per layer whose type is unknown.
    """

    blobs: Mapping[str, Shape | None]
    layers: Mapping[str, LayerShapes]
    problems: tuple[str, ...]
    inputs: Mapping[str, Shape]


def parse_input_shapes(values: Sequence[str] | None) -> dict:
    """Parse ``--input-shape`` values: ``1,3,32,32`` or ``data=1,3,32,32``.

    The unnamed form applies to the first input of the net.
    """
    out: dict = {}
    for text in values or ():
        name, _, dims = text.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise ShapeError(f"--input-shape {text!r}: expected positive integers separated by "
                             "commas, optionally after a blob name, e.g. 1,3,32,32 or data=1,3,32,32")
        out[name or None] = shape
    return out


def _spatial(values, single, h, w, has_hw: bool, n: int, default: int, what: str, fail):
    if has_hw:
        if n != 2:
            fail(f"{what}_h/{what}_w only work for 2-D spatial input, this input has {n} spatial axes")
        return (int(h), int(w))
    vals = [int(v) for v in values]
    if not vals:
        return (default,) * n
    if len(vals) == 1:
        return (vals[0],) * n
    if len(vals) != n:
        fail(f"{len(vals)} {what} values for {n} spatial axes")
    return tuple(vals)


def conv_geometry(layer: Layer, in_shape: Shape | None, fail=None) -> ConvGeometry:
    """Resolve kernel/stride/pad/dilation of a Convolution or Deconvolution layer."""
    p = layer.spec.convolution_param
    if fail is None:
        def fail(msg):
            raise ShapeError(msg)
    axis = p.axis if p.axis >= 0 else (len(in_shape) + p.axis if in_shape else 1)
    n = len(in_shape) - axis - 1 if in_shape else 2
    if n < 1:
        fail(f"input of shape {list(in_shape)} has no spatial axes after axis {axis}")
    kernel = _spatial(p.kernel_size, None, p.kernel_h, p.kernel_w,
                      p.HasField("kernel_h") or p.HasField("kernel_w"), n, 0, "kernel", fail)
    if any(k <= 0 for k in kernel):
        fail("kernel size must be given and positive (kernel_size or kernel_h/kernel_w)")
    stride = _spatial(p.stride, None, p.stride_h, p.stride_w,
                      p.HasField("stride_h") or p.HasField("stride_w"), n, 1, "stride", fail)
    pad = _spatial(p.pad, None, p.pad_h, p.pad_w,
                   p.HasField("pad_h") or p.HasField("pad_w"), n, 0, "pad", fail)
    dilation = _spatial(p.dilation, None, 1, 1, False, n, 1, "dilation", fail)
    if any(s <= 0 for s in stride):
        fail(f"stride must be positive, got {list(stride)}; hint: Caffe refuses a stride of 0")
    if any(d <= 0 for d in dilation):
        fail(f"dilation must be positive, got {list(dilation)}")
    if p.num_output <= 0:
        fail("num_output must be positive")
    if p.group <= 0:
        fail("group must be positive")
    return ConvGeometry(kernel=kernel, stride=stride, pad=pad, dilation=dilation, group=p.group,
                        num_output=p.num_output, axis=axis, bias_term=p.bias_term)


class _Ctx:
    """Per-layer context; ``state`` is shared by the whole walk."""

    def __init__(self, net: Net, layer: Layer, state: dict):
        self.net, self.layer, self.state = net, layer, state

    def take_input(self, top: str, default: bool = True):
        """The --input-shape for ``top``: given by name, or the unnamed one (used once)."""
        inputs = self.state["inputs"]
        if top in inputs:
            return tuple(inputs[top])
        if default and None in inputs and not self.state["used_default"]:
            self.state["used_default"] = True
            return tuple(inputs[None])
        return None

    def fail(self, msg: str, exc=ShapeError):
        raise exc(f"{where(self.net.source, self.layer.line, self.layer.name)}{msg}")


def _axis(axis: int, ndim: int, ctx: _Ctx) -> int:
    a = axis + ndim if axis < 0 else axis
    if not 0 <= a < ndim:
        ctx.fail(f"axis {axis} is out of range for a {ndim}-D input")
    return a


# Each handler: (layer, bottom shapes, ctx) -> (top shapes, param shapes[, geometry])


def _same(layer, bottoms, ctx):
    return [bottoms[0]] * len(layer.tops), ()


def _conv(layer, bottoms, ctx):
    x = bottoms[0]
    g = conv_geometry(layer, x, ctx.fail)
    channels = x[g.axis]
    if channels % g.group or g.num_output % g.group:
        ctx.fail(f"input channels {channels} and num_output {g.num_output} must both be "
                 f"divisible by group {g.group}")
    spatial = x[g.axis + 1:]
    deconv = layer.type == "Deconvolution"
    out = []
    for i, size in enumerate(spatial):
        ext = g.dilation[i] * (g.kernel[i] - 1) + 1
        if deconv:
            o = g.stride[i] * (size - 1) + ext - 2 * g.pad[i]
        else:
            o = (size + 2 * g.pad[i] - ext) // g.stride[i] + 1
        if o <= 0:
            ctx.fail(f"output size {o} <= 0 (input {size}, kernel {g.kernel[i]}, pad {g.pad[i]}, "
                     f"stride {g.stride[i]})")
        out.append(o)
    top = tuple(x[:g.axis]) + (g.num_output,) + tuple(out)
    if deconv:
        weight = (channels, g.num_output // g.group) + g.kernel
    else:
        weight = (g.num_output, channels // g.group) + g.kernel
    params = (weight, (g.num_output,)) if g.bias_term else (weight,)
    for b in bottoms[1:]:
        if b != x:
            ctx.fail(f"all bottoms of a convolution must have the same shape, got {list(x)} and {list(b)}")
    return [top] * len(bottoms), params, g


def _pool(layer, bottoms, ctx):
    x = bottoms[0]
    if len(x) != 4:
        ctx.fail(f"Pooling needs a 4-D input (N, C, H, W), got {list(x)}")
    p = layer.spec.pooling_param
    h, w = x[2], x[3]
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h"):
            ctx.fail("global_pooling and a kernel size cannot both be set")
        kh, kw = h, w
    elif p.HasField("kernel_h") or p.HasField("kernel_w"):
        kh, kw = p.kernel_h, p.kernel_w
    else:
        kh = kw = p.kernel_size
    if kh <= 0 or kw <= 0:
        ctx.fail("pooling kernel size must be given (kernel_size or kernel_h/kernel_w)")
    if p.HasField("pad_h") or p.HasField("pad_w"):
        ph, pw = p.pad_h, p.pad_w
    else:
        ph = pw = p.pad
    if p.HasField("stride_h") or p.HasField("stride_w"):
        sh, sw = p.stride_h, p.stride_w
    else:
        sh = sw = p.stride
    if p.global_pooling:
        ph = pw = 0
        sh = sw = 1
    if sh <= 0 or sw <= 0:
        ctx.fail(f"stride must be positive, got ({sh}, {sw}); hint: Caffe refuses a stride of 0")
    if ph >= kh or pw >= kw:
        ctx.fail(f"pad ({ph}, {pw}) must be smaller than the kernel ({kh}, {kw})")
    floor_mode = p.round_mode == p.FLOOR

    def size(n, k, pad, s):
        span = n + 2 * pad - k
        o = (span // s if floor_mode else ceil(span / s)) + 1
        # Caffe: the last window must start inside the image (or its left padding).
        if pad and (o - 1) * s >= n + pad:
            o -= 1
        return o

    oh, ow = size(h, kh, ph, sh), size(w, kw, pw, sw)
    if oh <= 0 or ow <= 0:
        ctx.fail(f"output size {oh}x{ow} <= 0")
    top = (x[0], x[1], oh, ow)
    tops = [top] * len(layer.tops)  # MAX pooling may have a mask top of the same shape
    geo = ConvGeometry(kernel=(kh, kw), stride=(sh, sw), pad=(ph, pw), dilation=(1, 1), group=1,
                       num_output=x[1], axis=1, bias_term=False)
    return tops, (), geo


def _inner_product(layer, bottoms, ctx):
    x = bottoms[0]
    p = layer.spec.inner_product_param
    axis = _axis(p.axis, len(x), ctx)
    k = prod(x[axis:])
    if p.num_output <= 0:
        ctx.fail("num_output must be positive")
    weight = (k, p.num_output) if p.transpose else (p.num_output, k)
    params = (weight, (p.num_output,)) if p.bias_term else (weight,)
    return [tuple(x[:axis]) + (p.num_output,)], params


def _input(layer, bottoms, ctx):
    shapes = [tuple(int(d) for d in s.dim) for s in layer.spec.input_param.shape]
    ntops = len(layer.tops)
    if len(shapes) == 1 and ntops > 1:
        shapes = shapes * ntops
    if len(shapes) != ntops:
        ctx.fail(f"{ntops} tops but {len(shapes)} input_param shapes; hint: give one shape per top")
    return [ctx.take_input(t, default=(i == 0)) or s
            for i, (t, s) in enumerate(zip(layer.tops, shapes))], ()


def _data_like(known: Shape | None, layer, ctx):
    """Tops of a data layer: the data blob (shape from --input-shape or the net) and labels."""
    tops = layer.tops
    shape = ctx.take_input(tops[0]) or known
    if shape is None:
        ctx.fail(f"the shape of its top '{tops[0]}' cannot be known from the net alone; hint: pass "
                 f"--input-shape {tops[0]}=N,C,H,W (e.g. {tops[0]}=1,3,32,32)")
    shape = tuple(shape)
    out = [shape]
    for t in tops[1:]:
        out.append(ctx.take_input(t, default=False) or (shape[0],))
    return out, ()


def _data(layer, bottoms, ctx):
    return _data_like(None, layer, ctx)


def _image_data(layer, bottoms, ctx):
    p = layer.spec.image_data_param
    t = layer.spec.transform_param
    known = None
    if t.crop_size:
        known = (p.batch_size, 3 if p.is_color else 1, t.crop_size, t.crop_size)
    elif p.new_height and p.new_width:
        known = (p.batch_size, 3 if p.is_color else 1, p.new_height, p.new_width)
    return _data_like(known, layer, ctx)


def _memory_data(layer, bottoms, ctx):
    p = layer.spec.memory_data_param
    known = (p.batch_size, p.channels, p.height, p.width)
    if not all(known):
        known = None
    return _data_like(known, layer, ctx)


def _dummy_data(layer, bottoms, ctx):
    p = layer.spec.dummy_data_param
    if p.shape:
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        n = max(len(p.num), len(p.channels), len(p.height), len(p.width))
        shapes = [(p.num[min(i, len(p.num) - 1)], p.channels[min(i, len(p.channels) - 1)],
                   p.height[min(i, len(p.height) - 1)], p.width[min(i, len(p.width) - 1)])
                  for i in range(n)]
    ntops = len(layer.tops)
    if len(shapes) == 1:
        shapes = shapes * ntops
    if len(shapes) != ntops:
        ctx.fail(f"{ntops} tops but {len(shapes)} dummy_data shapes")
    return shapes, ()


def _concat(layer, bottoms, ctx):
    p = layer.spec.concat_param
    x = bottoms[0]
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    axis = _axis(axis, len(x), ctx)
    total = 0
    for b in bottoms:
        if len(b) != len(x) or any(b[i] != x[i] for i in range(len(x)) if i != axis):
            ctx.fail(f"cannot concatenate {list(x)} and {list(b)} along axis {axis}")
        total += b[axis]
    return [x[:axis] + (total,) + x[axis + 1:]], ()


def _slice(layer, bottoms, ctx):
    p = layer.spec.slice_param
    x = bottoms[0]
    axis = _axis(p.slice_dim if p.HasField("slice_dim") else p.axis, len(x), ctx)
    n = len(layer.tops)
    points = list(p.slice_point)
    if points:
        if len(points) != n - 1:
            ctx.fail(f"{len(points)} slice points for {n} tops")
        bounds = [0] + points + [x[axis]]
        sizes = [bounds[i + 1] - bounds[i] for i in range(n)]
        if any(s <= 0 for s in sizes):
            ctx.fail(f"slice points {points} do not split an axis of size {x[axis]}")
    else:
        if x[axis] % n:
            ctx.fail(f"axis size {x[axis]} is not divisible into {n} equal slices")
        sizes = [x[axis] // n] * n
    return [x[:axis] + (s,) + x[axis + 1:] for s in sizes], ()


def _eltwise(layer, bottoms, ctx):
    p = layer.spec.eltwise_param
    for b in bottoms[1:]:
        if b != bottoms[0]:
            ctx.fail(f"Eltwise bottoms must have the same shape, got {list(bottoms[0])} and {list(b)}")
    if p.coeff and len(p.coeff) != len(bottoms):
        ctx.fail(f"{len(p.coeff)} coefficients for {len(bottoms)} bottoms")
    return [bottoms[0]], ()


def _flatten(layer, bottoms, ctx):
    p = layer.spec.flatten_param
    x = bottoms[0]
    a = _axis(p.axis, len(x), ctx)
    e = _axis(p.end_axis, len(x), ctx)
    return [x[:a] + (prod(x[a:e + 1]),) + x[e + 1:]], ()


def _reshape(layer, bottoms, ctx):
    p = layer.spec.reshape_param
    x = bottoms[0]
    ndim = len(x)
    start = p.axis + ndim + 1 if p.axis < 0 else p.axis
    end = ndim if p.num_axes == -1 else start + p.num_axes
    if not 0 <= start <= ndim or end > ndim:
        ctx.fail("reshape axis/num_axes out of range")
    spec = list(p.shape.dim)
    new = []
    infer = None
    for i, d in enumerate(spec):
        if d == 0:
            if start + i >= ndim:
                ctx.fail("a 0 in reshape_param copies an axis the input does not have")
            new.append(x[start + i])
        elif d == -1:
            if infer is not None:
                ctx.fail("at most one -1 in reshape_param")
            infer = i
            new.append(1)
        else:
            new.append(int(d))
    replaced = prod(x[start:end])
    if infer is not None:
        known = prod(new)
        if known == 0 or replaced % known:
            ctx.fail(f"cannot reshape {list(x)} with {spec}")
        new[infer] = replaced // known
    if prod(new) != replaced:
        ctx.fail(f"cannot reshape {list(x)} to {spec}: element counts differ")
    return [x[:start] + tuple(new) + x[end:]], ()


def _loss(layer, bottoms, ctx):
    return [()] * len(layer.tops), ()


def _accuracy(layer, bottoms, ctx):
    x = bottoms[0]
    axis = _axis(layer.spec.accuracy_param.axis, len(x), ctx)
    tops = [()]
    if len(layer.tops) > 1:
        tops.append((x[axis],))
    return tops, ()


def _argmax(layer, bottoms, ctx):
    p = layer.spec.argmax_param
    x = bottoms[0]
    if p.HasField("axis"):
        a = _axis(p.axis, len(x), ctx)
        top = x[:a] + (p.top_k,) + x[a + 1:]
    else:
        top = (x[0], 2 if p.out_max_val else 1, p.top_k)
    return [top], ()


def _split(layer, bottoms, ctx):
    return [bottoms[0]] * len(layer.tops), ()


def _batchnorm(layer, bottoms, ctx):
    c = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return [bottoms[0]], ((c,), (c,), (1,))


def _scale_like(layer, bottoms, ctx, param, has_scale: bool):
    x = bottoms[0]
    axis = _axis(param.axis, len(x), ctx)
    if len(bottoms) > 1:
        shape = bottoms[1]
        params = ()
    else:
        n = len(x) - axis if param.num_axes == -1 else param.num_axes
        shape = x[axis:axis + n]
        params = (shape,) if has_scale else ()
    if layer.type == "Scale" and getattr(param, "bias_term", False):
        params = params + (shape,)
    if layer.type == "Bias" and len(bottoms) == 1:
        params = (shape,)
    return [x], params


def _scale(layer, bottoms, ctx):
    return _scale_like(layer, bottoms, ctx, layer.spec.scale_param, True)


def _bias(layer, bottoms, ctx):
    return _scale_like(layer, bottoms, ctx, layer.spec.bias_param, False)


def _prelu(layer, bottoms, ctx):
    x = bottoms[0]
    shared = layer.spec.prelu_param.channel_shared
    return [x], ((1,) if shared else ((x[1] if len(x) > 1 else 1),),)


def _crop(layer, bottoms, ctx):
    if len(bottoms) != 2:
        ctx.fail("Crop needs two bottoms (the blob to crop and the reference)")
    x, ref = bottoms
    axis = _axis(layer.spec.crop_param.axis, len(x), ctx)
    return [x[:axis] + ref[axis:]], ()


def _tile(layer, bottoms, ctx):
    p = layer.spec.tile_param
    x = bottoms[0]
    axis = _axis(p.axis, len(x), ctx)
    return [x[:axis] + (x[axis] * p.tiles,) + x[axis + 1:]], ()


def _reduction(layer, bottoms, ctx):
    x = bottoms[0]
    axis = _axis(layer.spec.reduction_param.axis, len(x), ctx)
    return [x[:axis]], ()


def _embed(layer, bottoms, ctx):
    p = layer.spec.embed_param
    params = ((p.input_dim, p.num_output), (p.num_output,)) if p.bias_term else \
        ((p.input_dim, p.num_output),)
    return [bottoms[0] + (p.num_output,)], params


def _silence(layer, bottoms, ctx):
    return [], ()


# Caffe-SSD fork layers (schema in proto/caffe.proto), as that fork's Reshape computes them.


def _permute(layer, bottoms, ctx):
    x = bottoms[0]
    order = []
    for o in layer.spec.permute_param.order:
        if o >= len(x):
            ctx.fail(f"permute order {o} is out of range for a {len(x)}-D input")
        if o in order:
            ctx.fail(f"permute order {list(layer.spec.permute_param.order)} repeats axis {o}")
        order.append(int(o))
    order += [a for a in range(len(x)) if a not in order]  # the fork appends the unnamed axes
    return [tuple(x[a] for a in order)], ()


def prior_count(p) -> int:
    """Boxes per location of a PriorBox layer: the fork's aspect ratios (1, then each new ratio
    and, with ``flip``, its inverse) times the min sizes, plus one per max size."""
    ratios = [1.0]
    for r in p.aspect_ratio:
        if any(abs(r - q) < 1e-6 for q in ratios):
            continue
        ratios.append(r)
        if p.flip:
            ratios.append(1.0 / r)
    return len(ratios) * len(p.min_size) + len(p.max_size)


def _prior_box(layer, bottoms, ctx):
    p = layer.spec.prior_box_param
    if len(bottoms) != 2:
        ctx.fail("PriorBox takes two bottoms (the feature map and the image)")
    x = bottoms[0]
    if len(x) != 4:
        ctx.fail(f"PriorBox needs a 4-D feature map (N, C, H, W), got {list(x)}")
    if not p.min_size:
        ctx.fail("prior_box_param needs at least one min_size")
    if p.max_size and len(p.max_size) != len(p.min_size):
        ctx.fail(f"{len(p.max_size)} max_size values for {len(p.min_size)} min_size values; "
                 "hint: give one max_size per min_size, or none")
    return [(1, 2, x[2] * x[3] * prior_count(p) * 4)], ()


def _normalize(layer, bottoms, ctx):
    x = bottoms[0]
    # The fork's scale blob: a scalar (no axes) when shared, else one value per channel.
    scale = () if layer.spec.norm_param.channel_shared else ((x[1] if len(x) > 1 else 1),)
    return [x], (scale,)


def _not_inferable(layer, bottoms, ctx):
    """Outputs whose size depends on the data (DetectionOutput keeps a varying number of boxes)."""
    return [None] * len(layer.tops), ()


_HANDLERS = {
    "Input": _input, "Data": _data, "ImageData": _image_data, "WindowData": _data,
    "HDF5Data": _data, "MemoryData": _memory_data, "DummyData": _dummy_data,
    "Convolution": _conv, "Deconvolution": _conv, "Pooling": _pool,
    "InnerProduct": _inner_product, "Concat": _concat, "Slice": _slice, "Split": _split,
    "Eltwise": _eltwise, "Flatten": _flatten, "Reshape": _reshape,
    "BatchNorm": _batchnorm, "Scale": _scale, "Bias": _bias, "PReLU": _prelu,
    "Crop": _crop, "Tile": _tile, "Reduction": _reduction, "Embed": _embed,
    "Accuracy": _accuracy, "ArgMax": _argmax, "Silence": _silence,
    # Caffe-SSD
    "Permute": _permute, "PriorBox": _prior_box, "Normalize": _normalize,
    "DetectionOutput": _not_inferable,
}
for _t in ("ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "LRN", "Dropout", "BNLL", "Exp",
           "Log", "Threshold", "Softmax", "MVN", "Swish", "Clip",
           # other forks' elementwise and channel-order layers: the shape is the input's
           # whatever their parameters (which the schema does not read; see README)
           "ReLU6", "ShuffleChannel"):
    _HANDLERS[_t] = _same
for _t in ("SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss",
           "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss", "ContrastiveLoss"):
    _HANDLERS[_t] = _loss

#: Layer types whose shapes :func:`infer_shapes` knows.
KNOWN_TYPES = frozenset(_HANDLERS)


def infer_shapes(net: Net, input_shapes: Mapping | None = None) -> ShapeInfo:
    """Compute every blob's shape and every layer's parameter shapes.

    Parameters
    ----------
    net : Net
        A net already filtered for one phase (:meth:`Net.for_state`).
    input_shapes : mapping, optional
        Shapes for data-layer tops, by blob name; the key ``None`` stands for
        the net's first data input (``--input-shape 1,3,32,32``).  They take
        precedence over shapes written in the net.

    Raises
    ------
    ShapeError
        When a shape is impossible or cannot be known; the message names the
        file, line and layer.
    """
    validate_net(net)
    state = {"inputs": dict(input_shapes or {}), "used_default": False}
    blobs: dict[str, Shape | None] = {}
    layers: dict[str, LayerShapes] = {}
    problems = []
    seen_inputs: dict[str, Shape] = {}
    for layer in net.layers:
        ctx = _Ctx(net, layer, state)
        bottoms = []
        for b in layer.bottoms:
            if b not in blobs:
                ctx.fail(f"bottom blob '{b}' is not produced by any earlier layer")
            bottoms.append(blobs[b])
        handler = _HANDLERS.get(layer.type)
        geometry = None
        if handler is None or any(b is None for b in bottoms):
            if handler is None:
                problems.append(f"{where(net.source, layer.line, layer.name)}unknown layer type "
                                f"'{layer.type}': its outputs and what depends on them are not "
                                "inferred")
            tops, params = [None] * len(layer.tops), ()
        else:
            result = handler(layer, bottoms, ctx)
            tops, params = result[0], result[1]
            geometry = result[2] if len(result) > 2 else None
            if len(tops) != len(layer.tops):
                ctx.fail(f"{layer.type} produces {len(tops)} outputs but the layer names "
                         f"{len(layer.tops)} tops")
        for t, s in zip(layer.tops, tops):
            blobs[t] = s
            if layer.type in _INPUT_TYPES and s is not None:
                seen_inputs.setdefault(t, s)
        layers[layer.name] = LayerShapes(name=layer.name, type=layer.type, inputs=tuple(bottoms),
                                         outputs=tuple(tops), params=tuple(params),
                                         geometry=geometry)
    unused = set(state["inputs"]) - set(seen_inputs) - {None}
    if unused:
        raise ShapeError(f"{net.source}: --input-shape names {sorted(unused)}, which no data or "
                         f"Input layer of the net produces; inputs are {sorted(seen_inputs)}")
    return ShapeInfo(blobs=blobs, layers=layers, problems=tuple(problems), inputs=seen_inputs)


_INPUT_TYPES = {"Input", "Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "DummyData"}


def _legacy_equal(stored: Shape, expected: Shape) -> bool:
    """Caffe's ``Blob::ShapeEquals`` for blobs stored with num/channels/height/width."""
    if len(expected) > 4:
        return False
    padded = (1,) * (4 - len(expected)) + tuple(expected)
    return tuple(stored) == padded


def fit_weights(net: Net, shapes: ShapeInfo, required: bool = False) -> Net:
    """Check every layer's blobs against the expected shapes; return a net with them reshaped.

    Blobs stored with the legacy 4-D dims are reshaped to the expected shape
    when they match it the way Caffe accepts (right-aligned, padded with 1s).

    Parameters
    ----------
    required : bool
        If true, a layer with parameters but no blobs is an error.

    Raises
    ------
    WeightsMismatchError
        Naming the layer, the blob index and both shapes.
    """
    out = []
    for layer in net.layers:
        info = shapes.layers.get(layer.name)
        if info is None or (not layer.blobs and not required):
            out.append(layer)
            continue
        expected = info.params
        if any(s is None for s in expected) or info.outputs and info.outputs[0] is None:
            out.append(layer)
            continue
        loc = where(net.source, layer.line, layer.name)
        if not layer.blobs and expected:
            raise WeightsMismatchError(f"{loc}no weights for this layer in {net.weights_source}; "
                                       "hint: is the caffemodel for this net?")
        if len(layer.blobs) != len(expected):
            raise WeightsMismatchError(
                f"{loc}the caffemodel{' ' + net.weights_source if net.weights_source else ''} has "
                f"{len(layer.blobs)} blobs, the net expects {len(expected)} "
                f"({', '.join(str(list(s)) for s in expected)}); hint: is the caffemodel for this net "
                "(bias_term, num_output)?")
        fitted = []
        for i, (blob, want) in enumerate(zip(layer.blobs, expected)):
            want = tuple(int(d) for d in want)
            if tuple(blob.shape) == want:
                fitted.append(blob)
            elif _legacy_equal(blob.shape, want) or (blob.ndim == 1 and blob.size == prod(want)
                                                      and len(want) <= 1):
                fitted.append(blob.reshape(want))
            else:
                raise WeightsMismatchError(
                    f"{loc}blob {i} has shape {list(blob.shape)} in the caffemodel but the net "
                    f"needs {list(want)}; hint: the caffemodel and the prototxt do not belong "
                    "together (check num_output, kernel size, group and the input shape)")
        out.append(layer.with_blobs(np.asarray(b, dtype=np.float32) for b in fitted))
    return replace(net, layers=tuple(out))
