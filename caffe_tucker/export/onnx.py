"""A loaded Caffe model (:class:`caffe_tucker.model.Model`) as an ONNX model of standard operators.

Every layer becomes one or a few nodes of the default ONNX domain, computing what Caffe 1.0
computes in the TEST phase; weights become float32 initializers.  Where Caffe and ONNX differ
the difference is made explicit in the graph:

- **Pooling**: Caffe rounds the output size up (and drops a last window that would start in the
  right padding).  The exported node has explicit pads, its end pad grown so that the floor-mode
  output has Caffe's size; MAX pooling ignores padding in both.  Caffe's AVE pooling divides by
  the window clipped to the *declared* padding, not to the extra end pad: the node averages with
  ``count_include_pad=1`` and, where the two divisors differ (the last row or column of a
  ceil-rounded output), a constant map multiplies the result by their ratio.
- **LRN** (across channels): ONNX's ``LRN`` is Caffe's (``alpha / local_size``, ``k`` = bias).
- **InnerProduct**: ``Flatten(axis)`` then ``Gemm`` (``transB=1``; ``transpose: true`` keeps
  ``transB=0``), reshaped back when ``axis > 1``.
- **BatchNorm**: the stored mean and variance divided by the stored scale factor, as Caffe does,
  into ``BatchNormalization`` (scale 1, bias 0); **Scale** / **Bias** are ``Mul`` / ``Add`` with
  the parameter reshaped to broadcast from ``axis``.
- In-place layers (``bottom == top``) write a new value: ONNX is single-assignment, so each write
  of a Caffe blob gets a new name and the net's outputs keep the Caffe names.

The graph's inputs are the net's inputs with their (inferred) shapes, its outputs Caffe's net
outputs (blobs produced and never consumed), unless :func:`build_model` is given others.  The
bytes are deterministic: the same model gives the same file.

``onnx`` is imported only here and only when exporting, so the rest of the tool does not need it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from caffe_tucker.errors import CaffeTuckerError, UnsupportedLayerError, where
from caffe_tucker.graph import net_outputs

__all__ = ["to_onnx", "build_model", "check", "SUPPORTED_TYPES", "DEFAULT_OPSET", "MIN_OPSET",
           "import_onnx", "caffe_pool_size"]

#: The opset written by default, and the oldest one written (Softmax over one axis needs 13).
DEFAULT_OPSET = 13
MIN_OPSET = 13

_PIP_HINT = "hint: pip install 'caffe-tucker[onnx]' (or: pip install onnx onnxruntime)"


def import_onnx():
    """The ``onnx`` module, or one line naming the pip command when it is not installed."""
    try:
        import onnx
    except ImportError as exc:
        raise CaffeTuckerError(f"exporting to ONNX needs the onnx package, which is not "
                               f"installed ({exc}); {_PIP_HINT}") from None
    return onnx


def caffe_pool_size(n: int, kernel: int, pad: int, stride: int, ceil_mode: bool = True) -> int:
    """The output size of Caffe's pooling along one axis (ceil rounding, with its clipping rule:
    the last window must start inside the input or its left padding)."""
    span = n + 2 * pad - kernel
    o = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad and (o - 1) * stride >= n + pad:
        o -= 1
    return o


class _Graph:
    """Nodes, initializers and the Caffe-blob -> ONNX-name map, while the graph is built."""

    def __init__(self, onnx, model, final_names: dict):
        self.onnx, self.helper = onnx, onnx.helper
        self.model = model
        self.nodes = []
        self.initializers = []
        self.current: dict[str, str] = {}   # Caffe blob -> the ONNX name of its latest value
        self.used: set[str] = set()
        self.final_names = final_names      # (layer index, top) -> the name its write must have
        self.reserved = set(final_names.values())
        self.index = 0

    def unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.used or candidate in self.reserved:
            k += 1
            candidate = f"{name}:{k}"
        self.used.add(candidate)
        return candidate

    def const(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        array = np.ascontiguousarray(array)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(list(values), dtype=np.int64))

    def floats(self, name: str, array) -> str:
        return self.const(name, np.asarray(array, dtype=np.float32))

    def read(self, blob: str) -> str:
        return self.current[blob]

    def write(self, blob: str) -> str:
        """A new ONNX name for a write of ``blob`` by the current layer."""
        name = self.final_names.get((self.index, blob))
        if name is None:
            name = self.unique(f"{blob}:{self.index}")
        else:
            self.used.add(name)
        self.current[blob] = name
        return name

    def temp(self, name: str) -> str:
        return self.unique(name)

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs):
        self.nodes.append(self.helper.make_node(op, list(inputs), list(outputs),
                                                name=self.unique("node:" + name), **attrs))


def _fail(model, layer, msg: str):
    raise UnsupportedLayerError(f"{where(model.net.source, layer.line, layer.name)}{msg}")


def _unsupported(model, layer, what: str | None = None):
    detail = what or f"layer type '{layer.type}' has no ONNX export"
    _fail(model, layer, f"{detail}; hint: the export covers "
          f"{', '.join(sorted(SUPPORTED_TYPES))}: replace the layer, or leave it out of the "
          "deploy net")


def _in_shape(model, layer, i: int = 0):
    return tuple(model.shapes.layers[layer.name].inputs[i])


def _out_shape(model, layer, i: int = 0):
    return tuple(model.shapes.layers[layer.name].outputs[i])


def _blob(layer, i: int) -> np.ndarray:
    return np.asarray(layer.blobs[i], dtype=np.float32)


# -- layer handlers: (g, layer) -> None; each reads its bottoms and writes its tops -----------

def _identity(g, layer):
    for i, top in enumerate(layer.tops):
        src = g.read(layer.bottoms[min(i, len(layer.bottoms) - 1)])
        g.node("Identity", [src], [g.write(top)], layer.name)


def _conv(g, layer):
    model = g.model
    geo = model.shapes.layers[layer.name].geometry
    if geo.axis != 1:
        _unsupported(model, layer, f"convolution over axis {geo.axis} (not 1) has no ONNX export")
    if not layer.blobs:
        _fail(model, layer, "has no weights; hint: pass the caffemodel with --weights")
    attrs = dict(kernel_shape=list(geo.kernel), strides=list(geo.stride),
                 pads=list(geo.pad) * 2, dilations=list(geo.dilation), group=geo.group)
    weight = g.floats(f"{layer.name}.weight", _blob(layer, 0))
    params = [weight]
    if geo.bias_term:
        params.append(g.floats(f"{layer.name}.bias", _blob(layer, 1)))
    op = "ConvTranspose" if layer.type == "Deconvolution" else "Conv"
    for bottom, top in zip(layer.bottoms, layer.tops):
        src = g.read(bottom)
        g.node(op, [src] + params, [g.write(top)], layer.name, **attrs)


def _inner_product(g, layer):
    model = g.model
    p = layer.spec.inner_product_param
    x = _in_shape(model, layer)
    axis = p.axis + len(x) if p.axis < 0 else p.axis
    if not layer.blobs:
        _fail(model, layer, "has no weights; hint: pass the caffemodel with --weights")
    weight = g.floats(f"{layer.name}.weight", _blob(layer, 0))
    inputs = [weight]
    if p.bias_term:
        inputs.append(g.floats(f"{layer.name}.bias", _blob(layer, 1)))
    src = g.read(layer.bottoms[0])
    if axis != 1 or len(x) != 2:
        flat = g.temp(f"{layer.name}:flat")
        g.node("Flatten", [src], [flat], layer.name, axis=axis)
        src = flat
    top = layer.tops[0]
    if axis <= 1:
        g.node("Gemm", [src] + inputs, [g.write(top)], layer.name, transB=0 if p.transpose else 1)
    else:
        gemm = g.temp(f"{layer.name}:gemm")
        g.node("Gemm", [src] + inputs, [gemm], layer.name, transB=0 if p.transpose else 1)
        shape = g.ints(f"{layer.name}.shape", _out_shape(model, layer))
        g.node("Reshape", [gemm, shape], [g.write(top)], layer.name)


def _relu(g, layer):
    slope = layer.spec.relu_param.negative_slope
    src = g.read(layer.bottoms[0])
    if slope:
        g.node("LeakyRelu", [src], [g.write(layer.tops[0])], layer.name, alpha=float(slope))
    else:
        g.node("Relu", [src], [g.write(layer.tops[0])], layer.name)


def _unary(op):
    def handler(g, layer):
        g.node(op, [g.read(layer.bottoms[0])], [g.write(layer.tops[0])], layer.name)
    return handler


def _elu(g, layer):
    g.node("Elu", [g.read(layer.bottoms[0])], [g.write(layer.tops[0])], layer.name,
           alpha=float(layer.spec.elu_param.alpha))


def _pool(g, layer):
    model = g.model
    p = layer.spec.pooling_param
    if len(layer.tops) > 1:
        _unsupported(model, layer, "MAX pooling with a mask top has no ONNX export")
    if p.pool not in (p.MAX, p.AVE):
        _unsupported(model, layer, "STOCHASTIC pooling has no ONNX export (Caffe's TEST phase "
                     "weights each window by its values)")
    x = _in_shape(model, layer)
    out = _out_shape(model, layer)
    src = g.read(layer.bottoms[0])
    top = layer.tops[0]
    if p.global_pooling:
        g.node("GlobalMaxPool" if p.pool == p.MAX else "GlobalAveragePool", [src], [g.write(top)],
               layer.name)
        return
    geo = model.shapes.layers[layer.name].geometry
    kernel, stride, pad = geo.kernel, geo.stride, geo.pad
    sizes = x[2:]
    # end pads that make floor((n + pb + pe - k) / s) + 1 equal Caffe's output size
    end = [(o - 1) * s + k - n - pb for o, s, k, n, pb in zip(out[2:], stride, kernel, sizes, pad)]
    end = [max(e, 0) for e in end]
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pad) + end)
    if p.pool == p.MAX:
        g.node("MaxPool", [src], [g.write(top)], layer.name, **attrs)
        return
    # AVE: Caffe divides by the window clipped to [-pad, n + pad); ONNX (count_include_pad=1,
    # every window inside the explicit padding) by the whole kernel.
    ratio = np.ones(out[2:], dtype=np.float64)
    for axis, (o, s, k, n, pb) in enumerate(zip(out[2:], stride, kernel, sizes, pad)):
        starts = np.arange(o) * s - pb
        ends = np.minimum(starts + k, n + pb)
        shape = [1] * len(out[2:])
        shape[axis] = o
        ratio = ratio * (k / (ends - starts)).reshape(shape)
    if np.all(ratio == 1.0):
        g.node("AveragePool", [src], [g.write(top)], layer.name, count_include_pad=1, **attrs)
        return
    pooled = g.temp(f"{layer.name}:avg")
    g.node("AveragePool", [src], [pooled], layer.name, count_include_pad=1, **attrs)
    scale = g.floats(f"{layer.name}.divisor_ratio", ratio.astype(np.float32)[None, None])
    g.node("Mul", [pooled, scale], [g.write(top)], layer.name)


def _lrn(g, layer):
    p = layer.spec.lrn_param
    if p.norm_region != p.ACROSS_CHANNELS:
        _unsupported(g.model, layer, "LRN WITHIN_CHANNEL has no ONNX export")
    g.node("LRN", [g.read(layer.bottoms[0])], [g.write(layer.tops[0])], layer.name,
           size=int(p.local_size), alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k))


def _softmax(g, layer):
    x = _in_shape(g.model, layer)
    axis = layer.spec.softmax_param.axis
    axis = axis + len(x) if axis < 0 else axis
    g.node("Softmax", [g.read(layer.bottoms[0])], [g.write(layer.tops[0])], layer.name, axis=axis)


def _concat(g, layer):
    p = layer.spec.concat_param
    x = _in_shape(g.model, layer)
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    axis = axis + len(x) if axis < 0 else axis
    g.node("Concat", [g.read(b) for b in layer.bottoms], [g.write(layer.tops[0])], layer.name,
           axis=axis)


def _eltwise(g, layer):
    p = layer.spec.eltwise_param
    srcs = [g.read(b) for b in layer.bottoms]
    top = layer.tops[0]
    if p.operation == p.SUM:
        coeffs = list(p.coeff) or [1.0] * len(srcs)
        terms = []
        for i, (src, c) in enumerate(zip(srcs, coeffs)):
            if c == 1.0:
                terms.append(src)
            else:
                scaled = g.temp(f"{layer.name}:term{i}")
                g.node("Mul", [src, g.floats(f"{layer.name}.coeff{i}", np.float32(c))], [scaled],
                       layer.name)
                terms.append(scaled)
        g.node("Sum", terms, [g.write(top)], layer.name)
    elif p.operation == p.PROD:
        out = srcs[0]
        for i, src in enumerate(srcs[1:]):
            last = i == len(srcs) - 2
            nxt = g.write(top) if last else g.temp(f"{layer.name}:prod{i}")
            g.node("Mul", [out, src], [nxt], layer.name)
            out = nxt
    else:  # MAX
        g.node("Max", srcs, [g.write(top)], layer.name)


def _flatten(g, layer):
    p = layer.spec.flatten_param
    x = _in_shape(g.model, layer)
    a = p.axis + len(x) if p.axis < 0 else p.axis
    e = p.end_axis + len(x) if p.end_axis < 0 else p.end_axis
    target = [0] * a + [-1] + list(x[e + 1:])
    shape = g.ints(f"{layer.name}.shape", target)
    g.node("Reshape", [g.read(layer.bottoms[0]), shape], [g.write(layer.tops[0])], layer.name)


def _reshape(g, layer):
    p = layer.spec.reshape_param
    x = _in_shape(g.model, layer)
    ndim = len(x)
    start = p.axis + ndim + 1 if p.axis < 0 else p.axis
    end = ndim if p.num_axes == -1 else start + p.num_axes
    target = [0] * start + [int(d) for d in p.shape.dim] + list(x[end:])
    shape = g.ints(f"{layer.name}.shape", target)
    g.node("Reshape", [g.read(layer.bottoms[0]), shape], [g.write(layer.tops[0])], layer.name)


def _broadcast(shape, axis: int, ndim: int) -> tuple:
    """A parameter of ``shape`` applied from ``axis`` of an ``ndim``-D input, as numpy
    broadcasting wants it (trailing 1s)."""
    return tuple(shape) + (1,) * (ndim - axis - len(shape))


def _batchnorm(g, layer):
    model = g.model
    p = layer.spec.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        _unsupported(model, layer, "BatchNorm with use_global_stats: false (batch statistics) "
                     "has no ONNX export")
    if len(layer.blobs) < 3:
        _fail(model, layer, "has no weights; hint: pass the caffemodel with --weights")
    factor = float(np.asarray(layer.blobs[2]).ravel()[0])
    factor = 0.0 if factor == 0 else 1.0 / factor
    mean = _blob(layer, 0) * np.float32(factor)
    var = _blob(layer, 1) * np.float32(factor)
    c = mean.shape[0]
    x = _in_shape(model, layer)
    src = g.read(layer.bottoms[0])
    inputs = [src, g.floats(f"{layer.name}.scale", np.ones(c, np.float32)),
              g.floats(f"{layer.name}.bias", np.zeros(c, np.float32)),
              g.floats(f"{layer.name}.mean", mean), g.floats(f"{layer.name}.var", var)]
    if len(x) < 2:
        _unsupported(model, layer, "BatchNorm of a 1-D input has no ONNX export")
    g.node("BatchNormalization", inputs, [g.write(layer.tops[0])], layer.name,
           epsilon=float(p.eps))


def _scale_or_bias(g, layer):
    model = g.model
    is_scale = layer.type == "Scale"
    param = layer.spec.scale_param if is_scale else layer.spec.bias_param
    x = _in_shape(model, layer)
    axis = param.axis + len(x) if param.axis < 0 else param.axis
    src = g.read(layer.bottoms[0])
    top = layer.tops[0]
    blobs = list(layer.blobs)
    if len(layer.bottoms) > 1:
        other_shape = _in_shape(model, layer, 1)
        shaped = g.temp(f"{layer.name}:param")
        g.node("Reshape", [g.read(layer.bottoms[1]),
                           g.ints(f"{layer.name}.param_shape",
                                  _broadcast(other_shape, axis, len(x)))], [shaped], layer.name)
        first = shaped
    else:
        if not blobs:
            _fail(model, layer, "has no weights; hint: pass the caffemodel with --weights")
        b = np.asarray(blobs.pop(0), np.float32)
        first = g.floats(f"{layer.name}.{'scale' if is_scale else 'bias'}",
                         b.reshape(_broadcast(b.shape, axis, len(x))))
    has_bias = is_scale and layer.spec.scale_param.bias_term
    op = "Mul" if is_scale else "Add"
    if has_bias:
        mid = g.temp(f"{layer.name}:scaled")
        g.node(op, [src, first], [mid], layer.name)
        b = np.asarray(blobs[0], np.float32)
        bias = g.floats(f"{layer.name}.bias", b.reshape(_broadcast(b.shape, axis, len(x))))
        g.node("Add", [mid, bias], [g.write(top)], layer.name)
    else:
        g.node(op, [src, first], [g.write(top)], layer.name)


def _prelu(g, layer):
    model = g.model
    x = _in_shape(model, layer)
    slope = _blob(layer, 0)
    slope = slope.reshape(_broadcast(slope.shape, 1, len(x)) if slope.size > 1 else (1,))
    g.node("PRelu", [g.read(layer.bottoms[0]), g.floats(f"{layer.name}.slope", slope)],
           [g.write(layer.tops[0])], layer.name)


def _power(g, layer):
    p = layer.spec.power_param
    cur = g.read(layer.bottoms[0])
    steps = []
    if p.scale != 1.0:
        steps.append(("Mul", "scale", p.scale))
    if p.shift != 0.0:
        steps.append(("Add", "shift", p.shift))
    if p.power != 1.0:
        steps.append(("Pow", "power", p.power))
    if not steps:
        g.node("Identity", [cur], [g.write(layer.tops[0])], layer.name)
        return
    for i, (op, what, value) in enumerate(steps):
        out = g.write(layer.tops[0]) if i == len(steps) - 1 else g.temp(f"{layer.name}:{what}")
        g.node(op, [cur, g.floats(f"{layer.name}.{what}", np.float32(value))], [out], layer.name)
        cur = out


def _crop(g, layer):
    model = g.model
    p = layer.spec.crop_param
    x = _in_shape(model, layer)
    ref = _in_shape(model, layer, 1)
    axis = p.axis + len(x) if p.axis < 0 else p.axis
    axes = list(range(axis, len(x)))
    offsets = list(p.offset)
    if len(offsets) == 1:
        offsets = offsets * len(axes)
    elif not offsets:
        offsets = [0] * len(axes)
    if len(offsets) != len(axes):
        _fail(model, layer, f"{len(offsets)} crop offsets for {len(axes)} axes from axis {axis}")
    starts = [int(o) for o in offsets]
    ends = [o + int(ref[a]) for o, a in zip(starts, axes)]
    for a, s, e in zip(axes, starts, ends):
        if e > x[a]:
            _fail(model, layer, f"crop of axis {a} from {s} to {e} is outside the input "
                  f"(size {x[a]})")
    g.node("Slice", [g.read(layer.bottoms[0]), g.ints(f"{layer.name}.starts", starts),
                     g.ints(f"{layer.name}.ends", ends), g.ints(f"{layer.name}.axes", axes)],
           [g.write(layer.tops[0])], layer.name)


def _slice(g, layer):
    model = g.model
    p = layer.spec.slice_param
    x = _in_shape(model, layer)
    axis = p.slice_dim if p.HasField("slice_dim") else p.axis
    axis = axis + len(x) if axis < 0 else axis
    src = g.read(layer.bottoms[0])
    begin = 0
    for i, top in enumerate(layer.tops):
        size = _out_shape(model, layer, i)[axis]
        g.node("Slice", [src, g.ints(f"{layer.name}.starts{i}", [begin]),
                         g.ints(f"{layer.name}.ends{i}", [begin + size]),
                         g.ints(f"{layer.name}.axes{i}", [axis])], [g.write(top)], layer.name)
        begin += size


def _input(g, layer):
    pass  # the graph's inputs: set up by build_model


def _silence(g, layer):
    pass


_HANDLERS = {
    "Input": _input, "Convolution": _conv, "Deconvolution": _conv,
    "InnerProduct": _inner_product, "ReLU": _relu, "Pooling": _pool, "LRN": _lrn,
    "Softmax": _softmax, "Dropout": _identity, "Split": _identity, "Concat": _concat,
    "Eltwise": _eltwise, "Flatten": _flatten, "Reshape": _reshape, "BatchNorm": _batchnorm,
    "Scale": _scale_or_bias, "Bias": _scale_or_bias, "Sigmoid": _unary("Sigmoid"),
    "TanH": _unary("Tanh"), "AbsVal": _unary("Abs"), "BNLL": _unary("Softplus"),
    "ELU": _elu, "PReLU": _prelu, "Power": _power, "Crop": _crop, "Slice": _slice,
    "Silence": _silence,
}

#: The Caffe layer types the export knows.
SUPPORTED_TYPES = frozenset(_HANDLERS)


def _final_writes(net, names: Sequence[str], inputs: Sequence[str]) -> dict:
    """``{(layer index, blob): blob}`` for the last write of every blob to be output under its
    Caffe name (an input blob keeps its name for the graph input)."""
    last = {}
    for i, layer in enumerate(net.layers):
        for t in layer.tops:
            last[t] = i
    return {(last[n], n): n for n in names if n in last and n not in inputs}


def build_model(model, opset: int = DEFAULT_OPSET, outputs: Sequence[str] | None = None):
    """The ONNX ``ModelProto`` of a loaded model (:func:`caffe_tucker.model.load_model`).

    Parameters
    ----------
    model : caffe_tucker.model.Model
        A deploy net (a train_val loaded with ``deploy=True``) with its weights.
    opset : int
        The default domain's opset version (>= 13).
    outputs : list of str, optional
        The Caffe blobs to output (default: the net's outputs); an in-place blob's value is its
        last one, as Caffe's forward returns it.

    Raises
    ------
    UnsupportedLayerError
        A layer the export does not know (one line: file, line, layer, type, hint).
    """
    onnx = import_onnx()
    from caffe_tucker import __version__

    helper = onnx.helper
    net = model.net
    if opset < MIN_OPSET:
        raise CaffeTuckerError(f"--opset {opset}: the export writes opset {MIN_OPSET} or newer; "
                               f"hint: pass --opset {DEFAULT_OPSET}")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise CaffeTuckerError(f"--opset {opset}: the installed onnx {onnx.__version__} knows "
                               f"opsets up to {newest}; hint: pass --opset {DEFAULT_OPSET}")
    for layer in net.layers:
        if layer.type not in _HANDLERS:
            _unsupported(model, layer)
        info = model.shapes.layers.get(layer.name)
        if info is None or any(s is None for s in info.outputs):
            _fail(model, layer, "its output shape is unknown; hint: give the net's input shape "
                  "with --input-shape")
    input_names = [t for l in net.layers if l.type == "Input" for t in l.tops]
    if not input_names:
        raise CaffeTuckerError(f"{net.source}: the net has no inputs (no Input layer); hint: "
                               "export a deploy net, or give a train_val's data shape with "
                               "--input-shape")
    wanted = list(outputs) if outputs is not None else net_outputs(net)
    g = _Graph(onnx, model, _final_writes(net, wanted, input_names))
    inputs = []
    for name in input_names:
        g.used.add(name)
        g.current[name] = name
        inputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                    list(model.shapes.blobs[name])))
    for i, layer in enumerate(net.layers):
        g.index = i
        _HANDLERS[layer.type](g, layer)
    graph_outputs = []
    for name in wanted:
        if name not in g.current:
            raise CaffeTuckerError(f"{net.source}: no blob '{name}' in the net")
        value = g.current[name]
        if value != name:  # an input asked for, or a blob written again later than asked
            g.node("Identity", [value], [g.unique(name + ":out")], "output " + name)
            value = g.nodes[-1].output[0]
        graph_outputs.append(helper.make_tensor_value_info(
            value, onnx.TensorProto.FLOAT, list(model.shapes.blobs[name])))
    graph = helper.make_graph(g.nodes, net.name or "caffe_net", inputs, graph_outputs,
                              initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="caffe_tucker", producer_version=__version__)
    proto.ir_version = min(proto.ir_version, _ir_version(onnx, opset))
    return proto


def _ir_version(onnx, opset: int) -> int:
    """The oldest IR version that carries ``opset`` (so older runtimes load the file)."""
    table = getattr(onnx.helper, "VERSION_TABLE", ())
    for _release, ir, op, *_ in table:
        if op >= opset:
            return ir
    return onnx.IR_VERSION


def check(proto) -> None:
    """``onnx.checker.check_model(full_check=True)``: the model is valid and its shapes infer;
    a failure here is a bug of the export, reported with the checker's words."""
    onnx = import_onnx()
    onnx.checker.check_model(proto, full_check=True)


def to_onnx(model, opset: int = DEFAULT_OPSET, outputs: Sequence[str] | None = None) -> bytes:
    """The ONNX file's bytes of a loaded model (:func:`build_model`, checked): deterministic."""
    proto = build_model(model, opset=opset, outputs=outputs)
    check(proto)
    return proto.SerializeToString(deterministic=True)
