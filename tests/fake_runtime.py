"""A numpy stand-in for :class:`caffe_tucker.caffe.pycaffe.CaffeRuntime`, for tests without Caffe.

:class:`FakeRuntime` answers the two requests that ``verify`` and ``bench`` make, ``forward`` and
``time``, by running the net's TEST phase in numpy with the layer semantics of BVLC Caffe 1.0
(the CPU code paths), so that their logic can be tested on machines without a Caffe runtime::

    fake = FakeRuntime()
    out = fake.forward(net, None, {"data": x})          # {"prob": float32 array}
    timing = fake.time(net, batch=2, iterations=3)     # same keys as CaffeRuntime.time
    assert fake.calls == [("forward", "CIFAR10_quick_test"), ("time", "CIFAR10_quick_test")]

What it copies from Caffe besides the layer arithmetic:

* the net is filtered for the TEST phase, and ``Split`` layers are inserted wherever a blob feeds
  more than one layer (Caffe's ``InsertSplits``, same layer and blob names), so ``time`` lists the
  layers Caffe's ``net._layer_names`` lists;
* the net's inputs are the tops of its ``Input`` layers, and each is reshaped to the array given;
* the default outputs are the blobs produced and never consumed afterwards, in name order (Caffe
  keeps them in a ``std::set``);
* blobs hold float32 between layers; each layer computes in float64 and rounds its result;
* weight blobs must have Caffe's shapes exactly, except those a caffemodel stores with the legacy
  ``num/channels/height/width`` dims (a ``Net`` with unfitted blobs is refused, as real Caffe
  refuses the caffemodel the runtime makes of it).

Layers the weights do not cover get blobs drawn from their fillers by
:func:`caffe_tucker.io.fillers.init_weights` (Caffe would draw its own, different values).
A layer type it does not implement raises :class:`NotImplementedError` naming the type.
A train_val net (``Data`` layers) is for the caller to turn into a deploy net first
(:func:`caffe_tucker.model.deploy_from_train_val`).
"""

from __future__ import annotations

import collections
import functools
import math
import os
import statistics
import time as _time
from dataclasses import replace
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from caffe_tucker.analysis.shapes import conv_geometry, fit_weights, infer_shapes
from caffe_tucker.caffe.pycaffe import CaffeRuntimeError
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.caffe_pb2 import (EltwiseParameter, LayerParameter, LRNParameter,
                                       NetParameter, PoolingParameter)
from caffe_tucker.io.read import attach_weights, parse_net_text
from caffe_tucker.io.upgrade import upgrade_net
from caffe_tucker.io.wire import decode_weights

__all__ = ["Call", "FakeRuntime", "load_net", "insert_splits", "pooled_size", "SUPPORTED_TYPES"]

_FLT_MAX = float(np.finfo(np.float32).max)


class Call(NamedTuple):
    """One request a :class:`FakeRuntime` answered: ``("forward" | "time", net name)``."""

    kind: str
    net: str


# --------------------------------------------------------------------------------------------
# The net: from a Net or from prototxt text + caffemodel bytes, TEST phase, splits inserted


def load_net(prototxt, caffemodel=None) -> Net:
    """The TEST-phase :class:`Net` of what ``CaffeRuntime.forward`` accepts.

    ``prototxt`` is a caffe_tucker ``Net`` (its blobs are the weights unless ``caffemodel`` is
    given), prototxt text (``str`` or ``bytes``) or a path; ``caffemodel`` is the bytes of a
    ``.caffemodel``, a path, or None.

    Raises NotImplementedError for a layer type FakeRuntime does not compute, and
    CaffeRuntimeError for a weight blob whose shape Caffe would refuse.
    """
    if isinstance(prototxt, Net):
        net = prototxt
        if caffemodel is not None:  # Caffe sees the text only: the caffemodel's blobs, no others
            net = net.with_layers(layer.with_blobs(()) for layer in net.layers)
    else:
        if isinstance(prototxt, os.PathLike):
            prototxt = Path(prototxt).read_text()
        elif isinstance(prototxt, (bytes, bytearray)):
            prototxt = bytes(prototxt).decode("utf-8")
        if not isinstance(prototxt, str):
            raise TypeError("prototxt must be text, a path or a Net, not "
                            f"{type(prototxt).__name__}")
        raw, _ = parse_net_text(prototxt, "<prototxt>")
        upgraded, applied = upgrade_net(raw, "<prototxt>")
        layers = []
        for spec in upgraded.layer:
            own = LayerParameter()
            own.CopyFrom(spec)
            own.ClearField("blobs")
            layers.append(Layer(spec=own))
        header = NetParameter()
        header.CopyFrom(upgraded)
        header.ClearField("layer")
        net = Net(layers=tuple(layers), header=header, source="<prototxt>", upgrades=applied)
    legacy: set[tuple[str, int]] = set()
    if caffemodel is not None:
        if isinstance(caffemodel, os.PathLike):
            caffemodel = Path(caffemodel).read_bytes()
        weights = decode_weights(bytes(caffemodel), "<caffemodel>")
        legacy = {(raw.name, i) for raw in weights.layers for i, blob in enumerate(raw.blobs)
                  if blob.legacy is not None}
        net = attach_weights(net, weights, "<caffemodel>")
    net = net.for_state("TEST")
    for layer in net.layers:
        if layer.type not in _LAYERS:
            raise NotImplementedError(
                f"FakeRuntime does not implement layer type '{layer.type}' (layer "
                f"'{layer.name}'); it implements {', '.join(sorted(_LAYERS))}"
                + ("; hint: turn a train_val net into a deploy net with "
                   "deploy_from_train_val first" if layer.type.endswith("Data") else ""))
    _check_blob_shapes(net, legacy)
    return net


def _check_blob_shapes(net: Net, legacy: set[tuple[str, int]]):
    """Caffe's check when it copies trained weights into the net built for its declared inputs:
    a blob stored with ``num/channels/height/width`` may have fewer axes padded with 1s (left to
    :func:`fit_weights`), one stored with a ``shape`` must have exactly the expected shape --
    which is what a ``Net`` becomes on its way to real Caffe."""
    expected = infer_shapes(insert_splits(net)).layers
    for layer in net.layers:
        params = expected[layer.name].params
        for i, (blob, want) in enumerate(zip(layer.blobs, params)):
            if (layer.name, i) in legacy or want is None or tuple(blob.shape) == tuple(want):
                continue
            raise CaffeRuntimeError(
                f"Cannot copy param {i} weights from layer '{layer.name}'; shape mismatch.  "
                f"Source param shape is {list(blob.shape)}; target param shape is {list(want)} "
                "(as Caffe checks it; hint: fit_weights gives a Net Caffe's blob shapes)")


def insert_splits(net: Net) -> Net:
    """Caffe's ``InsertSplits``: a ``Split`` layer after every top that feeds several bottoms.

    The split layer of top ``j`` (blob ``b``) of layer ``L`` is named ``b_L_j_split`` and its
    tops ``b_L_j_split_0``, ``b_L_j_split_1``, ... go to the consumers in net order.
    """
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: collections.Counter = collections.Counter()
    for i, layer in enumerate(net.layers):
        for j, blob in enumerate(layer.bottoms):
            if blob not in last_top:
                raise CaffeRuntimeError(f"Unknown bottom blob '{blob}' (layer '{layer.name}', "
                                        f"bottom index {j})")
            source[i, j] = last_top[blob]
            consumers[last_top[blob]] += 1
        for j, blob in enumerate(layer.tops):
            last_top[blob] = (i, j)
        for j, weight in enumerate(list(layer.spec.loss_weight)[:len(layer.tops)]):
            if weight:
                consumers[last_top[layer.tops[j]]] += 1
    taken: collections.Counter = collections.Counter()
    out = []
    for i, layer in enumerate(net.layers):
        bottoms = list(layer.bottoms)
        for j, blob in enumerate(bottoms):
            src = source[i, j]
            if consumers[src] > 1:
                bottoms[j] = f"{blob}_{net.layers[src[0]].name}_{src[1]}_split_{taken[src]}"
                taken[src] += 1
        if bottoms != list(layer.bottoms):
            layer = replace(layer, spec=make_spec(layer.name, layer.type, bottoms,
                                                  list(layer.tops), base=layer.spec))
        out.append(layer)
        for j, blob in enumerate(layer.tops):
            n = consumers[i, j]
            if n > 1:
                name = f"{blob}_{layer.name}_{j}_split"
                tops = [f"{name}_{k}" for k in range(n)]
                out.append(Layer(spec=make_spec(name, "Split", [blob], tops)))
    return net.with_layers(out)


def _net_outputs(net: Net) -> list[str]:
    """Caffe's net outputs: blobs still unconsumed after the last layer, in name order."""
    available: set[str] = set()
    for layer in net.layers:
        available.difference_update(layer.bottoms)
        available.update(layer.tops)
    return sorted(available)


# --------------------------------------------------------------------------------------------
# Layers: each takes (layer, bottoms as float64 arrays, weight blobs, ctx) and returns its tops


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _input(layer, bottoms, blobs, ctx):
    raise AssertionError("Input layers are fed, not run")


def _convolution(layer, bottoms, blobs, ctx):
    weight = _f64(blobs[0])
    bias = _f64(blobs[1]) if len(blobs) > 1 else None
    tops = []
    for x in bottoms:  # Caffe: one top per bottom, all with the same weights
        g = conv_geometry(layer, x.shape)
        lead, channels, spatial = x.shape[:g.axis], x.shape[g.axis], x.shape[g.axis + 1:]
        x = x.reshape((-1, channels) + spatial)
        n = x.shape[0]
        padded = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in g.pad])
        out = tuple((size + 2 * p - (d * (k - 1) + 1)) // s + 1 for size, k, s, p, d in
                    zip(spatial, g.kernel, g.stride, g.pad, g.dilation))
        # im2col: one strided view of the padded input per kernel offset
        patches = []
        for offset in np.ndindex(*g.kernel):
            index = tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                          for o, d, s, m in zip(offset, g.dilation, g.stride, out))
            patches.append(padded[(slice(None), slice(None)) + index])
        cols = np.stack(patches, axis=2)  # (n, C, K, *out)
        groups, kk, places = g.group, len(patches), math.prod(out)
        cols = cols.reshape(n, groups, channels // groups * kk, places)
        w = weight.reshape(groups, g.num_output // groups, -1)
        y = (w @ cols).reshape((n, g.num_output) + out)
        if bias is not None:
            y = y + bias.reshape((1, -1) + (1,) * len(out))
        tops.append(y.reshape(lead + y.shape[1:]))
    return tops


def _inner_product(layer, bottoms, blobs, ctx):
    p = layer.spec.inner_product_param
    x = bottoms[0]
    axis = _axis(p.axis, x.ndim)
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    weight = _f64(blobs[0])
    y = flat @ (weight if p.transpose else weight.T)
    if p.bias_term:
        y = y + _f64(blobs[1])
    return [y.reshape(x.shape[:axis] + (y.shape[1],))]


def _relu(layer, bottoms, blobs, ctx):
    x = bottoms[0]
    slope = layer.spec.relu_param.negative_slope
    return [np.maximum(x, 0) + slope * np.minimum(x, 0)]


def _sigmoid(layer, bottoms, blobs, ctx):
    return [0.5 * np.tanh(0.5 * bottoms[0]) + 0.5]


def _tanh(layer, bottoms, blobs, ctx):
    return [np.tanh(bottoms[0])]


def _identity(layer, bottoms, blobs, ctx):
    """Dropout at TEST (Caffe 1.0 scales at training time only) and Split."""
    return [bottoms[0]] * len(layer.tops)


def pooled_size(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool = True) -> int:
    """Caffe's pooling output size: rounded up (or down), then the clip rule -- with padding,
    the last window must start inside the input or its left padding."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool2d(x, kernel, stride, pad, method, ceil_mode=True, with_mask=False):
    """MAX or AVE pooling of (N, C, H, W) exactly as Caffe's CPU loops compute it."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    h, w = x.shape[2:]
    oh, ow = pooled_size(h, kh, ph, sh, ceil_mode), pooled_size(w, kw, pw, sw, ceil_mode)
    # pad on the left by pad, on the right as far as the last window reaches
    right_h = max(0, (oh - 1) * sh + kh - h - ph)
    right_w = max(0, (ow - 1) * sw + kw - w - pw)
    fill = -_FLT_MAX if method == PoolingParameter.MAX else 0.0
    padded = np.pad(x, [(0, 0), (0, 0), (ph, right_h), (pw, right_w)], constant_values=fill)
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
    if method == PoolingParameter.MAX:
        flat = windows.reshape(windows.shape[:4] + (kh * kw,))
        top = flat.max(axis=-1)
        if not with_mask:
            return [top]
        # Caffe's mask: the input index h * W + w of the first maximum in row-major order
        first = flat.argmax(axis=-1)
        rows = np.arange(oh)[:, None] * sh - ph + first // kw
        cols = np.arange(ow)[None, :] * sw - pw + first % kw
        return [top, (rows * w + cols).astype(np.float64)]
    if method != PoolingParameter.AVE:
        raise NotImplementedError("Pooling method STOCHASTIC is not implemented in FakeRuntime")

    def counts(n_out, k, s, p, size):  # Caffe divides by the window clipped to the padded input
        start = np.arange(n_out) * s - p
        return np.minimum(start + k, size + p) - start

    divisor = np.outer(counts(oh, kh, sh, ph, h), counts(ow, kw, sw, pw, w))
    return [windows.sum(axis=(-2, -1)) / divisor]


def _pooling(layer, bottoms, blobs, ctx):
    p = layer.spec.pooling_param
    x = bottoms[0]
    if p.global_pooling:
        kernel, pad, stride = x.shape[2:], (0, 0), (1, 1)
    else:
        kernel = ((p.kernel_h, p.kernel_w) if p.HasField("kernel_h") or p.HasField("kernel_w")
                  else (p.kernel_size, p.kernel_size))
        pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad,) * 2
        stride = ((p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w")
                  else (p.stride,) * 2)
    return _pool2d(x, kernel, stride, pad, p.pool, p.round_mode == PoolingParameter.CEIL,
                   with_mask=len(layer.tops) > 1)


def _softmax(layer, bottoms, blobs, ctx):
    x = bottoms[0]
    axis = _axis(layer.spec.softmax_param.axis, x.ndim)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


def _lrn(layer, bottoms, blobs, ctx):
    p = layer.spec.lrn_param
    x = bottoms[0]
    size, pre = p.local_size, (p.local_size - 1) // 2
    if p.norm_region == LRNParameter.ACROSS_CHANNELS:
        # scale_c = k + alpha / size * sum of x^2 over channels c - pre .. c - pre + size - 1
        squares = np.pad(x * x, [(0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)])
        window = sliding_window_view(squares, size, axis=1).sum(axis=-1)
        scale = p.k + p.alpha / size * window
    else:
        # Caffe builds it from layers: square, AVE pooling (kernel size, pad pre, stride 1),
        # then power (1 + alpha * avg) ^ -beta -- k plays no part
        (avg,) = _pool2d(x * x, (size, size), (1, 1), (pre, pre), PoolingParameter.AVE)
        scale = 1.0 + p.alpha * avg
    return [x * scale ** -p.beta]


def _concat(layer, bottoms, blobs, ctx):
    p = layer.spec.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    return [np.concatenate(bottoms, axis=_axis(axis, bottoms[0].ndim))]


def _eltwise(layer, bottoms, blobs, ctx):
    p = layer.spec.eltwise_param
    if p.operation == EltwiseParameter.PROD:
        return [functools.reduce(np.multiply, bottoms)]
    if p.operation == EltwiseParameter.MAX:
        return [np.maximum.reduce(bottoms)]
    coeff = list(p.coeff) or [1.0] * len(bottoms)
    return [sum(c * b for c, b in zip(coeff, bottoms))]


def _batch_norm(layer, bottoms, blobs, ctx):
    p = layer.spec.batch_norm_param
    x = bottoms[0]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    global_stats = p.use_global_stats if p.HasField("use_global_stats") else True  # TEST phase
    if global_stats:
        stored = float(blobs[2].reshape(-1)[0])
        factor = 0.0 if stored == 0 else 1.0 / stored
        mean, var = _f64(blobs[0]) * factor, _f64(blobs[1]) * factor
    else:  # statistics of this batch, over every axis but the channels
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    return [(x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + p.eps)]


def _scale(layer, bottoms, blobs, ctx):
    p = layer.spec.scale_param
    x = bottoms[0]
    axis = _axis(p.axis, x.ndim)
    if len(bottoms) > 1:
        factor, rest = bottoms[1], list(blobs)
    else:
        factor, rest = _f64(blobs[0]), list(blobs[1:])
    span = factor.ndim
    if len(bottoms) == 1 and p.num_axes != -1:
        span = p.num_axes
    shape = x.shape[axis:axis + span]
    broadcast = (1,) * axis + shape + (1,) * (x.ndim - axis - len(shape))
    y = x * factor.reshape(broadcast)
    if p.bias_term:
        y = y + _f64(rest[0]).reshape(broadcast)
    return [y]


def _same_data_new_shape(layer, bottoms, blobs, ctx):
    """Flatten and Reshape: the data unchanged, the shape caffe_tucker's inference computed."""
    return [bottoms[0].reshape(ctx.shapes.layers[layer.name].outputs[0])]


_LAYERS = {
    "Input": _input, "Convolution": _convolution, "InnerProduct": _inner_product,
    "ReLU": _relu, "Sigmoid": _sigmoid, "TanH": _tanh, "Pooling": _pooling,
    "Softmax": _softmax, "LRN": _lrn, "Dropout": _identity, "Split": _identity,
    "Concat": _concat, "Eltwise": _eltwise, "BatchNorm": _batch_norm, "Scale": _scale,
    "Flatten": _same_data_new_shape, "Reshape": _same_data_new_shape,
}

#: The layer types FakeRuntime computes.
SUPPORTED_TYPES = frozenset(_LAYERS)


# --------------------------------------------------------------------------------------------
# One net, ready to run for given input shapes


class _Program:
    """A net prepared for one set of input shapes: splits inserted, weights fitted."""

    def __init__(self, net: Net, input_shapes: Mapping[str, tuple]):
        net = insert_splits(net)
        self.inputs = [t for layer in net.layers if layer.type == "Input" for t in layer.tops]
        unknown = sorted(set(input_shapes) - set(self.inputs))
        if unknown:
            raise CaffeRuntimeError(f"Caffe forward failed: {unknown} are not input blobs of the "
                                    f"net; its inputs are {self.inputs}")
        missing = [name for name in self.inputs if name not in input_shapes]
        if missing:
            raise CaffeRuntimeError(f"Caffe forward failed: no array given for the net's input "
                                    f"blob(s) {missing}")
        self.shapes = infer_shapes(net, {k: tuple(v) for k, v in input_shapes.items()})
        net = fit_weights(net, self.shapes)
        if any(not l.blobs and self.shapes.layers[l.name].params for l in net.layers):
            from caffe_tucker.io.fillers import init_weights

            drawn = init_weights(net, input_shapes=dict(input_shapes))
            net = net.with_layers(l if l.blobs or not self.shapes.layers[l.name].params
                                  else drawn.layer(l.name) for l in net.layers)
        self.net = net
        self.blob_names = list(dict.fromkeys(t for layer in net.layers for t in layer.tops))
        self.outputs = _net_outputs(net)

    def run_layer(self, layer: Layer, blobs: dict):
        """Compute one layer from ``blobs`` (float32) and store its tops there (float32)."""
        if layer.type == "Input":
            return
        bottoms = [blobs[b].astype(np.float64) for b in layer.bottoms]
        tops = _LAYERS[layer.type](layer, bottoms, layer.blobs, self)
        for name, value, want in zip(layer.tops, tops, self.shapes.layers[layer.name].outputs):
            if want is not None and tuple(value.shape) != tuple(want):
                raise AssertionError(f"FakeRuntime: layer '{layer.name}' ({layer.type}) made "
                                     f"{list(value.shape)} for '{name}', shape inference says "
                                     f"{list(want)}")
            blobs[name] = np.asarray(value, dtype=np.float32)

    def forward(self, inputs: Mapping[str, np.ndarray]) -> dict:
        blobs = {name: np.asarray(inputs[name], dtype=np.float32) for name in self.inputs}
        for layer in self.net.layers:
            self.run_layer(layer, blobs)
        return blobs


# --------------------------------------------------------------------------------------------
# The runtime


def _check_count(method: str, name: str, value, low: int):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"The '{name}' parameter of FakeRuntime.{method} must be an int >= {low}. "
                         f"Got {value!r} instead.")


class FakeRuntime:
    """``forward`` and ``time`` of :class:`CaffeRuntime`, computed in numpy (see the module).

    ``calls`` lists every request answered, as :class:`Call` ``(kind, net name)``.
    """

    def __init__(self):
        self.calls: list[Call] = []

    def __enter__(self) -> "FakeRuntime":
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Nothing to stop."""

    def __repr__(self):
        return f"FakeRuntime({len(self.calls)} calls)"

    def forward(self, prototxt, caffemodel=None, inputs: Mapping[str, np.ndarray] | None = None,
                blobs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One TEST-phase forward pass; ``{blob: float32 array}`` in the order asked for
        (default: the net's outputs).  Arguments as :meth:`CaffeRuntime.forward`."""
        net = load_net(prototxt, caffemodel)
        self.calls.append(Call("forward", net.name))
        arrays = {str(k): np.ascontiguousarray(v, dtype=np.float32)
                  for k, v in (inputs or {}).items()}
        scalar = [k for k, v in arrays.items() if v.ndim == 0]
        if scalar:
            raise CaffeRuntimeError(f"Caffe forward failed: input {scalar[0]!r} is a scalar; give "
                                    "an array such as N,C,H,W")
        program = _Program(net, {k: v.shape for k, v in arrays.items()})
        names = program.outputs if blobs is None else [str(b) for b in blobs]
        unknown = [b for b in names if b not in program.blob_names]
        if unknown:
            raise CaffeRuntimeError(f"Caffe forward failed: no blob named "
                                    f"{', '.join(repr(b) for b in unknown)} in the net; its blobs "
                                    f"are {program.blob_names}")
        values = program.forward(arrays)
        return {name: values[name].copy() for name in names}

    def time(self, prototxt, caffemodel=None, batch: int = 1, iterations: int = 10,
             warmup: int = 2, threads: int | None = None) -> dict:
        """Time each layer alone and the whole pass on random inputs of ``batch`` samples;
        medians over ``iterations`` after ``warmup`` passes.  Returns the keys of
        :meth:`CaffeRuntime.time`; ``blas`` has no library, and the ``threads`` asked for."""
        for name, value, low in (("batch", batch, 1), ("iterations", iterations, 1),
                                 ("warmup", warmup, 0)):
            _check_count("time", name, value, low)
        net = load_net(prototxt, caffemodel)
        self.calls.append(Call("time", net.name))
        declared = infer_shapes(insert_splits(net)).inputs
        shapes = {name: (batch,) + tuple(shape[1:]) for name, shape in declared.items()}
        program = _Program(net, shapes)
        rng = np.random.RandomState(0)
        values = {name: rng.standard_normal(shape).astype(np.float32)
                  for name, shape in shapes.items()}
        layers = program.net.layers
        clock = _time.perf_counter
        for _ in range(warmup):
            program.forward(values)
        blobs = program.forward(values)
        per_layer: list[list[float]] = [[] for _ in layers]
        whole = []
        for _ in range(iterations):
            for i, layer in enumerate(layers):
                t0 = clock()
                program.run_layer(layer, blobs)
                per_layer[i].append(clock() - t0)
            t0 = clock()
            program.forward(values)
            whole.append(clock() - t0)
        rows = [{"name": layer.name, "type": layer.type, "ms": 1e3 * statistics.median(times)}
                for layer, times in zip(layers, per_layer)]
        return {"layers": rows, "forward_ms": 1e3 * statistics.median(whole),
                "layers_sum_ms": sum(row["ms"] for row in rows), "batch": batch,
                "iterations": iterations, "warmup": warmup,
                "input_shapes": {name: list(shape) for name, shape in shapes.items()},
                "blas": {"library": None, "threads": threads, "corename": None, "config": None}}
