"""The one place where TensorLy is called (pinned: tensorly 0.10.0).

:func:`partial_tucker` runs TensorLy's HOOI on some modes of a tensor and
returns ``(core, factors)`` in float64; :func:`parafac` runs its CP-ALS and
returns ``(weights, factors, errors)``.  Every call of TensorLy goes through
them, so a TensorLy upgrade (its ``partial_tucker`` changed its return value
between releases) touches this module alone.  Tucker-1 and SVD use
:func:`partial_tucker` (one mode, no sweeps), CP :func:`parafac`; Tucker-2 and
the block terms use the numpy HOOI of :mod:`caffe_tucker.compress.hooi`,
faster on large kernels (issue 13), which the tests compare with
:func:`partial_tucker`.

Two things are done differently from TensorLy's defaults, both for speed and
neither changing the result beyond float rounding:

* the SVDs (the HOSVD start and every HOOI sweep) use :func:`leading_svd`,
  the leading eigenvectors of the smaller Gram matrix, instead of a full
  LAPACK SVD;
* with a single mode the truncated HOSVD start is already optimal
  (Eckart-Young), so no sweeps are run.

References
----------
.. [1] L. De Lathauwer, B. De Moor, J. Vandewalle, "On the best rank-1 and
       rank-(R1, R2, ..., RN) approximation of higher-order tensors", SIAM J.
       Matrix Anal. Appl. 21(4), 2000.
.. [2] T. G. Kolda, B. W. Bader, "Tensor decompositions and applications",
       SIAM Review 51(3), 2009.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import tensorly as tl
import tensorly.tenalg.svd
from tensorly.decomposition import parafac as _tensorly_parafac
from tensorly.decomposition import partial_tucker as _tensorly_partial_tucker

from caffe_tucker.compress.linalg import DIRECT_SVD_MAX, leading_eigh

__all__ = ["partial_tucker", "parafac", "leading_svd", "HOOI_MAX_ITER", "HOOI_TOL",
           "CP_MAX_ITER", "CP_TOL"]

#: HOOI stops after this many sweeps, or when the relative error changes by less than HOOI_TOL.
HOOI_MAX_ITER = 5
HOOI_TOL = 1e-4
#: CP-ALS stops after this many sweeps, or when the relative error changes by less than CP_TOL.
CP_MAX_ITER = 500
CP_TOL = 1e-6


def leading_svd(matrix, n_eigenvecs=None, **_kwargs):
    """Leading ``n_eigenvecs`` singular triplets ``(U, S, V)``, fast for the unfoldings seen here.

    HOOI needs only the leading left singular vectors of wide unfoldings
    (m rows ≤ n columns).  For those, the leading eigenpairs of the m × m
    Gram matrix (:func:`caffe_tucker.compress.linalg.leading_eigh`) are much
    cheaper than an SVD: AlexNet fc6's 4096 × 7560 unfolding takes 10 s
    instead of 62 s here.  The eigenvectors are orthonormal even where
    singular values vanish, so a full-rank decomposition stays exact.  Tall
    or tiny matrices use LAPACK's SVD.  TensorLy fixes the signs afterwards.
    """
    x = np.asarray(matrix, dtype=np.float64)
    m, n = x.shape
    k = min(n_eigenvecs or min(m, n), m, n)
    if m > n or m <= DIRECT_SVD_MAX:
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    w, u = leading_eigh(x @ x.T, k)
    s = np.sqrt(np.clip(w, 0.0, None))
    vt = (u.T @ x) / np.where(s > 0, s, 1.0)[:, None]
    return u, s, vt


@contextlib.contextmanager
def _leading_svd_in_hooi():
    """Make ``partial_tucker``'s HOOI sweeps use :func:`leading_svd` too.

    TensorLy 0.10's ``partial_tucker`` passes its ``svd`` argument to the
    initialisation only; the sweeps call ``svd_interface`` with the default
    ``"truncated_svd"``, a full LAPACK SVD.  The sweeps look the function up
    in ``tensorly.tenalg.svd`` at call time, so it is swapped there for the
    duration of one call and restored afterwards.
    """
    module = tensorly.tenalg.svd
    saved = module.truncated_svd
    module.truncated_svd = leading_svd
    try:
        yield
    finally:
        module.truncated_svd = saved


def partial_tucker(tensor: np.ndarray, ranks, modes):
    """TensorLy's HOOI on ``modes`` with the given ``ranks``; returns ``(core, factors)`` (float64).

    Started from the (deterministic) truncated HOSVD; factors are orthonormal
    with TensorLy's ``svd_flip`` sign convention, so the same tensor gives
    the same factors.
    """
    tl.set_backend("numpy")
    sweeps = HOOI_MAX_ITER if len(modes) > 1 else 0
    with _leading_svd_in_hooi():
        (core, factors), _errors = _tensorly_partial_tucker(
            tensor.astype(np.float64, copy=False), rank=list(ranks), modes=list(modes),
            n_iter_max=sweeps, tol=HOOI_TOL, init="svd", svd=leading_svd, random_state=0)
    return np.asarray(core), [np.asarray(f) for f in factors]


def parafac(tensor: np.ndarray, rank: int, n_iter_max: int = CP_MAX_ITER, tol: float = CP_TOL):
    """TensorLy's CP-ALS at ``rank``; returns ``(weights, factors, errors)`` (float64).

    ``tensor ≈ Σ_r weights[r] · factors[0][:, r] ⊗ factors[1][:, r] ⊗ ...`` with unit-norm
    factor columns; ``errors`` is TensorLy's relative error after each sweep.  Started from
    the SVDs of the unfoldings (TensorLy's ``init="svd"``; where a mode is smaller than the
    rank, the missing columns are drawn with ``random_state=0``), so the same tensor gives
    the same factors.  Nothing here judges the result: ALS can diverge or stall, and the
    caller checks (NaN, error, degenerate components).
    """
    tl.set_backend("numpy")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # "n_eigenvecs larger than min(matrix.shape)": the rank exceeds a mode (3×3 kernels);
        # TensorLy then completes that mode's start at random (random_state=0), as documented.
        warnings.simplefilter("ignore", UserWarning)
        cp, errors = _tensorly_parafac(
            tensor.astype(np.float64, copy=False), rank=int(rank), n_iter_max=n_iter_max,
            init="svd", tol=tol, random_state=0, normalize_factors=True, return_errors=True)
        weights, factors = cp
        factors = [np.asarray(f, dtype=np.float64) for f in factors]
        weights = np.asarray(weights, dtype=np.float64).copy()
        for i, f in enumerate(factors):  # unit columns, whatever the last sweep left
            norms = np.linalg.norm(f, axis=0)
            factors[i] = f / np.where(norms > 0, norms, 1.0)
            weights *= norms
    return weights, factors, [float(e) for e in errors]
