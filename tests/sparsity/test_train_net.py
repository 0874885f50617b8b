"""The train net and solver sparsify builds from a deploy net."""

from __future__ import annotations

import numpy as np
import pytest

from caffe_tucker.analysis.shapes import infer_shapes
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.caffe_pb2 import SolverParameter
from caffe_tucker.model import load_model
from caffe_tucker.sparsity.data import EvalSet, TrainSet
from caffe_tucker.sparsity.schedule import SparsifyOptions, check_data, prepare_train_net
from caffe_tucker.sparsity.train_net import build_solver, build_train_net
from google.protobuf import text_format

from conftest import TEST_MODELS, ZOO


@pytest.fixture(scope="module")
def digits():
    return load_model(ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel")


def test_classifier_gets_label_input_and_softmax_loss_in_place_of_softmax(digits):
    net = build_train_net(digits.net, {"data": (1, 8, 8), "label": ()}, 16, classifier=True)
    types = [l.type for l in net.layers]
    assert types[:2] == ["Input", "Input"] and types[-1] == "SoftmaxWithLoss"
    assert "Softmax" not in types
    assert net.layers[-1].bottoms == ("fc2", "label")
    shapes = infer_shapes(net)
    assert shapes.blobs["data"] == (16, 1, 8, 8) and shapes.blobs["label"] == (16,)
    # the weights travel with the layers: the deploy's blobs are on the train net's layers
    np.testing.assert_array_equal(net.layer("conv2").blobs[0], digits.net.layer("conv2").blobs[0])
    assert digits.net.layers[0].spec.input_param.shape[0].dim[0] == 1     # the input is untouched


def test_image_to_image_net_gets_euclidean_loss_on_its_output():
    vdsr = load_model(TEST_MODELS / "vdsr" / "VDSR_net_deploy.prototxt")
    net = build_train_net(vdsr.net, {"data": (1, 24, 24), "label": (1, 24, 24)}, 4, classifier=False)
    assert net.layers[-1].type == "EuclideanLoss" and net.layers[-1].bottoms == ("sum", "label")
    assert infer_shapes(net).blobs["sum"] == (4, 1, 24, 24)


def test_missing_label_and_mismatched_data_are_refused(digits):
    with pytest.raises(CaffeTuckerError, match=r"one array per input of the net \['data'\] and 'label'"):
        build_train_net(digits.net, {"data": (1, 8, 8)}, 4, classifier=True)
    options = SparsifyOptions(batch=4)
    good = TrainSet({"data": np.zeros((5, 1, 8, 8), np.float32), "label": np.zeros(5, np.float32)})
    test = EvalSet((({"data": np.zeros((2, 1, 8, 8), np.float32)}, np.zeros(2)),), "accuracy")
    net = prepare_train_net(digits, good, test, options)
    assert net.layers[-1].type == "SoftmaxWithLoss"
    big = TrainSet({"data": np.zeros((5, 1, 16, 16), np.float32), "label": np.zeros(5, np.float32)},
                   "big.npz")
    with pytest.raises(CaffeTuckerError, match=r"the training data \(big.npz\) does not fit the net"):
        prepare_train_net(digits, big, test, options)
    wide = EvalSet((({"data": np.zeros((2, 1, 9, 9), np.float32)}, np.zeros(2)),), "accuracy",
                   source="wide.npz")
    with pytest.raises(CaffeTuckerError, match=r"the test data \(wide.npz\) does not fit the net "
                                               r"\(data 2x1x9x9\)"):
        check_data(digits.net, net, good, wide)
    extra = TrainSet({**good.arrays, "weights": np.zeros(5, np.float32)}, "extra.npz")
    with pytest.raises(CaffeTuckerError, match=r"has arrays \['data', 'label', 'weights'\], but the "
                                               r"train net's Input blobs are \['data', 'label'\]"):
        check_data(digits.net, net, extra, test)


def test_solver_is_a_fixed_rate_phase():
    p = SolverParameter()
    text_format.Merge(build_solver(0.01, solver_type="Adam", momentum=0.9, weight_decay=1e-4,
                                   seed=3, clip_gradients=0.5), p)
    assert (p.type, p.base_lr, p.lr_policy, p.weight_decay, p.random_seed) == (
        "Adam", pytest.approx(0.01), "fixed", pytest.approx(1e-4), 3)
    assert p.clip_gradients == pytest.approx(0.5) and p.max_iter > 10**6
