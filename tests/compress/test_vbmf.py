"""Tests for caffe_tucker.vbmf (analytic empirical VBMF), both solvers.

The reference solver's agreement with the Python port it reproduces is in
test_vbmf_reference.py.
"""

import math
import re

import numpy as np
import pytest
from scipy.optimize import brentq

from caffe_tucker.compress.vbmf import SOLVERS, VBMFResult, evbmf


@pytest.fixture(params=SOLVERS)
def solver(request):
    """Each solver in turn, for the properties both have."""
    return request.param


def _mp_edge(L, M, sigma):
    """Largest singular value of an L x M pure-noise matrix, asymptotically."""
    L, M = min(L, M), max(L, M)
    return sigma * math.sqrt(M) * (1.0 + math.sqrt(L / M))


def _low_rank_plus_noise(rng, L, M, signal_svals, sigma):
    r = len(signal_svals)
    U, _ = np.linalg.qr(rng.standard_normal((L, r)))
    V, _ = np.linalg.qr(rng.standard_normal((M, r)))
    signal = (U * np.asarray(signal_svals)) @ V.T
    return signal + sigma * rng.standard_normal((L, M))


def _tau_underbar(alpha):
    """Independent solve of log(t+1) + alpha log(t/alpha+1) - t = 0."""
    return brentq(
        lambda t: np.log1p(t) + alpha * np.log1p(t / alpha) - t,
        1e-9,
        1e3,
        xtol=1e-14,
    )


# --------------------------------------------------------------------------
# Recovery of rank and noise variance
# --------------------------------------------------------------------------

RECOVERY_CASES = [
    # seed, L, M, true rank, noise std
    (0, 100, 300, 5, 0.5),
    (1, 100, 300, 10, 1.0),
    (2, 300, 100, 10, 0.3),  # L > M
    (3, 64, 576, 12, 0.02),  # conv-like mode-3 unfolding (Gram route)
    (4, 200, 200, 6, 1.0),  # square
    (5, 40, 2000, 4, 2.0),  # M >> L
    (6, 1500, 120, 8, 0.1),  # L >> M
]


@pytest.mark.parametrize("seed, L, M, rank, sigma", RECOVERY_CASES)
def test_recovers_true_rank_and_noise_variance(seed, L, M, rank, sigma, solver):
    rng = np.random.default_rng(seed)
    edge = _mp_edge(L, M, sigma)
    svals = edge * np.linspace(6.0, 3.0, rank)
    Y = _low_rank_plus_noise(rng, L, M, svals, sigma)

    res = evbmf(Y, solver=solver)

    assert isinstance(res, VBMFResult)
    assert isinstance(res.rank, int)
    assert res.rank == rank
    assert abs(res.sigma2 / sigma**2 - 1.0) < 0.1
    assert res.estimates.shape == (rank,)
    assert res.estimates.dtype == np.float64
    # Shrinkage: strictly between 0 and the observed singular value.
    assert np.all(res.estimates > 0)
    assert np.all(res.estimates < res.singular_values[:rank])
    # The estimates are close to the true signal singular values.
    np.testing.assert_allclose(res.estimates, svals, rtol=0.05)
    # Rank is the number of singular values above the threshold.
    assert res.singular_values[rank - 1] > res.threshold
    if rank < len(res.singular_values):
        assert res.singular_values[rank] <= res.threshold


@pytest.mark.parametrize("seed, L, M", [(10, 100, 300), (11, 64, 576), (12, 80, 80)])
def test_transposed_input_gives_same_result(seed, L, M, solver):
    rng = np.random.default_rng(seed)
    sigma = 0.7
    svals = _mp_edge(L, M, sigma) * np.array([5.0, 4.0, 3.0, 2.5])
    Y = _low_rank_plus_noise(rng, L, M, svals, sigma)

    a = evbmf(Y, solver=solver)
    b = evbmf(Y.T, solver=solver)

    assert a.rank == b.rank == 4
    assert math.isclose(a.sigma2, b.sigma2, rel_tol=1e-6)
    assert math.isclose(a.threshold, b.threshold, rel_tol=1e-6)
    np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-10)
    np.testing.assert_allclose(a.estimates, b.estimates, rtol=1e-6)


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_given_true_sigma2_gives_true_rank(seed, solver):
    rng = np.random.default_rng(seed)
    L, M, sigma, rank = 120, 360, 0.4, 7
    svals = _mp_edge(L, M, sigma) * np.linspace(4.0, 2.0, rank)
    Y = _low_rank_plus_noise(rng, L, M, svals, sigma)

    res = evbmf(Y, sigma2=sigma**2, solver=solver)

    assert res.rank == rank
    assert res.sigma2 == sigma**2  # a given value is used as is


# --------------------------------------------------------------------------
# No signal
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed, L, M", [(30, 100, 300), (31, 300, 100), (32, 50, 50), (33, 64, 576)]
)
def test_pure_noise_gives_rank_zero(seed, L, M, solver):
    rng = np.random.default_rng(seed)
    sigma = 1.3
    res = evbmf(sigma * rng.standard_normal((L, M)), solver=solver)
    assert res.rank == 0
    assert res.estimates.shape == (0,)
    assert abs(res.sigma2 / sigma**2 - 1.0) < 0.05
    assert res.singular_values[0] <= res.threshold


@pytest.mark.parametrize("seed", [40, 41, 42, 43])
def test_signal_below_threshold_gives_rank_zero(seed, solver):
    # Signal singular values well below the noise edge are not recoverable:
    # no clamping to rank 1.
    rng = np.random.default_rng(seed)
    L, M, sigma = 100, 300, 1.0
    svals = _mp_edge(L, M, sigma) * np.array([0.6, 0.5, 0.4])
    Y = _low_rank_plus_noise(rng, L, M, svals, sigma)

    res = evbmf(Y, solver=solver)

    assert res.rank == 0
    assert res.estimates.size == 0
    assert res.singular_values[0] <= res.threshold


# --------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 30), (30, 20), (64, 576), (3, 1000)])
def test_constant_matrix_with_noise_is_rank_one(shape, solver):
    rng = np.random.default_rng(50)
    c = 2.0
    Y = np.full(shape, c) + 0.1 * rng.standard_normal(shape)
    res = evbmf(Y, solver=solver)
    assert res.rank == 1
    np.testing.assert_allclose(res.estimates[0], c * math.sqrt(Y.size), rtol=0.02)


@pytest.mark.parametrize("shape", [(5, 5), (20, 30), (100, 20), (64, 576)])
@pytest.mark.parametrize("c", [1.0, -3.5, 1e-30, 1e30])
def test_constant_matrix_without_noise_is_rank_one(shape, c, solver):
    res = evbmf(np.full(shape, c), solver=solver)
    assert res.rank == 1
    assert np.isfinite(res.sigma2) and res.sigma2 >= 0.0
    if solver == "global":
        # Essentially no noise, hence essentially no shrinkage.  (The reference
        # solver has no floor at the numerical resolution: its sigma^2 is what
        # its coarse search makes of rounding-level singular values.)
        np.testing.assert_allclose(res.estimates, [abs(c) * math.sqrt(shape[0] * shape[1])],
                                   rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (1, 1), (1, 7), (64, 576)])
def test_all_zero_matrix(shape, solver):
    res = evbmf(np.zeros(shape), solver=solver)
    assert res.rank == 0
    assert res.sigma2 == 0.0
    assert res.threshold == 0.0
    assert res.singular_values.shape == (min(shape),)
    assert np.all(res.singular_values == 0.0)
    assert res.estimates.shape == (0,)


def test_all_zero_matrix_with_given_sigma2(solver):
    res = evbmf(np.zeros((4, 6)), sigma2=2.0)
    assert res.rank == 0
    assert res.sigma2 == 2.0
    assert res.threshold > 0.0


@pytest.mark.parametrize("shape", [(1, 10), (10, 1), (1, 1)])
def test_single_row_or_column(shape, solver):
    rng = np.random.default_rng(60)
    Y = 5.0 + rng.standard_normal(shape)
    res = evbmf(Y, solver=solver)
    # One vector cannot separate signal from noise: the interval (E6)
    # collapses to ||Y||^2 / max(L, M) and the rank is 0.
    assert res.rank == 0
    assert math.isclose(res.sigma2, float(np.sum(Y**2)) / max(shape), rel_tol=1e-12)
    np.testing.assert_allclose(res.singular_values, [np.linalg.norm(Y)], rtol=1e-12)
    # With a small known noise variance the single component is kept.
    res_known = evbmf(Y, sigma2=1e-4, solver=solver)
    assert res_known.rank == 1
    assert 0 < res_known.estimates[0] < res_known.singular_values[0]


# --------------------------------------------------------------------------
# weaken, threshold and estimator formulas
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [70, 71])
@pytest.mark.parametrize("given_sigma2", [None, 1.0])
def test_weaken_is_monotonic(seed, given_sigma2, solver):
    rng = np.random.default_rng(seed)
    L, M, sigma = 80, 400, 1.0
    # Gradually decaying spectrum crossing the noise level.
    svals = _mp_edge(L, M, sigma) * 3.0 * 0.85 ** np.arange(30)
    Y = _low_rank_plus_noise(rng, L, M, svals, sigma)

    weakens = [0.1, 0.25, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0, 10.0]
    results = [evbmf(Y, sigma2=given_sigma2, weaken=w, solver=solver) for w in weakens]
    ranks = [r.rank for r in results]
    base = results[weakens.index(1.0)]

    assert all(a >= b for a, b in zip(ranks, ranks[1:])), ranks
    assert ranks[weakens.index(0.25)] > base.rank > ranks[weakens.index(4.0)]
    for w, r in zip(weakens, results):
        # The reported noise variance is the one before weakening ...
        assert r.sigma2 == base.sigma2
        # ... and the threshold scales with sqrt(weaken).
        assert math.isclose(r.threshold, math.sqrt(w) * base.threshold, rel_tol=1e-12)


@pytest.mark.parametrize("L, M", [(50, 50), (30, 90), (90, 30), (16, 1600)])
def test_threshold_formula(L, M, solver):
    rng = np.random.default_rng(80)
    Y = rng.standard_normal((L, M))
    sigma2 = 0.8
    res = evbmf(Y, sigma2=sigma2, solver=solver)
    l, m = min(L, M), max(L, M)
    alpha = l / m
    # The global solver solves (E1); the reference port approximates its root.
    tau = _tau_underbar(alpha) if solver == "global" else 2.5129 * math.sqrt(alpha)
    expected = math.sqrt(m * sigma2 * (1 + tau) * (1 + alpha / tau))
    assert math.isclose(res.threshold, expected, rel_tol=1e-10)
    if alpha == 1.0:
        assert abs(_tau_underbar(alpha) - 2.5129) < 1e-4
    # The EVB threshold lies above the pure-noise edge.
    assert res.threshold > _mp_edge(L, M, math.sqrt(sigma2))


def test_estimates_match_closed_form_shrinkage(solver):
    rng = np.random.default_rng(90)
    L, M, sigma = 60, 240, 0.5
    svals = _mp_edge(L, M, sigma) * np.array([8.0, 4.0, 2.0, 1.3])
    Y = _low_rank_plus_noise(rng, L, M, svals, sigma)
    for weaken in (1.0, 0.7):
        res = evbmf(Y, weaken=weaken, solver=solver)
        assert res.rank >= 3
        g = res.singular_values[: res.rank]
        s2 = weaken * res.sigma2
        a = 1.0 - (L + M) * s2 / g**2
        expected = g / 2.0 * (a + np.sqrt(a**2 - 4.0 * L * M * s2**2 / g**4))
        np.testing.assert_allclose(res.estimates, expected, rtol=1e-9)


# --------------------------------------------------------------------------
# Singular values, dtypes, determinism, input handling
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(60, 80), (80, 60), (50, 400), (400, 50), (7, 3)])
def test_singular_values_equal_numpy(shape, solver):
    rng = np.random.default_rng(100)
    Y = rng.standard_normal(shape) * 3.0
    res = evbmf(Y, solver=solver)
    expected = np.linalg.svd(Y, compute_uv=False)
    assert res.singular_values.dtype == np.float64
    assert res.singular_values.shape == (min(shape),)
    assert np.all(np.diff(res.singular_values) <= 0)
    np.testing.assert_allclose(res.singular_values, expected, rtol=1e-10)


def test_deterministic(solver):
    rng = np.random.default_rng(110)
    svals = _mp_edge(128, 1152, 0.1) * np.linspace(5.0, 1.5, 20)
    Y = _low_rank_plus_noise(rng, 128, 1152, svals, 0.1)
    a = evbmf(Y, solver=solver)
    b = evbmf(Y, solver=solver)
    assert a.rank == b.rank
    assert a.sigma2 == b.sigma2
    assert a.threshold == b.threshold
    assert np.array_equal(a.singular_values, b.singular_values)
    assert np.array_equal(a.estimates, b.estimates)


def test_float32_int_and_list_inputs(solver):
    rng = np.random.default_rng(120)
    svals = _mp_edge(64, 576, 1.0) * np.array([6.0, 5.0, 4.0])
    Y = _low_rank_plus_noise(rng, 64, 576, svals, 1.0)
    ref = evbmf(Y, solver=solver)
    assert ref.rank == 3
    res32 = evbmf(Y.astype(np.float32), solver=solver)
    assert res32.rank == 3
    assert math.isclose(res32.sigma2, ref.sigma2, rel_tol=1e-4)
    res_int = evbmf(np.round(10 * Y).astype(np.int32), solver=solver)
    assert res_int.rank == 3
    assert evbmf(Y.tolist(), solver=solver).rank == 3


def test_input_is_not_modified(solver):
    rng = np.random.default_rng(130)
    for shape in [(40, 50), (30, 600), (600, 30)]:
        Y = rng.standard_normal(shape) + 4.0
        Y_copy = Y.copy()
        evbmf(Y, solver=solver)
        assert np.array_equal(Y, Y_copy)


# --------------------------------------------------------------------------
# Parameter validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "Y, shape",
    [
        (np.ones(3), "(3,)"),
        (np.ones((0, 4)), "(0, 4)"),
        (np.ones((4, 0)), "(4, 0)"),
        (np.ones((2, 3, 4)), "(2, 3, 4)"),
        (5.0, "()"),
    ],
)
def test_bad_Y_shape(Y, shape):
    msg = (
        "The 'Y' parameter of evbmf must be a 2-D array with at least one row "
        f"and one column. Got shape {shape} instead."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        evbmf(Y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_Y(bad):
    Y = np.ones((5, 6))
    Y[2, 3] = bad
    with pytest.raises(
        ValueError,
        match=r"^The 'Y' parameter of evbmf must not contain NaN or infinity\.$",
    ):
        evbmf(Y)


def test_complex_Y_rejected():
    with pytest.raises(ValueError, match=r"^The 'Y' parameter of evbmf must be"):
        evbmf(np.ones((3, 4), dtype=complex))


@pytest.mark.parametrize(
    "sigma2, shown",
    [(-1, "-1"), (0, "0"), (0.0, "0.0"), (float("nan"), "nan"),
     (float("inf"), "inf"), ("1", "'1'"), (True, "True")],
)
def test_bad_sigma2(sigma2, shown):
    msg = (
        "The 'sigma2' parameter of evbmf must be a float > 0 or None. "
        f"Got {shown} instead."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        evbmf(np.ones((3, 4)), sigma2=sigma2)


@pytest.mark.parametrize(
    "weaken, shown",
    [(0, "0"), (-2.5, "-2.5"), (None, "None"), (float("inf"), "inf"), ("x", "'x'")],
)
def test_bad_weaken(weaken, shown):
    msg = f"The 'weaken' parameter of evbmf must be a float > 0. Got {shown} instead."
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        evbmf(np.ones((3, 4)), weaken=weaken)


def test_accepted_scalar_types():
    Y = np.ones((3, 4))
    assert evbmf(Y, sigma2=2, weaken=1).sigma2 == 2.0
    assert evbmf(Y, sigma2=np.float32(0.5), weaken=np.float64(2.0)).sigma2 == 0.5
