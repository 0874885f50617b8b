"""The Caffe runtime: the worker protocol, and real BVLC Caffe 1.0 driven as a subprocess.

Tests marked by the ``caffe`` fixtures run against real Caffe, found through
``$CAFFE_TUCKER_PYTHON`` (e.g. ``chroot /opt/caffe-root python3`` after
``sudo docker/caffe-rootfs.sh /opt/caffe-root``).  Under ``CI=true`` a missing runtime fails
those tests; elsewhere they are skipped with a line that says how to get one.
"""

from __future__ import annotations

import ast
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest


from caffe_tucker import read_prototxt
from caffe_tucker.caffe import worker as caffe_worker
from caffe_tucker.io.emit import caffemodel_chunks
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.caffe.process import caffe_reason
from caffe_tucker.caffe.pycaffe import (ENV_VAR, NO_RUNTIME, CaffeRuntime, CaffeRuntimeError,
                                  CaffeRuntimeUnavailable, resolve_command, runtime_available)

# --------------------------------------------------------------------------------------------
# Nets and a numpy reference

def _net(tmp_path: Path, text: str, seed: int = 0):
    """The Net of ``text`` with weights drawn from its fillers, and its caffemodel bytes."""
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = init_weights(read_prototxt(path), seed=seed)
    return net, b"".join(bytes(c) for c in caffemodel_chunks(net))


def _input(n, c, h, w):
    return (f'layer {{ name: "data" type: "Input" top: "data" '
            f'input_param {{ shape {{ dim: {n} dim: {c} dim: {h} dim: {w} }} }} }}\n')


TINY = _input(2, 3, 9, 9) + """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3
                            weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 5
                              weight_filler { type: "gaussian" std: 0.1 }
                              bias_filler { type: "uniform" min: -1 max: 1 } } }
"""


def conv_ref(x, w, b, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Caffe's convolution (cross-correlation) in float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    t, cg, kh, kw = w.shape
    assert c == cg * group and t % group == 0
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, t, ho, wo))
    tg = t // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation[0], j * dilation[1]
                patch = xs[:, :, r0:r0 + stride[0] * (ho - 1) + 1:stride[0],
                           c0:c0 + stride[1] * (wo - 1) + 1:stride[1]]
                out[:, g * tg:(g + 1) * tg] += np.einsum("nchw,tc->nthw", patch,
                                                         w[g * tg:(g + 1) * tg, :, i, j])
    return out + np.asarray(b, np.float64)[None, :, None, None]


def assert_close(got, want, rtol=1e-5):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(np.abs(want).max(), 1e-12)
    err = np.abs(got - want).max() / scale
    assert err < rtol, f"max relative error {err:.3g} >= {rtol}"


# --------------------------------------------------------------------------------------------
# The protocol and the parts that need no Caffe

def test_frames_round_trip_arrays_bytes_and_json():
    msg = {"type": "forward", "n": 3, "s": "ünï", "none": None, "flags": [True, 1.5],
           "inputs": {"a": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                      "b": np.zeros((0, 5), np.float32),
                      "c": np.arange(6, dtype=">f8").reshape(3, 2)[:, ::-1]},
           "raw": b"\x00\x01caffemodel", "empty": b""}
    buf = io.BytesIO()
    caffe_worker.write_message(buf, msg)
    caffe_worker.write_message(buf, {"type": "quit"})
    buf.seek(0)
    got = caffe_worker.read_message(buf)
    assert caffe_worker.read_message(buf) == {"type": "quit"}
    assert caffe_worker.read_message(buf) is None
    for name, arr in msg["inputs"].items():
        assert got["inputs"][name].shape == arr.shape
        np.testing.assert_array_equal(got["inputs"][name], arr)
    assert got["inputs"]["a"].flags.writeable
    assert got["raw"] == msg["raw"] and got["empty"] == b""
    assert {k: got[k] for k in ("type", "n", "s", "none", "flags")} == \
        {k: msg[k] for k in ("type", "n", "s", "none", "flags")}


def test_frames_reject_foreign_output_and_truncation():
    with pytest.raises(caffe_worker.ProtocolError):
        caffe_worker.read_message(io.BytesIO(b"Welcome to conda!\n" * 3))
    buf = io.BytesIO()
    caffe_worker.write_message(buf, {"x": np.ones(100, np.float32)})
    with pytest.raises(EOFError):
        caffe_worker.read_message(io.BytesIO(buf.getvalue()[:-10]))


def test_worker_is_standalone():
    """The worker runs in another interpreter: no caffe_tucker imports, nothing past 3.6."""
    source = Path(caffe_worker.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("caffe_tucker")
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("caffe_tucker") for a in node.names)
        assert not isinstance(node, (ast.JoinedStr, ast.NamedExpr)), "keep the worker 3.6-safe"
    assert "\n" not in caffe_worker.BOOTSTRAP and "\"" not in caffe_worker.BOOTSTRAP


def test_no_runtime_configured(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(CaffeRuntimeUnavailable) as exc:
        CaffeRuntime()
    assert str(exc.value) == NO_RUNTIME
    assert isinstance(exc.value, CaffeTuckerError)
    assert runtime_available() == NO_RUNTIME


def test_command_is_split_like_a_shell(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "chroot '/opt/caffe root' python3")
    assert resolve_command() == ["chroot", "/opt/caffe root", "python3"]
    assert resolve_command(["docker", "run", "--rm", "-i", "img", "python3"])[-1] == "python3"


def test_nonexistent_command_is_one_line_naming_it():
    with pytest.raises(CaffeRuntimeUnavailable) as exc:
        CaffeRuntime("no-such-caffe-python3 -u").hello()
    msg = str(exc.value)
    assert "\n" not in msg and "no-such-caffe-python3" in msg and ENV_VAR in msg


def test_python_without_caffe_is_one_line_mentioning_caffe():
    with pytest.raises(CaffeRuntimeUnavailable) as exc:
        with CaffeRuntime([sys.executable]) as runtime:
            runtime.hello()
    msg = str(exc.value)
    assert "\n" not in msg and "cannot import caffe" in msg and "No module named 'caffe'" in msg
    assert sys.executable in msg
    assert runtime_available([sys.executable]) is not None


def test_command_that_is_not_python():
    with pytest.raises(CaffeRuntimeError) as exc:
        CaffeRuntime("echo hello").hello()
    assert "worker protocol" in str(exc.value) and "hello" in str(exc.value)
    with pytest.raises(CaffeRuntimeError) as exc:
        CaffeRuntime([sys.executable, "-c", "import sys; sys.exit('boom: no interpreter here')"]
                     ).hello()
    assert "died while starting" in str(exc.value) and "boom: no interpreter here" in str(exc.value)


def test_start_timeout_kills_the_worker():
    runtime = CaffeRuntime([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(CaffeRuntimeError) as exc:
        runtime.hello()
    assert time.monotonic() - t0 < 10
    assert "did not start within 0.5 s" in str(exc.value) and sys.executable in str(exc.value)
    assert not runtime.alive


def test_caffe_reason_picks_glog_and_protobuf_lines():
    lines = ["WARNING: Logging before InitGoogleLogging() is written to STDERR",
             "[libprotobuf ERROR google/protobuf/text_format.cc:309] Error parsing text-format "
             "caffe.NetParameter: 3:5: Message type \"caffe.LayerParameter\" has no field named "
             "\"foo\".",
             "F0101 12:00:00.123456  4242 upgrade_proto.cpp:90] Check failed: "
             "ReadProtoFromTextFile(param_file, param) Failed to parse NetParameter file: x",
             "*** Check failure stack trace: ***", "    @     0x7f0c0ffee  (unknown)", "Aborted"]
    reason = caffe_reason(lines)
    assert reason.startswith("Error parsing text-format caffe.NetParameter: 3:5")
    assert "Check failed: ReadProtoFromTextFile" in reason and "@" not in reason
    assert caffe_reason(["Traceback (most recent call last):", '  File "x", line 1',
                         "ValueError: bad"]) == "ValueError: bad"
    assert caffe_reason([]) == "it printed nothing on stderr"


# --------------------------------------------------------------------------------------------
# Real Caffe

def test_hello(caffe):
    info = caffe.hello()
    assert info["caffe_version"].startswith("1.0")
    assert tuple(int(p) for p in info["python_version"].split(".")[:2]) >= (3, 6)
    assert info["numpy_version"]
    assert {"Convolution", "InnerProduct", "ReLU", "Input"} <= set(info["layer_types"])


def test_hello_reports_openblas_and_time_pins_its_threads(caffe, tmp_path):
    """Debian's Caffe computes with OpenBLAS: hello names it, its core type and threads, and a
    time request with threads=1 runs with one thread (and says so)."""
    blas = caffe.hello()["blas"]
    assert "blas" in blas["library"] and blas["config"].startswith("OpenBLAS")
    assert isinstance(blas["corename"], str) and blas["corename"]
    assert isinstance(blas["threads"], int) and blas["threads"] >= 1
    before = blas["threads"]
    _, weights = _net(tmp_path, TINY)
    try:
        timing = caffe.time(TINY, weights, batch=1, iterations=1, warmup=0, threads=1)
        assert timing["blas"]["threads"] == 1
        assert caffe.hello()["blas"]["threads"] == 1        # stays set for later requests
        assert caffe.time(TINY, weights, iterations=1, warmup=0)["blas"]["threads"] == 1
    finally:
        caffe.time(TINY, weights, iterations=1, warmup=0, threads=before)


def test_blas_info_without_openblas_is_none_and_threads_are_checked(monkeypatch):
    monkeypatch.setattr(caffe_worker, "_openblas_handles", lambda: [])
    assert caffe_worker.blas_info(2) == dict.fromkeys(("library", "threads", "corename", "config"))
    runtime = CaffeRuntime([sys.executable, "-c", "raise SystemExit(3)"])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="'threads' parameter of CaffeRuntime.time"):
            runtime.time(TINY, threads=bad)
    assert not runtime.alive


def test_forward_matches_numpy(caffe, tmp_path):
    net, weights = _net(tmp_path, TINY)
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    out = caffe.forward(TINY, weights, {"data": x}, blobs=["conv", "fc"])
    assert list(out) == ["conv", "fc"]
    wc, bc = net.layer("conv").blobs
    wf, bf = net.layer("fc").blobs
    conv = np.maximum(conv_ref(x, wc, bc), 0)
    assert_close(out["conv"], conv)
    assert_close(out["fc"], conv.reshape(2, -1) @ np.asarray(wf, np.float64).T + bf)
    # default blobs are the net's outputs; a Net object carries its own weights; another
    # batch size reshapes the input
    x3 = np.random.default_rng(2).standard_normal((3, 3, 9, 9)).astype(np.float32)
    out3 = caffe.forward(net, None, {"data": x3})
    assert list(out3) == ["fc"] and out3["fc"].shape == (3, 5)
    conv3 = np.maximum(conv_ref(x3, wc, bc), 0).reshape(3, -1)
    assert_close(out3["fc"], conv3 @ np.asarray(wf, np.float64).T + bf)


CONVS = {
    "strided_padded": ("num_output: 6 kernel_size: 3 stride: 2 pad: 1", 4,
                       dict(stride=(2, 2), pad=(1, 1))),
    "grouped": ("num_output: 6 kernel_size: 3 group: 2", 4, dict(group=2)),
    "dilated": ("num_output: 5 kernel_size: 3 dilation: 2 pad: 2", 3,
                dict(pad=(2, 2), dilation=(2, 2))),
    "depthwise_rect": ("num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 pad_h: 1 "
                       "group: 4", 4, dict(stride=(1, 2), pad=(1, 0), group=4)),
    "all": ("num_output: 8 kernel_size: 3 stride: 2 pad: 2 dilation: 2 group: 4", 4,
            dict(stride=(2, 2), pad=(2, 2), dilation=(2, 2), group=4)),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_forward_conv_variants_match_numpy(caffe, tmp_path, name):
    param, channels, kw = CONVS[name]
    text = _input(2, channels, 11, 10) + f"""
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ {param} weight_filler {{ type: "gaussian" std: 0.3 }}
                            bias_filler {{ type: "uniform" min: -1 max: 1 }} }} }}
"""
    net, weights = _net(tmp_path, text, seed=3)
    x = np.random.default_rng(4).standard_normal((2, channels, 11, 10)).astype(np.float32)
    out = caffe.forward(text, weights, {"data": x})
    w, b = net.layer("conv").blobs
    assert_close(out["conv"], conv_ref(x, w, b, **kw))


def test_a_net_is_sent_and_loaded_once(caffe, tmp_path):
    _, weights = _net(tmp_path, TINY, seed=5)
    x = np.ones((1, 3, 9, 9), np.float32)
    before = caffe.hello()["nets_loaded"]
    first = caffe.forward(TINY, weights, {"data": x})["fc"]
    again = caffe.forward(TINY, bytes(weights), {"data": 2 * x})["fc"]  # equal bytes, new object
    assert caffe.hello()["nets_loaded"] == before + 1
    assert not np.allclose(first, again)
    _, other = _net(tmp_path, TINY, seed=6)
    changed = caffe.forward(TINY, other, {"data": x})["fc"]
    assert caffe.hello()["nets_loaded"] == before + 2
    assert not np.allclose(first, changed)


def test_time_reports_every_layer(caffe, tmp_path):
    net, weights = _net(tmp_path, TINY)
    result = caffe.time(TINY, weights, batch=3, iterations=3, warmup=1)
    assert [(layer["name"], layer["type"]) for layer in result["layers"]] == [
        ("data", "Input"), ("conv", "Convolution"), ("relu", "ReLU"), ("fc", "InnerProduct")]
    assert all(layer["ms"] > 0 for layer in result["layers"])
    assert result["forward_ms"] > 0 and result["layers_sum_ms"] > 0
    assert result["input_shapes"] == {"data": [3, 3, 9, 9]}
    assert (result["batch"], result["iterations"], result["warmup"]) == (3, 3, 1)
    with pytest.raises(ValueError, match="'iterations' parameter"):
        caffe.time(TINY, weights, iterations=0)


def test_request_errors_keep_the_worker(caffe):
    pid = caffe.hello()["pid"]
    x = np.zeros((1, 3, 9, 9), np.float32)
    with pytest.raises(CaffeRuntimeError, match=r"no blob named 'nope'.*'fc'"):
        caffe.forward(TINY, None, {"data": x}, blobs=["nope"])
    with pytest.raises(CaffeRuntimeError, match=r"'image' is not an input blob.*\['data'\]"):
        caffe.forward(TINY, None, {"image": x})
    with pytest.raises(CaffeRuntimeError, match=r"no array given .*'data'"):
        caffe.forward(TINY, None, {})
    assert caffe.hello()["pid"] == pid


def test_unparsable_prototxt_passes_caffes_message(caffe_command):
    bad = TINY.replace('top: "fc"', 'top: "fc" no_such_field: 3')
    with CaffeRuntime(caffe_command, timeout=60) as runtime:
        with pytest.raises(CaffeRuntimeError) as exc:
            runtime.forward(bad, None, {"data": np.zeros((1, 3, 9, 9), np.float32)})
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith("Caffe aborted during forward")
        assert 'has no field named "no_such_field"' in msg and "Failed to parse NetParameter" in msg
        assert caffe_command in msg
        # the next request starts a new worker
        assert runtime.hello()["caffe_version"].startswith("1.0")


def test_mismatched_input_shape(caffe_command):
    with CaffeRuntime(caffe_command, timeout=60) as runtime:
        with pytest.raises(CaffeRuntimeError) as exc:
            runtime.forward(TINY, None, {"data": np.zeros((1, 2, 9, 9), np.float32)})
    msg = str(exc.value)
    assert "\n" not in msg and "Check failed" in msg and "(2 vs. 3)" in msg


def test_weights_that_do_not_fit(caffe_command, tmp_path):
    _, weights = _net(tmp_path, TINY.replace("num_output: 4", "num_output: 7"))
    with CaffeRuntime(caffe_command, timeout=60) as runtime:
        with pytest.raises(CaffeRuntimeError, match="Check failed|shape mismatch"):
            runtime.forward(TINY, weights, {"data": np.zeros((1, 3, 9, 9), np.float32)})


BIG = _input(1, 16, 96, 96) + "".join(
    f'layer {{ name: "c{i}" type: "Convolution" bottom: "{"data" if i == 0 else f"c{i - 1}"}" '
    f'top: "c{i}" convolution_param {{ num_output: 16 kernel_size: 3 pad: 1 }} }}\n'
    for i in range(6))


def test_worker_killed_during_a_request(caffe_command):
    with CaffeRuntime(caffe_command, timeout=60) as runtime:
        runtime.hello()
        killer = threading.Timer(0.5, os.kill, (runtime.pid, signal.SIGKILL))
        killer.start()
        try:
            with pytest.raises(CaffeRuntimeError) as exc:
                runtime.time(BIG, None, batch=4, iterations=100000)
        finally:
            killer.cancel()
        msg = str(exc.value)
        assert "\n" not in msg and "died during time (killed by SIGKILL)" in msg
        assert caffe_command in msg
        assert runtime.hello()["caffe_version"]  # restarted


def test_timeout_kills_the_worker(caffe_command):
    with CaffeRuntime(caffe_command, timeout=60) as runtime:
        pid = runtime.hello()["pid"]
        runtime.timeout = 0.5
        t0 = time.monotonic()
        with pytest.raises(CaffeRuntimeError) as exc:
            runtime.time(BIG, None, batch=4, iterations=100000)
        assert time.monotonic() - t0 < 15
        msg = str(exc.value)
        assert "\n" not in msg and "did not finish time within 0.5 s" in msg
        assert caffe_command in msg
        assert not runtime.alive
        runtime.timeout = 60
        assert runtime.hello()["pid"] != pid


# --------------------------------------------------------------------------------------------
# Training

TRAIN_BODY = """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""
TRAIN_NET = (_input(16, 2, 4, 4)
             + 'layer { name: "label" type: "Input" top: "label" '
               'input_param { shape { dim: 16 } } }' + TRAIN_BODY + """
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" }
""")
TRAIN_DEPLOY = _input(1, 2, 4, 4) + TRAIN_BODY
SOLVER = """type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "step"
gamma: 0.5 stepsize: 20 max_iter: 40 random_seed: 7 test_iter: 5 test_interval: 10
snapshot: 10 net: "ignored.prototxt" """


def _train_data(n=48):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 2, 4, 4)).astype(np.float32)
    y = (x.reshape(n, -1) @ rng.standard_normal((32, 3))).argmax(axis=1).astype(np.float32)
    return x, y


def test_train_lowers_the_loss_and_returns_loadable_weights(caffe, tmp_path):
    import caffe_tucker as ct

    x, y = _train_data()
    result = caffe.train(SOLVER, TRAIN_NET, {"data": x, "label": y}, seed=3)
    assert (result["batch"], result["max_iter"]) == (16, 40)
    np.testing.assert_array_equal(result["iterations"], np.arange(1, 41))
    loss = result["loss"]
    assert loss.shape == (40,) and np.isfinite(loss).all()
    assert loss[-5:].mean() < 0.5 * loss[:5].mean()
    assert set(result["outputs"]) == {"loss", "accuracy"}
    np.testing.assert_allclose(result["outputs"]["loss"], loss, rtol=1e-6)
    assert result["seconds"] > 0
    path = tmp_path / "trained.caffemodel"
    path.write_bytes(result["caffemodel"])
    (tmp_path / "deploy.prototxt").write_text(TRAIN_DEPLOY)
    net, _ = ct.load(tmp_path / "deploy.prototxt", path)
    w, b = net.layer("fc").blobs
    assert w.shape == (3, 128) and b.shape == (3,)
    # the trained weights classify the training set well in Caffe's forward pass
    prob = caffe.forward(TRAIN_DEPLOY, result["caffemodel"], {"data": x})["fc"]
    assert (prob.argmax(axis=1) == y).mean() > 0.8
    # the same seed gives the same weights; another seed other ones
    again = caffe.train(SOLVER, TRAIN_NET, {"data": x, "label": y}, seed=3)
    assert again["caffemodel"] == result["caffemodel"]
    other = caffe.train(SOLVER, TRAIN_NET, {"data": x, "label": y}, seed=4)
    assert other["caffemodel"] != result["caffemodel"]


def test_train_starts_from_given_weights(caffe, tmp_path):
    import caffe_tucker as ct

    x, y = _train_data()
    frozen = SOLVER.replace("base_lr: 0.05", "base_lr: 0").replace("max_iter: 40", "max_iter: 2")
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    start = ct.init_weights(ct.load(tmp_path / "train.prototxt", phase="TRAIN")[0], seed=11)
    result = caffe.train(frozen, start, {"data": x, "label": y})
    path = tmp_path / "out.caffemodel"
    path.write_bytes(result["caffemodel"])
    got, _ = ct.load(tmp_path / "train.prototxt", path, phase="TRAIN")
    for name in ("conv", "fc"):
        for a, b in zip(got.layer(name).blobs, start.layer(name).blobs):
            np.testing.assert_array_equal(a, b)


def test_train_request_errors_keep_the_worker(caffe):
    pid = caffe.hello()["pid"]
    x, y = _train_data()
    with pytest.raises(CaffeRuntimeError, match=r"one array per input blob .*'label'"):
        caffe.train(SOLVER, TRAIN_NET, {"data": x})
    with pytest.raises(CaffeRuntimeError, match="share a first dimension"):
        caffe.train(SOLVER, TRAIN_NET, {"data": x, "label": y[:10]})
    with pytest.raises(CaffeRuntimeError, match="a sample has shape"):
        caffe.train(SOLVER, TRAIN_NET, {"data": x.reshape(48, 1, 8, 4), "label": y})
    with pytest.raises(CaffeRuntimeError, match="iter_size must be 1"):
        caffe.train(SOLVER + " iter_size: 2", TRAIN_NET, {"data": x, "label": y})
    with pytest.raises(CaffeRuntimeError, match="cannot parse the solver"):
        caffe.train(SOLVER + " no_such_field: 1", TRAIN_NET, {"data": x, "label": y})
    with pytest.raises(ValueError, match="'seed' parameter"):
        caffe.train(SOLVER, TRAIN_NET, {"data": x, "label": y}, seed=-1)
    assert caffe.hello()["pid"] == pid
