"""Magnitude masks: keep the largest weights of a layer, zero the rest.

One rule serves both domains.  A layer pruned to sparsity ``r`` keeps its ``n - floor(r n)``
largest magnitudes; ties are broken by position (a stable sort of ``|w|``), so the count of zeros
is exact and the same weights give the same mask on every machine.  Entries that are already
exactly zero count toward the target (they sort first).

This is the pruning of Han et al. (per-layer magnitude threshold), with the per-layer ratio given
rather than a threshold, as Choi et al. 2018 prune "below the r-th percentile" of each layer.

References
----------
S. Han, J. Pool, J. Tran and W. Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NIPS 2015.
Y. Choi, M. El-Khamy and J. Lee, "Compression of Deep Convolutional Neural Networks under Joint
Sparsity Constraints", arXiv:1805.08303, 2018.
"""

from __future__ import annotations

import numpy as np

from caffe_tucker.errors import check_param

__all__ = ["magnitude_mask", "threshold", "sparsity", "apply_mask"]


def _check_ratio(ratio, owner: str) -> float:
    ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0
    check_param("ratio", ratio, ok, "a float in [0, 1)", owner)
    return float(ratio)


def magnitude_mask(weights: np.ndarray, ratio: float) -> np.ndarray:
    """The mask (bool, ``weights.shape``) that keeps all but the ``floor(ratio * n)`` smallest.

    Parameters
    ----------
    weights : ndarray
        Any shape; magnitudes are compared.
    ratio : float in [0, 1)
        The fraction of entries to zero.

    Returns
    -------
    ndarray of bool
        True where the weight is kept.
    """
    ratio = _check_ratio(ratio, "magnitude_mask")
    flat = np.abs(np.asarray(weights, dtype=np.float64)).reshape(-1)
    k = int(np.floor(ratio * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    if k:
        keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(np.shape(weights))


def threshold(weights: np.ndarray, ratio: float) -> float:
    """The magnitude at the ``ratio`` quantile: entries with ``|w| <= threshold`` are "small".

    Returns the largest magnitude among the ``floor(ratio * n)`` smallest (0.0 when none),
    the same set :func:`magnitude_mask` zeroes, up to ties.
    """
    ratio = _check_ratio(ratio, "threshold")
    flat = np.abs(np.asarray(weights, dtype=np.float64)).reshape(-1)
    k = int(np.floor(ratio * flat.size))
    if k == 0:
        return 0.0
    return float(np.partition(flat, k - 1)[k - 1])


def sparsity(weights: np.ndarray) -> float:
    """The fraction of entries that are exactly zero."""
    a = np.asarray(weights)
    return 0.0 if a.size == 0 else 1.0 - np.count_nonzero(a) / a.size


def apply_mask(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A new array: ``weights`` with the entries outside ``mask`` set to exactly zero."""
    w = np.array(weights, copy=True)
    w[~np.asarray(mask, dtype=bool)] = 0
    return w
