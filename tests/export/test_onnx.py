"""ONNX export: the exported model computes what Caffe computes.

Without Caffe: layer by layer against numpy references of Caffe's own arithmetic (pooling's
ceil rounding and AVE divisor, LRN, Deconvolution, Crop, Eltwise), determinism, bad input.
With Caffe (the ``caffe`` fixture): the bundled and test nets, and compressed digits, every blob
of onnxruntime's forward against real Caffe's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys

import numpy as np
import pytest

from conftest import TEST_MODELS, ZOO, in_ci, write

if in_ci():  # CI installs the test extra: a missing onnxruntime is a failure there
    import onnx  # noqa: F401
    import onnxruntime as ort
else:
    pytest.importorskip("onnx", reason="needs onnx (pip install onnx)")
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install onnxruntime)")

from caffe_tucker.export.onnx import build_model, caffe_pool_size, to_onnx  # noqa: E402
from caffe_tucker.io.emit import write_caffemodel  # noqa: E402
from caffe_tucker.io.fillers import init_weights  # noqa: E402
from caffe_tucker.io.read import read_prototxt  # noqa: E402
from caffe_tucker.model import load_model  # noqa: E402

RTOL = 1e-4


def session(data: bytes):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run_onnx(model, feeds, outputs=None, opset=13):
    """onnxruntime's values of ``outputs`` (default: the net's outputs), by Caffe blob name."""
    data = to_onnx(model, opset=opset, outputs=outputs)
    s = session(data)
    names = outputs or [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds)))


def net_model(tmp_path, text, weights=True, seed=0, name="net.prototxt"):
    """A model of prototxt text; ``weights``: drawn from its fillers."""
    model = load_model(write(tmp_path / name, text))
    if weights:
        model = dataclasses.replace(model, net=init_weights(model.net, seed=seed))
    return model


def max_rel(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def inputs_of(model, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in model.shapes.inputs.items()}


# -- numpy references of Caffe's layers (pooling_layer.cpp, lrn_layer.cpp, im2col/col2im) -----

def caffe_pool(x, kernel, stride, pad, mode):
    n, c, h, w = x.shape
    oh = caffe_pool_size(h, kernel[0], pad[0], stride[0])
    ow = caffe_pool_size(w, kernel[1], pad[1], stride[1])
    y = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * stride[0] - pad[0], j * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            if mode == "MAX":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                y[:, :, i, j] = window.sum(axis=(2, 3)) / size
    return y


def caffe_lrn(x, size, alpha, beta, k):
    c = x.shape[1]
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), ((size - 1) // 2, size // 2), (0, 0), (0, 0)))
    scale = k + alpha / size * np.stack([sq[:, i:i + size].sum(axis=1) for i in range(c)], axis=1)
    return x * scale ** -beta


def caffe_deconv(x, weight, bias, stride, pad, group):
    n, cin, h, w = x.shape
    _, cout_g, kh, kw = weight.shape
    oh = stride * (h - 1) + kh - 2 * pad
    ow = stride * (w - 1) + kw - 2 * pad
    full = np.zeros((n, cout_g * group, stride * (h - 1) + kh, stride * (w - 1) + kw))
    cin_g = cin // group
    for g in range(group):
        for ci in range(cin_g):
            for co in range(cout_g):
                for a in range(kh):
                    for b in range(kw):
                        full[:, g * cout_g + co, a:a + stride * h:stride, b:b + stride * w:stride] += \
                            x[:, g * cin_g + ci] * weight[g * cin_g + ci, co, a, b]
    y = full[:, :, pad:pad + oh, pad:pad + ow]
    return y + bias.reshape(1, -1, 1, 1)


INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def input_layer(*dims, name="data"):
    return INPUT.format(dims=" ".join(f"dim: {d}" for d in dims)).replace('"data"', f'"{name}"')


POOL_CASES = [  # kernel, stride, pad, H, W: exact fits, ceil overhangs, the clipping rule
    (3, 2, 0, 7, 8), (3, 2, 1, 7, 8), (2, 2, 1, 5, 6), (3, 3, 1, 10, 11), (3, 1, 1, 5, 5),
    (2, 2, 0, 9, 9), (5, 3, 2, 12, 7), (3, 2, 2, 6, 6),
]


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("kernel, stride, pad, h, w", POOL_CASES)
def test_pooling_ceil_rounding_and_padding(tmp_path, mode, kernel, stride, pad, h, w):
    model = net_model(tmp_path, input_layer(2, 3, h, w) + f"""
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param {{ pool: {mode} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}
""", weights=False)
    x = inputs_of(model)["data"]
    want = caffe_pool(x, (kernel, kernel), (stride, stride), (pad, pad), mode)
    got = run_onnx(model, {"data": x})["pool"]
    assert got.shape == want.shape == tuple(model.shapes.blobs["pool"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ave_pooling_divides_by_the_window_clipped_to_the_declared_padding(tmp_path):
    """A constant input of ones, 3x3 windows at -1, 1, 3 over 4 rows padded by 1: Caffe counts
    the declared padding (the first window: 4 ones / 9) but not the ceil overhang (the last
    window spans rows 3..5, clipped to 3..4 for the divisor: 1 one / 2 rows per axis), which
    neither count_include_pad=0 (1.0) nor 1 (1/9) of ONNX's ceil mode gives."""
    model = net_model(tmp_path, input_layer(1, 1, 4, 4) + """
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
""", weights=False)
    got = run_onnx(model, {"data": np.ones((1, 1, 4, 4), np.float32)})["pool"][0, 0]
    want = caffe_pool(np.ones((1, 1, 4, 4)), (3, 3), (2, 2), (1, 1), "AVE")[0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert want[0, 0] == pytest.approx(4 / 9) and want[2, 2] == pytest.approx(1 / 4)


@pytest.mark.parametrize("mode, op", [("MAX", "GlobalMaxPool"), ("AVE", "GlobalAveragePool")])
def test_global_pooling(tmp_path, mode, op):
    model = net_model(tmp_path, input_layer(2, 3, 5, 7) + f"""
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param {{ pool: {mode} global_pooling: true }} }}
""", weights=False)
    assert [n.op_type for n in build_model(model).graph.node] == [op]
    x = inputs_of(model)["data"]
    want = x.max(axis=(2, 3), keepdims=True) if mode == "MAX" else x.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(run_onnx(model, {"data": x})["pool"], want, rtol=1e-5, atol=1e-6)


def test_lrn_across_channels(tmp_path):
    model = net_model(tmp_path, input_layer(2, 7, 4, 5) + """
layer { name: "norm" type: "LRN" bottom: "data" top: "norm"
        lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 } }
""", weights=False)
    x = inputs_of(model)["data"] * 3
    np.testing.assert_allclose(run_onnx(model, {"data": x})["norm"],
                               caffe_lrn(x, 5, 0.3, 0.75, 2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group, stride, pad", [(1, 2, 1), (2, 2, 0), (4, 3, 2), (1, 1, 0)])
def test_deconvolution(tmp_path, group, stride, pad):
    model = net_model(tmp_path, input_layer(2, 4, 5, 6) + f"""
layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up"
        convolution_param {{ num_output: 8 kernel_size: 4 stride: {stride} pad: {pad} group: {group}
                             weight_filler {{ type: "gaussian" std: 0.5 }}
                             bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
""")
    x = inputs_of(model)["data"]
    layer = model.net.layer("up")
    want = caffe_deconv(x, layer.blobs[0], layer.blobs[1], stride, pad, group)
    got = run_onnx(model, {"data": x})["up"]
    assert got.shape == want.shape == tuple(model.shapes.blobs["up"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_crop_eltwise_coefficients_and_products(tmp_path):
    model = net_model(tmp_path, input_layer(1, 2, 9, 10) + input_layer(1, 2, 5, 6, name="ref") + """
layer { name: "crop" type: "Crop" bottom: "data" bottom: "ref" top: "crop"
        crop_param { axis: 2 offset: 3 offset: 1 } }
layer { name: "crop_all" type: "Crop" bottom: "data" bottom: "ref" top: "crop_all"
        crop_param { offset: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "crop" bottom: "ref" bottom: "crop_all" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 } }
layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "ref" bottom: "crop" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "ref" top: "max"
        eltwise_param { operation: MAX } }
""", weights=False)
    feeds = inputs_of(model)
    x, ref = feeds["data"], feeds["ref"]
    crop, crop_all = x[:, :, 3:8, 1:7], x[:, :, 2:7, 2:8]
    s = 0.5 * crop - 2 * ref + crop_all
    prod = s * ref * crop
    got = run_onnx(model, feeds, outputs=["crop", "crop_all", "sum", "prod", "max"])
    for name, want in [("crop", crop), ("crop_all", crop_all), ("sum", s), ("prod", prod),
                       ("max", np.maximum(prod, ref))]:
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


LAYER_ZOO = input_layer(2, 3, 11, 13) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 2 dilation: 2 group: 3
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
layer { name: "up" type: "Deconvolution" bottom: "conv" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 bias_term: false
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ave" type: "Pooling" bottom: "up" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm" type: "LRN" bottom: "ave" top: "norm"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 1.5 } }
layer { name: "max" type: "Pooling" bottom: "norm" top: "max"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "bn" type: "BatchNorm" bottom: "max" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true
        filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "split" type: "Split" bottom: "bn" top: "a" top: "b" }
layer { name: "sig" type: "Sigmoid" bottom: "a" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "b" top: "tanh" }
layer { name: "pow" type: "Power" bottom: "b" top: "pow"
        power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "cat" type: "Concat" bottom: "sig" bottom: "tanh" bottom: "pow" top: "cat" }
layer { name: "elt" type: "Eltwise" bottom: "sig" bottom: "tanh" top: "elt"
        eltwise_param { coeff: 2 coeff: -1 } }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 12 bias_term: false
                              weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "shape" type: "Reshape" bottom: "ip" top: "shape"
        reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }
layer { name: "prob" type: "Softmax" bottom: "shape" top: "prob" softmax_param { axis: 2 } }
layer { name: "ip2" type: "InnerProduct" bottom: "elt" top: "ip2"
        inner_product_param { num_output: 5 axis: 2
                              weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "gaussian" std: 0.3 } } }
"""


def layer_zoo(tmp_path):
    """LAYER_ZOO with drawn weights, and BatchNorm statistics stored with a scale factor of 2."""
    model = net_model(tmp_path, LAYER_ZOO, name="zoo.prototxt")
    rng = np.random.default_rng(1)
    c = model.shapes.blobs["max"][1]
    bn = (rng.standard_normal(c).astype(np.float32) * 2,
          rng.uniform(0.5, 2.0, c).astype(np.float32) * 2, np.array([2.0], np.float32))
    net = model.net.replace_layer("bn", [model.net.layer("bn").with_blobs(bn)])
    return dataclasses.replace(model, net=net)


def all_blobs(model):
    return list(dict.fromkeys(t for l in model.net.layers if l.type != "Input" for t in l.tops))


def test_layer_zoo_exports_and_checks_at_several_opsets(tmp_path):
    model = layer_zoo(tmp_path)
    feeds = inputs_of(model)
    first = run_onnx(model, feeds, outputs=all_blobs(model))
    for opset in (17, 21):
        again = run_onnx(model, feeds, outputs=all_blobs(model), opset=opset)
        for name in first:
            np.testing.assert_allclose(again[name], first[name], rtol=1e-6, atol=1e-7)
    assert first["prob"].shape == (2, 3, 4)
    np.testing.assert_allclose(first["prob"].sum(axis=2), 1.0, rtol=1e-5)
    bn = model.net.layer("bn").blobs
    want = (first["max"] - (bn[0] / 2).reshape(1, -1, 1, 1)) / np.sqrt(
        (bn[1] / 2).reshape(1, -1, 1, 1) + 1e-5)
    scale = model.net.layer("scale").blobs
    want = want * scale[0].reshape(1, -1, 1, 1) + scale[1].reshape(1, -1, 1, 1)
    np.testing.assert_allclose(first["bn"], want, rtol=1e-4, atol=1e-5)


def test_export_is_deterministic(cli, tmp_path):
    model = load_model(ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel")
    assert to_onnx(model) == to_onnx(model)
    net = ZOO / "digits" / "deploy.prototxt"
    assert cli("export", net, "--onnx", tmp_path / "a.onnx")[0] == 0
    assert cli("export", net, "--onnx", tmp_path / "b.onnx")[0] == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_cli_export_prints_and_replaces_only_with_force(cli, tmp_path):
    net = ZOO / "digits" / "deploy.prototxt"
    out = tmp_path / "digits.onnx"
    code, stdout, err = cli("export", net, "--onnx", out)
    assert code == 0, err
    assert "inputs: data 1x1x8x8; outputs: prob 1x10" in stdout and f"wrote {out}" in stdout
    before = hashlib.sha1(out.read_bytes()).hexdigest()
    code, _, err = cli("export", net, "--onnx", out)
    assert code == 1 and "pass --force" in err and len(err.strip().splitlines()) == 1
    assert cli("export", net, "--onnx", out, "--force", "--opset", "17")[0] == 0
    assert hashlib.sha1(out.read_bytes()).hexdigest() != before
    assert list(tmp_path.iterdir()) == [out]  # no temporaries left


def test_unsupported_layer_is_one_line_naming_it(cli, tmp_path):
    net = write(tmp_path / "argmax.prototxt", input_layer(1, 3, 4, 4) + """
layer { name: "top1" type: "ArgMax" bottom: "data" top: "top1" argmax_param { axis: 1 } }
""")
    code, out, err = cli("export", net, "--weights", tmp_path / "none.caffemodel",
                         "--onnx", tmp_path / "a.onnx")
    assert code == 1 and "no such .caffemodel" in err  # the weights are missing: named first
    write_caffemodel(read_prototxt(net), tmp_path / "argmax.caffemodel")
    code, out, err = cli("export", net, "--onnx", tmp_path / "a.onnx")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{net}:3: layer 'top1': layer type 'ArgMax' has no ONNX export; hint:" in err
    assert not (tmp_path / "a.onnx").exists()


def test_missing_onnx_is_one_line_with_the_pip_command(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, out, err = cli("export", ZOO / "digits" / "deploy.prototxt", "--onnx", tmp_path / "a.onnx")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "needs the onnx package" in err and "pip install" in err


# -- against real Caffe ------------------------------------------------------------------------

NETS = {  # name: (prototxt, caffemodel, input shapes)
    "digits": (ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel", None),
    "cifar10_quick": (TEST_MODELS / "cifar10_quick" / "cifar10_quick.prototxt",
                      TEST_MODELS / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel", None),
    "lenet_v1": (TEST_MODELS / "lenet_mnist_v1format" / "lenet.prototxt",
                 TEST_MODELS / "lenet_mnist_v1format" / "lenet_iter_10000.caffemodel",
                 {None: (2, 1, 28, 28)}),
    "resnet20": (TEST_MODELS / "resnet20_cifar10" / "res20_cifar_train_test.prototxt",
                 TEST_MODELS / "resnet20_cifar10" / "cifar10_res20_iter_64000.caffemodel",
                 {"Data1": (2, 3, 32, 32)}),
    "vdsr": (TEST_MODELS / "vdsr" / "VDSR_net_deploy.prototxt",
             TEST_MODELS / "vdsr" / "VDSR_Adam.caffemodel", {None: (1, 1, 24, 24)}),
}


def assert_matches_caffe(caffe, model, seed=0) -> float:
    """Every blob of the net, onnxruntime against Caffe, to RTOL of the blob's largest value."""
    feeds = inputs_of(model, seed)
    blobs = all_blobs(model)
    got = run_onnx(model, feeds, outputs=blobs)
    want = caffe.forward(model.net, None, feeds, blobs=blobs)
    worst = 0.0
    for name in blobs:
        assert got[name].shape == want[name].shape, name
        rel = max_rel(got[name], want[name])
        assert rel < RTOL, f"blob {name}: relative difference {rel:.2e}"
        worst = max(worst, rel)
    return worst


@pytest.mark.parametrize("name", list(NETS))
def test_nets_match_caffe(caffe, name):
    proto, weights, shapes = NETS[name]
    model = load_model(proto, weights, input_shapes=shapes, deploy=True)
    assert_matches_caffe(caffe, model)


def test_layer_zoo_matches_caffe(caffe, tmp_path):
    assert_matches_caffe(caffe, layer_zoo(tmp_path))


@pytest.mark.parametrize("method", [None, "cp", "btd"])
def test_compressed_digits_exports_and_matches_caffe(cli, caffe, tmp_path, method):
    digits = tmp_path / "digits.prototxt"
    shutil.copy(ZOO / "digits" / "deploy.prototxt", digits)
    shutil.copy(ZOO / "digits" / "digits.caffemodel", digits.with_suffix(".caffemodel"))
    extra = ["--method", method] if method else []
    code, _, err = cli("convert", digits, "-o", tmp_path / "out", "--no-plot", *extra)
    assert code == 0, err
    code, out, err = cli("export", tmp_path / "out", "--onnx", tmp_path / "digits.onnx")
    assert code == 0, err
    model = load_model(tmp_path / "out" / "deploy.prototxt", tmp_path / "out" / "weights.caffemodel")
    assert (tmp_path / "digits.onnx").read_bytes() == to_onnx(model)
    assert_matches_caffe(caffe, model)


def test_bench_in_onnxruntime_times_both_nets_whole(cli, tmp_path):
    """bench --runtime onnxruntime needs no Caffe: both nets exported and timed in onnxruntime."""
    digits = tmp_path / "digits.prototxt"
    shutil.copy(ZOO / "digits" / "deploy.prototxt", digits)
    shutil.copy(ZOO / "digits" / "digits.caffemodel", digits.with_suffix(".caffemodel"))
    assert cli("convert", digits, "-o", tmp_path / "out", "--no-plot")[0] == 0
    code, out, err = cli("bench", tmp_path / "out", "--runtime", "onnxruntime", "--batch", "1,4",
                         "--iterations", "2", "--repeats", "1", "--threads", "1", "--format", "json")
    assert code == 0, err
    import json
    result = json.loads(out)
    assert set(result) == {"1", "4"}
    total, env = result["4"]["total"], result["4"]["environment"]
    assert total["original_ms"] > 0 and total["compressed_ms"] > 0
    record = json.loads((tmp_path / "out" / "report.json").read_text())["total"]
    assert total["theoretical"] == pytest.approx(record["flops_before"] / record["flops_after"])
    assert (env["runtime"], env["threads"], env["batch"]) == ("onnxruntime", 1, 4)
    code, out, err = cli("bench", tmp_path / "out", "--runtime", "onnxruntime", "--iterations", "1",
                         "--repeats", "1")
    assert code == 0 and out.startswith("batch 1, onnxruntime ") and "speed-up x" in out, err
    assert not (tmp_path / "out" / "bench.png").exists()
    code, out, err = cli("bench", tmp_path / "out", "--runtime", "onnxruntime",
                         "--png", tmp_path / "b.png")
    assert code == 1 and "no per-layer chart" in err
