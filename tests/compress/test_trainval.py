"""convert --train-val: the user's train_val must be the deploy's training net, its sources are its
own, and its data layers' batch sizes make the solver's epochs and test_iter."""

from __future__ import annotations

import math
import shutil

import pytest

from caffe_tucker.compress.finetune_files import check_train_val, data_batch_size
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.read import read_prototxt, read_solver
from conftest import TEST_MODELS, write

CIFAR_TV = TEST_MODELS / "cifar10_quick" / "cifar10_quick_train_test.prototxt"   # batch 100 / 100
LENET = TEST_MODELS / "lenet_mnist_v1format"                                     # batch 64 / 100
RANKS = '{"conv2": [6, 9], "ip1": 20}'


@pytest.fixture
def ranks(tmp_path):
    return write(tmp_path / "ranks.json", RANKS)


def convert_cli(cli, cifar, out, *extra):
    return cli("convert", cifar, "-o", out, "--no-plot", *extra)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _edited_train_val(tmp_path, old: str, new: str):
    text = CIFAR_TV.read_text()
    assert old in text
    return write(tmp_path / "tv.prototxt", text.replace(old, new, 1))


# --------------------------------------------------------------------------------------------
# A train_val that is not the deploy's training net

def test_an_unrelated_train_val_is_refused(cli, cifar, tmp_path, ranks):
    code, _, err = convert_cli(cli, cifar, tmp_path / "out", "--ranks", ranks,
                               "--train-val", LENET / "lenet_train_test.prototxt")
    assert code == 1
    line = one_line(err)
    assert "lenet_train_test.prototxt" in line and "layer 'conv2'" in line
    assert "num_output 50 (deploy: 32)" in line and "training net of" in line
    assert not (tmp_path / "out").exists()


def test_a_train_val_without_a_compressed_layer_is_refused(cli, cifar, tmp_path, ranks):
    tv = _edited_train_val(tmp_path, 'name: "conv2"', 'name: "conv2b"')
    code, _, err = convert_cli(cli, cifar, tmp_path / "out", "--ranks", ranks, "--train-val", tv)
    assert code == 1
    assert "layer 'conv2', which is to be compressed, is not in its TRAIN phase" in one_line(err)


def test_layers_left_uncompressed_may_differ(cli, cifar, tmp_path, ranks):
    """Only the layers to compress must agree: a train_val with another conv1 is accepted."""
    tv = _edited_train_val(tmp_path, "num_output: 32\n    pad: 2", "num_output: 32\n    pad: 1")
    code, _, err = convert_cli(cli, cifar, tmp_path / "out", "--ranks", ranks, "--train-val", tv)
    assert code == 0, err


def test_geometry_differences_are_named(tmp_path, cifar):
    deploy = read_prototxt(cifar)
    for old, new, expected in [
        ("num_output: 64\n    pad: 2", "num_output: 64\n    pad: 1", "pad [1, 1] (deploy: [2, 2])"),
        ("num_output: 64\n    pad: 2\n    kernel_size: 5\n    stride: 1",
         "num_output: 64\n    pad: 2\n    kernel_size: 5\n    stride: 2",
         "stride [2, 2] (deploy: [1, 1])"),
        ("num_output: 64\n    weight", "num_output: 100\n    weight", "num_output 100 (deploy: 64)"),
    ]:
        tv = read_prototxt(_edited_train_val(tmp_path, old, new))
        with pytest.raises(CaffeTuckerError, match="differs from the deploy in the TRAIN phase: "
                           + expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            check_train_val(tv, deploy, ["conv1", "conv2", "conv3", "ip1"])
    check_train_val(read_prototxt(CIFAR_TV), deploy, ["conv1", "conv2", "conv3", "ip1", "ip2"])


def test_a_layer_only_in_one_phase_is_refused(tmp_path, cifar):
    tv = _edited_train_val(tmp_path, 'layer {\n  name: "conv3"',
                           'layer {\n  include { phase: TRAIN }\n  name: "conv3"')
    with pytest.raises(CaffeTuckerError, match="'conv3', which is to be compressed, is not in its "
                       "TEST phase"):
        check_train_val(read_prototxt(tv), read_prototxt(cifar), ["conv3"])


# --------------------------------------------------------------------------------------------
# Sources

def test_train_val_and_sources_do_not_go_together(cli, cifar, tmp_path):
    for flag in ("--train-source", "--val-source"):
        code, _, err = convert_cli(cli, cifar, tmp_path / "out", "--train-val", CIFAR_TV,
                                   flag, "/data/lmdb")
        assert code == 1
        assert "--train-val" in one_line(err) and "do not go together" in err
    assert not (tmp_path / "out").exists()


def test_a_train_val_given_as_the_net_takes_no_sources(cli, tmp_path):
    shutil.copy(CIFAR_TV, tmp_path / "tv.prototxt")
    shutil.copy(TEST_MODELS / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel",
                tmp_path / "tv.caffemodel")
    code, _, err = cli("convert", tmp_path / "tv.prototxt", "-o", tmp_path / "out", "--no-plot",
                       "--input-shape", "1,3,32,32", "--train-source", "/data/lmdb")
    assert code == 1 and "do not apply" in one_line(err)


# --------------------------------------------------------------------------------------------
# Batch sizes

def test_the_solver_takes_the_train_vals_batch_sizes(cli, cifar, tmp_path, ranks):
    """cifar10_quick_train_test reads batches of 100: 200 validation images are 2 test
    iterations (the auto preset's batch 32 gave 7)."""
    code, _, err = convert_cli(cli, cifar, tmp_path / "out", "--ranks", ranks, "--train-val",
                               CIFAR_TV, "--train-images", "1000", "--val-images", "200")
    assert code == 0, err
    solver = read_solver(tmp_path / "out" / "solver.prototxt")
    assert list(solver.test_iter) == [2]
    assert solver.test_interval == solver.snapshot == 10 and solver.max_iter == 150
    code, _, err = convert_cli(cli, cifar, tmp_path / "built", "--ranks", ranks,
                               "--train-images", "1000", "--val-images", "200")
    assert code == 0, err
    assert list(read_solver(tmp_path / "built" / "solver.prototxt").test_iter) == [7]


def test_different_train_and_test_batches(cli, tmp_path):
    """lenet_train_test: TRAIN batches of 64, TEST of 100."""
    code, _, err = cli("convert", LENET / "lenet.prototxt", "--weights",
                       LENET / "lenet_iter_10000.caffemodel", "-o", tmp_path / "out", "--no-plot",
                       "--train-val", LENET / "lenet_train_test.prototxt",
                       "--train-images", "60000", "--val-images", "10000")
    assert code == 0, err
    solver = read_solver(tmp_path / "out" / "solver.prototxt")
    assert list(solver.test_iter) == [100]
    assert solver.test_interval == math.ceil(60000 / 64)


def test_batch_size_must_agree_with_the_train_val(cli, cifar, tmp_path, ranks):
    code, _, err = convert_cli(cli, cifar, tmp_path / "out", "--ranks", ranks, "--train-val",
                               CIFAR_TV, "--batch-size", "64")
    assert code == 1
    line = one_line(err)
    assert "layer 'cifar'" in line and "reads batches of 100, but --batch-size is 64" in line
    code, _, err = convert_cli(cli, cifar, tmp_path / "out", "--ranks", ranks, "--train-val",
                               CIFAR_TV, "--batch-size", "100", "--val-images", "200")
    assert code == 0, err
    assert list(read_solver(tmp_path / "out" / "solver.prototxt").test_iter) == [2]


def test_data_batch_size_of_each_data_layer_type(tmp_path):
    tv = read_prototxt(CIFAR_TV)
    layer, batch = data_batch_size(tv.for_state("TRAIN"))
    assert (layer.name, batch) == ("cifar", 100)
    for text, expected in [
        ('layer { name: "d" type: "Input" top: "data" input_param { shape { dim: 8 dim: 3 } } }', 8),
        ('layer { name: "d" type: "DummyData" top: "data" dummy_data_param { shape { dim: 5 } } }', 5),
        ('layer { name: "d" type: "ImageData" top: "data" top: "l" image_data_param '
         '{ source: "x" batch_size: 7 } }', 7),
        ('layer { name: "d" type: "HDF5Data" top: "data" hdf5_data_param '
         '{ source: "x" batch_size: 9 } }', 9),
        ('layer { name: "d" type: "Data" top: "data" data_param { source: "x" } }', None),
    ]:
        found = data_batch_size(read_prototxt(write(tmp_path / "n.prototxt", text)))
        assert (found[1] if found else None) == expected, text
