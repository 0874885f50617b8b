"""The command line: info formats, init, fetch, and one-line errors with exit status 1."""

import csv
import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from caffe_tucker import load
from conftest import ROOT, ZOO, write

ALEXNET = ZOO / "alexnet" / "deploy.prototxt"


def test_info_json_contract(cli):
    code, out, err = cli("info", ALEXNET, "--format", "json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["input"] == {"data": [1, 3, 227, 227]}
    conv1 = next(l for l in data["layers"] if l["name"] == "conv1")
    expected = {"name": "conv1", "type": "Convolution", "bottom": ["data"], "top": ["conv1"],
                "in_channels": 3, "out_channels": 96, "kernel": [11, 11], "stride": [4, 4],
                "pad": [0, 0], "dilation": [1, 1], "group": 1, "output_shape": [1, 96, 55, 55],
                "weights": 34848, "flops": 105415200}
    assert {k: conv1[k] for k in expected} == expected
    assert conv1["bias"] == 96
    relu = next(l for l in data["layers"] if l["name"] == "relu1")
    assert relu["weights"] == 0 and relu["flops"] == 0
    assert data["total"]["weights"] == sum(l["weights"] for l in data["layers"])
    assert data["total"]["flops"] == sum(l["flops"] for l in data["layers"])


def test_info_table_markdown_csv(cli):
    code, table, _ = cli("info", ALEXNET)
    assert code == 0
    lines = table.splitlines()
    assert lines[0].startswith("model: AlexNet") and "data 1x3x227x227" in lines[0]
    conv2 = next(l for l in lines if l.startswith("conv2 "))
    assert conv2.split()[:4] == ["conv2", "Convolution", "96", "256"] and "224M" in conv2
    assert lines[-1].split()[0] == "total" and "61.0M" in lines[-1]
    # every data line has its columns aligned under the header
    assert len({len(l) for l in lines[1:3]}) == 1

    code, md, _ = cli("info", ALEXNET, "--format", "markdown")
    assert md.splitlines()[0].startswith("| layer | type |")
    assert md.splitlines()[1].startswith("|---|---|")
    assert any(l.startswith("| fc6 | InnerProduct | 256 | 4096 | 6x6 |") for l in md.splitlines())

    code, text, _ = cli("info", ALEXNET, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    fc6 = next(r for r in rows if r["name"] == "fc6")
    assert fc6["weights"] == str(256 * 6 * 6 * 4096) and fc6["kernel"] == "6x6"
    assert rows[-1]["name"] == "total"


def test_info_reads_the_real_models_with_weights(cli, shared_models):
    cases = [
        ("lenet_mnist_v1format/lenet.prototxt", "lenet_mnist_v1format/lenet_iter_10000.caffemodel", []),
        ("cifar10_quick/cifar10_quick.prototxt", "cifar10_quick/cifar10_quick_iter_5000.caffemodel", []),
        ("resnet20_cifar10/res20_cifar_train_test.prototxt",
         "resnet20_cifar10/cifar10_res20_iter_64000.caffemodel", ["--input-shape", "Data1=1,3,32,32"]),
    ]
    for proto, weights, extra in cases:
        code, out, err = cli("info", shared_models / proto, "--weights", shared_models / weights,
                             "--format", "json", *extra)
        assert code == 0, err
        data = json.loads(out)
        net, _ = load(shared_models / proto, shared_models / weights,
                      input_shapes={None: (1, 3, 32, 32)} if extra else None)
        learnable = sum(b.size for l in net.layers if l.type != "BatchNorm" for b in l.blobs)
        assert data["total"]["weights"] + data["total"]["bias"] == learnable
        assert data["total"]["weights"] > 0


def test_resnet_layers(cli, shared_models):
    d = shared_models / "resnet20_cifar10"
    code, out, _ = cli("info", d / "res20_cifar_train_test.prototxt", "--weights",
                       d / "cifar10_res20_iter_64000.caffemodel", "--input-shape", "1,3,32,32",
                       "--format", "json")
    data = json.loads(out)
    types = {l["type"] for l in data["layers"]}
    assert {"BatchNorm", "Scale", "Eltwise", "Convolution", "InnerProduct"} <= types
    convs = [l for l in data["layers"] if l["type"] == "Convolution"]
    assert len(convs) == 19 + 2  # 19 3x3 convs + 2 1x1 projection shortcuts
    assert data["layers"][-1]["type"] == "Accuracy"
    last_pool = [l for l in data["layers"] if l["type"] == "Pooling"][-1]
    assert last_pool["output_shape"] == [1, 64, 1, 1]


def test_init_is_deterministic_and_loads(cli, tmp_path):
    a, b, c = tmp_path / "a.caffemodel", tmp_path / "b.caffemodel", tmp_path / "c.caffemodel"
    assert cli("init", ALEXNET, "-o", a, "--seed", "0")[0] == 0
    assert cli("init", ALEXNET, "-o", b, "--seed", "0")[0] == 0
    assert cli("init", ALEXNET, "-o", c, "--seed", "1")[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    net, _ = load(ALEXNET, a)
    w = net.layer("conv1").blobs[0]
    # Xavier (no filler declared): uniform in +-sqrt(3 / fan_in), fan_in = 3*11*11.
    bound = np.sqrt(3.0 / (3 * 11 * 11))
    assert w.shape == (96, 3, 11, 11) and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.all(net.layer("conv1").blobs[1] == 0)
    code, _, err = cli("init", ALEXNET, "-o", a)
    assert code == 1 and "already exists" in err and "--force" in err


def test_init_uses_declared_fillers(cli, tmp_path):
    proto = write(tmp_path / "f.prototxt", """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 64
  kernel_size: 3 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.5 } } }
""")
    out = tmp_path / "f.caffemodel"
    assert cli("init", proto, "-o", out, "--seed", "7")[0] == 0
    net, _ = load(proto, out)
    w, bias = net.layer("c").blobs
    assert abs(float(w.std()) - 0.01) < 0.001 and abs(float(w.mean())) < 0.001
    assert np.all(bias == 0.5)


def test_fetch_verifies_sha1(cli, tmp_path, monkeypatch, zoo_meta):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"not really alexnet" * 1000)
    digest = hashlib.sha1(payload.read_bytes()).hexdigest()
    zoo = tmp_path / "zoo"
    (zoo / "alexnet").mkdir(parents=True)
    meta = zoo_meta("alexnet")
    meta["weights"]["sha1"] = digest
    (zoo / "alexnet" / "model.json").write_text(json.dumps(meta))
    monkeypatch.setenv("CAFFE_TUCKER_ZOO", str(zoo))
    monkeypatch.setenv("CAFFE_TUCKER_CACHE", str(tmp_path / "cache"))
    code, out, err = cli("fetch", "alexnet", "--url", payload.as_uri())
    assert code == 0, err
    saved = tmp_path / "cache" / "alexnet" / "bvlc_alexnet.caffemodel"
    assert out.strip() == str(saved) and saved.read_bytes() == payload.read_bytes()
    # Already there with the right checksum: kept, no download needed.
    assert cli("fetch", "alexnet", "--url", (tmp_path / "missing").as_uri())[0] == 0
    # A download with another checksum is refused and nothing is left behind.
    other = tmp_path / "other.bin"
    other.write_bytes(b"something else")
    code, _, err = cli("fetch", "alexnet", "--url", other.as_uri(), "-o", tmp_path / "x.caffemodel")
    assert code == 1 and "differs from the published" in err
    assert not (tmp_path / "x.caffemodel").exists()
    assert not list(tmp_path.glob(".x.caffemodel.*"))
    # An existing file with a wrong checksum is not replaced without --force.
    saved.write_bytes(b"corrupt")
    code, _, err = cli("fetch", "alexnet", "--url", payload.as_uri())
    assert code == 1 and "--force" in err and saved.read_bytes() == b"corrupt"
    assert cli("fetch", "alexnet", "--url", payload.as_uri(), "--force")[0] == 0
    assert saved.read_bytes() == payload.read_bytes()
    code, _, err = cli("fetch", "lenet")
    assert code == 1 and "unknown zoo model 'lenet'" in err


@pytest.mark.parametrize("args, pattern", [
    (["info", "missing.prototxt"], "missing.prototxt: no such prototxt"),
    (["info", str(ALEXNET), "--weights", "missing.caffemodel"], "no such .caffemodel"),
    (["info", str(ALEXNET), "--format", "yaml"], "invalid choice: 'yaml'"),
    (["info", str(ALEXNET), "--input-shape", "1,3"], None),
    (["frobnicate"], "invalid choice"),
])
def test_errors_are_one_line_exit_1(cli, args, pattern):
    code, out, err = cli(*args) if args[0] != "frobnicate" else _run_parser(args)
    if pattern is None:  # an input shape the net can't take
        assert code == 1 and "error:" in err
        return
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and pattern in err
    assert "Traceback" not in err


def _run_parser(args):
    proc = subprocess.run([sys.executable, "-m", "caffe_tucker", *args], capture_output=True,
                          text=True, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


def test_error_from_a_real_process_and_debug(tmp_path, shared_models):
    weights = shared_models / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel"
    lenet = shared_models / "lenet_mnist_v1format" / "lenet.prototxt"
    code, out, err = _run_parser(["info", str(lenet), "--weights", str(weights)])
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "layer 'conv1'" in err and "[32, 3, 5, 5]" in err and "[20, 1, 5, 5]" in err
    code, _, err = _run_parser(["--debug", "info", str(lenet), "--weights", str(weights)])
    assert code == 1 and "Traceback" in err


def test_unknown_layer_prints_what_it_can(cli, tmp_path):
    proto = write(tmp_path / "u.prototxt", """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "w" type: "WeirdOp" bottom: "c" top: "w" }
""")
    code, out, err = cli("info", proto)
    assert code == 0
    assert "layer 'w'" in err and "'WeirdOp'" in err
    assert any(l.startswith("c ") and "Convolution" in l for l in out.splitlines())


def test_an_incomplete_matplotlib_font_cache_adds_nothing_to_stderr(tmp_path):
    """A font cache that lists only some fonts (one left by an interrupted rebuild) makes
    matplotlib log "findfont: ... not found" for every mathtext font; convert, which draws
    ranks.png, must still print nothing on stderr."""
    import os

    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    # importing the font manager writes the cache into $MPLCONFIGDIR
    subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, check=True,
                   capture_output=True)
    caches = list((tmp_path / "mpl").glob("fontlist-*.json"))
    assert len(caches) == 1
    data = json.loads(caches[0].read_text())
    data["ttflist"] = [f for f in data["ttflist"] if f["name"].startswith("DejaVu")]
    caches[0].write_text(json.dumps(data))
    net = tmp_path / "net"
    net.mkdir()
    (net / "net.prototxt").write_text((ZOO / "digits" / "deploy.prototxt").read_text())
    (net / "net.caffemodel").write_bytes((ZOO / "digits" / "digits.caffemodel").read_bytes())
    proc = subprocess.run([sys.executable, "-m", "caffe_tucker", "convert",
                           str(net / "net.prototxt"), "-o", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "ranks.png").is_file()
    assert "findfont" not in proc.stderr and proc.stderr.strip() == "", proc.stderr
