"""What Caffe's Net::Init refuses is refused once, after reading, with one line (issue 9)."""

import hashlib

import numpy as np
import pytest

from caffe_tucker import load_model, read_net
from caffe_tucker.io.emit import write_caffemodel


def _variant(cifar, old, new, count=1):
    text = cifar.read_text()
    assert text.count(old) >= count, old
    path = cifar.with_name("variant.prototxt")
    path.write_text(text.replace(old, new, count))
    return path


CONV1 = 'layer {\n  name: "conv1"\n  type: "Convolution"\n  bottom: "data"\n'
BAD_NETS = [
    ("conv stride 0", '    kernel_size: 5\n    stride: 1\n', '    kernel_size: 5\n    stride: 0\n',
     "layer 'conv1': stride must be positive"),
    ("pool stride 0", "    stride: 2\n", "    stride: 0\n", "layer 'pool1': stride must be positive"),
    ("conv without bottom", CONV1, 'layer {\n  name: "conv1"\n  type: "Convolution"\n',
     "a Convolution layer takes at least 1 bottom, this one has 0"),
    ("unknown bottom", '  bottom: "conv1"\n  top: "pool1"', '  bottom: "conv9"\n  top: "pool1"',
     "bottom blob 'conv9' is not produced by any earlier layer"),
    ("two layers write one top", '  bottom: "pool1"\n  top: "conv2"', '  bottom: "pool1"\n  top: "conv1"',
     "top blob 'conv1' is already produced by an earlier layer"),
    ("two layers of one name", 'name: "conv2"', 'name: "conv1"',
     "a second layer of this name (first at line"),
    ("inner product with two bottoms", '  bottom: "pool3"\n  top: "ip1"',
     '  bottom: "pool3"\n  bottom: "pool3"\n  top: "ip1"',
     "an InnerProduct layer takes exactly 1 bottom, this one has 2".replace("an ", "a ")),
]


@pytest.mark.parametrize("case, old, new, words", BAD_NETS, ids=[c[0] for c in BAD_NETS])
@pytest.mark.parametrize("command", ["info", "convert", "ranks", "init"])
def test_bad_nets_are_refused_with_one_line(cli, cifar, tmp_path, case, old, new, words, command):
    path = _variant(cifar, old, new)
    args = {"info": [path], "convert": [path, "--weights", cifar.with_suffix(".caffemodel"), "-o",
                                        tmp_path / "o"],
            "ranks": [path, "--weights", cifar.with_suffix(".caffemodel")],
            "init": [path, "-o", tmp_path / "r.caffemodel"]}[command]
    before = hashlib.sha1(path.read_bytes()).hexdigest()
    code, out, err = cli(command, *args)
    assert code == 1, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert words in err and "variant.prototxt:" in err
    assert hashlib.sha1(path.read_bytes()).hexdigest() == before
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.caffemodel").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_weights_are_named(cli, cifar, tmp_path, value):
    model = load_model(cifar, cifar.with_suffix(".caffemodel"))
    conv2 = model.net.layer("conv2")
    w = conv2.blobs[0].copy()
    w[0, 0, 0, :3] = value
    bad = model.net.replace_layer("conv2", [conv2.with_blobs([w, conv2.blobs[1]])])
    write_caffemodel(bad, tmp_path / "bad.caffemodel")
    for command in ("info", "convert", "ranks"):
        code, _, err = cli(command, cifar, "--weights", tmp_path / "bad.caffemodel")
        kind = "NaN" if np.isnan(value) else "Inf"
        assert code == 1 and f"layer 'conv2': blob 0 of the weights" in err
        assert f"contains 3 {kind} values" in err and len(err.strip().splitlines()) == 1


def test_a_caffemodel_without_the_blobs_of_a_layer_is_refused(cli, cifar, tmp_path):
    model = load_model(cifar, cifar.with_suffix(".caffemodel"))
    stripped = model.net.replace_layer("conv2", [model.net.layer("conv2").with_blobs(())])
    write_caffemodel(stripped, tmp_path / "partial.caffemodel")
    code, _, err = cli("info", cifar, "--weights", tmp_path / "partial.caffemodel")
    assert code == 1 and "layer 'conv2': no weights for this layer" in err
    # Without --weights the net alone is fine.
    assert cli("info", cifar)[0] == 0


def test_init_estimates_memory_before_allocating(cli, cifar, tmp_path, monkeypatch):
    path = _variant(cifar, "num_output: 64\n", "num_output: 1000000000\n")
    code, _, err = cli("init", path, "-o", tmp_path / "r.caffemodel")
    assert code == 1 and "would need" in err and "GiB of memory" in err and "hint:" in err
    assert not (tmp_path / "r.caffemodel").exists()
    monkeypatch.setenv("CAFFE_TUCKER_MAX_MEMORY_GB", "0.0001")      # 100 KiB: cifar needs 0.6 MB
    code, _, err = cli("init", cifar, "-o", tmp_path / "r.caffemodel")
    assert code == 1 and "would need 0.0 GiB" in err


def test_validation_accepts_in_place_layers_and_real_nets(shared_models):
    for proto, weights in (("cifar10_quick/cifar10_quick.prototxt",
                            "cifar10_quick/cifar10_quick_iter_5000.caffemodel"),
                           ("resnet20_cifar10/res20_cifar_train_test.prototxt",
                            "resnet20_cifar10/cifar10_res20_iter_64000.caffemodel"),
                           ("lenet_mnist_v1format/lenet.prototxt",
                            "lenet_mnist_v1format/lenet_iter_10000.caffemodel")):
        model = load_model(shared_models / proto, shared_models / weights, deploy=True,
                           data_shapes={None: (1, 3, 32, 32)})
        assert model.net.layers and read_net(shared_models / proto).layers
