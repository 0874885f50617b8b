"""The bundled default model, zoo_models/digits: a CNN trained in real Caffe on sklearn's digits.

The tests of the committed files need neither Caffe nor scikit-learn.  The accuracy tests need
scikit-learn (for the data) and, for the one in Caffe, a Caffe runtime (``$CAFFE_TUCKER_PYTHON``);
under ``CI=true`` either missing is a failure, elsewhere a skip.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import caffe_tucker as ct
from caffe_tucker import read_prototxt

from conftest import ZOO, in_ci

DIGITS = ZOO / "digits"
META = json.loads((DIGITS / "model.json").read_text())

# name, type, blob shapes, output shape (N = 1)
ARCHITECTURE = [
    ("data", "Input", [], (1, 1, 8, 8)),
    ("conv1", "Convolution", [(32, 1, 3, 3), (32,)], (1, 32, 8, 8)),
    ("relu1", "ReLU", [], (1, 32, 8, 8)),
    ("conv2", "Convolution", [(64, 32, 3, 3), (64,)], (1, 64, 8, 8)),
    ("relu2", "ReLU", [], (1, 64, 8, 8)),
    ("conv3", "Convolution", [(64, 64, 3, 3), (64,)], (1, 64, 8, 8)),
    ("relu3", "ReLU", [], (1, 64, 8, 8)),
    ("pool3", "Pooling", [], (1, 64, 4, 4)),
    ("fc1", "InnerProduct", [(128, 1024), (128,)], (1, 128)),
    ("relu4", "ReLU", [], (1, 128)),
    ("fc2", "InnerProduct", [(10, 128), (10,)], (1, 10)),
    ("prob", "Softmax", [], (1, 10)),
]

@pytest.fixture(scope="session")
def split(recipe):
    """``(x_train, y_train, x_test, y_test)``; needs scikit-learn (a failure under CI=true)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        if in_ci():
            pytest.fail("CI must evaluate the digits model, but scikit-learn is not installed",
                        pytrace=False)
        pytest.skip("needs scikit-learn for sklearn.datasets.load_digits (pip install "
                    "scikit-learn)")
    return recipe.load_split()


@pytest.fixture(scope="session")
def digits():
    return ct.load(DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel")


# --------------------------------------------------------------------------------------------
# The committed files (no Caffe, no scikit-learn)

def test_metadata_describes_the_committed_weights():
    path = DIGITS / META["weights"]["filename"]
    data = path.read_bytes()
    assert META["name"] == "digits" and META["format"] == "current"
    assert META["deploy"] == "deploy.prototxt" and META["weights"]["url"] is None
    assert META["weights"]["sha1"] == hashlib.sha1(data).hexdigest()
    assert META["weights"]["bytes"] == len(data) < 2 << 20
    assert META["preprocess"] == {"scale": 0.0625, "crop_size": None, "mean_bgr": None,
                                  "mirror": False}
    assert META["dataset"]["train"] == 1297 and META["dataset"]["test"] == 500
    assert META["dataset"]["train"] + META["dataset"]["test"] == 1797
    assert "RandomState(0)" in META["dataset"]["split"]
    assert 0.97 <= META["accuracy"]["top1"] <= 1.0
    assert META["paper"] is None
    assert META["finetune"]["batch_size"] == 64
    assert META["compress"] == {"conv1": "tucker1", "conv2": "tucker2", "conv3": "tucker2",
                                "fc1": "svd"}
    from caffe_tucker.zoo import zoo_model, zoo_names
    assert "digits" in zoo_names() and zoo_model("digits")["compress"] == META["compress"]


def test_deploy_and_weights_have_the_documented_architecture(digits):
    net, shapes = digits
    assert [(l.name, l.type) for l in net.layers] == [(n, t) for n, t, _, _ in ARCHITECTURE]
    for name, _, blobs, out in ARCHITECTURE:
        layer = net.layer(name)
        assert [tuple(np.shape(b)) for b in layer.blobs] == blobs, name
        assert all(np.isfinite(b).all() and np.abs(b).max() > 0 for b in layer.blobs), name
        assert tuple(shapes.blobs[layer.tops[0]]) == out, name
    assert net.layer("pool3").spec.pooling_param.pool == 0  # MAX
    for name in ("conv1", "conv2", "conv3"):
        p = net.layer(name).spec.convolution_param
        assert (list(p.kernel_size), list(p.pad), list(p.stride)) == ([3], [1], []), name
    report = ct.analyze(net, shapes)
    assert report.total_weights == 288 + 18432 + 36864 + 131072 + 1280


def test_train_net_is_the_deploy_net_with_a_loss():
    deploy = read_prototxt(DIGITS / "deploy.prototxt")
    train = read_prototxt(DIGITS / "train_val.prototxt")
    body = [l for l in deploy.layers if l.type not in ("Input", "Softmax")]
    train_body = [l for l in train.layers
                  if l.type not in ("Input", "SoftmaxWithLoss", "Accuracy", "Dropout")]

    def shape_of(layer):
        spec = layer.spec
        for field in ("convolution_param", "inner_product_param", "pooling_param"):
            if spec.HasField(field):
                p = type(getattr(spec, field))()
                p.CopyFrom(getattr(spec, field))
                for filler in ("weight_filler", "bias_filler"):
                    if filler in p.DESCRIPTOR.fields_by_name:
                        p.ClearField(filler)
                return p.SerializeToString(deterministic=True)
        return b""

    assert [(l.name, l.type, l.bottoms, l.tops, shape_of(l)) for l in train_body] == \
        [(l.name, l.type, l.bottoms, l.tops, shape_of(l)) for l in body]
    inputs = {l.name: list(l.spec.input_param.shape[0].dim) for l in train.layers
              if l.type == "Input"}
    assert inputs == {"data": [64, 1, 8, 8], "label": [64]}
    assert META["finetune"]["batch_size"] == 64


def test_vbmf_finds_low_rank_structure_in_every_planned_layer(digits):
    """The point of the default model: the ranks VBMF picks are neither 0 nor full."""
    from caffe_tucker.compress.vbmf import evbmf

    net, _ = digits
    for name, method in META["compress"].items():
        w = np.asarray(net.layer(name).blobs[0])
        matrices = {"output": w.reshape(w.shape[0], -1)}
        if method == "tucker2":
            matrices["input"] = w.transpose(1, 0, 2, 3).reshape(w.shape[1], -1)
        for mode, matrix in matrices.items():
            rank = evbmf(matrix).rank
            assert 1 <= rank <= min(matrix.shape) // 2, (name, mode, rank)


# --------------------------------------------------------------------------------------------
# Accuracy on the fixed test split

def _numpy_forward(net, x):
    """The deploy net in float64 numpy (3x3 pad-1 convolutions, ReLU, 2x2 max pool, fc)."""
    def conv(h, w, b):
        n, c, hh, ww = h.shape
        hp = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros((n, w.shape[0], hh, ww))
        for i in range(3):
            for j in range(3):
                out += np.einsum("nchw,tc->nthw", hp[:, :, i:i + hh, j:j + ww], w[:, :, i, j])
        return out + b[None, :, None, None]

    blobs = {l.name: [np.asarray(b, np.float64) for b in l.blobs] for l in net.layers}
    h = np.asarray(x, np.float64)
    for name in ("conv1", "conv2", "conv3"):
        h = np.maximum(conv(h, *blobs[name]), 0)
    n, c, hh, ww = h.shape
    h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5)).reshape(n, -1)
    w, b = blobs["fc1"]
    h = np.maximum(h @ w.T + b, 0)
    w, b = blobs["fc2"]
    return h @ w.T + b


def test_accuracy_in_numpy(digits, split):
    net, _ = digits
    x_train, y_train, x_test, y_test = split
    assert (len(y_train), len(y_test)) == (1297, 500)
    assert x_test.shape == (500, 1, 8, 8) and x_test.max() <= 1.0
    assert sorted(set(y_test.astype(int))) == list(range(10))
    accuracy = np.mean(_numpy_forward(net, x_test).argmax(axis=1) == y_test)
    assert abs(accuracy - META["accuracy"]["top1"]) <= 0.005


def test_accuracy_in_caffe(caffe, recipe, split):
    _, _, x_test, y_test = split
    deploy = (DIGITS / "deploy.prototxt").read_text()
    weights = (DIGITS / "digits.caffemodel").read_bytes()
    prob = caffe.forward(deploy, weights, {"data": x_test})["prob"]
    assert prob.shape == (500, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)
    accuracy = float(np.mean(prob.argmax(axis=1) == y_test))
    assert abs(accuracy - META["accuracy"]["top1"]) <= 0.005
    assert recipe.evaluate(caffe, deploy, weights, x_test, y_test) == accuracy


# --------------------------------------------------------------------------------------------
# The LMDBs finetune reads (train.py --export-lmdb)

def test_export_lmdb_command(recipe, split, tmp_path, capsys):
    try:
        import lmdb
    except ImportError:
        if in_ci():
            pytest.fail("CI must test the LMDB export, but lmdb is not installed", pytrace=False)
        pytest.skip("needs lmdb (pip install '.[test]')")
    from caffe_tucker.io.caffe_pb2 import Datum

    out = tmp_path / "data" / "digits"
    assert recipe.main(["--export-lmdb", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(out / "train_lmdb"), str(out / "test_lmdb")]
    x_train, y_train, x_test, y_test = split
    for path, x, y in ((out / "train_lmdb", x_train, y_train), (out / "test_lmdb", x_test, y_test)):
        env = lmdb.open(str(path), readonly=True, lock=False)
        try:
            with env.begin() as txn:
                assert txn.stat()["entries"] == len(y)
                datum = Datum.FromString(txn.get(b"00000003"))
        finally:
            env.close()
        assert (datum.channels, datum.height, datum.width, datum.label) == (1, 8, 8, int(y[3]))
        pixels = np.frombuffer(datum.data, np.uint8).reshape(1, 8, 8)
        np.testing.assert_array_equal(pixels * np.float32(1 / 16), x[3])
    assert sorted(p.name for p in out.iterdir()) == ["test_lmdb", "train_lmdb"]  # no leftovers

    before = (out / "train_lmdb" / "data.mdb").stat().st_mtime_ns
    assert recipe.main(["--export-lmdb", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"train.py: error: {out / 'train_lmdb'}: already exists; hint: pass --force " \
                  "to replace the LMDBs"
    assert (out / "train_lmdb" / "data.mdb").stat().st_mtime_ns == before
    assert recipe.main(["--export-lmdb", str(out), "--force"]) == 0
    assert capsys.readouterr().out.splitlines() == printed
