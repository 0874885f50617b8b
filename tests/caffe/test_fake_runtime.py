"""FakeRuntime, the numpy stand-in for CaffeRuntime: layer by layer by hand, then against Caffe.

The first part needs no Caffe: small cases whose answers can be worked out on paper, one or more
per layer type, and convolution against the loop-over-offsets reference in ``reference.py``.
The second part (the ``caffe`` fixture: skipped without a runtime, failed under ``CI=true``)
checks that the fake computes what BVLC Caffe 1.0 computes, on the three real models, on all
intermediate blobs of cifar10_quick and on a synthetic net that uses every supported layer type
in its less common forms -- which is what makes tests that use the fake worth believing.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference
from caffe_tucker import load
from caffe_tucker.analysis.shapes import fit_weights, infer_shapes
from caffe_tucker.caffe.pycaffe import CaffeRuntimeError
from caffe_tucker.model import deploy_from_train_val
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.io.read import read_net
from fake_runtime import SUPPORTED_TYPES, Call, FakeRuntime, load_net, pooled_size

F32 = np.float32


def _input(shape, name="data") -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f'input_param {{ shape {{ {dims} }} }} }}\n')


def _layer(name, type, bottoms, params="", tops=None) -> str:
    tops = [name] if tops is None else tops
    wiring = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return f'layer {{ name: "{name}" type: "{type}" {wiring} {params} }}\n'


def _net(text: str, **weights):
    """The Net of prototxt ``text``, with ``weights`` (layer name -> list of arrays) attached."""
    net = load_net(text)
    return net.with_layers(layer.with_blobs([np.asarray(b, F32) for b in weights[layer.name]])
                           if layer.name in weights else layer for layer in net.layers)


def _forward(text: str, inputs: dict, blobs=None, **weights) -> dict:
    return FakeRuntime().forward(_net(text, **weights), None,
                                 {k: np.asarray(v, F32) for k, v in inputs.items()}, blobs)


def _one(text: str, x, top: str, **weights) -> np.ndarray:
    return _forward(text, {"data": x}, [top], **weights)[top]


def max_rel(a, b) -> float:
    """max |a - b| / max |a|, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


# --------------------------------------------------------------------------------------------
# Convolution and InnerProduct


def test_fake_conv_one_channel_known_kernel():
    # y[i, j] = x[i, j] - x[i+1, j+1] + 1 on x = 0..8 row-major: -4 + 1 everywhere
    text = _input((1, 1, 3, 3)) + _layer("conv", "Convolution", ["data"],
                                         "convolution_param { num_output: 1 kernel_size: 2 }")
    x = np.arange(9).reshape(1, 1, 3, 3)
    y = _one(text, x, "conv", conv=[np.reshape([1, 0, 0, -1], (1, 1, 2, 2)), [1.0]])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), -3.0))


def test_fake_conv_kernel_h_w_stride_h_w_pad_h_w_without_bias():
    # a 1x2 kernel [1, 1] sums horizontal pairs; pad_h 1 adds zero rows, stride_w 2 skips columns
    text = _input((1, 1, 2, 4)) + _layer("conv", "Convolution", ["data"], """
        convolution_param { num_output: 1 bias_term: false kernel_h: 1 kernel_w: 2
                            stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 }""")
    x = np.array([[1, 2, 3, 4], [10, 20, 30, 40]]).reshape(1, 1, 2, 4)
    y = _one(text, x, "conv", conv=[np.ones((1, 1, 1, 2))])
    np.testing.assert_array_equal(y[0, 0], [[0, 0], [3, 7], [30, 70], [0, 0]])


@pytest.mark.parametrize("group, stride, pad, dilation, bias", [
    (1, 1, 0, 1, True), (2, 1, 1, 1, True), (4, 2, 1, 1, False), (1, 2, 2, 2, True),
    (2, 3, 0, 2, True), (8, 1, 1, 1, False),
])
def test_fake_conv_matches_reference(group, stride, pad, dilation, bias):
    rng = np.random.default_rng(group * 100 + stride * 10 + pad + dilation)
    c, t = 8, 16
    text = _input((2, c, 11, 9)) + _layer("conv", "Convolution", ["data"], f"""
        convolution_param {{ num_output: {t} kernel_size: 3 group: {group} stride: {stride}
                             pad: {pad} dilation: {dilation} bias_term: {str(bias).lower()} }}""")
    x = rng.standard_normal((2, c, 11, 9)).astype(F32)
    w = rng.standard_normal((t, c // group, 3, 3)).astype(F32)
    b = rng.standard_normal(t).astype(F32)
    y = _one(text, x, "conv", conv=[w, b] if bias else [w])
    want = reference.conv2d(x, w, b if bias else None, (stride,) * 2, (pad,) * 2,
                            (dilation,) * 2, group)
    assert y.shape == want.shape
    assert max_rel(want, y) < 1e-6


def test_fake_conv_rectangular_kernel_matches_reference():
    rng = np.random.default_rng(5)
    text = _input((1, 3, 7, 8)) + _layer("conv", "Convolution", ["data"], """
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1
                            pad_h: 1 pad_w: 2 }""")
    x, w, b = (rng.standard_normal(s).astype(F32) for s in ((1, 3, 7, 8), (4, 3, 3, 2), (4,)))
    want = reference.conv2d(x, w, b, (2, 1), (1, 2))
    assert max_rel(want, _one(text, x, "conv", conv=[w, b])) < 1e-6


@pytest.mark.parametrize("axis", [1, 2])
def test_fake_inner_product_axis_matches_reference(axis):
    rng = np.random.default_rng(axis)
    x = rng.standard_normal((2, 3, 4, 5)).astype(F32)
    k = int(np.prod(x.shape[axis:]))
    w, b = rng.standard_normal((6, k)).astype(F32), rng.standard_normal(6).astype(F32)
    text = _input(x.shape) + _layer("ip", "InnerProduct", ["data"],
                                    f"inner_product_param {{ num_output: 6 axis: {axis} }}")
    y = _one(text, x, "ip", ip=[w, b])
    assert y.shape == x.shape[:axis] + (6,)
    assert max_rel(reference.inner_product(x, w, b, axis), y) < 1e-6


def test_fake_inner_product_without_bias_and_transposed():
    x = np.array([[1.0, 2.0]])
    plain = _input((1, 2)) + _layer("ip", "InnerProduct", ["data"],
                                    "inner_product_param { num_output: 3 bias_term: false }")
    w = np.array([[1, 0], [0, 1], [1, 1]])
    np.testing.assert_array_equal(_one(plain, x, "ip", ip=[w]), [[1, 2, 3]])
    transposed = plain.replace("bias_term: false", "bias_term: false transpose: true")
    np.testing.assert_array_equal(_one(transposed, x, "ip", ip=[w.T]), [[1, 2, 3]])


# --------------------------------------------------------------------------------------------
# Element-wise activations


def test_fake_relu_negative_slope_sigmoid_tanh():
    x = np.array([[-2.0, 0.0, 3.0]])
    text = (_input((1, 3)) + _layer("relu", "ReLU", ["data"]) +
            _layer("leaky", "ReLU", ["data"], "relu_param { negative_slope: 0.1 }") +
            _layer("sig", "Sigmoid", ["data"]) + _layer("tanh", "TanH", ["data"]))
    out = _forward(text, {"data": x})
    np.testing.assert_array_equal(out["relu"], [[0, 0, 3]])
    np.testing.assert_allclose(out["leaky"], [[-0.2, 0, 3]], rtol=1e-7)
    np.testing.assert_allclose(out["sig"], 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(out["tanh"], np.tanh(x), rtol=1e-6)
    assert list(out) == ["leaky", "relu", "sig", "tanh"]  # Caffe's outputs: in name order


def test_fake_in_place_layers_overwrite_their_blob():
    text = (_input((1, 2)) + _layer("ip", "InnerProduct", ["data"], "inner_product_param "
                                    "{ num_output: 2 bias_term: false }") +
            _layer("relu", "ReLU", ["ip"], tops=["ip"]) +
            _layer("drop", "Dropout", ["ip"], "dropout_param { dropout_ratio: 0.5 }", tops=["ip"]))
    out = _forward(text, {"data": [[1.0, -1.0]]}, ip=[np.eye(2)])
    np.testing.assert_array_equal(out["ip"], [[1, 0]])  # ReLU applied, Dropout the identity


# --------------------------------------------------------------------------------------------
# Pooling


def _pool(shape, params) -> str:
    return _input(shape) + _layer("pool", "Pooling", ["data"], f"pooling_param {{ {params} }}")


def test_fake_pooling_rounds_up_on_5x5_stride_2():
    x = np.arange(25).reshape(1, 1, 5, 5)
    # ceil((5 - 2) / 2) + 1 = 3 windows per axis, the last one hanging over the edge
    y = _one(_pool((1, 1, 5, 5), "pool: MAX kernel_size: 2 stride: 2"), x, "pool")
    np.testing.assert_array_equal(y[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    y = _one(_pool((1, 1, 5, 5), "pool: AVE kernel_size: 2 stride: 2"), x, "pool")
    # no padding: the overhanging windows are divided by what they cover of the input
    np.testing.assert_allclose(y[0, 0], [[3, 5, 6.5], [13, 15, 16.5], [20.5, 22.5, 24]])


def test_fake_pooling_round_mode_floor():
    y = _one(_pool((1, 1, 5, 5), "pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR"),
             np.arange(25).reshape(1, 1, 5, 5), "pool")
    np.testing.assert_array_equal(y[0, 0], [[6, 8], [16, 18]])


def test_fake_pooled_size_clip_rule():
    assert pooled_size(5, 3, 1, 2) == 3
    # ceil((5 + 2 - 3) / 3) + 1 = 3, but the third window would start in the right padding
    assert pooled_size(5, 3, 1, 3) == 2
    assert pooled_size(5, 3, 0, 3) == 2
    assert pooled_size(5, 2, 0, 2) == 3 and pooled_size(5, 2, 0, 2, ceil_mode=False) == 2


def test_fake_ave_pooling_with_pad_divides_by_the_padded_window():
    # 4x4 ones, kernel 3, stride 2, pad 1: windows start at -1, 1, 3 and end at 2, 4, 5
    # (clipped to the padded input, 4 + 1): divisors 3, 3, 2 per axis, padding counted
    y = _one(_pool((1, 1, 4, 4), "pool: AVE kernel_size: 3 stride: 2 pad: 1"),
             np.ones((1, 1, 4, 4)), "pool")
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 6 / 9, 2 / 6],
                                         [6 / 9, 9 / 9, 3 / 6],
                                         [2 / 6, 3 / 6, 1 / 4]], rtol=1e-6)


def test_fake_max_pooling_with_pad_ignores_the_padding():
    x = -np.arange(1, 17).reshape(1, 1, 4, 4)  # all negative: zero padding would win
    y = _one(_pool((1, 1, 4, 4), "pool: MAX kernel_size: 3 stride: 2 pad: 1"), x, "pool")
    np.testing.assert_array_equal(y[0, 0], [[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]])


def test_fake_max_pooling_mask_top():
    text = _input((1, 1, 4, 4)) + _layer("pool", "Pooling", ["data"],
                                         "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",
                                         tops=["pool", "mask"])
    x = np.array([[0, 5, 1, 1], [2, 3, 9, 1], [7, 7, 0, 0], [7, 7, 0, 0]]).reshape(1, 1, 4, 4)
    out = _forward(text, {"data": x}, ["pool", "mask"])
    np.testing.assert_array_equal(out["pool"][0, 0], [[5, 9], [7, 0]])
    np.testing.assert_array_equal(out["mask"][0, 0], [[1, 6], [8, 10]])  # first maximum


def test_fake_global_pooling_and_rectangular_params():
    x = np.arange(12).reshape(1, 2, 2, 3)
    out = _one(_pool((1, 2, 2, 3), "pool: AVE global_pooling: true"), x, "pool")
    np.testing.assert_allclose(out.reshape(2), [2.5, 8.5])
    out = _one(_pool((1, 2, 2, 3), "pool: MAX global_pooling: true"), x, "pool")
    np.testing.assert_array_equal(out.reshape(2), [5, 11])
    out = _one(_pool((1, 1, 2, 4), "pool: MAX kernel_h: 1 kernel_w: 2 stride_h: 1 stride_w: 2"),
               np.arange(8).reshape(1, 1, 2, 4), "pool")
    np.testing.assert_array_equal(out[0, 0], [[1, 3], [5, 7]])


# --------------------------------------------------------------------------------------------
# Softmax, LRN


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_fake_softmax_axis(axis):
    x = np.random.default_rng(0).standard_normal((2, 3, 4)) * 5
    y = _one(_input((2, 3, 4)) + _layer("prob", "Softmax", ["data"],
                                        f"softmax_param {{ axis: {axis} }}"), x, "prob")
    e = np.exp(x.astype(F32).astype(np.float64))
    np.testing.assert_allclose(y, e / e.sum(axis=axis, keepdims=True), rtol=1e-6)


def test_fake_lrn_across_channels_on_a_constant():
    c, alpha, beta, k = 2.0, 0.3, 0.75, 1.5
    text = _input((1, 7, 2, 2)) + _layer("lrn", "LRN", ["data"],
                                         f"lrn_param {{ local_size: 5 alpha: {alpha} "
                                         f"beta: {beta} k: {k} }}")
    y = _one(text, np.full((1, 7, 2, 2), c), "lrn")
    # channel i sums the squares of the channels i-2..i+2 that exist: 3, 4, 5, 5, 5, 4, 3
    present = np.array([3, 4, 5, 5, 5, 4, 3])
    want = c * (k + alpha / 5 * present * c * c) ** -beta
    np.testing.assert_allclose(y[0, :, 0, 0], want, rtol=1e-6)
    assert np.all(y == y[:, :, :1, :1])


def test_fake_lrn_within_channel_on_a_constant():
    c, alpha, beta = 2.0, 0.3, 0.75
    text = _input((1, 1, 3, 3)) + _layer("lrn", "LRN", ["data"], f"""
        lrn_param {{ norm_region: WITHIN_CHANNEL local_size: 3 alpha: {alpha} beta: {beta}
                     k: 7 }}""")
    y = _one(text, np.full((1, 1, 3, 3), c), "lrn")
    # the average of squares over a 3x3 window padded with zeros, always divided by 9; k unused
    present = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]])
    want = c * (1 + alpha * present * c * c / 9) ** -beta
    np.testing.assert_allclose(y[0, 0], want, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Concat, Eltwise, BatchNorm, Scale, Flatten, Reshape, Split


def test_fake_concat_axes():
    a, b = np.zeros((1, 2, 2, 2)), np.ones((1, 2, 2, 2))
    text = (_input((1, 2, 2, 2), "a") + _input((1, 2, 2, 2), "b") +
            _layer("c1", "Concat", ["a", "b"]) +
            _layer("c3", "Concat", ["a", "b"], "concat_param { axis: 3 }") +
            _layer("c0", "Concat", ["b", "a"], "concat_param { concat_dim: 0 }"))
    out = _forward(text, {"a": a, "b": b})
    np.testing.assert_array_equal(out["c1"], np.concatenate([a, b], axis=1))
    np.testing.assert_array_equal(out["c3"], np.concatenate([a, b], axis=3))
    np.testing.assert_array_equal(out["c0"], np.concatenate([b, a], axis=0))


def test_fake_eltwise_sum_coeff_prod_max():
    a, b = np.array([[1.0, -2.0, 3.0]]), np.array([[4.0, 5.0, -6.0]])
    text = (_input((1, 3), "a") + _input((1, 3), "b") +
            _layer("sum", "Eltwise", ["a", "b"]) +
            _layer("diff", "Eltwise", ["a", "b"], "eltwise_param { coeff: 1 coeff: -0.5 }") +
            _layer("prod", "Eltwise", ["a", "b", "a"], "eltwise_param { operation: PROD }") +
            _layer("max", "Eltwise", ["a", "b"], "eltwise_param { operation: MAX }"))
    out = _forward(text, {"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], [[5, 3, -3]])
    np.testing.assert_array_equal(out["diff"], [[-1, -4.5, 6]])
    np.testing.assert_array_equal(out["prod"], [[4, 20, -54]])
    np.testing.assert_array_equal(out["max"], [[4, 5, 3]])


def test_fake_batchnorm_divides_the_statistics_by_the_scale_factor():
    text = _input((2, 2, 1, 1)) + _layer("bn", "BatchNorm", ["data"],
                                         "batch_norm_param { eps: 0.5 }")
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(2, 2, 1, 1)
    # stored sums (4, 8) and (7, 35) with factor 4: mean (1, 2), variance (1.75, 8.75)
    y = _one(text, x, "bn", bn=[[4, 8], [7, 35], [4]])
    want = (x - np.array([1, 2]).reshape(1, 2, 1, 1)) / np.sqrt(
        np.array([1.75 + 0.5, 8.75 + 0.5]).reshape(1, 2, 1, 1))
    np.testing.assert_allclose(y, want, rtol=1e-6)
    # a zero factor zeroes mean and variance (Caffe's rule): x / sqrt(eps)
    y = _one(text, x, "bn", bn=[[4, 8], [7, 35], [0]])
    np.testing.assert_allclose(y, x / np.sqrt(0.5), rtol=1e-6)


def test_fake_batchnorm_without_global_stats_uses_the_batch():
    text = _input((2, 1, 1, 2)) + _layer("bn", "BatchNorm", ["data"],
                                         "batch_norm_param { use_global_stats: false eps: 0 }")
    x = np.array([1.0, 3.0, 5.0, 7.0]).reshape(2, 1, 1, 2)  # mean 4, variance 5
    y = _one(text, x, "bn", bn=[[100], [100], [1]])
    np.testing.assert_allclose(y, (x - 4) / np.sqrt(5), rtol=1e-6)


def test_fake_scale_with_and_without_bias_and_second_bottom():
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    text = (_input((1, 2, 2, 2)) + _input((1, 2), "s") +
            _layer("plain", "Scale", ["data"]) +
            _layer("biased", "Scale", ["data"], "scale_param { bias_term: true }") +
            _layer("two", "Scale", ["data", "s"], "scale_param { axis: 0 bias_term: true }"))
    out = _forward(text, {"data": x, "s": [[3.0, -1.0]]},
                   plain=[[2, 10]], biased=[[2, 10], [1, -1]], two=[[[0.5, 0]]])
    channel = (1, 2, 1, 1)
    np.testing.assert_array_equal(out["plain"], x * np.reshape([2, 10], channel))
    np.testing.assert_array_equal(out["biased"], x * np.reshape([2, 10], channel)
                                  + np.reshape([1, -1], channel))
    np.testing.assert_array_equal(out["two"], x * np.reshape([3, -1], channel)
                                  + np.reshape([0.5, 0], channel))


def test_fake_flatten_and_reshape():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    text = (_input((2, 3, 2, 2)) + _layer("flat", "Flatten", ["data"]) +
            _layer("flat23", "Flatten", ["data"], "flatten_param { axis: 2 end_axis: 3 }") +
            _layer("re", "Reshape", ["data"],
                   "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"))
    out = _forward(text, {"data": x})
    np.testing.assert_array_equal(out["flat"], x.reshape(2, 12))
    np.testing.assert_array_equal(out["flat23"], x.reshape(2, 3, 4))
    np.testing.assert_array_equal(out["re"], x.reshape(2, 6, 2))


def test_fake_inserts_splits_like_caffe():
    text = (_input((1, 2)) + _layer("relu", "ReLU", ["data"], tops=["data"]) +
            _layer("a", "TanH", ["data"]) + _layer("b", "Sigmoid", ["data"]) +
            _layer("sum", "Eltwise", ["a", "b", "data"]) +
            _layer("split", "Split", ["sum"], tops=["s1", "s2"]))
    fake = FakeRuntime()
    result = fake.time(text, iterations=1, warmup=0)
    assert [(r["name"], r["type"]) for r in result["layers"]] == [
        ("data", "Input"), ("relu", "ReLU"), ("data_relu_0_split", "Split"), ("a", "TanH"),
        ("b", "Sigmoid"), ("sum", "Eltwise"), ("split", "Split")]
    x = np.array([[-1.0, 2.0]])
    out = fake.forward(text, None, {"data": x})
    assert list(out) == ["s1", "s2"]
    r = np.maximum(x, 0)
    np.testing.assert_allclose(out["s1"], np.tanh(r) + 1 / (1 + np.exp(-r)) + r, rtol=1e-6)
    np.testing.assert_array_equal(out["s1"], out["s2"])
    both = fake.forward(text, None, {"data": x}, ["data_relu_0_split_2", "data"])
    np.testing.assert_array_equal(both["data_relu_0_split_2"], r)
    assert list(both) == ["data_relu_0_split_2", "data"]


# --------------------------------------------------------------------------------------------
# The runtime's interface


def test_fake_unknown_layer_type_is_named():
    text = _input((1, 3)) + _layer("odd", "AbsVal", ["data"])
    with pytest.raises(NotImplementedError, match="'AbsVal'.*'odd'"):
        _forward(text, {"data": np.zeros((1, 3))})
    assert "AbsVal" not in SUPPORTED_TYPES and "LRN" in SUPPORTED_TYPES


def test_fake_train_val_data_layers_are_the_callers_job(shared_models):
    net = read_net(shared_models / "resnet20_cifar10" / "res20_cifar_train_test.prototxt")
    with pytest.raises(NotImplementedError, match="'Data'.*deploy_from_train_val"):
        FakeRuntime().forward(net, None, {})


def test_fake_forward_from_text_and_bytes_equals_from_net(shared_models):
    d = shared_models / "cifar10_quick"
    text = (d / "cifar10_quick.prototxt").read_text()
    weights = (d / "cifar10_quick_iter_5000.caffemodel").read_bytes()
    net, _ = load(d / "cifar10_quick.prototxt", d / "cifar10_quick_iter_5000.caffemodel")
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(F32)
    with FakeRuntime() as fake:
        from_text = fake.forward(text, weights, {"data": x})
        from_net = fake.forward(net, None, {"data": x})
        from_path = fake.forward(d / "cifar10_quick.prototxt",
                                 d / "cifar10_quick_iter_5000.caffemodel", {"data": x})
    assert list(from_text) == ["prob"] and from_text["prob"].shape == (3, 10)  # batch 3, not 1
    np.testing.assert_array_equal(from_text["prob"], from_net["prob"])
    np.testing.assert_array_equal(from_text["prob"], from_path["prob"])
    np.testing.assert_allclose(from_net["prob"].sum(axis=1), 1, rtol=1e-6)
    assert fake.calls == [Call("forward", "CIFAR10_quick_test")] * 3
    assert fake.calls[0] == ("forward", "CIFAR10_quick_test")


def test_fake_net_weights_against_the_net_they_are_for(shared_models):
    d = shared_models / "lenet_mnist_v1format"
    net = read_net(d / "lenet.prototxt", d / "lenet_iter_10000.caffemodel")  # legacy 4-D blobs
    x = {"data": np.zeros((1, 1, 28, 28), F32)}
    # a Net reaches Caffe with its blobs' shapes as they are: Caffe refuses (1, 1, 1, 20)
    with pytest.raises(CaffeRuntimeError, match="param 1 .* 'conv1'.*shape mismatch"):
        FakeRuntime().forward(net, None, x)
    # the caffemodel's legacy num/channels/height/width dims are accepted, as Caffe does
    out = FakeRuntime().forward((d / "lenet.prototxt").read_text(),
                                (d / "lenet_iter_10000.caffemodel").read_bytes(), x)
    fitted = fit_weights(net.for_state("TEST"), infer_shapes(net.for_state("TEST")))
    np.testing.assert_array_equal(out["prob"], FakeRuntime().forward(fitted, None, x)["prob"])


def test_fake_forward_refuses_what_the_worker_refuses():
    text = _input((1, 3)) + _layer("relu", "ReLU", ["data"])
    fake = FakeRuntime()
    with pytest.raises(CaffeRuntimeError, match="no array given.*'data'"):
        fake.forward(text, None, {})
    with pytest.raises(CaffeRuntimeError, match="not input blobs"):
        fake.forward(text, None, {"data": np.zeros((1, 3)), "other": np.zeros(1)})
    with pytest.raises(CaffeRuntimeError, match="no blob named 'nope'"):
        fake.forward(text, None, {"data": np.zeros((1, 3))}, ["nope"])


def test_fake_missing_weights_are_drawn_from_fillers():
    text = _input((1, 4)) + _layer("ip", "InnerProduct", ["data"], """
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 }
                              bias_filler { type: "constant" value: 1 } }""")
    out = FakeRuntime().forward(text, None, {"data": np.ones((1, 4))})
    np.testing.assert_array_equal(out["ip"], [[3, 3]])


def test_fake_time_reports_every_layer(shared_models):
    d = shared_models / "cifar10_quick"
    net, _ = load(d / "cifar10_quick.prototxt", d / "cifar10_quick_iter_5000.caffemodel")
    fake = FakeRuntime()
    result = fake.time(net, batch=3, iterations=2, warmup=1)
    assert set(result) == {"layers", "forward_ms", "layers_sum_ms", "batch", "iterations",
                           "warmup", "input_shapes", "blas"}
    assert result["blas"] == dict.fromkeys(("library", "threads", "corename", "config"))
    assert [(r["name"], r["type"]) for r in result["layers"]] == [(l.name, l.type)
                                                                   for l in net.layers]
    assert all(r["ms"] >= 0 for r in result["layers"]) and result["forward_ms"] > 0
    assert result["layers_sum_ms"] == pytest.approx(sum(r["ms"] for r in result["layers"]))
    assert (result["batch"], result["iterations"], result["warmup"]) == (3, 2, 1)
    assert result["input_shapes"] == {"data": [3, 3, 32, 32]}
    assert fake.calls == [("time", "CIFAR10_quick_test")]
    with pytest.raises(ValueError, match="'iterations'"):
        fake.time(net, iterations=0)


# --------------------------------------------------------------------------------------------
# Against real Caffe (the `caffe` fixture)


def _resnet20(models):
    d = models / "resnet20_cifar10"
    net = read_net(d / "res20_cifar_train_test.prototxt",
                   d / "cifar10_res20_iter_64000.caffemodel").for_state("TEST")
    shapes = infer_shapes(net, {"Data1": (2, 3, 32, 32)})
    return deploy_from_train_val(fit_weights(net, shapes), shapes)


def _model(models, name):
    if name == "resnet20":
        return _resnet20(models)
    proto, weights = {
        "cifar10_quick": ("cifar10_quick/cifar10_quick.prototxt",
                          "cifar10_quick/cifar10_quick_iter_5000.caffemodel"),
        "lenet": ("lenet_mnist_v1format/lenet.prototxt",
                  "lenet_mnist_v1format/lenet_iter_10000.caffemodel"),
    }[name]
    return load(models / proto, models / weights)[0]


def _random_inputs(net, seed, batch=2):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch,) + tuple(shape[1:])).astype(F32)
            for name, shape in infer_shapes(net).inputs.items()}


@pytest.mark.parametrize("name", ["cifar10_quick", "lenet", "resnet20"])
def test_fake_agrees_with_caffe_on_real_models(caffe, shared_models, name):
    net = _model(shared_models, name)
    inputs = _random_inputs(net, seed=1)
    want = caffe.forward(net, None, inputs)
    got = FakeRuntime().forward(net, None, inputs)
    assert list(got) == list(want)
    for blob in want:
        assert got[blob].shape == want[blob].shape and got[blob].dtype == np.float32
        assert max_rel(want[blob], got[blob]) < 1e-4, blob


def test_fake_agrees_with_caffe_from_prototxt_and_caffemodel(caffe, shared_models):
    d = shared_models / "cifar10_quick"
    text = (d / "cifar10_quick.prototxt").read_text()
    weights = (d / "cifar10_quick_iter_5000.caffemodel").read_bytes()
    inputs = {"data": np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(F32) * 60}
    want = caffe.forward(text, weights, inputs)
    assert max_rel(want["prob"], FakeRuntime().forward(text, weights, inputs)["prob"]) < 1e-4


def test_fake_agrees_with_caffe_on_cifar10_quick_intermediate_blobs(caffe, shared_models):
    net = _model(shared_models, "cifar10_quick")
    names = list(dict.fromkeys(t for layer in net.layers for t in layer.tops))
    inputs = _random_inputs(net, seed=3)
    want = caffe.forward(net, None, inputs, blobs=names)
    got = FakeRuntime().forward(net, None, inputs, blobs=names)
    assert list(got) == list(want) == names
    for blob in names:
        assert got[blob].shape == want[blob].shape
        assert max_rel(want[blob], got[blob]) < 1e-4, blob


@pytest.mark.parametrize("name", ["cifar10_quick", "resnet20"])
def test_fake_time_lists_the_layers_caffe_times(caffe, shared_models, name):
    net = _model(shared_models, name)
    want = caffe.time(net, batch=2, iterations=1, warmup=0)
    got = FakeRuntime().time(net, batch=2, iterations=1, warmup=0)
    assert set(got) == set(want)
    assert [(r["name"], r["type"]) for r in got["layers"]] == \
        [(r["name"], r["type"]) for r in want["layers"]]
    assert got["input_shapes"] == want["input_shapes"]


# Every supported layer type in its less common forms, on one input used many times (splits).
EVERY_LAYER = _input((2, 4, 9, 11)) + "".join([
    _layer("conv_g", "Convolution", ["data"], """convolution_param { num_output: 6
        kernel_size: 3 pad: 2 stride: 2 dilation: 2 group: 2 }"""),
    _layer("leaky", "ReLU", ["conv_g"], "relu_param { negative_slope: 0.1 }", tops=["conv_g"]),
    _layer("conv_hw", "Convolution", ["data"], """convolution_param { num_output: 3
        kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 bias_term: false }"""),
    _layer("pool_max", "Pooling", ["data"], "pooling_param { pool: MAX kernel_size: 3 stride: 2 "
           "pad: 1 }", tops=["pool_max", "pool_mask"]),
    _layer("pool_ave", "Pooling", ["data"], "pooling_param { pool: AVE kernel_size: 3 stride: 2 "
           "pad: 1 }"),
    _layer("pool_clip", "Pooling", ["data"], "pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 "
           "stride: 3 pad: 1 }"),
    _layer("pool_clip_max", "Pooling", ["data"], "pooling_param { pool: MAX kernel_size: 3 "
           "stride: 3 pad: 1 }"),
    _layer("pool_ceil", "Pooling", ["data"], "pooling_param { pool: AVE kernel_size: 2 "
           "stride: 2 }"),
    _layer("global", "Pooling", ["data"], "pooling_param { pool: AVE global_pooling: true }"),
    _layer("global_max", "Pooling", ["data"], "pooling_param { pool: MAX global_pooling: true }"),
    _layer("lrn_across", "LRN", ["data"], "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"),
    _layer("lrn_within", "LRN", ["data"], "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 "
           "alpha: 0.5 beta: 0.75 }"),
    _layer("sig", "Sigmoid", ["data"]),
    _layer("tanh", "TanH", ["data"]),
    _layer("bn", "BatchNorm", ["data"]),
    _layer("bn_batch", "BatchNorm", ["data"], "batch_norm_param { use_global_stats: false }"),
    _layer("scale", "Scale", ["bn"], "scale_param { bias_term: true }"),
    _layer("flat", "Flatten", ["global"]),
    _layer("scale2", "Scale", ["data", "flat"], "scale_param { axis: 0 bias_term: true }"),
    _layer("sum", "Eltwise", ["sig", "tanh"], "eltwise_param { coeff: 1 coeff: -0.5 }"),
    _layer("prod", "Eltwise", ["sig", "tanh", "scale"], "eltwise_param { operation: PROD }"),
    _layer("max", "Eltwise", ["sig", "tanh"], "eltwise_param { operation: MAX }"),
    _layer("cat", "Concat", ["pool_max", "pool_ave"]),
    _layer("cat3", "Concat", ["pool_max", "pool_ave"], "concat_param { axis: 3 }"),
    _layer("re", "Reshape", ["conv_g"], "reshape_param { shape { dim: 0 dim: -1 } }"),
    _layer("ip", "InnerProduct", ["re"], "inner_product_param { num_output: 5 }"),
    _layer("drop", "Dropout", ["ip"], tops=["ip"]),
    _layer("ip2", "InnerProduct", ["data"], "inner_product_param { num_output: 7 axis: 2 "
           "bias_term: false }"),
    _layer("soft", "Softmax", ["ip2"], "softmax_param { axis: 2 }"),
    _layer("soft1", "Softmax", ["ip"]),
])


def test_fake_every_layer_type_agrees_with_caffe(caffe):
    net = init_weights(load_net(EVERY_LAYER), seed=4)
    rng = np.random.default_rng(4)
    weights = {"bn": [rng.uniform(-1, 1, 4) * 3, rng.uniform(0.5, 2, 4) * 3, np.array([3.0])],
               "scale": [rng.uniform(0.5, 2, 4), rng.uniform(-1, 1, 4)],
               "scale2": [rng.uniform(-1, 1, (2, 4))]}
    net = net.with_layers(l.with_blobs([np.asarray(b, F32) for b in weights[l.name]])
                          if l.name in weights else l for l in net.layers)
    assert {l.type for l in net.layers} == SUPPORTED_TYPES - {"Split"}
    names = list(dict.fromkeys(t for layer in net.layers for t in layer.tops))
    inputs = {"data": rng.standard_normal((2, 4, 9, 11)).astype(F32)}
    # send Caffe the prototxt and caffemodel bytes, give the fake the Net: both routes covered
    text = prototxt_text(net)
    weights_bytes = b"".join(bytes(c) for c in caffemodel_chunks(net))
    want = caffe.forward(text, weights_bytes, inputs, blobs=names)
    got = FakeRuntime().forward(net, None, inputs, blobs=names)
    for blob in names:
        assert got[blob].shape == want[blob].shape, blob
        assert max_rel(want[blob], got[blob]) < 1e-4, blob
    assert list(FakeRuntime().forward(net, None, inputs)) == list(caffe.forward(net, None, inputs))
    timed = [FakeRuntime().time(net, batch=2, iterations=1, warmup=0),
             caffe.time(net, batch=2, iterations=1, warmup=0)]
    assert [r["name"] for r in timed[0]["layers"]] == [r["name"] for r in timed[1]["layers"]]
