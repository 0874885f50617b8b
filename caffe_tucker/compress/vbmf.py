"""Rank selection by empirical variational Bayesian matrix factorization.

This module implements the analytic solution of *empirical* variational
Bayesian matrix factorization (EVBMF) for a fully observed matrix, which
Kim et al. (2016, Sec. 3.2) use to pick the Tucker ranks ``(R3, R4)`` of a
convolution kernel from its mode-3 and mode-4 unfoldings.  Only the
singular values of the observed matrix are needed, so the function works
on spectra and never forms the factor matrices.  Two solvers estimate the
noise variance (see *Solvers* below): ``"reference"`` reproduces the
public Python port of Nakajima's EVBMF code that Tucker tools use [5]_,
``"global"`` minimizes the free energy globally (E1)-(E7).

Model
-----
An observed real matrix ``Y`` of shape ``(L, M)`` is written as::

    Y = B A^T + E,

with ``A`` of shape ``(M, H)``, ``B`` of shape ``(L, H)``, ``H = min(L, M)``,
independent Gaussian noise ``E_lm ~ N(0, sigma^2)`` and zero-mean Gaussian
priors on ``A`` and ``B`` whose covariances ``C_A = diag(c_a1^2, ...,
c_aH^2)`` and ``C_B = diag(c_b1^2, ..., c_bH^2)`` are diagonal.  The
posterior is approximated by a distribution factorized over ``A`` and ``B``
(variational Bayes, VB) and the prior variances are learned by minimizing
the variational free energy (empirical Bayes, EVB); optionally so is
``sigma^2``.  Nakajima et al. (2013) show that the global minimizer is a
re-weighted SVD of ``Y``: each singular value ``gamma_h`` is shrunk or set
to zero on its own.  The problem is symmetric in ``L`` and ``M``, so ``Y``
is transposed when ``L > M``; below ``L <= M``, ``gamma_1 >= ... >=
gamma_L`` and ``alpha = L / M`` in ``(0, 1]``.

Equations implemented
---------------------
The labels (E1)-(E7) are local to this module; the text says which result
of the cited papers each one transcribes.

(E1) Threshold constant.  ``tau_u`` (tau underbar) is the unique positive
root of::

    log(tau + 1) + alpha * log(tau / alpha + 1) - tau = 0,

which lies in ``(sqrt(alpha), inf)`` and is found with ``brentq``
(``tau_u = 2.5129...`` for ``alpha = 1``).

(E2) EVB threshold (the EVB solution of Nakajima et al., 2013, in the
analytic form of Nakajima et al., 2012).  With
``x_u = (1 + tau_u) * (1 + alpha / tau_u)``::

    gamma_u = sigma * sqrt(M * x_u)
            = sigma * sqrt(M * (1 + tau_u) * (1 + alpha / tau_u)).

Component ``h`` is retained iff ``gamma_h > gamma_u`` (strict: on the
threshold itself the null and the positive solution have the same free
energy and the null one is kept).  The estimated rank is the number of
retained components.  The square root covers both factors: ``x_u`` is the
value of ``x = gamma^2 / (M sigma^2)`` at which the free-energy gain (E5)
of a component changes sign, and it always exceeds the Marchenko-Pastur
edge ``(1 + sqrt(alpha))^2`` of pure noise (AM-GM inequality on
``(1 + tau)(1 + alpha / tau)``).

(E3) Normalized singular value and its tau.  For ``x_h = gamma_h^2 /
(M sigma^2) > x_u``::

    tau_h = ( x_h - (1 + alpha) + sqrt((x_h - (1 + alpha))^2 - 4 alpha) ) / 2,

the larger root of ``tau^2 - (x_h - 1 - alpha) tau + alpha = 0``, i.e. the
inverse of ``x = (1 + tau)(1 + alpha / tau)`` on ``tau > sqrt(alpha)``.

(E4) EVB shrinkage estimator (EVB solution of Nakajima et al., 2013).  For
a retained component, with ``s = sigma^2``::

    gamma_hat_h = gamma_h / 2 * ( 1 - (L + M) s / gamma_h^2
                  + sqrt((1 - (L + M) s / gamma_h^2)^2 - 4 L M s^2 / gamma_h^4) )
                = gamma_h * tau_h / x_h,

and ``gamma_hat_h = 0`` for the other components.

(E5) Free energy as a function of ``sigma^2`` (closed form of the EVB free
energy, Nakajima et al., 2012).  Up to terms that do not depend on
``sigma^2``, twice the free energy divided by ``M`` is::

    f(sigma^2) = L log(sigma^2) + sum_{h=1..L} gamma_h^2 / (M sigma^2)
                 + sum_{h : x_h > x_u} psi(x_h),
    psi(x)     = log(tau(x) + 1) + alpha log(tau(x) / alpha + 1) - tau(x),

where ``psi(x) < 0`` exactly when ``x > x_u`` (this is how (E1) defines
the threshold), so every retained component lowers ``f``.

(E6) Search interval for ``sigma^2`` (bounds of the EVB noise variance
estimator, Nakajima et al., 2012; 2015).  With ``H_bar = min(ceil(L / (1 +
alpha)) - 1, H)``, an upper bound of the estimated rank::

    max( gamma_{H_bar+1}^2 / (M x_u),
         sum_{h=H_bar+1..L} gamma_h^2 / (M (L - H_bar)) )
        <= sigma_hat^2 <= sum_{h=1..L} gamma_h^2 / (L M).

(E7) Noise variance estimate.  ``sigma_hat^2`` minimizes (E5) on the
interval (E6).  As ``f`` need not be unimodal it is first evaluated on a
grid of 256 points evenly spaced in ``log(sigma^2)``, then refined with
``scipy.optimize.minimize_scalar(method="bounded")`` (in ``log(sigma^2)``,
so that the tolerance is relative) on the two grid cells around the best
grid point; the better of the grid point and the refined point is kept.
All of this is deterministic.

Solvers
-------
``solver="global"`` is (E1)-(E7) above.  ``solver="reference"`` makes the
rank decisions of the Python port of Nakajima's EVBMF [5]_ (``EVBMF`` in
``VBMF.py``, called on each unfolding by PyTorch Tucker tools [6]_), whose
steps are, for the same ``L <= M``, ``alpha`` and ``gamma_h``:

(R1) ``tau_u`` is not solved for: it is approximated by ``2.5129 *
sqrt(alpha)``, which is within 1e-4 of the root of (E1) for ``alpha = 1``
only (for ``alpha = 1/9``, e.g. the unfolding of a 3 x 3 kernel with as
many input as output channels, the root is 0.864 and the approximation
0.838); ``x_u`` and the threshold (E2) use that value.

(R2) The interval (E6), computed the same way (``H_bar`` from the float
``ceil(L / (1 + alpha)) - 1``), in the units of ``Y``: no scaling and no
floor at the numerical resolution.

(R3) The objective, with ``x_h = gamma_h^2 / (M sigma^2)``::

    f_R(sigma^2) = sum_{x_h <= x_u} (x_h - log x_h)
                   + sum_{x_h > x_u} (x_h - tau_h + log((tau_h + 1) / x_h)
                                      + alpha log(tau_h / alpha + 1)),

which is (E5) plus a constant (``-sum_h log(gamma_h^2 / M)``), with the
``x_u`` of (R1).

(R4) ``sigma_hat^2`` is what ``scipy.optimize.minimize_scalar(f_R,
bounds=(lower, upper), method="bounded")`` returns: Brent's bounded
search (golden sections and parabolic steps, Forsythe, Malcolm and Moler's
``fmin``) on ``sigma^2`` itself, with scipy's default options: an
*absolute* tolerance ``xatol = 1e-5`` (the search stops once the
bracket's half-width is within about ``2 (1.5e-8 |sigma^2| + xatol / 3)``)
and at most 500 evaluations.  It stops at a local minimum, and as
``sigma^2`` of trained weights is often 1e-5 to 1e-3 the tolerance is
coarse: the search ends after a handful of steps, and on an interval
narrower than about 1.1e-5 it makes none and returns its first point,
``lower + 0.382 (upper - lower)``.

(R5) The rank is the number of ``gamma_h`` strictly above ``sqrt(M *
sigma_hat^2 * (1 + tau_u) * (1 + alpha / tau_u))`` (the ``tau_u`` of (R1),
evaluated in the port's order of operations).

The port requires ``L <= M``; a taller matrix is passed transposed, as its
callers must.  It is given ``Y`` in float64 (its singular values from
LAPACK ``gesdd``, as ``numpy.linalg.svd``).  Where the port fails the
reference solver does the obvious thing instead: an all-zero matrix (the
port divides by zero) is the all-zero case below; an interval whose ends
cross by rounding (scipy refuses it) is searched as the single point
``upper``.  ``weaken`` and a given ``sigma2`` are this module's options and
apply to both solvers alike.

Numerical details (``solver="global"``)
-----------------------------------------
* Everything is computed in float64.  ``Y`` is first scaled by an exact
  power of two so that squares neither overflow nor underflow; the scale
  is undone exactly on the outputs.
* Singular values come from LAPACK ``gesdd`` (no singular vectors) for
  small or near-square inputs.  When ``M >= 2 L`` or ``L >= 1024`` they
  are computed as the square roots of the eigenvalues of the ``L x L``
  Gram matrix ``Y Y^T`` (accumulated over column blocks, so a float32
  input is never copied to float64 as a whole); tiny negative eigenvalues
  from rounding are clipped to zero.  This is several times faster and
  accurate to ``~ eps * gamma_1^2 / gamma_h`` in ``gamma_h``, far below
  any noise level of interest.
* The lower end of the interval (E6) is raised, if needed, so that the
  threshold (E2) at ``sigma^2 = lower end`` is at least the numerical
  resolution of the computed singular values (``gamma_1 * max(L, M) *
  eps`` for ``gesdd``, ``gamma_1 * sqrt(max(L, M) * eps)`` for the Gram
  route).  Without this an exactly low-rank, noise-free matrix would have
  its free energy decrease without bound as ``sigma^2 -> 0`` and rounding
  errors could be counted as components.
* If the interval is empty (e.g. a single row: ``H_bar = 0`` makes both
  ends equal), ``sigma_hat^2`` is its upper end.

Edge cases
----------
* All-zero ``Y``: rank 0, all singular values 0, and, when ``sigma2`` is
  estimated, ``sigma2 = 0.0`` and ``threshold = 0.0``.
* One row or one column with ``sigma2=None``: the lower and upper bounds
  (E6) coincide, so ``sigma_hat^2 = ||Y||^2 / M`` and the rank is 0 -- a
  single vector cannot separate signal from noise.  With a given
  ``sigma2`` the rank can be 1.
* More generally, with ``sigma2=None`` at most ``H_bar = ceil(L M / (L +
  M)) - 1`` components can be retained, so ``L M <= L + M`` (one row or
  column, or a 2 x 2 matrix) always gives rank 0.
* A constant (all equal, non-zero) matrix is exactly rank 1: rank 1 is
  returned, with or without added noise (when ``H_bar >= 1`` and the noise
  is small compared with the constant).
* The estimate of ``sigma^2`` is a variance: for entries above ~1e154 it
  overflows to ``inf`` (the rank and the threshold are still computed).
  The reference solver works in the units of ``Y`` and refuses such a
  matrix (its squares overflow; its tolerance is absolute, so scaling
  would change its result).
* The reference solver keeps no floor: on an exactly low-rank, noise-free
  matrix its answer is whatever the search makes of rounding-level
  singular values (an exactly zero one makes (R3) infinite everywhere).

References
----------
.. [1] S. Nakajima, M. Sugiyama, S. D. Babacan and R. Tomioka, "Global
   analytic solution of fully-observed variational Bayesian matrix
   factorization", Journal of Machine Learning Research, 14:1-37, 2013.
.. [2] S. Nakajima, R. Tomioka, M. Sugiyama and S. D. Babacan, "Perfect
   dimensionality recovery by variational Bayesian PCA", Advances in
   Neural Information Processing Systems 25 (NIPS 2012), pp. 971-979.
.. [3] S. Nakajima, R. Tomioka, M. Sugiyama and S. D. Babacan, "Condition
   for perfect dimensionality recovery by variational Bayesian PCA",
   Journal of Machine Learning Research, 16:3757-3811, 2015.
.. [4] Y.-D. Kim, E. Park, S. Yoo, T. Choi, L. Yang and D. Shin,
   "Compression of deep convolutional neural networks for fast and low
   power mobile applications", ICLR 2016, Sec. 3.2.
.. [5] C. van den Boogaard, "VBMF", Python port of S. Nakajima's MATLAB
   code for (E)VBMF, https://github.com/CasvandenBogaard/VBMF (``VBMF.py``,
   function ``EVBMF``).
.. [6] J. Gildenblat, "pytorch-tensor-decompositions",
   https://github.com/jacobgil/pytorch-tensor-decompositions
   (``estimate_ranks`` in ``decompositions.py``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import linalg as _sla
from scipy import optimize as _opt

__all__ = ["VBMFResult", "evbmf", "SOLVERS"]

#: The noise-variance solvers of :func:`evbmf`, the default first.
SOLVERS = ("reference", "global")

_EPS = float(np.finfo(np.float64).eps)
# The reference port's approximation of tau_underbar / sqrt(alpha), (R1).
_REFERENCE_TAU = 2.5129
# scipy's defaults for minimize_scalar(method="bounded"), which the port
# leaves as they are, (R4): pinned so that a new scipy default cannot move it.
_REFERENCE_SEARCH = {"xatol": 1e-5, "maxiter": 500}
_GRID_SIZE = 256
# Column block (of the L x M working matrix) used to accumulate Y Y^T.
_GRAM_BLOCK = 2048


@dataclass(frozen=True)
class VBMFResult:
    """Outcome of :func:`evbmf`.

    Attributes
    ----------
    rank : int
        Number of retained components, i.e. of singular values strictly
        above ``threshold``.  May be 0.
    sigma2 : float
        Noise variance: the empirical-Bayes estimate when ``sigma2=None``
        was passed to :func:`evbmf`, otherwise the given value.  It is the
        value *before* the ``weaken`` factor is applied.
    threshold : float
        Singular-value threshold ``gamma_underbar`` actually used, i.e.
        computed from ``weaken * sigma2``.
    singular_values : numpy.ndarray
        All ``min(L, M)`` singular values of ``Y`` in descending order
        (float64).
    estimates : numpy.ndarray
        EVB shrinkage estimates ``gamma_hat`` of the retained components,
        descending, of length ``rank`` (float64).  Each lies strictly
        between 0 and the corresponding singular value.
    """

    rank: int
    sigma2: float
    threshold: float
    singular_values: np.ndarray
    estimates: np.ndarray


def _param_error(name, requirement, value):
    return ValueError(
        f"The {name!r} parameter of evbmf must be {requirement}. "
        f"Got {value!r} instead."
    )


def _is_real_scalar(value):
    return isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_)
    )


def _validate_Y(Y):
    try:
        arr = np.asarray(Y)
    except Exception as exc:  # ragged nested sequences and the like
        raise ValueError(
            "The 'Y' parameter of evbmf must be a 2-D array of real numbers. "
            f"Got {type(Y).__name__} instead."
        ) from exc
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            "The 'Y' parameter of evbmf must be a 2-D array with at least one "
            f"row and one column. Got shape {arr.shape} instead."
        )
    if np.iscomplexobj(arr):
        raise ValueError(
            "The 'Y' parameter of evbmf must be a 2-D array of real numbers. "
            f"Got dtype {arr.dtype} instead."
        )
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                "The 'Y' parameter of evbmf must be a 2-D array of real "
                f"numbers. Got dtype {arr.dtype} instead."
            ) from exc
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float64)
    return arr


def _max_abs(arr):
    """Largest absolute entry; NaN if any entry is NaN, inf if any is inf."""
    hi = float(np.max(arr))
    lo = float(np.min(arr))
    return max(hi, -lo) if not (math.isnan(hi) or math.isnan(lo)) else math.nan


def _ldexp(value, exp):
    """``value * 2**exp`` without raising on overflow (gives inf instead)."""
    with np.errstate(over="ignore", under="ignore"):
        out = np.ldexp(value, exp)
    return float(out) if np.ndim(out) == 0 else out


def _tau_underbar(alpha):
    """Positive root of (E1): log(tau+1) + alpha log(tau/alpha+1) - tau = 0."""

    def g(tau):
        return math.log1p(tau) + alpha * math.log1p(tau / alpha) - tau

    lo = math.sqrt(alpha)  # g(sqrt(alpha)) > 0 for every alpha in (0, 1]
    while g(lo) <= 0.0:  # pragma: no cover - defensive only
        lo *= 0.5
    hi = 2.0 * lo + 1.0
    while g(hi) >= 0.0:
        hi *= 2.0
    return _opt.brentq(g, lo, hi, xtol=1e-300, rtol=4.0 * _EPS, maxiter=500)


def _tau(x, alpha):
    """(E3): larger root of tau^2 - (x - 1 - alpha) tau + alpha = 0."""
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _psi(x, alpha):
    """Free-energy gain of a retained component, (E5); < 0 above x_underbar."""
    tau = _tau(x, alpha)
    return np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau


def _singular_values(arr, transpose, scale_exp):
    """Descending singular values of ``arr * 2**-scale_exp`` and their
    numerical resolution (as a fraction of the largest one).

    ``transpose`` says the working matrix is ``arr.T`` (so that L <= M).
    """
    work = arr.T if transpose else arr
    L, M = work.shape
    if M >= 2 * L or L >= 1024:
        gram = np.zeros((L, L), dtype=np.float64)
        for start in range(0, M, _GRAM_BLOCK):
            block = work[:, start:start + _GRAM_BLOCK].astype(
                np.float64, order="C", copy=True
            )
            np.ldexp(block, -scale_exp, out=block)
            gram += block @ block.T
        eig = _sla.eigh(
            gram,
            eigvals_only=True,
            overwrite_a=True,
            check_finite=False,
            driver="evd",
        )
        eig = np.clip(eig[::-1], 0.0, None)
        sv = np.sqrt(eig)
        resolution = math.sqrt(max(L, M) * _EPS)
    else:
        scaled = np.ldexp(np.asarray(work, dtype=np.float64), -scale_exp)
        sv = _sla.svd(
            scaled,
            compute_uv=False,
            overwrite_a=True,
            check_finite=False,
            lapack_driver="gesdd",
        )
        resolution = max(L, M) * _EPS
    sv = np.sort(np.asarray(sv, dtype=np.float64))[::-1]
    return sv, resolution


def _estimate_sigma2(g2, L, M, alpha, x_under, floor):
    """(E6)-(E7): minimize the free energy (E5) over sigma^2."""
    total = float(np.sum(g2))
    upper = total / (L * M)
    # H_bar = ceil(L / (1 + alpha)) - 1 = ceil(L M / (L + M)) - 1, H = L.
    h_bar = min(-(-(L * M) // (L + M)) - 1, L)
    lower = max(
        float(g2[h_bar]) / (M * x_under),
        float(np.sum(g2[h_bar:])) / (M * (L - h_bar)),
        floor,
    )
    if not lower < upper:
        return upper

    def objective(log_s2):
        log_s2 = np.atleast_1d(np.asarray(log_s2, dtype=np.float64))
        s2 = np.exp(log_s2)
        x = g2[None, :] / (M * s2[:, None])
        keep = x > x_under
        gain = np.zeros_like(x)
        gain[keep] = _psi(x[keep], alpha)
        return L * log_s2 + total / (M * s2) + gain.sum(axis=1)

    lo, hi = math.log(lower), math.log(upper)
    grid = np.linspace(lo, hi, _GRID_SIZE)
    values = objective(grid)
    best = int(np.argmin(values))
    a = grid[max(best - 1, 0)]
    b = grid[min(best + 1, _GRID_SIZE - 1)]
    res = _opt.minimize_scalar(
        lambda t: float(objective(t)[0]),
        bounds=(a, b),
        method="bounded",
        options={"xatol": 1e-10 * max(1.0, abs(a), abs(b)), "maxiter": 500},
    )
    best_t, best_f = grid[best], values[best]
    if np.isfinite(res.fun) and res.fun < best_f:
        best_t = min(max(float(res.x), lo), hi)
    return math.exp(best_t)


def _reference_sigma2(g2, L, M, alpha, tau_u):
    """(R2)-(R4): the reference port's bounded search of (R3) for sigma^2."""
    x_u = (1 + tau_u) * (1 + alpha / tau_u)
    # H_bar as the port computes it, from a float ratio; g2[h_bar] is the
    # (H_bar + 1)-th squared singular value.
    h_bar = int(min(math.ceil(L / (1 + alpha)) - 1, L))
    upper = float(np.sum(g2)) / (L * M)
    lower = max(float(g2[h_bar]) / (M * x_u), float(np.mean(g2[h_bar:])) / M)
    lower = min(lower, upper)  # equal in exact arithmetic for a single row

    def objective(s2):
        x = g2 / (M * s2)
        big = x > x_u
        small, large = x[~big], x[big]
        tau = 0.5 * (large - (1 + alpha)
                     + np.sqrt((large - (1 + alpha)) ** 2 - 4 * alpha))
        return (np.sum(small - np.log(small)) + np.sum(large - tau)
                + np.sum(np.log((tau + 1) / large))
                + alpha * np.sum(np.log(tau / alpha + 1)))

    # f_R is inf everywhere when a gamma_h is exactly 0; the search then
    # subtracts infinities, as the port's does, quietly here.
    with np.errstate(divide="ignore", invalid="ignore"):
        res = _opt.minimize_scalar(objective, bounds=(lower, upper),
                                   method="bounded", options=_REFERENCE_SEARCH)
    return float(res.x)


def _evbmf_reference(arr, sigma2, weaken, amax):
    """:func:`evbmf` with ``solver="reference"``, (R1)-(R5)."""
    work = arr.T if arr.shape[0] > arr.shape[1] else arr
    L, M = work.shape
    alpha = L / M
    tau_u = _REFERENCE_TAU * math.sqrt(alpha)
    if amax == 0.0:
        s2 = 0.0 if sigma2 is None else float(sigma2)
        return VBMFResult(
            rank=0,
            sigma2=s2,
            threshold=math.sqrt(M * (weaken * s2) * (1 + tau_u)
                                * (1 + alpha / tau_u)),
            singular_values=np.zeros(L, dtype=np.float64),
            estimates=np.zeros(0, dtype=np.float64),
        )
    sv = np.linalg.svd(np.asarray(work, dtype=np.float64), compute_uv=False)
    with np.errstate(over="ignore"):
        g2 = sv ** 2
        total = float(np.sum(g2))
    if not math.isfinite(total):
        raise ValueError(
            "The 'Y' parameter of evbmf must have a finite sum of squares "
            "with solver='reference' (it works in the units of Y). Got "
            f"entries up to {amax!r} instead."
        )
    s2 = (_reference_sigma2(g2, L, M, alpha, tau_u) if sigma2 is None
          else float(sigma2))
    threshold = math.sqrt(M * (weaken * s2) * (1 + tau_u) * (1 + alpha / tau_u))
    keep = sv > threshold
    rank = int(np.count_nonzero(keep))
    x = g2[keep] / (M * (weaken * s2))
    return VBMFResult(
        rank=rank,
        sigma2=s2,
        threshold=threshold,
        singular_values=sv,
        estimates=sv[keep] * _tau(x, alpha) / x if rank
        else np.zeros(0, dtype=np.float64),
    )


def evbmf(Y, sigma2=None, weaken=1.0, solver="reference"):
    """Estimate the rank of a matrix by analytic empirical VBMF.

    Computes the singular values ``gamma_h`` of ``Y``, estimates the noise
    variance by minimizing the EVB free energy (unless it is given), and
    keeps the components whose singular value exceeds the EVB threshold
    ``gamma_underbar = sqrt(M sigma^2 (1 + tau)(1 + alpha / tau))``.  See
    the module docstring for the model, the equations (E1)-(E7) of the
    global solver and the steps (R1)-(R5) of the reference solver.

    Parameters
    ----------
    Y : array_like of shape (L, M)
        Real 2-D matrix with finite entries (any real dtype; computation is
        in float64).  ``L > M`` is handled by transposing; the result does
        not depend on the orientation.
    sigma2 : float > 0 or None, default=None
        Noise variance.  ``None`` estimates it by minimizing the free energy
        (E5) over the interval (E6); a given value is used as is.
    weaken : float > 0, default=1.0
        Factor multiplying the noise variance (estimated or given) before
        the threshold and the shrinkage estimates are computed, so the
        threshold scales with ``sqrt(weaken)``.  ``weaken < 1`` keeps
        more components (never fewer than ``weaken=1``), ``weaken > 1``
        keeps fewer.  The reported ``sigma2`` is the value before this
        factor; ``threshold`` includes it.
    solver : {"reference", "global"}, default="reference"
        How ``sigma^2`` is estimated and ``tau_underbar`` computed.
        ``"reference"``: as the public Python port of Nakajima's EVBMF
        [3]_ does, so that the ranks are the port's -- ``tau_underbar =
        2.5129 sqrt(alpha)`` and a bounded Brent search with an absolute
        tolerance of 1e-5, which can stop at a local minimum, (R1)-(R5).
        ``"global"``: the exact ``tau_underbar`` (E1) and the global
        minimum of the free energy (E5) over the interval (E6), found by a
        grid and a refinement (E7).  Where the two ranks differ, the
        reference search stopped away from that minimum (or the
        approximate ``tau_underbar`` moved the threshold) and ``global``
        has the lower free energy.

    Returns
    -------
    VBMFResult
        ``rank``, ``sigma2``, ``threshold``, ``singular_values`` (all of
        them, descending) and ``estimates`` (the EVB shrinkage estimates
        (E4) of the retained components).

    Raises
    ------
    ValueError
        If ``Y`` is not a non-empty 2-D real array, contains NaN or
        infinity, or if ``sigma2`` or ``weaken`` is not a finite float > 0
        (``sigma2`` may also be ``None``), or ``solver`` is not one of
        ``SOLVERS``; with ``solver="reference"``, if the squares of ``Y``
        overflow (entries above ~1e154).

    Notes
    -----
    The result is deterministic.  With ``sigma2=None`` a single row or
    column always gives rank 0 and an all-zero matrix gives rank 0 with
    ``sigma2 == threshold == 0.0``.

    References
    ----------
    .. [1] S. Nakajima, M. Sugiyama, S. D. Babacan and R. Tomioka, "Global
       analytic solution of fully-observed variational Bayesian matrix
       factorization", JMLR 14:1-37, 2013.
    .. [2] S. Nakajima, R. Tomioka, M. Sugiyama and S. D. Babacan, "Perfect
       dimensionality recovery by variational Bayesian PCA", NIPS 2012.
    .. [3] C. van den Boogaard, "VBMF" (``VBMF.py``, ``EVBMF``),
       https://github.com/CasvandenBogaard/VBMF

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.standard_normal((60, 3)) @ rng.standard_normal((3, 200))
    >>> Y = signal + 0.1 * rng.standard_normal((60, 200))
    >>> evbmf(Y).rank
    3
    >>> evbmf(Y, solver="global").rank
    3
    """
    arr = _validate_Y(Y)
    if sigma2 is not None and not (
        _is_real_scalar(sigma2) and math.isfinite(sigma2) and sigma2 > 0
    ):
        raise _param_error("sigma2", "a float > 0 or None", sigma2)
    if not (_is_real_scalar(weaken) and math.isfinite(weaken) and weaken > 0):
        raise _param_error("weaken", "a float > 0", weaken)
    if not (isinstance(solver, str) and solver in SOLVERS):
        raise _param_error(
            "solver", "one of " + ", ".join(map(repr, SOLVERS)), solver
        )
    amax = _max_abs(arr)
    if not math.isfinite(amax):
        raise ValueError(
            "The 'Y' parameter of evbmf must not contain NaN or infinity."
        )
    weaken = float(weaken)
    if solver == "reference":
        return _evbmf_reference(arr, sigma2, weaken, amax)

    transpose = arr.shape[0] > arr.shape[1]
    L, M = (arr.shape[1], arr.shape[0]) if transpose else arr.shape
    alpha = L / M
    x_under = (lambda t: (1.0 + t) * (1.0 + alpha / t))(_tau_underbar(alpha))
    empty = np.zeros(0, dtype=np.float64)

    if amax == 0.0:
        s2 = 0.0 if sigma2 is None else float(sigma2)
        return VBMFResult(
            rank=0,
            sigma2=s2,
            threshold=math.sqrt(M * weaken * s2 * x_under),
            singular_values=np.zeros(L, dtype=np.float64),
            estimates=empty,
        )

    # Work on Y * 2**-e with max |entry| in [1, 2): exact, overflow-safe.
    scale_exp = math.frexp(amax)[1] - 1
    sv, resolution = _singular_values(arr, transpose, scale_exp)
    g2 = sv * sv

    if sigma2 is None:
        floor = (resolution * sv[0]) ** 2 / (M * x_under)
        s2 = _estimate_sigma2(g2, L, M, alpha, x_under, floor)
    else:
        s2 = _ldexp(float(sigma2), -2 * scale_exp)

    s2_used = weaken * s2
    threshold = math.sqrt(M * s2_used * x_under)
    keep = sv > threshold
    rank = int(np.count_nonzero(keep))
    if rank:
        x = g2[keep] / (M * s2_used)
        estimates = sv[keep] * _tau(x, alpha) / x
    else:
        estimates = empty

    return VBMFResult(
        rank=rank,
        sigma2=float(sigma2) if sigma2 is not None
        else _ldexp(s2, 2 * scale_exp),
        threshold=_ldexp(threshold, scale_exp),
        singular_values=_ldexp(sv, scale_exp),
        estimates=_ldexp(estimates, scale_exp),
    )
