"""Stage 4, decompose: Tucker-2, Tucker-1 and SVD of kernels (Kim et al., Sec. 3.1).

With a Caffe kernel ``W`` of shape ``(T, S, D, D)`` (one group):

Tucker-2 (paper eq. 2)
    ``W[t, s, i, j] ≈ Σ_{r3, r4} C[r4, r3, i, j] · U3[s, r3] · U4[t, r4]``, computed
    by higher-order orthogonal iteration (HOOI; De Lathauwer et al. 2000)
    over the two channel modes, started from the truncated HOSVD.
Tucker-1
    ``W[t, s, i, j] ≈ Σ_{r4} U4[t, r4] · C[r4, s, i, j]``: only the output mode.
SVD
    ``W[n, k] ≈ Σ_r U[n, r] · C[r, k]`` for a fully connected weight matrix.

All three go through :func:`_partial_tucker`, the single place where
TensorLy's ``partial_tucker`` is called (its return value changed between
releases; the project pins tensorly 0.10.0, which returns
``((core, factors), rec_errors)``).  Factors are orthonormal, signs are
fixed by TensorLy's ``svd_flip`` convention, and the initialisation is the
(deterministic) HOSVD, so the same kernel gives the same factors.

References
----------
.. [1] Y.-D. Kim et al., "Compression of Deep Convolutional Neural Networks
       for Fast and Low Power Mobile Applications", ICLR 2016.
.. [2] L. De Lathauwer, B. De Moor, J. Vandewalle, "On the best rank-1 and
       rank-(R1, R2, ..., RN) approximation of higher-order tensors", SIAM J.
       Matrix Anal. Appl. 21(4), 2000.
.. [3] T. G. Kolda, B. W. Bader, "Tensor decompositions and applications",
       SIAM Review 51(3), 2009.
"""

from __future__ import annotations

from dataclasses import dataclass

import contextlib

import numpy as np
import scipy.linalg
import tensorly as tl
import tensorly.tenalg.svd
from tensorly.decomposition import partial_tucker

from caffe_tucker.graph import Net
from caffe_tucker.compress.ranks import RankChoice, kernel_groups
from caffe_tucker.analysis.shapes import ShapeInfo

__all__ = ["Decomposition", "decompose_layer", "kernel_from_new_layers", "tucker2", "tucker1", "svd_factors",
           "reconstruct", "HOOI_MAX_ITER", "HOOI_TOL"]

#: HOOI stops after this many sweeps, or when the relative error changes by less than HOOI_TOL.
HOOI_MAX_ITER = 5
HOOI_TOL = 1e-4
#: Wide matrices with more rows than this use the Gram-matrix eigensolver.
_DIRECT_SVD_MAX = 32


def _leading_svd(matrix, n_eigenvecs=None, **_kwargs):
    """Leading ``n_eigenvecs`` singular triplets ``(U, S, V)``, fast for the unfoldings seen here.

    HOOI needs only the leading left singular vectors of wide unfoldings
    (m rows ≤ n columns).  For those, the leading eigenpairs of the m × m
    Gram matrix (``scipy.linalg.eigh`` with ``subset_by_index``) are much
    cheaper than an SVD: AlexNet fc6's 4096 × 7560 unfolding takes 10 s
    instead of 62 s here, VGG-16's 512 × 1900 ones a third of the time.  The
    eigenvectors are orthonormal even where singular values vanish, so a
    full-rank decomposition stays exact.  Tall or tiny matrices use LAPACK's
    SVD.  TensorLy fixes the signs afterwards.
    """
    x = np.asarray(matrix, dtype=np.float64)
    m, n = x.shape
    k = min(n_eigenvecs or min(m, n), m, n)
    if m > n or m <= _DIRECT_SVD_MAX:
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    w, u = scipy.linalg.eigh(x @ x.T, subset_by_index=[m - k, m - 1], driver="evr")
    w, u = w[::-1], u[:, ::-1]
    s = np.sqrt(np.clip(w, 0.0, None))
    vt = (u.T @ x) / np.where(s > 0, s, 1.0)[:, None]
    return u, s, vt


@contextlib.contextmanager
def _leading_svd_in_hooi():
    """Make ``partial_tucker``'s HOOI sweeps use :func:`_leading_svd` too.

    TensorLy 0.10's ``partial_tucker`` passes its ``svd`` argument to the
    initialisation only; the sweeps call ``svd_interface`` with the default
    ``"truncated_svd"``, a full LAPACK SVD (62 s for AlexNet fc6's 4096 × 7560
    unfolding here, against 10 s for its 584 leading vectors).  The sweeps look
    the function up in ``tensorly.tenalg.svd`` at call time, so it is swapped
    there for the duration of one call and restored afterwards.
    """
    module = tensorly.tenalg.svd
    saved = module.truncated_svd
    module.truncated_svd = _leading_svd
    try:
        yield
    finally:
        module.truncated_svd = saved


def _partial_tucker(tensor: np.ndarray, ranks: list[int], modes: list[int]):
    """TensorLy's HOOI on ``modes``; returns ``(core, factors)`` (float64)."""
    tl.set_backend("numpy")
    # With one mode the truncated HOSVD start is already optimal (Eckart-Young): no sweeps.
    sweeps = HOOI_MAX_ITER if len(modes) > 1 else 0
    with _leading_svd_in_hooi():
        (core, factors), _errors = partial_tucker(
            tensor.astype(np.float64, copy=False), rank=list(ranks), modes=list(modes),
            n_iter_max=sweeps, tol=HOOI_TOL, init="svd", svd=_leading_svd, random_state=0)
    return np.asarray(core), [np.asarray(f) for f in factors]


def tucker2(kernel: np.ndarray, r3: int, r4: int):
    """Tucker-2 of a ``(T, S, kh, kw)`` kernel.

    Returns
    -------
    u3 : ndarray, shape (S, R3)
    core : ndarray, shape (R4, R3, kh, kw)
    u4 : ndarray, shape (T, R4)
    """
    core, (u4, u3) = _partial_tucker(kernel, [r4, r3], [0, 1])
    return u3, core, u4


def tucker1(kernel: np.ndarray, r4: int):
    """Tucker-1 (output mode) of a ``(T, S, kh, kw)`` kernel: ``core (R4, S, kh, kw)``, ``u4 (T, R4)``."""
    core, (u4,) = _partial_tucker(kernel, [r4], [0])
    return core, u4


def svd_factors(matrix: np.ndarray, r: int):
    """Rank-``r`` truncated SVD of an ``(N, K)`` matrix: ``c (R, K)``, ``u (N, R)`` with ``u @ c ≈ W``."""
    core, (u,) = _partial_tucker(matrix, [r], [0])
    return core, u


@dataclass(frozen=True, eq=False)
class Decomposition:
    """The factors of one layer, per group, and the blobs of its new layers.

    ``blobs`` holds one tuple of float32 blobs per new layer, in order, in
    Caffe layout (the original bias goes with the last new layer).
    """

    layer: str
    method: str
    ranks: tuple[int, ...]
    groups: tuple[tuple[np.ndarray, ...], ...]
    blobs: tuple[tuple[np.ndarray, ...], ...]
    rel_error: float


def reconstruct(method: str, factors: tuple[np.ndarray, ...]) -> np.ndarray:
    """The kernel (one group) that the factors stand for."""
    if method == "tucker2":
        u3, core, u4 = factors
        return np.einsum("abij,sb,ta->tsij", core, u3, u4, optimize=True)
    if method == "tucker1":
        core, u4 = factors
        return np.tensordot(u4, core, axes=(1, 0))
    core, u = factors
    return u @ core


def decompose_layer(net: Net, shapes: ShapeInfo, choice: RankChoice) -> Decomposition:
    """Decompose one layer with the chosen ranks and lay out the new layers' blobs."""
    method = choice.method
    layer = net.layer(choice.layer)
    kernels = kernel_groups(net, shapes, choice.layer, method)
    groups = []
    err2 = norm2 = 0.0
    for kernel in kernels:
        if method == "tucker2":
            factors = tucker2(kernel, *choice.ranks)
        elif method == "tucker1":
            factors = tucker1(kernel, *choice.ranks)
        else:
            factors = svd_factors(kernel, *choice.ranks)
        approx = reconstruct(method, factors)
        k64 = kernel.astype(np.float64)
        err2 += float(np.sum((k64 - approx) ** 2))
        norm2 += float(np.sum(k64 ** 2))
        groups.append(factors)
    rel = float(np.sqrt(err2 / norm2)) if norm2 > 0 else 0.0
    bias = layer.blobs[1:2]
    f32 = np.float32
    if method == "tucker2":
        first = np.concatenate([u3.T for u3, _, _ in groups])[:, :, None, None]
        middle = np.concatenate([core for _, core, _ in groups])
        last = np.concatenate([u4 for _, _, u4 in groups])[:, :, None, None]
        blobs = ((first.astype(f32),), (middle.astype(f32),), (last.astype(f32),) + tuple(bias))
    elif method == "tucker1":
        first = np.concatenate([core for core, _ in groups])
        last = np.concatenate([u4 for _, u4 in groups])[:, :, None, None]
        blobs = ((first.astype(f32),), (last.astype(f32),) + tuple(bias))
    else:
        (core, u), = groups
        blobs = ((core.astype(f32),), (u.astype(f32),) + tuple(bias))
    return Decomposition(layer=choice.layer, method=method, ranks=choice.ranks,
                         groups=tuple(tuple(g) for g in groups), blobs=blobs, rel_error=rel)


def kernel_from_new_layers(method: str, blobs: list, group: int = 1) -> np.ndarray:
    """The full original-layout kernel that emitted new layers compute (all groups).

    ``blobs`` holds each new layer's blobs in order, as written to the
    caffemodel; this inverts the layout of :func:`decompose_layer`.  For a
    fully connected layer decomposed with Tucker-2 the result has the
    convolution shape ``(N, C, H, W)``; reshape it to ``(N, K)``.
    """
    if method == "svd":
        first, last = blobs[0][0], blobs[1][0]
        return reconstruct("svd", (first.astype(np.float64), last.astype(np.float64)))
    groups = []
    if method == "tucker2":
        first, middle, last = (b[0].astype(np.float64) for b in blobs)
        r3, r4, tg = first.shape[0] // group, middle.shape[0] // group, last.shape[0] // group
        for k in range(group):
            u3 = first[k * r3:(k + 1) * r3, :, 0, 0].T
            core = middle[k * r4:(k + 1) * r4]
            u4 = last[k * tg:(k + 1) * tg, :, 0, 0]
            groups.append(reconstruct("tucker2", (u3, core, u4)))
    else:
        first, last = (b[0].astype(np.float64) for b in blobs)
        r4, tg = first.shape[0] // group, last.shape[0] // group
        for k in range(group):
            groups.append(reconstruct("tucker1", (first[k * r4:(k + 1) * r4],
                                                  last[k * tg:(k + 1) * tg, :, 0, 0])))
    return np.concatenate(groups)
