"""Tucker-2 / Tucker-1 / SVD factors: exactness at full rank, optimality, determinism."""

import numpy as np
import pytest

from caffe_tucker.compress.methods import get_method

TUCKER2, TUCKER1, SVD = (get_method(n) for n in ("tucker2", "tucker1", "svd"))


def tucker2(kernel, r3, r4):
    return TUCKER2.factorize(kernel, (r3, r4))


def tucker1(kernel, r4):
    return TUCKER1.factorize(kernel, (r4,))


def svd_factors(matrix, r):
    return SVD.factorize(matrix, (r,))


def reconstruct(method, factors):
    return get_method(method).reconstruct(factors)


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture
def kernel():
    return np.random.default_rng(0).standard_normal((24, 16, 3, 3)).astype(np.float32)


def test_tucker2_full_rank_is_exact(kernel):
    factors = tucker2(kernel, 16, 24)
    assert rel(reconstruct("tucker2", factors), kernel) < 1e-10
    u3, core, u4 = factors
    assert u3.shape == (16, 16) and core.shape == (24, 16, 3, 3) and u4.shape == (24, 24)
    np.testing.assert_allclose(u3.T @ u3, np.eye(16), atol=1e-10)


def test_tucker2_low_rank_recovers_a_low_rank_kernel():
    rng = np.random.default_rng(1)
    core = rng.standard_normal((5, 4, 3, 3))
    u3 = np.linalg.qr(rng.standard_normal((32, 4)))[0]
    u4 = np.linalg.qr(rng.standard_normal((40, 5)))[0]
    k = reconstruct("tucker2", (u3, core, u4))
    noisy = k + 1e-3 * rng.standard_normal(k.shape)
    approx = reconstruct("tucker2", tucker2(noisy, 4, 5))
    assert rel(approx, k) < 5e-3
    # fewer components cannot do as well
    assert rel(reconstruct("tucker2", tucker2(noisy, 3, 5)), k) > 0.05


def test_error_shrinks_with_rank(kernel):
    errors = [rel(reconstruct("tucker2", tucker2(kernel, r, r)), kernel) for r in (2, 6, 12, 16)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5


def test_tucker1_and_svd_are_the_optimal_truncations(kernel):
    r = 7
    approx = reconstruct("tucker1", tucker1(kernel, r))
    s = np.linalg.svd(kernel.reshape(24, -1).astype(np.float64), compute_uv=False)
    best = np.sqrt(np.sum(s[r:] ** 2)) / np.sqrt(np.sum(s ** 2))
    assert rel(approx, kernel) == pytest.approx(best, rel=1e-6)
    w = kernel.reshape(24, -1)
    approx = reconstruct("svd", svd_factors(w, r))
    assert rel(approx, w) == pytest.approx(best, rel=1e-6)


def test_large_wide_unfolding_takes_the_gram_path():
    # 64 rows > the direct-SVD threshold: the leading-eigenvector path must agree with LAPACK.
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 300))
    approx = reconstruct("svd", svd_factors(w, 20))
    s = np.linalg.svd(w, compute_uv=False)
    assert rel(approx, w) == pytest.approx(np.sqrt(np.sum(s[20:] ** 2) / np.sum(s ** 2)), rel=1e-8)


def test_deterministic(kernel):
    a = tucker2(kernel, 5, 6)
    b = tucker2(kernel.copy(), 5, 6)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
