"""The two dense linear-algebra kernels every decomposition needs, and how they are computed fast.

* :func:`singular_values`: all singular values of a matrix, from the eigenvalues of its smaller
  Gram matrix (``x xᵀ`` or ``xᵀ x``).  On the unfoldings of convolution and fully connected
  kernels, which are wide (AlexNet fc6's input-mode unfolding is 256 × 147456), that is 5–60×
  faster than LAPACK's SVD (``gesdd``) with values only, and agrees with it to ~1e-14 of the
  largest singular value; values below about ``sqrt(eps)`` of the largest are resolved only to
  that absolute accuracy, which no rank rule here looks at.
* :func:`leading_vectors`: the ``k`` leading left singular vectors of a wide matrix, as the
  leading eigenvectors of its Gram matrix.  Which LAPACK eigensolver is faster depends on the
  fraction wanted (measured on this project's machine, OpenBLAS, 4096 × 4096 Gram matrix):
  ``syevr`` on the subset for k ≤ n/4 (k = 584: 3.8 s against 6.6 s for the full ``syevd``),
  the full divide-and-conquer ``syevd`` above that (k = n/2: 6.9 s against 11.4 s), and
  ``syevd`` for every matrix up to 1024 rows, where the subset never paid.

Both are deterministic for the same input and BLAS, and run matrices below 1024 rows on one BLAS
thread (:func:`caffe_tucker.compress.blas.small_matrix_limits`).  Tall, tiny matrices go to LAPACK's SVD.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from caffe_tucker.compress.blas import small_matrix_limits

__all__ = ["singular_values", "leading_vectors", "leading_eigh", "fix_signs", "sum_squares"]

#: Matrices with at most this many rows use LAPACK's SVD instead of the Gram matrix.
DIRECT_SVD_MAX = 32
#: The subset eigensolver (syevr) is used for at most this fraction of the eigenvectors ...
SUBSET_MAX_FRACTION = 0.25
#: ... of a Gram matrix with more rows than this.
SUBSET_MIN_ROWS = 1024


def _gram(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``x xᵀ`` for a wide ``x`` (rows ≤ columns), else ``xᵀ x``: the smaller Gram matrix."""
    x = x.astype(dtype, copy=False)
    return x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x


def singular_values(x: np.ndarray) -> np.ndarray:
    """All ``min(m, n)`` singular values of ``x`` (m × n), descending, float64.

    From ``scipy.linalg.eigh(..., eigvals_only=True)`` of the smaller Gram matrix (negative
    rounding clipped to 0); matrices with at most :data:`DIRECT_SVD_MAX` rows and columns by
    LAPACK's SVD.
    """
    x = np.asarray(x, dtype=np.float64)
    if min(x.shape) == 0:
        return np.zeros(0)
    if max(x.shape) <= DIRECT_SVD_MAX:
        return np.linalg.svd(x, compute_uv=False)
    with small_matrix_limits(min(x.shape)):
        w = scipy.linalg.eigh(_gram(x), eigvals_only=True, driver="evd", overwrite_a=True,
                              check_finite=False)
    return np.sqrt(np.clip(w[::-1], 0.0, None))


def leading_eigh(gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(w, v)``: the ``k`` largest eigenvalues of a symmetric matrix, descending, and their
    eigenvectors (columns); the solver as the module docstring says."""
    n = gram.shape[0]
    k = min(int(k), n)
    if n > SUBSET_MIN_ROWS and k <= SUBSET_MAX_FRACTION * n:
        w, v = scipy.linalg.eigh(gram, subset_by_index=[n - k, n - 1], driver="evr",
                                 overwrite_a=True, check_finite=False)
    else:
        w, v = scipy.linalg.eigh(gram, driver="evd", overwrite_a=True, check_finite=False)
        w, v = w[n - k:], v[:, n - k:]
    return w[::-1], v[:, ::-1]


def fix_signs(u: np.ndarray) -> np.ndarray:
    """Columns with their largest-magnitude entry positive (the same input, the same factors)."""
    rows = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[rows, np.arange(u.shape[1])])
    return u * np.where(signs == 0, 1.0, signs)


def leading_vectors(x: np.ndarray, k: int, gram_dtype=np.float64):
    """``(U, energy)``: the ``k`` leading left singular vectors of ``x`` (m × n) and Σ σ².

    ``U`` is orthonormal, float64, with fixed signs (:func:`fix_signs`); ``energy`` is the sum
    of the ``k`` leading squared singular values (the squared norm of ``Uᵀ x``).

    Eigenvectors of the m × m Gram matrix ``x xᵀ`` (computed in ``gram_dtype``) by
    :func:`leading_eigh`; small matrices (m ≤ 32) by LAPACK's SVD.  Orthonormal even where
    singular values vanish, so a full-rank decomposition stays exact.
    """
    m = x.shape[0]
    k = min(int(k), m)
    if m <= DIRECT_SVD_MAX:
        u, sv, _vt = np.linalg.svd(x.astype(np.float64, copy=False), full_matrices=True)
        u, energy = u[:, :k], float(np.sum(sv[:k] ** 2))
    else:
        xg = x.astype(gram_dtype, copy=False)
        with small_matrix_limits(m):
            w, u = leading_eigh(xg @ xg.T, k)
        u, energy = u.astype(np.float64), float(np.sum(w, dtype=np.float64))
        if gram_dtype != np.float64:  # re-orthonormalise the float32 vectors in float64
            u, _r = np.linalg.qr(u)
    return fix_signs(u), energy


def sum_squares(x: np.ndarray, block: int = 1 << 20) -> float:
    """``Σ x²`` in float64, in blocks of ``block`` elements (no float64 copy of a float32 array,
    no temporary of its size)."""
    flat = np.asarray(x).reshape(-1)
    total = 0.0
    for start in range(0, flat.size, block):
        part = flat[start:start + block].astype(np.float64, copy=False)
        total += float(np.dot(part, part))
    return total
