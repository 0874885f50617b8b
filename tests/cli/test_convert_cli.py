"""convert / ranks on the command line: the output directory, its contract, and bad input."""

import json
import shutil

import numpy as np
import pytest

from caffe_tucker import load
from caffe_tucker.io.caffe_pb2 import SolverParameter
from caffe_tucker.io.read import read_prototxt, read_solver
from conftest import ZOO, write

FILES = {"deploy.prototxt", "weights.caffemodel", "train_val.prototxt", "solver.prototxt",
         "ranks.json", "report.json", "report.md", "ranks.png"}


def test_convert_writes_the_output_directory(cli, cifar):
    code, out, err = cli("convert", cifar)
    assert code == 0, err
    outdir = cifar.parent / "cifar_tucker"
    assert {p.name for p in outdir.iterdir()} == FILES
    report = json.loads((outdir / "report.json").read_text())
    ranks = json.loads((outdir / "ranks.json").read_text())
    rows = {r["name"]: r for r in report["layers"]}
    # VBMF: the convolutions are compressed; the small trained fc layers show no signal above
    # the estimated noise and stay untouched, with the reason given (never clamped to 1).
    assert rows["conv1"]["method"] == "tucker1" and rows["conv2"]["method"] == "tucker2"
    assert set(ranks) == {n for n, r in rows.items() if r["skipped_reason"] is None}
    assert "rank 0" in rows["ip1"]["skipped_reason"] and "ip1" not in ranks
    assert all(r["rel_error"] is None or 0 <= r["rel_error"] < 1 for r in rows.values())
    assert "untouched" in out and "total: weights" in out
    # The numbers in report.json are what `info` says of the emitted deploy.
    code, info_out, _ = cli("info", outdir / "deploy.prototxt", "--weights", outdir / "weights.caffemodel",
                            "--format", "json")
    info = json.loads(info_out)
    by_name = {l["name"]: l for l in info["layers"]}
    assert report["total"]["weights_after"] == info["total"]["weights"]
    assert report["total"]["flops_after"] == info["total"]["flops"]
    for r in report["layers"]:
        if r["skipped_reason"] is None:
            assert r["weights_after"] == sum(by_name[n]["weights"] for n in r["new_layers"])
            assert r["flops_after"] == sum(by_name[n]["flops"] for n in r["new_layers"])
            assert r["weights_after"] < r["weights_before"] and r["flops_after"] < r["flops_before"]
    # Untouched layers and the net's inputs/outputs are unchanged.
    orig, _ = load(cifar, cifar.with_suffix(".caffemodel"))
    new, _ = load(outdir / "deploy.prototxt", outdir / "weights.caffemodel")
    assert new.layer("ip1").spec == orig.layer("ip1").spec
    assert np.array_equal(new.layer("ip1").blobs[0], orig.layer("ip1").blobs[0])
    assert new.layers[0].spec == orig.layers[0].spec and new.layers[-1].spec == orig.layers[-1].spec
    md = (outdir / "report.md").read_text()
    assert "| conv2* (tucker2) |" in md and "(imp.)" in md
    assert (outdir / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convert_is_deterministic_and_ranks_file_round_trips(cli, cifar, tmp_path):
    assert cli("convert", cifar, "-o", tmp_path / "a")[0] == 0
    assert cli("convert", cifar, "-o", tmp_path / "b")[0] == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # ranks --format json prints exactly ranks.json; feeding it back gives the same weights.
    code, out, _ = cli("ranks", cifar, "--format", "json")
    assert out == (tmp_path / "a" / "ranks.json").read_text()
    assert cli("convert", cifar, "--ranks", tmp_path / "a" / "ranks.json", "-o", tmp_path / "c")[0] == 0
    assert (tmp_path / "c" / "weights.caffemodel").read_bytes() == \
        (tmp_path / "a" / "weights.caffemodel").read_bytes()
    code, table, _ = cli("ranks", cifar)
    assert code == 0 and "conv2" in table and "tucker2" in table


def test_rank_methods_and_weaken(cli, cifar):
    def ranks(*extra):
        code, out, err = cli("ranks", cifar, "--format", "json", *extra)
        assert code == 0, err
        return json.loads(out)

    vbmf, weak, strong = ranks(), ranks("--weaken", "0.5"), ranks("--weaken", "2")
    assert weak["conv2"][0] >= vbmf["conv2"][0] >= strong.get("conv2", [0])[0]
    assert ranks("--rank-method", "ratio:0.25")["conv2"] == [8, 8]       # ceil(0.25 * 32)
    e50, e90 = ranks("--rank-method", "energy:0.5"), ranks("--rank-method", "energy:0.9")
    assert e50["conv2"][1] < e90["conv2"][1]


def test_solver_and_train_val(cli, tmp_path):
    """AlexNet preset: the paper's schedule and batch size, and a train_val built from the deploy."""
    alex = tmp_path / "alexnet.prototxt"
    shutil.copy(ZOO / "alexnet" / "deploy.prototxt", alex)
    assert cli("init", alex, "-o", tmp_path / "alexnet.caffemodel")[0] == 0
    ranks = write(tmp_path / "r.json", json.dumps({"conv2": [25, 59], "fc8": 195}))
    code, out, err = cli("convert", alex, "--ranks", ranks, "--train-source", "/data/train_lmdb")
    assert code == 0, err
    outdir = tmp_path / "alexnet_tucker"
    solver = read_solver(outdir / "solver.prototxt")
    per_epoch = -(-1281167 // 128)
    assert (solver.base_lr, solver.lr_policy, solver.gamma) == (pytest.approx(0.001), "step", pytest.approx(0.1))
    assert solver.stepsize == 5 * per_epoch and solver.max_iter == 15 * per_epoch
    assert solver.momentum == pytest.approx(0.9) and solver.weight_decay == pytest.approx(0.0005)
    assert solver.net == "train_val.prototxt" and solver.solver_mode == SolverParameter.CPU
    tv = read_prototxt(outdir / "train_val.prototxt")
    train = tv.for_state("TRAIN")
    data = train.layers[0]
    assert data.type == "Data" and data.spec.data_param.batch_size == 128
    assert data.spec.data_param.source == "/data/train_lmdb"
    assert data.spec.transform_param.crop_size == 227 and data.spec.transform_param.mirror
    assert list(data.spec.transform_param.mean_value) == [104, 117, 123]
    test_names = [l.name for l in tv.for_state("TEST").layers]
    assert "PLACEHOLDER" in tv.for_state("TEST").layers[0].spec.data_param.source
    assert {"conv2_tk1", "conv2_tk2", "conv2_tk3", "fc8_tk1", "fc8_tk2", "loss",
            "accuracy_top1", "accuracy_top5"} <= set(test_names)
    assert "conv2" not in test_names and "prob" not in test_names
    assert "accuracy_top1" not in [l.name for l in train.layers]


def test_train_test_input_is_rewritten_as_train_val(cli, tmp_path, shared_models):
    d = shared_models / "resnet20_cifar10"
    code, out, err = cli("convert", d / "res20_cifar_train_test.prototxt", "--weights",
                         d / "cifar10_res20_iter_64000.caffemodel", "--input-shape", "1,3,32,32",
                         "-o", tmp_path / "res")
    assert code == 0, err
    deploy = read_prototxt(tmp_path / "res" / "deploy.prototxt")
    assert deploy.layers[0].type == "Input" and deploy.layers[-1].type == "InnerProduct"
    assert not any(l.type in ("Data", "SoftmaxWithLoss", "Accuracy") for l in deploy.layers)
    tv = read_prototxt(tmp_path / "res" / "train_val.prototxt")
    assert [l.type for l in tv.layers if l.type == "Data"] == ["Data", "Data"]
    assert any(l.name == "Convolution2_tk2" for l in tv.layers)
    assert not any(l.name == "Convolution2" for l in tv.layers)
    report = json.loads((tmp_path / "res" / "report.json").read_text())
    assert len([r for r in report["layers"] if r["skipped_reason"] is None]) >= 10


def test_v1_lenet_converts(cli, tmp_path, shared_models):
    d = shared_models / "lenet_mnist_v1format"
    code, _, err = cli("convert", d / "lenet.prototxt", "--weights", d / "lenet_iter_10000.caffemodel",
                       "-o", tmp_path / "lenet")
    assert code == 0, err
    text = (tmp_path / "lenet" / "deploy.prototxt").read_text()
    assert "layers {" not in text and 'type: "Input"' in text


@pytest.mark.parametrize("args, pattern", [
    (["--preset", "resnet"], "The 'preset' parameter of convert must be one of auto, alexnet"),
    (["--preset", "alexnet"], "preset 'alexnet' compresses layer 'conv4', which this net does not have"),
    (["--layers", "relu1"], "layer 'relu1' cannot be compressed: a ReLU layer has no kernel"),
    (["--layers", "nope"], "--layers names 'nope'"),
    (["--rank-method", "magic"], "The 'rank-method' parameter of convert must be one of"),
    (["--rank-method", "energy:2"], "'energy:F' with F in (0, 1]"),
    (["--weaken", "0"], "argument --weaken: must be a finite number > 0, got 0"),
    (["--weaken", "inf"], "argument --weaken: must be a finite number > 0, got inf"),
    (["--epochs", "nan"], "argument --epochs: must be a finite number > 0, got nan"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["--method", "=btd"], "must be LAYER=METHOD"),
    (["--method", "conv2"], "The 'method' parameter of convert must be one of tucker2, tucker1, "
     "svd, btd, cp. Got 'conv2'"),
    (["--method", "conv2=tt"], "The 'method' parameter of convert must be one of tucker2, tucker1, svd"),
    (["--blocks", "0"], "argument --blocks: must be an integer >= 1, got 0"),
])
def test_bad_options(cli, cifar, args, pattern):
    code, _, err = cli("convert", cifar, *args)
    assert code == 1 and pattern in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("ranks, pattern", [
    ({"conv9": 3}, "layer 'conv9' is not in the net"),
    ({"conv2": [0, 5]}, "r.json must be an int in [1, 32] for layer 'conv2'. Got 0 instead."),
    ({"conv2": [5, 33]}, "must be an int in [1, 32]"),
    ({"conv2": 5}, "must be a pair [R3, R4] for the tucker2 layer 'conv2'"),
    ({"ip2": [3, 3]}, "must be one integer for the svd layer 'ip2'"),
    ({"pool1": 3}, "cannot be compressed"),
])
def test_bad_ranks_file(cli, cifar, tmp_path, ranks, pattern):
    f = write(tmp_path / "r.json", json.dumps(ranks))
    code, _, err = cli("convert", cifar, "--ranks", f)
    assert code == 1 and pattern in err, err


def test_output_rules(cli, cifar, tmp_path):
    assert cli("convert", cifar, "-o", tmp_path / "out")[0] == 0
    code, _, err = cli("convert", cifar, "-o", tmp_path / "out")
    assert code == 1 and "not empty" in err and "--force" in err
    assert cli("convert", cifar, "-o", tmp_path / "out", "--force")[0] == 0
    # An output directory holding the input: the input is never overwritten.
    deploy = tmp_path / "out" / "deploy.prototxt"
    shutil.copy(tmp_path / "out" / "weights.caffemodel", tmp_path / "out" / "deploy.caffemodel")
    before = deploy.read_bytes()
    code, _, err = cli("convert", deploy, "-o", tmp_path / "out", "--force")
    assert code == 1 and "holds the input" in err
    assert deploy.read_bytes() == before
    # Nor is a ranks file inside the directory to be replaced (refused before any work).
    ranks = tmp_path / "out" / "ranks.json"
    listing = sorted(p.name for p in (tmp_path / "out").iterdir())
    code, _, err = cli("convert", cifar, "--ranks", ranks, "-o", tmp_path / "out", "--force")
    assert code == 1 and "holds the input" in err and str(ranks) in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == listing
    code, _, err = cli("convert", tmp_path / "nothing.prototxt")
    assert code == 1 and "no such prototxt" in err
