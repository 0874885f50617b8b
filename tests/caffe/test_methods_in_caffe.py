"""BTD and CP outputs in real Caffe: verify's decomposition check and bench (needs a runtime).

Real Caffe runs the emitted grouped and depthwise convolutions (BTD's middle layer with group
g·N, CP's kh×1 / 1×kw layers with group g·R and split stride/pad/dilation), so this checks the
layouts against Caffe's own convolution, not against this project's numpy reference.
"""

import json

import pytest

from caffe_tucker import infer_shapes, read_prototxt
from caffe_tucker.compress.methods import get_method
from caffe_tucker.io.emit import write_caffemodel
from caffe_tucker.io.fillers import init_weights
from conftest import ZOO, write

# Grouped, strided, padded, dilated, non-square: every geometry the rewrites must carry over.
ODD = """name: "odd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 dim: 15 dim: 14 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 12 kernel_h: 3 kernel_w: 5 stride_h: 2 stride_w: 1
                            pad_h: 2 pad_w: 1 dilation: 2 group: 2
                            bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1
                            bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv2" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def caffe_cli(cli, caffe_command, *args):
    return cli(*args, "--caffe-python", caffe_command)


def _verify_json(cli, caffe_command, out_dir):
    code, out, err = caffe_cli(cli, caffe_command, "verify", out_dir, "--random", "3",
                               "--format", "json")
    assert code == 0, out + err
    return json.loads(out)


@pytest.fixture
def odd(tmp_path):
    proto = write(tmp_path / "odd.prototxt", ODD)
    write_caffemodel(init_weights(read_prototxt(proto), seed=1), proto.with_suffix(".caffemodel"))
    return proto


@pytest.mark.parametrize("ranks", [
    {"conv1": {"method": "btd", "ranks": [4, 6, 2]}, "conv2": {"method": "btd", "ranks": [8, 8, 4]}},
    {"conv1": {"method": "cp", "ranks": 5}, "conv2": {"method": "cp", "ranks": 7}},
    {"conv1": {"method": "btd", "ranks": [4, 6, 1]}, "conv2": {"method": "cp", "ranks": 3}},
])
def test_grouped_and_odd_geometry_verify_in_caffe(cli, caffe_command, odd, tmp_path, ranks):
    f = write(tmp_path / "ranks.json", json.dumps(ranks))
    code, _, err = cli("convert", odd, "--ranks", f, "-o", tmp_path / "out", "--no-plot")
    assert code == 0, err
    result = _verify_json(cli, caffe_command, tmp_path / "out")
    assert result["passed"] and set(result["compressed_layers"]) == set(ranks)
    assert result["decomposition"][0]["max_rel"] < 1e-4
    # the four-file form tells the methods apart by the new layers alone, and passes too
    code, out, err = caffe_cli(cli, caffe_command, "verify", odd, odd.with_suffix(".caffemodel"),
                               tmp_path / "out" / "deploy.prototxt",
                               tmp_path / "out" / "weights.caffemodel")
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED: "), out + err


def test_full_ranks_reproduce_the_net_in_caffe(cli, caffe_command, odd, tmp_path):
    """BTD with one block at full ranks is exact; so is CP at a rank that holds the kernel."""
    net = read_prototxt(odd)
    shapes = infer_shapes(net)
    btd = get_method("btd").full_ranks(net.layer("conv1"), shapes.layers["conv1"])
    ranks = {"conv1": {"method": "btd", "ranks": [btd[0], btd[1], 1]}}
    f = write(tmp_path / "ranks.json", json.dumps(ranks))
    assert cli("convert", odd, "--ranks", f, "-o", tmp_path / "out", "--no-plot")[0] == 0
    result = _verify_json(cli, caffe_command, tmp_path / "out")
    (prob,) = result["approximation"]
    assert prob["max_rel"] < 1e-4 and prob["top1_agreement"] == 1.0


@pytest.mark.parametrize("method", ["btd", "cp"])
def test_real_models_with_each_method_verify_and_bench(cli, caffe_command, shared_models, tmp_path,
                                                       method):
    """The bundled digits net and cifar10_quick, every planned layer with the method (automatic
    ranks), through verify and bench in Caffe."""
    digits = tmp_path / "digits.prototxt"
    digits.write_text((ZOO / "digits" / "deploy.prototxt").read_text())
    digits.with_suffix(".caffemodel").write_bytes((ZOO / "digits" / "digits.caffemodel").read_bytes())
    cifar = shared_models / "cifar10_quick"
    for name, proto, extra in (
            ("digits", digits, []),
            ("cifar", cifar / "cifar10_quick.prototxt",
             ["--weights", cifar / "cifar10_quick_iter_5000.caffemodel", "--layers", "conv2,conv3"])):
        out = tmp_path / f"{name}_{method}"
        code, _, err = cli("convert", proto, "--method", method, "-o", out, "--no-plot", *extra)
        assert code == 0, err
        record = json.loads((out / "report.json").read_text())
        compressed = [l for l in record["layers"] if l["skipped_reason"] is None]
        assert any(l["method"] == method for l in compressed), record["layers"]
        result = _verify_json(cli, caffe_command, out)
        assert result["passed"]
    code, out, err = caffe_cli(cli, caffe_command, "bench", tmp_path / f"digits_{method}",
                               "--iterations", "2", "--repeats", "1", "--format", "json")
    assert code == 0, err
    conv2 = next(r for r in json.loads(out)["1"]["layers"] if r["name"] == "conv2")
    assert conv2["method"] == method
    assert len(conv2["parts_ms"]) == get_method(method).n_layers


# A fully connected layer over a 3×4 map (AlexNet's fc6 over pool5, in small).
FC_ON_MAP = """name: "fc_on_map"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 7 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 10 kernel_size: 3 stride: 2
                            bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "fc6" type: "InnerProduct" bottom: "conv1" top: "fc6"
        inner_product_param { num_output: 24 bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }
"""


@pytest.mark.parametrize("ranks", [[10, 24], [4, 7]])
def test_tucker2_fc_layer_runs_as_conv_then_two_inner_products_in_caffe(cli, caffe_command, tmp_path,
                                                                         ranks):
    """Issue 13: a Tucker-2 fully connected layer is written 1×1 Convolution → InnerProduct →
    InnerProduct (batched in Caffe), computes the decomposed kernel (exactly at full ranks) for a
    batch of 4, and the four-file verify recognises the layout."""
    proto = write(tmp_path / "fc.prototxt", FC_ON_MAP)
    write_caffemodel(init_weights(read_prototxt(proto), seed=3), proto.with_suffix(".caffemodel"))
    f = write(tmp_path / "ranks.json", json.dumps({"fc6": {"method": "tucker2", "ranks": ranks}}))
    code, _, err = cli("convert", proto, "--ranks", f, "-o", tmp_path / "out", "--no-plot")
    assert code == 0, err
    out_net = read_prototxt(tmp_path / "out" / "deploy.prototxt")
    assert [out_net.layer(f"fc6_tk{i}").type for i in (1, 2, 3)] == [
        "Convolution", "InnerProduct", "InnerProduct"]
    assert infer_shapes(out_net).layers["fc6_tk3"].outputs[0] == (4, 24)
    result = _verify_json(cli, caffe_command, tmp_path / "out")
    assert result["passed"] and result["compressed_layers"] == ["fc6"]
    assert result["decomposition"][0]["max_rel"] < 1e-4
    if ranks == [10, 24]:   # full ranks: the net itself
        (prob,) = result["approximation"]
        assert prob["max_rel"] < 1e-4 and prob["top1_agreement"] == 1.0
    code, out, err = caffe_cli(cli, caffe_command, "verify", proto, proto.with_suffix(".caffemodel"),
                               tmp_path / "out" / "deploy.prototxt",
                               tmp_path / "out" / "weights.caffemodel")
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED: "), out + err
