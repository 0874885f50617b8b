"""Random weights drawn from each layer's declared Caffe fillers (``init``).

Used to test and benchmark every stage on the zoo architectures without
downloading their weights.  The fillers follow Caffe's definitions
(``filler.hpp``): constant, uniform, gaussian (with ``sparse``),
positive_unitball, xavier and msra (with ``variance_norm``), bilinear.
Where a layer declares no weight filler, Xavier is used (Caffe's own default,
constant 0, would give a useless all-zero net); biases default to 0, Scale
to 1, PReLU to 0.25, BatchNorm to mean 0 / variance 1 / factor 1.

Determinism: each layer draws from its own generator seeded by
``(seed, crc32(layer name))``, so a layer's weights depend only on the seed,
its name and its filler, never on the other layers.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from math import prod

import numpy as np

from caffe_tucker.analysis.shapes import infer_shapes
from caffe_tucker.analysis.validate import check_allocation
from caffe_tucker.errors import UnsupportedLayerError, check_param, where
from caffe_tucker.graph import Net
from caffe_tucker.io.caffe_pb2 import FillerParameter

__all__ = ["fill", "init_weights"]


def _fans(shape):
    count = int(np.prod(shape)) if shape else 1
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _norm(filler: FillerParameter, shape) -> float:
    fan_in, fan_out = _fans(shape)
    if filler.variance_norm == FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if filler.variance_norm == FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def fill(filler: FillerParameter, shape, rng: np.random.Generator) -> np.ndarray:
    """Draw one blob of ``shape`` from a Caffe ``FillerParameter``."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type
    if kind == "constant":
        return np.full(shape, filler.value, dtype=np.float32)
    if kind == "uniform":
        return rng.uniform(filler.min, filler.max, size=shape).astype(np.float32)
    if kind == "gaussian":
        out = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(filler.std) \
            + np.float32(filler.mean)
        if filler.sparse >= 0 and shape:
            p = filler.sparse / shape[0] if len(shape) > 1 else 1.0
            out *= rng.random(size=shape) < p
        return out
    if kind == "positive_unitball":
        out = rng.random(size=shape, dtype=np.float32)
        rows = out.reshape(shape[0], -1) if shape else out.reshape(1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
        return out
    if kind == "xavier":
        scale = np.sqrt(3.0 / _norm(filler, shape))
        return rng.uniform(-scale, scale, size=shape).astype(np.float32)
    if kind == "msra":
        std = np.float32(np.sqrt(2.0 / _norm(filler, shape)))
        return rng.standard_normal(size=shape, dtype=np.float32) * std
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise UnsupportedLayerError(f"the bilinear filler needs a square 4-D kernel, got {list(shape)}")
        k = shape[3]
        f = int(np.ceil(k / 2.0))
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        ax = 1 - np.abs(np.arange(k) / f - c)
        return np.broadcast_to(np.outer(ax, ax), shape).astype(np.float32)
    raise UnsupportedLayerError(f"unknown filler type '{kind}'; hint: Caffe knows constant, uniform, "
                                "gaussian, positive_unitball, xavier, msra and bilinear")


def _const(value: float) -> FillerParameter:
    return FillerParameter(type="constant", value=value)


def _fillers_for(layer, n_params: int) -> list[FillerParameter]:
    """The filler of each parameter blob of ``layer``, with the defaults described above."""
    spec = layer.spec
    xavier = FillerParameter(type="xavier")

    def given(param, field, default):
        return getattr(param, field) if param.HasField(field) else default

    t = layer.type
    if t in ("Convolution", "Deconvolution"):
        p = spec.convolution_param
        out = [given(p, "weight_filler", xavier), given(p, "bias_filler", _const(0.0))]
    elif t == "InnerProduct":
        p = spec.inner_product_param
        out = [given(p, "weight_filler", xavier), given(p, "bias_filler", _const(0.0))]
    elif t == "Embed":
        p = spec.embed_param
        out = [given(p, "weight_filler", xavier), given(p, "bias_filler", _const(0.0))]
    elif t == "Scale":
        p = spec.scale_param
        out = [given(p, "filler", _const(1.0)), given(p, "bias_filler", _const(0.0))]
        if len(layer.bottoms) > 1:
            out = out[1:]
    elif t == "Bias":
        out = [given(spec.bias_param, "filler", _const(0.0))]
    elif t == "PReLU":
        out = [given(spec.prelu_param, "filler", _const(0.25))]
    elif t == "BatchNorm":
        out = [_const(0.0), _const(1.0), _const(1.0)]
    elif t == "Normalize":  # Caffe-SSD: scale_filler, else a constant 1
        out = [given(spec.norm_param, "scale_filler", _const(1.0))]
    else:
        out = [xavier] * n_params
    return out[:n_params]


def init_weights(net: Net, seed: int = 0, input_shapes=None, phase: str = "TEST") -> Net:
    """Return the ``phase`` net with every parameter blob drawn from its filler.

    Raises
    ------
    ValueError
        If ``seed`` is not a non-negative int.
    """
    check_param("seed", seed, isinstance(seed, int) and seed >= 0, "an int >= 0", "init_weights")
    net = net.for_state(phase)
    shapes = infer_shapes(net, input_shapes)
    nbytes = 4 * sum(prod(p) for info in shapes.layers.values() for p in info.params
                     if p is not None)
    check_allocation(nbytes, f"{net.source}: drawing the weights of this net",
                     "check num_output and the kernel sizes of the largest layers")
    layers = []
    for layer in net.layers:
        params = shapes.layers[layer.name].params
        if any(p is None for p in params):
            raise UnsupportedLayerError(f"{where(net.source, layer.line, layer.name)}its parameter "
                                        "shapes are unknown, so no weights can be drawn")
        if not params:
            layers.append(layer.with_blobs(()))
            continue
        ss = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(layer.name.encode()),))
        rng = np.random.Generator(np.random.PCG64(ss))
        blobs = [fill(f, shape, rng) for f, shape in zip(_fillers_for(layer, len(params)), params)]
        layers.append(layer.with_blobs(blobs))
    return replace(net, layers=tuple(layers))
