"""Tucker-2 HOOI (compress/hooi.py): no worse than TensorLy's partial_tucker on the real kernels."""

import re

import numpy as np
import pytest

from caffe_tucker.compress.blas import blas_limits
from caffe_tucker.compress.hooi import leading_vectors, tucker2_hooi
from caffe_tucker.compress.methods.tucker2 import METHOD
from caffe_tucker.compress.tensorly_wrapper import partial_tucker
from caffe_tucker.model import load_model
from conftest import TEST_MODELS, ZOO

MODELS = {
    "digits": (ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel", None),
    "cifar10_quick": (TEST_MODELS / "cifar10_quick" / "cifar10_quick.prototxt",
                      TEST_MODELS / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel", None),
    "lenet": (TEST_MODELS / "lenet_mnist_v1format" / "lenet.prototxt",
              TEST_MODELS / "lenet_mnist_v1format" / "lenet_iter_10000.caffemodel", None),
    "resnet20": (TEST_MODELS / "resnet20_cifar10" / "res20_cifar_train_test.prototxt",
                 TEST_MODELS / "resnet20_cifar10" / "cifar10_res20_iter_64000.caffemodel",
                 {"Data1": (1, 3, 32, 32)}),
    "vdsr": (TEST_MODELS / "vdsr" / "VDSR_net_deploy.prototxt",
             TEST_MODELS / "vdsr" / "VDSR_Adam.caffemodel", None),
}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with blas_limits(1):  # as convert runs them; 2 threads on 2 shared cores are much slower
        yield


def _kernels(name):
    proto, weights, data_shapes = MODELS[name]
    model = load_model(proto, weights, deploy=True, data_shapes=data_shapes)
    for layer in model.net.layers:
        info = model.shapes.layers[layer.name]
        if layer.type in METHOD.applies_to_types and layer.blobs and not METHOD.why_not(layer, info):
            for k in METHOD.kernel_groups(layer, info):
                if min(k.shape[:2]) >= 2:
                    yield layer.name, np.asarray(k, dtype=np.float64)


def _error(kernel, core, u4, u3):
    approx = np.einsum("abij,sb,ta->tsij", core, u3, u4, optimize=True)
    return np.linalg.norm(kernel - approx) / np.linalg.norm(kernel)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_no_worse_than_tensorly_on_real_kernels(model):
    checked = 0
    for layer, kernel in _kernels(model):
        t, s = kernel.shape[:2]
        for fraction in (0.25, 0.5, 0.75):
            ranks = (max(1, round(t * fraction)), max(1, round(s * fraction)))
            old_core, (old_u4, old_u3) = partial_tucker(kernel, list(ranks), [0, 1])
            core, (u4, u3) = tucker2_hooi(kernel, ranks)
            old, new = _error(kernel, old_core, old_u4, old_u3), _error(kernel, core, u4, u3)
            assert new <= old * (1 + 1e-6) + 1e-12, (layer, ranks, old, new)
            checked += 1
    assert checked


def test_factors_are_orthonormal_and_deterministic():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((48, 40, 3, 3))
    core, (u4, u3) = tucker2_hooi(kernel, (20, 10))
    assert core.shape == (20, 10, 3, 3) and u4.shape == (48, 20) and u3.shape == (40, 10)
    np.testing.assert_allclose(u4.T @ u4, np.eye(20), atol=1e-12)
    np.testing.assert_allclose(u3.T @ u3, np.eye(10), atol=1e-12)
    again = tucker2_hooi(kernel.copy(), (20, 10))
    assert np.array_equal(core, again[0]) and np.array_equal(u4, again[1][0])


def test_full_rank_is_exact_and_float32_is_close():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((40, 36, 3, 3))
    core, (u4, u3) = tucker2_hooi(kernel, (40, 36))
    assert _error(kernel, core, u4, u3) < 1e-12
    core32, (a, b) = tucker2_hooi(kernel, (20, 18), gram_dtype=np.float32)
    core64, (c, d) = tucker2_hooi(kernel, (20, 18))
    assert abs(_error(kernel, core32, a, b) - _error(kernel, core64, c, d)) < 1e-4


def test_more_sweeps_never_raise_the_error():
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((64, 48, 3, 3))
    errors = [_error(kernel, c, u4, u3)
              for c, (u4, u3) in (tucker2_hooi(kernel, (16, 12), sweeps=n, tol=0.0)
                                  for n in range(4))]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))


def test_leading_vectors_match_the_svd():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 200))
    u, energy = leading_vectors(x, 5)
    ref = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(np.abs(u.T @ ref[0][:, :5]), np.eye(5), atol=1e-8)
    np.testing.assert_allclose(energy, np.sum(ref[1][:5] ** 2), rtol=1e-10)


@pytest.mark.parametrize("kwargs, name", [
    (dict(ranks=(0, 1)), "ranks[0]"), (dict(ranks=(1, 9)), "ranks[1]"),
    (dict(ranks=(1, 1), sweeps=-1), "sweeps"), (dict(ranks=(1, 1), tol=-1.0), "tol"),
    (dict(ranks=(1, 1), gram_dtype=np.int32), "gram_dtype")])
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"The '{name}' parameter of tucker2_hooi must be")):
        tucker2_hooi(np.ones((4, 8, 3, 3)), **kwargs)
