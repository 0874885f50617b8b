"""A stride-1 3 x 3 convolution computed the Winograd way by stock Caffe layers.

A Caffe ``Convolution`` ``L`` (C → T channels, 3 x 3, stride 1, pad (ph, pw), bias b) with
Winograd-domain weights ``U`` (T, C, a, a) (:mod:`caffe_tucker.sparsity.winograd`) becomes:

1. ``L_wg_in``: ``Convolution`` a x a, stride m, pad (ph + eh, pw + ew), C → a²·C, no bias,
   fixed: output channel ``k·C + c`` (``k = i·a + j``, the Winograd position (i, j)) has the
   kernel ``Bᵀ[i, :] ⊗ Bᵀ[j, :]`` on input channel ``c`` and zeros elsewhere.  Output pixel
   (y, x) of channel ``k·C + c`` is ``(Bᵀ d B)[i, j]`` of the input tile ``d`` of channel c at
   tile position (y, x): V for every tile.
2. ``L_wg_mul``: ``Convolution`` 1 x 1, group a², a²·C → a²·T, no bias: output channel
   ``k·T + t`` is ``Σ_c U[t, c, i, j] · V[k·C + c]``.  Its blob ``(a²·T, C, 1, 1)`` *is* ``U``
   (:func:`winograd_blob`, :func:`winograd_from_blob`), zeros included; it takes the original
   weights' ``param`` multipliers.
3. ``L_wg_out``: ``Deconvolution`` m x m, stride m, a²·T → T, fixed: input channel ``k·T + t``
   reaches output ``t`` through the kernel ``Aᵀ[:, i] ⊗ Aᵀ[:, j]`` (other outputs zero), which
   writes ``Aᵀ M A`` as the m x m output tile at (y·m, x·m); the original bias (and its
   multipliers) is this layer's.
4. ``e = m - 1`` (:func:`extra_padding`) more rows/columns of padding make the tiles cover
   output positions ``-e ... out - 1`` for every output size ``out = H + 2p - 2`` (the same form
   serves every input size), and ``L_wg_crop`` (``Crop``, axis 2, offsets (eh, ew)) cuts the
   output back.  Its reference blob
   must have the output's spatial size: the input itself when ph = pw = 1, otherwise
   ``L_wg_ref``, a ``Pooling`` MAX of the input with stride 1, pad ``q = max(0, 2p - 2)`` and
   kernel ``2(q - p) + 3`` per axis (for p = 0 and p = 2 the 3 x 3 pad-p window; Caffe refuses
   pad ≥ kernel, so larger pads need the larger window).

The fixed transforms get ``param { lr_mult: 0 decay_mult: 0 }``, so fine-tuning the form in
Caffe trains ``U`` (and the bias) only.  The last layer writes ``L``'s top blob, so the rest of the
net (in-place ReLUs included) is untouched; ``include``/``exclude`` rules carry over.

With the extra padding the tile grid starts at output position ``-e``, not 0.  For
``U = to_winograd(g)`` the grid does not matter (the form equals the convolution with ``g``); for
a ``U`` pruned in the Winograd domain it does, and the form computes
``winograd_correlate(x, U, tile, pad, bias, offset=extra_padding(out_hw, tile))``.

The form is a correctness and deployment vehicle in stock Caffe, not a fast engine: its
transform layers are dense convolutions, and :func:`caffe_tucker.analysis.cost.analyze` counts
them as Caffe runs them (``a⁴·C²`` + ``a²·T·C`` + ``a²·m²·T²`` multiply-adds per tile), so its
Caffe time and FLOPs are not a Winograd engine's.  The paper's complexity figures (element-wise
products in the Winograd domain, zeros skipped) are
:func:`caffe_tucker.sparsity.winograd.layer_multiplies`.

References
----------
.. [1] A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
.. [2] Y. Choi, M. El-Khamy and J. Lee, "Compression of Deep Convolutional Neural Networks under
       Joint Sparsity Constraints", arXiv:1805.08303, 2018.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from caffe_tucker.analysis.shapes import ShapeInfo
from caffe_tucker.analysis.validate import check_allocation
from caffe_tucker.compress.methods.base import conv_param
from caffe_tucker.errors import (CaffeTuckerError, ShapeError, UnsupportedLayerError,
                                 WeightsMismatchError, check_param, where)
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.caffe_pb2 import LayerParameter, ParamSpec, PoolingParameter
from caffe_tucker.sparsity.winograd import WinogradTile, winograd_reason

__all__ = ["winograd_layers", "winograd_net", "extra_padding", "form_names", "winograd_blob",
           "winograd_from_blob", "input_transform_blob", "output_transform_blob"]

_SUFFIXES = ("in", "mul", "out", "ref", "crop")
_FIXED = {"lr_mult": 0.0, "decay_mult": 0.0}


def form_names(name: str) -> dict[str, str]:
    """The names of the form's layers (and their blobs) for a layer ``name``.

    Keys ``"in"``, ``"mul"``, ``"out"``, ``"ref"``, ``"crop"``: e.g. ``conv2_wg_mul``.  The
    ``ref`` and ``crop`` layers exist only when the output needs cropping.
    """
    return {s: f"{name}_wg_{s}" for s in _SUFFIXES}


def extra_padding(out_hw, tile: WinogradTile) -> tuple[int, int]:
    """The extra symmetric padding ``(eh, ew)`` the form adds so its tiles cover the output.

    Caffe's a x a, stride-m convolution with pad ``p + e`` yields ``floor((out + 2e) / m)`` tiles
    per axis, covering output positions ``-e ... m·floor((out + 2e) / m) - e - 1``.  ``e = m - 1``
    is the smallest ``e`` that covers *every* output size (``m·floor((out + 2e)/m) ≥ out + 2e -
    m + 1 ≥ out + e``), so the form, and its tile grid (which matters for filters pruned in the
    Winograd domain), are the same whatever size the net's input takes: fully convolutional nets
    (VDSR) run on images of any size.  ``out_hw`` is checked only.
    """
    out_h, out_w = (int(v) for v in out_hw)
    check_param("out_hw", (out_h, out_w), out_h > 0 and out_w > 0, "positive", "extra_padding")
    return tile.m - 1, tile.m - 1


def input_transform_blob(channels: int, tile: WinogradTile) -> np.ndarray:
    """The fixed weights ``(a²·C, C, a, a)`` of ``L_wg_in``: ``Bᵀ[i, :] ⊗ Bᵀ[j, :]`` from
    input channel c to output channel ``k·C + c``, zeros elsewhere."""
    a = tile.a
    kernels = np.einsum("iu,jv->ijuv", tile.BT, tile.BT).reshape(a * a, a, a)
    blob = np.zeros((a * a, channels, channels, a, a), dtype=np.float32)
    diag = np.arange(channels)
    blob[:, diag, diag] = kernels[:, None]
    return blob.reshape(a * a * channels, channels, a, a)


def output_transform_blob(channels: int, tile: WinogradTile) -> np.ndarray:
    """The fixed weights ``(a²·T, T, m, m)`` of ``L_wg_out``: ``Aᵀ[:, i] ⊗ Aᵀ[:, j]`` from
    input channel ``k·T + t`` to output channel t, zeros elsewhere."""
    a, m = tile.a, tile.m
    kernels = np.einsum("ri,sj->ijrs", tile.AT, tile.AT).reshape(a * a, m, m)
    blob = np.zeros((a * a, channels, channels, m, m), dtype=np.float32)
    diag = np.arange(channels)
    blob[:, diag, diag] = kernels[:, None]
    return blob.reshape(a * a * channels, channels, m, m)


def winograd_blob(U: np.ndarray) -> np.ndarray:
    """``U`` (T, C, a, a) as the blob ``(a²·T, C, 1, 1)`` of ``L_wg_mul`` (float32).

    Row ``k·T + t`` with ``k = i·a + j`` holds ``U[t, :, i, j]``.
    """
    u = np.asarray(U)
    check_param("U", list(u.shape), u.ndim == 4 and u.shape[2] == u.shape[3],
                "an array of shape (T, C, a, a)", "winograd_blob")
    t, c, a, _ = u.shape
    return np.ascontiguousarray(
        u.transpose(2, 3, 0, 1).reshape(a * a * t, c, 1, 1), dtype=np.float32)


def winograd_from_blob(blob: np.ndarray, tile: WinogradTile) -> np.ndarray:
    """The Winograd-domain weights ``U`` (T, C, a, a), float64, from an ``L_wg_mul`` blob."""
    b = np.asarray(blob, dtype=np.float64)
    a2 = tile.a * tile.a
    ok = b.ndim == 4 and b.shape[2:] == (1, 1) and b.shape[0] % a2 == 0
    check_param("blob", list(b.shape), ok, f"an array of shape ({a2}·T, C, 1, 1) for {tile.name}",
                "winograd_from_blob")
    t, c = b.shape[0] // a2, b.shape[1]
    return b.reshape(tile.a, tile.a, t, c).transpose(2, 3, 0, 1).copy()


def _params(layer: Layer, index: int, placeholder: bool) -> list:
    """The original layer's ``param`` multipliers for blob ``index`` (never its sharing name);
    an empty (default) one as ``placeholder`` when it has none and a later one must follow."""
    if index >= len(layer.spec.param):
        return [ParamSpec()] if placeholder else []
    q = ParamSpec()
    q.CopyFrom(layer.spec.param[index])
    q.ClearField("name")
    q.ClearField("share_mode")
    return [q]


def winograd_layers(layer: Layer, U: np.ndarray, tile: WinogradTile,
                    in_shape: Sequence[int]) -> list[Layer]:
    """The stock Caffe layers that compute ``layer`` the Winograd way with weights ``U``.

    Parameters
    ----------
    layer : Layer
        A stride-1 3 x 3 ``Convolution`` (see
        :func:`caffe_tucker.sparsity.winograd.winograd_reason`), with its bias blob if it has a
        bias term.
    U : array_like, shape (T, C, a, a)
        Winograd-domain weights (``to_winograd`` of the kernel, or pruned ones).
    tile : WinogradTile
    in_shape : (N, C, H, W)
        The shape of the layer's input blob.

    Returns
    -------
    list of Layer
        ``L_wg_in``, ``L_wg_mul``, ``L_wg_out`` and, where the output needs cropping,
        ``L_wg_ref`` (unless ph = pw = 1) and ``L_wg_crop``; see the module docstring.

    Raises
    ------
    UnsupportedLayerError
        If the layer is not a stride-1 3 x 3 convolution.
    WeightsMismatchError
        If the layer has a bias term but no bias blob.
    ValueError
        If ``U`` or ``in_shape`` have the wrong shape.

    References
    ----------
    .. [1] A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
    """
    loc = where(None, layer.line, layer.name)
    reason = winograd_reason(layer)
    if reason is not None:
        raise UnsupportedLayerError(f"{loc}cannot be computed with {tile.name}: {reason}")
    shape = tuple(int(d) for d in in_shape)
    check_param("in_shape", list(shape), len(shape) == 4 and all(d > 0 for d in shape),
                "a shape (N, C, H, W)", "winograd_layers")
    p = layer.spec.convolution_param
    _, c, h, w = shape
    t, a, m = int(p.num_output), tile.a, tile.m
    u = np.asarray(U)
    check_param("U", list(u.shape), u.shape == (t, c, a, a),
                f"an array of shape {[t, c, a, a]} for layer '{layer.name}' and {tile.name}",
                "winograd_layers")
    if p.HasField("pad_h") or p.HasField("pad_w"):
        ph, pw = int(p.pad_h), int(p.pad_w)
    elif len(p.pad) in (0, 1, 2):
        ph, pw = (int(v) for v in (list(p.pad) or [0]) * (2 // max(1, len(p.pad))))
    else:
        raise ShapeError(f"{loc}{len(p.pad)} pad values for 2 spatial axes")
    out_h, out_w = h + 2 * ph - 2, w + 2 * pw - 2
    if out_h <= 0 or out_w <= 0:
        raise ShapeError(f"{loc}input {h}x{w} with pad ({ph}, {pw}) leaves no 3x3 output")
    bias = ()
    if p.bias_term:
        if len(layer.blobs) < 2:
            raise WeightsMismatchError(f"{loc}has a bias term but no bias blob; hint: load the "
                                       "net with its caffemodel")
        bias = (np.asarray(layer.blobs[1], dtype=np.float32).reshape(t),)
    check_allocation(4 * (a ** 4 * c * c + a * a * t * c + a * a * m * m * t * t),
                     f"{loc}the {tile.name} form's transform blobs",
                     "use a smaller tile (m=2) or leave this layer as it is")
    eh, ew = extra_padding((out_h, out_w), tile)
    names = form_names(layer.name)
    base = LayerParameter()
    for rule in layer.spec.include:
        base.include.add().CopyFrom(rule)
    for rule in layer.spec.exclude:
        base.exclude.add().CopyFrom(rule)
    crop = True  # always: the form must fit every input size
    out_top = names["out"] if crop else layer.tops[0]

    def new(key, typ, bottoms, top, blobs, **params):
        spec = make_spec(names[key], typ, bottoms, [top], base=base, **params)
        return Layer(spec=spec, blobs=tuple(blobs), line=layer.line)

    layers = [
        new("in", "Convolution", [layer.bottoms[0]], names["in"], [input_transform_blob(c, tile)],
            convolution_param=conv_param(a * a * c, (a, a), (m, m), (ph + eh, pw + ew)),
            param=[_FIXED]),
        new("mul", "Convolution", [names["in"]], names["mul"], [winograd_blob(u)],
            convolution_param=conv_param(a * a * t, (1, 1), group=a * a),
            param=_params(layer, 0, placeholder=False)),
        new("out", "Deconvolution", [names["mul"]], out_top,
            (output_transform_blob(t, tile),) + bias,
            convolution_param=conv_param(t, (m, m), (m, m), bias=bool(p.bias_term)),
            param=[_FIXED] + (_params(layer, 1, placeholder=True) if p.bias_term else [])),
    ]
    if crop:
        ref = layer.bottoms[0]
        if (ph, pw) != (1, 1):
            qh, qw = max(0, 2 * ph - 2), max(0, 2 * pw - 2)
            layers.append(new("ref", "Pooling", [layer.bottoms[0]], names["ref"], [],
                              pooling_param={"pool": PoolingParameter.MAX,
                                             "kernel_h": 2 * (qh - ph) + 3,
                                             "kernel_w": 2 * (qw - pw) + 3,
                                             "pad_h": qh, "pad_w": qw,
                                             "stride_h": 1, "stride_w": 1}))
            ref = names["ref"]
        layers.append(new("crop", "Crop", [names["out"], ref], layer.tops[0], [],
                          crop_param={"axis": 2, "offset": [eh, ew]}))
    return layers


def winograd_net(net: Net, shapes: ShapeInfo, weights_by_layer: Mapping[str, np.ndarray],
                 tile: WinogradTile) -> Net:
    """``net`` with each layer named in ``weights_by_layer`` replaced by its Winograd form.

    Parameters
    ----------
    net : Net
        A phase-filtered net with its weights (the bias blobs are needed).
    shapes : ShapeInfo
        Its shapes (:func:`caffe_tucker.analysis.shapes.infer_shapes`).
    weights_by_layer : mapping of str to array_like
        Winograd-domain weights ``U`` (T, C, a, a) per layer name.
    tile : WinogradTile

    Returns
    -------
    Net
        A new net; every other layer and the blob names the rest of the net reads are unchanged.

    Raises
    ------
    CaffeTuckerError
        If a named layer is not in the net, or a new layer or blob name is already used.
    UnsupportedLayerError
        If a named layer is not a stride-1 3 x 3 convolution.

    References
    ----------
    .. [1] Y. Choi, M. El-Khamy and J. Lee, "Compression of Deep Convolutional Neural Networks
           under Joint Sparsity Constraints", arXiv:1805.08303, 2018.
    """
    used = {l.name for l in net.layers} | {b for l in net.layers for b in l.tops + l.bottoms}
    present = {l.name for l in net.layers}
    for name in weights_by_layer:
        if name not in present:
            raise CaffeTuckerError(f"{net.source}: layer '{name}' to be put in Winograd form is "
                                   "not in this net")
        taken = sorted(set(form_names(name).values()) & used)
        if taken:
            raise CaffeTuckerError(f"{net.source}: the name '{taken[0]}' for a new layer is "
                                   "already used in the net; hint: rename that layer or blob")
    layers = []
    for layer in net.layers:
        if layer.name not in weights_by_layer:
            layers.append(layer)
            continue
        info = shapes.layers.get(layer.name)
        if info is None or not info.inputs or info.inputs[0] is None:
            raise ShapeError(f"{where(net.source, layer.line, layer.name)}the shape of its input "
                             "is not known")
        try:
            layers.extend(winograd_layers(layer, weights_by_layer[layer.name], tile,
                                          info.inputs[0]))
        except CaffeTuckerError as exc:
            if not net.source:
                raise
            at = f"{net.source}:{layer.line}" if layer.line else str(net.source)
            raise type(exc)(f"{at}: {exc}") from None
    return net.with_layers(layers)
