"""Magnitude masks and the joint partial-L2 penalties (pure numpy, seeded)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe_tucker.sparsity.prune import apply_mask, magnitude_mask, sparsity, threshold
from caffe_tucker.sparsity.regularizer import (Coefficients, PenaltyOptions, initial_coefficients,
                                               penalties, penalty_step)
from caffe_tucker.sparsity.winograd import to_winograd, winograd_tile


def test_mask_zeroes_exactly_floor_ratio_n_smallest():
    rng = np.random.RandomState(0)
    w = rng.standard_normal((8, 4, 3, 3))
    for ratio in (0.0, 0.1, 0.5, 0.7, 0.99):
        keep = magnitude_mask(w, ratio)
        k = int(np.floor(ratio * w.size))
        assert keep.shape == w.shape and int((~keep).sum()) == k
        if 0 < k < w.size:
            assert np.abs(w[~keep]).max() <= np.abs(w[keep]).min()
            assert threshold(w, ratio) == pytest.approx(np.abs(w[~keep]).max())


def test_mask_breaks_ties_by_position_and_counts_existing_zeros():
    w = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 2.0])
    keep = magnitude_mask(w, 0.5)  # 3 zeros: the two existing ones, then the first 1.0
    assert keep.tolist() == [False, False, True, True, False, True]
    assert sparsity(apply_mask(w, keep)) == 0.5
    assert sparsity(w) == pytest.approx(2 / 6)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "0.5", True])
def test_mask_refuses_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match=r"The 'ratio' parameter of magnitude_mask must be a float "
                                         r"in \[0, 1\)\. Got .* instead\."):
        magnitude_mask(np.ones(4), ratio)


def _weights(seed=0):
    rng = np.random.RandomState(seed)
    return {"conv": rng.standard_normal((4, 3, 3, 3)) * 0.1, "fc": rng.standard_normal((5, 12))}


@pytest.mark.parametrize("m", [2, 4])
def test_penalty_gradients_match_finite_differences(m):
    tile = winograd_tile(m)
    opts = PenaltyOptions(spatial=0.6, winograd=0.5)
    w = _weights()
    r_s, r_w, g_s, g_w = penalties(w, {"conv"}, opts, tile)
    assert set(g_s) == {"conv", "fc"} and set(g_w) == {"conv"}
    rng = np.random.RandomState(1)
    for name in ("conv", "fc"):
        for _ in range(5):
            idx = tuple(rng.randint(s) for s in w[name].shape)
            eps = 1e-7
            plus = {k: v.copy() for k, v in w.items()}
            plus[name][idx] += eps
            minus = {k: v.copy() for k, v in w.items()}
            minus[name][idx] -= eps
            rp = penalties(plus, {"conv"}, opts, tile)
            rm = penalties(minus, {"conv"}, opts, tile)
            assert (rp[0] - rm[0]) / (2 * eps) == pytest.approx(g_s[name][idx], abs=1e-6)
            if name == "conv":
                assert (rp[1] - rm[1]) / (2 * eps) == pytest.approx(g_w[name][idx], abs=1e-6)
    # R is half the squared norm of the small set, by hand for the spatial domain
    flat = np.sort(np.abs(w["fc"]).ravel())
    small_fc = 0.5 * float(np.sum(flat[:int(0.6 * flat.size)] ** 2))
    flat = np.sort(np.abs(w["conv"]).ravel())
    small_conv = 0.5 * float(np.sum(flat[:int(0.6 * flat.size)] ** 2))
    assert r_s == pytest.approx(small_fc + small_conv)
    u = np.sort(np.abs(to_winograd(w["conv"], tile)).ravel())
    assert r_w == pytest.approx(0.5 * float(np.sum(u[:int(0.5 * u.size)] ** 2)))


def test_step_scales_gradients_by_the_coefficients_and_moves_them():
    tile = winograd_tile(2)
    opts = PenaltyOptions(spatial=0.5, winograd=0.5, omega_lr=0.1)
    w = _weights()
    c = Coefficients(math.log(0.5), math.log(2.0), alpha_spatial=1.0, alpha_winograd=1.0)
    step = penalty_step(w, {"conv"}, opts, c, tile)
    r_s, r_w, g_s, g_w = penalties(w, {"conv"}, opts, tile)
    np.testing.assert_allclose(step.gradients["conv"], 0.5 * g_s["conv"] + 2.0 * g_w["conv"],
                               rtol=1e-6)
    np.testing.assert_allclose(step.gradients["fc"], 0.5 * g_s["fc"], rtol=1e-6)
    assert step.gradients["conv"].dtype == np.float32
    # w <- w - eta (exp(w) R - a) / a
    assert step.next_coefficients.omega_spatial == pytest.approx(
        math.log(0.5) - 0.1 * (0.5 * r_s - 1.0))
    assert step.next_coefficients.omega_winograd == pytest.approx(
        math.log(2.0) - 0.1 * (2.0 * r_w - 1.0))


def test_coefficients_grow_while_penalty_is_small_stop_at_equilibrium_and_cap():
    tile = winograd_tile(2)
    opts = PenaltyOptions(spatial=0.5, winograd=0.5, omega_lr=0.05, coefficient_max=10.0)
    zero = {"conv": np.zeros((2, 2, 3, 3))}
    c = Coefficients(0.0, 0.0, 1.0, 1.0)
    nxt = penalty_step(zero, {"conv"}, opts, c, tile).next_coefficients
    assert nxt.omega_spatial == pytest.approx(0.05) and nxt.omega_winograd == pytest.approx(0.05)
    for _ in range(200):
        c = penalty_step(zero, {"conv"}, opts, c, tile).next_coefficients
    assert c.spatial == pytest.approx(10.0)  # capped
    opts = PenaltyOptions(spatial=0.5, winograd=0.5, omega_lr=0.05, coefficient_max=1e6)
    w = _weights()
    r_s, r_w, _, _ = penalties(w, {"conv"}, opts, tile)
    at_eq = Coefficients(math.log(1.0 / r_s), math.log(1.0 / r_w), 1.0, 1.0)
    nxt = penalty_step(w, {"conv"}, opts, at_eq, tile).next_coefficients
    assert nxt.omega_spatial == pytest.approx(at_eq.omega_spatial)
    assert nxt.omega_winograd == pytest.approx(at_eq.omega_winograd)


def test_initial_alpha_is_the_target_times_the_first_penalty():
    tile = winograd_tile(2)
    opts = PenaltyOptions(spatial=0.5, winograd=0.4, coefficient_init=1e-2,
                          coefficient_target=5.0)
    w = _weights()
    r_s, r_w, _, _ = penalties(w, {"conv"}, opts, tile)
    c = initial_coefficients(w, {"conv"}, opts, tile)
    assert c.spatial == pytest.approx(1e-2) and c.winograd == pytest.approx(1e-2)
    assert c.alpha_spatial == pytest.approx(5.0 * r_s)
    assert c.alpha_winograd == pytest.approx(5.0 * r_w)
    assert Coefficients.from_dict(c.to_dict()) == c


def test_descent_on_the_penalties_alone_empties_both_small_sets():
    """Gradient steps with the penalties alone (no data loss) move the energy of a random layer
    out of the small sets of both domains: pruning both afterwards removes little of it."""
    tile = winograd_tile(2)
    opts = PenaltyOptions(spatial=0.5, winograd=0.5, coefficient_init=1.0, omega_lr=0.01)
    rng = np.random.RandomState(3)
    w = {"conv": rng.standard_normal((6, 4, 3, 3))}

    def shares(w):
        r_s, r_w, _, _ = penalties(w, {"conv"}, opts, tile)
        return (r_s / (0.5 * np.sum(w["conv"] ** 2)),
                r_w / (0.5 * np.sum(to_winograd(w["conv"], tile) ** 2)))

    before = shares(w)
    c = initial_coefficients(w, {"conv"}, opts, tile)
    for _ in range(300):
        step = penalty_step(w, {"conv"}, opts, c, tile)
        w = {"conv": w["conv"] - 0.05 * step.gradients["conv"]}
        c = step.next_coefficients
    after = shares(w)
    assert before[0] > 0.05 and before[1] > 0.05
    assert after[0] < before[0] / 10 and after[1] < before[1] / 10
    assert 1.0 < c.spatial <= opts.coefficient_max and 1.0 < c.winograd <= opts.coefficient_max


@pytest.mark.parametrize("field,value", [("spatial", 1.0), ("winograd", -0.2), ("omega_lr", 0),
                                         ("coefficient_init", -1.0), ("coefficient_target", float("nan"))])
def test_penalty_options_refuse_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"The '{field}' parameter of PenaltyOptions must be"):
        PenaltyOptions(**{field: value})
