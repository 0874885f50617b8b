"""verify and bench under OpenCV's DNN module (--runtime opencv), and the choice of runtime.

The OpenCV tests need no Caffe and always run (opencv-python-headless is a dependency);
the agreement tests run the same verify under real Caffe and under OpenCV and compare what they
report (they need a Caffe runtime, as the integration tests do).
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from caffe_tucker.caffe.opencv_runtime import OpenCVRuntime, OpenCVUnavailable
from caffe_tucker.caffe.pycaffe import ENV_VAR, CaffeRuntime, CaffeRuntimeUnavailable
from caffe_tucker.caffe.runtimes import choose_runtime
from caffe_tucker.model import load_model
from conftest import ZOO
from fake_runtime import FakeRuntime

DIGITS = ZOO / "digits"
BLOBS = ["conv1", "conv2", "conv3", "pool3", "fc1", "fc2", "prob"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """digits copied to tmp and converted with its preset (conv1-3 Tucker, fc1 SVD)."""
    from caffe_tucker.cli.main import main

    tmp = tmp_path_factory.mktemp("digits")
    shutil.copy(DIGITS / "deploy.prototxt", tmp / "digits.prototxt")
    shutil.copy(DIGITS / "digits.caffemodel", tmp / "digits.caffemodel")
    assert main(["convert", str(tmp / "digits.prototxt"), "-o", str(tmp / "out"), "--no-plot"]) == 0
    return tmp / "out"


@pytest.fixture
def no_caffe(monkeypatch):
    """No Caffe configured: auto picks OpenCV."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def digits():
    return load_model(DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel")


def _inputs(n=4):
    return {"data": np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32)}


def _rel(a, b) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------------------------
# OpenCV alone (no Caffe needed)

def test_forward_reads_caffe_blobs_in_place_layers_included(digits):
    """Caffe's blob conv1 holds relu1's output (ReLU in place): OpenCV must give the same, for
    every blob asked for, against the numpy stand-in (itself checked against Caffe to 1e-6)."""
    with OpenCVRuntime() as cv:
        hello = cv.hello()
        got = cv.forward(digits.net, None, _inputs(), blobs=BLOBS + ["data"])
        default = cv.forward(digits.net, None, _inputs())
    assert hello["runtime"] == "opencv" and hello["version"].startswith("4.")
    assert list(got) == BLOBS + ["data"] and list(default) == ["prob"]
    assert got["conv1"].min() == 0.0  # after the in-place ReLU, as in Caffe
    ref = FakeRuntime().forward(digits.net, None, _inputs(), blobs=BLOBS)
    for name in BLOBS:
        assert got[name].shape == ref[name].shape and got[name].dtype == np.float32
        assert _rel(got[name], ref[name]) < 1e-5, name
    assert np.array_equal(got["data"], _inputs()["data"])
    np.testing.assert_array_equal(default["prob"], got["prob"])


def test_renamed_layers_are_matched_by_position(converted):
    """OpenCV's importer renames conv1_tk2 (top conv1) to conv1: blobs and layer times must
    still be Caffe's."""
    model = load_model(converted / "deploy.prototxt", converted / "weights.caffemodel")
    blobs = ["conv1_tk1", "conv1", "conv2_tk2", "conv2", "fc1_tk1", "prob"]
    with OpenCVRuntime() as cv:
        got = cv.forward(model.net, None, _inputs(), blobs=blobs)
        t = cv.time(model.net, batch=4, iterations=3, warmup=1)
    ref = FakeRuntime().forward(model.net, None, _inputs(), blobs=blobs)
    for name in blobs:
        assert _rel(got[name], ref[name]) < 1e-5, name
    assert got["conv1"].min() == 0.0 and got["conv1_tk1"].min() < 0
    rows = {r["name"]: r for r in t["layers"]}
    assert list(rows) == [l.name for l in model.net.layers if l.type != "Input"]
    assert all(r["ms"] > 0 for r in rows.values() if r["type"] in ("Convolution", "InnerProduct"))


def test_forward_refuses_an_unknown_blob_in_one_line(digits):
    from caffe_tucker.caffe.pycaffe import CaffeRuntimeError

    with OpenCVRuntime() as cv, pytest.raises(CaffeRuntimeError, match="no blob named 'nope'"):
        cv.forward(digits.net, None, _inputs(), blobs=["nope"])


def test_verify_under_opencv_passes(cli, converted, no_caffe):
    code, out, err = cli("verify", converted, "--random", "4", "--format", "json")
    assert code == 0, err
    assert err.strip().startswith("runtime: opencv 4.") and "(no Caffe configured)" in err
    result = json.loads(out)
    assert result["runtime"]["name"] == "opencv"
    assert result["verdict"] == "passed"
    assert set(result["compressed_layers"]) == {"conv1", "conv2", "conv3", "fc1"}
    (decomposition,) = result["decomposition"]
    assert decomposition["max_rel"] < 1e-5
    (prob,) = result["approximation"]
    assert 0 < prob["max_rel"] < 1 and prob["top5_agreement"] is not None
    code, out, err = cli("verify", converted, "--runtime", "opencv", "--random", "2")
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED: "), err
    assert err == ""  # an explicit choice is not announced


def test_bench_under_opencv_gives_per_layer_rows(cli, converted, no_caffe):
    code, out, err = cli("bench", converted, "--runtime", "opencv", "--threads", "1",
                         "--iterations", "3", "--repeats", "1", "--batch", "1,4",
                         "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"1", "4"}
    result = data["4"]
    env = result["environment"]
    assert (env["runtime"], env["threads"], env["threads_requested"], env["batch"]) == \
        ("opencv", 1, 1, 4)
    rows = {r["name"]: r for r in result["layers"]}
    assert list(rows) == ["conv1", "relu1", "conv2", "relu2", "conv3", "relu3", "pool3", "fc1",
                          "relu4", "fc2", "prob"]
    parts = {"conv1": 2, "conv2": 3, "conv3": 3, "fc1": 2}
    for name, n in parts.items():
        assert rows[name]["method"] and len(rows[name]["parts_ms"]) == n, rows[name]
        assert rows[name]["compressed_ms"] == pytest.approx(sum(rows[name]["parts_ms"]))
    assert rows["conv3"]["original_ms"] > 0 and rows["conv3"]["compressed_ms"] > 0
    assert result["total"]["original_ms"] > 0 and result["total"]["ceiling"] >= 1
    code, out, err = cli("bench", converted, "--iterations", "1", "--repeats", "1")
    assert code == 0, err
    assert "runtime: opencv" in err
    assert "(OpenCV CPU," in out and "OpenCV 4." in out and "ceiling x" in out
    assert (converted / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_time_lists_every_layer_of_the_caffe_net(digits):
    with OpenCVRuntime() as cv:
        t = cv.time(digits.net, batch=2, iterations=2, warmup=1, threads=1)
    assert [r["name"] for r in t["layers"]] == [l.name for l in digits.net.layers][1:]
    assert t["forward_ms"] > 0 and t["input_shapes"] == {"data": [2, 1, 8, 8]}
    assert t["blas"]["threads"] == 1 and t["runtime"] == "opencv"


# --------------------------------------------------------------------------------------------
# The choice

def test_auto_picks_caffe_when_configured_and_opencv_when_not(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "chroot /opt/caffe-root python3")
    runtime, why = choose_runtime("auto")
    assert isinstance(runtime, CaffeRuntime) and why == f"{ENV_VAR} set"
    monkeypatch.delenv(ENV_VAR)
    runtime, why = choose_runtime("auto", "some-python")
    assert isinstance(runtime, CaffeRuntime) and why == "--caffe-python given"
    runtime, why = choose_runtime("auto")
    assert isinstance(runtime, OpenCVRuntime) and why == "no Caffe configured"
    runtime, why = choose_runtime("opencv", "some-python")
    assert isinstance(runtime, OpenCVRuntime) and why is None
    with pytest.raises(CaffeRuntimeUnavailable, match="no Caffe runtime"):
        choose_runtime("caffe")


def test_without_cv2_auto_gives_both_hints_and_opencv_the_install_hint(cli, converted, no_caffe,
                                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(CaffeRuntimeUnavailable) as exc:
        choose_runtime("auto")
    message = str(exc.value)
    assert "CAFFE_TUCKER_PYTHON" in message and "opencv-python-headless" in message
    for argv, words in [(["verify", converted], "no runtime to run the nets"),
                        (["verify", converted, "--runtime", "opencv"], "opencv-python-headless"),
                        (["bench", converted, "--runtime", "opencv"], "opencv-python-headless")]:
        code, _, err = cli(*argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and words in err, err
    with pytest.raises(OpenCVUnavailable):
        OpenCVRuntime().start()


# --------------------------------------------------------------------------------------------
# OpenCV against real Caffe (needs a Caffe runtime)

def test_opencv_forward_agrees_with_caffe_on_every_blob(caffe, digits):
    ref = caffe.forward(digits.net, None, _inputs(8), blobs=BLOBS)
    with OpenCVRuntime() as cv:
        got = cv.forward(digits.net, None, _inputs(8), blobs=BLOBS)
    for name in BLOBS:
        assert _rel(got[name], ref[name]) < 1e-5, name


def test_verify_agrees_under_caffe_and_opencv(cli, caffe_command, converted):
    reports = {}
    for runtime in ("caffe", "opencv"):
        code, out, err = cli("verify", converted, "--random", "8", "--runtime", runtime,
                             "--caffe-python", caffe_command, "--format", "json")
        assert code == 0, err
        reports[runtime] = json.loads(out)
    caffe, opencv = reports["caffe"], reports["opencv"]
    assert (caffe["runtime"]["name"], opencv["runtime"]["name"]) == ("caffe", "opencv")
    assert caffe["verdict"] == opencv["verdict"] == "passed"
    assert caffe["compressed_layers"] == opencv["compressed_layers"]
    for a, b in zip(caffe["approximation"], opencv["approximation"]):
        assert a["blob"] == b["blob"] and a["shape"] == b["shape"]
        assert a["max_rel"] == pytest.approx(b["max_rel"], rel=1e-4)
        assert a["max_abs"] == pytest.approx(b["max_abs"], rel=1e-4)
        assert (a["top1_agreement"], a["top5_agreement"]) == \
            (b["top1_agreement"], b["top5_agreement"])
    for a, b in zip(caffe["decomposition"], opencv["decomposition"]):
        assert a["max_rel"] < 1e-5 and b["max_rel"] < 1e-5
