"""The Winograd algebra F(m x m, 3 x 3), a tile-wise reference convolution, and multiply counts.

A 3 x 3 filter ``g`` and an ``a x a`` input tile ``d`` (``a = m + 2``) give an ``m x m`` output
tile of the correlation Caffe computes, ``y[i, j] = Σ_{u,v} g[u, v] d[i+u, j+v]``, as ::

    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A

with the fixed matrices ``Bᵀ`` (a x a), ``G`` (a x 3) and ``Aᵀ`` (m x a) of Lavin & Gray [1]_
(F(2,3) with interpolation points 0, ±1, ∞; F(4,3) with 0, ±1, ±2, ∞).  ``U = G g Gᵀ`` is the
filter in the *Winograd domain*: Choi, El-Khamy & Lee [2]_ make filters sparse there (and in
the spatial domain at once), so a Winograd engine skips the products with ``u == 0``.

A filter pruned in the Winograd domain is, in general, no longer the transform of any
3 x 3 filter; :func:`winograd_correlate` therefore convolves with Winograd-domain filters
``U`` directly, tile by tile, and is the reference the Caffe form
(:mod:`caffe_tucker.sparsity.winograd_form`) is checked against.  Its result depends on where
the tile grid starts when ``U`` is not a transform (``offset``); for ``U = G g Gᵀ`` it does not.

Everything is computed in float64.

References
----------
.. [1] A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
.. [2] Y. Choi, M. El-Khamy and J. Lee, "Compression of Deep Convolutional Neural Networks under
       Joint Sparsity Constraints", arXiv:1805.08303, 2018.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from math import ceil

import numpy as np

from caffe_tucker.errors import check_param
from caffe_tucker.graph import Layer

__all__ = ["WinogradTile", "winograd_tile", "to_winograd", "spatial_from_winograd",
           "winograd_reason", "winograd_eligible", "tile_counts", "winograd_correlate",
           "MultiplyCounts", "layer_multiplies", "winograd_sparsity"]


@dataclass(frozen=True, eq=False)
class WinogradTile:
    """The matrices of F(m x m, r x r): ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A``.

    Attributes
    ----------
    m : int
        Output tile size.
    r : int
        Filter size (3).
    BT : ndarray, shape (a, a)
        Data transform ``Bᵀ``.
    G : ndarray, shape (a, r)
        Filter transform.
    AT : ndarray, shape (m, a)
        Output transform ``Aᵀ``.

    The arrays are float64 and read-only.
    """

    m: int
    r: int
    BT: np.ndarray
    G: np.ndarray
    AT: np.ndarray

    @property
    def a(self) -> int:
        """Input tile size ``m + r - 1``."""
        return self.m + self.r - 1

    @property
    def name(self) -> str:
        """E.g. ``"F(2x2,3x3)"``."""
        return f"F({self.m}x{self.m},{self.r}x{self.r})"

    def __repr__(self):
        return f"WinogradTile({self.name})"


def _tile(m, BT, G, AT) -> WinogradTile:
    arrays = []
    for rows in (BT, G, AT):
        a = np.array(rows, dtype=np.float64)
        a.setflags(write=False)
        arrays.append(a)
    return WinogradTile(m, 3, *arrays)


# Lavin & Gray 2016, section 4.1 (F(2x2,3x3)) and 4.2 (F(4x4,3x3)); both compute correlation.
_TILES = {
    2: _tile(2,
             BT=[[1, 0, -1, 0],
                 [0, 1, 1, 0],
                 [0, -1, 1, 0],
                 [0, 1, 0, -1]],
             G=[[1, 0, 0],
                [1 / 2, 1 / 2, 1 / 2],
                [1 / 2, -1 / 2, 1 / 2],
                [0, 0, 1]],
             AT=[[1, 1, 1, 0],
                 [0, 1, -1, -1]]),
    4: _tile(4,
             BT=[[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]],
             G=[[1 / 4, 0, 0],
                [-1 / 6, -1 / 6, -1 / 6],
                [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6],
                [1 / 24, -1 / 12, 1 / 6],
                [0, 0, 1]],
             AT=[[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]]),
}


def winograd_tile(m: int = 2) -> WinogradTile:
    """The tile F(m x m, 3 x 3) of Lavin & Gray.

    Parameters
    ----------
    m : {2, 4}
        Output tile size: F(2x2,3x3) (4 x 4 input tiles, 2.25x fewer multiplies than direct) or
        F(4x4,3x3) (6 x 6 input tiles, 4x fewer).

    Returns
    -------
    WinogradTile

    References
    ----------
    .. [1] A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
    """
    ok = isinstance(m, (int, np.integer)) and not isinstance(m, bool) and int(m) in _TILES
    check_param("m", m, ok, "one of {2, 4}", "winograd_tile")
    return _TILES[int(m)]


def _check_spatial(weights: np.ndarray, tile: WinogradTile, owner: str) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    ok = w.ndim >= 2 and w.shape[-2:] == (tile.r, tile.r)
    check_param("weights", list(w.shape), ok, f"an array of shape (..., {tile.r}, {tile.r})",
                owner)
    return w


def _check_winograd(U: np.ndarray, tile: WinogradTile, owner: str, name: str = "U") -> np.ndarray:
    u = np.asarray(U, dtype=np.float64)
    ok = u.ndim >= 2 and u.shape[-2:] == (tile.a, tile.a)
    check_param(name, list(u.shape), ok, f"an array of shape (..., {tile.a}, {tile.a}) for "
                f"{tile.name}", owner)
    return u


def to_winograd(weights: np.ndarray, tile: WinogradTile) -> np.ndarray:
    """Filters in the Winograd domain: ``U = G g Gᵀ`` for every trailing 3 x 3 filter ``g``.

    Parameters
    ----------
    weights : array_like, shape (..., 3, 3)
        Spatial filters, e.g. a Caffe kernel (T, C, 3, 3).
    tile : WinogradTile

    Returns
    -------
    ndarray, shape (..., a, a), float64

    References
    ----------
    .. [1] A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
    """
    g = _check_spatial(weights, tile, "to_winograd")
    return np.einsum("iu,...uv,jv->...ij", tile.G, g, tile.G, optimize=True)


def spatial_from_winograd(U: np.ndarray, tile: WinogradTile) -> np.ndarray:
    """The least-squares 3 x 3 filters whose transform is nearest ``U`` (a projection).

    ``g ↦ G g Gᵀ`` is the linear map ``vec(g) ↦ (G ⊗ G) vec(g)`` from 9 to ``a²`` dimensions;
    this applies its pseudo-inverse, so ``spatial_from_winograd(to_winograd(g)) == g`` and
    ``to_winograd(spatial_from_winograd(U))`` is the orthogonal projection of ``U`` (in the
    Frobenius norm) onto the transforms of 3 x 3 filters.  A ``U`` pruned in the Winograd
    domain is in general *not* such a transform; the result is then the nearest spatial filter,
    not an equivalent one.

    Parameters
    ----------
    U : array_like, shape (..., a, a)
    tile : WinogradTile

    Returns
    -------
    ndarray, shape (..., 3, 3), float64

    References
    ----------
    .. [1] Y. Choi, M. El-Khamy and J. Lee, "Compression of Deep Convolutional Neural Networks
           under Joint Sparsity Constraints", arXiv:1805.08303, 2018.
    """
    u = _check_winograd(U, tile, "spatial_from_winograd")
    inverse = np.linalg.pinv(np.kron(tile.G, tile.G))          # (r², a²)
    flat = u.reshape(u.shape[:-2] + (tile.a * tile.a,)) @ inverse.T
    return flat.reshape(u.shape[:-2] + (tile.r, tile.r))


def _pair(values, h, w, has_hw: bool, default: int):
    """A 2-D (h, w) setting of convolution_param, or None when it is not 2-D."""
    if has_hw:
        return int(h), int(w)
    vals = [int(v) for v in values]
    if not vals:
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    return tuple(vals) if len(vals) == 2 else None


def _setting(what: str, pair) -> str:
    return f"{what} {pair[0]}" if pair[0] == pair[1] else f"{what} {pair[0]}x{pair[1]}"


def winograd_reason(layer: Layer) -> str | None:
    """Why ``layer`` cannot be computed with F(m x m, 3 x 3), or None when it can.

    Eligible: a 2-D ``Convolution`` over axis 1 with one bottom and one top, a 3 x 3 kernel,
    stride 1, dilation 1 and group 1 (any padding, with or without bias).

    Returns
    -------
    str or None
        A short reason such as ``"kernel 5x5"``, ``"stride 2"``, ``"group 2"`` or
        ``"not a Convolution (Pooling)"``.
    """
    if layer.type != "Convolution":
        return f"not a Convolution ({layer.type})"
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        return f"{len(layer.bottoms)} bottoms and {len(layer.tops)} tops (one of each needed)"
    p = layer.spec.convolution_param
    if p.axis != 1:
        return f"axis {p.axis} (channels must be axis 1)"
    kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w,
                   p.HasField("kernel_h") or p.HasField("kernel_w"), 0)
    stride = _pair(p.stride, p.stride_h, p.stride_w,
                   p.HasField("stride_h") or p.HasField("stride_w"), 1)
    dilation = _pair(p.dilation, 1, 1, False, 1)
    if kernel is None or stride is None or dilation is None:
        return "not a 2-D convolution"
    if kernel != (3, 3):
        return f"kernel {kernel[0]}x{kernel[1]}"
    if stride != (1, 1):
        return _setting("stride", stride)
    if dilation != (1, 1):
        return _setting("dilation", dilation)
    if p.group != 1:
        return f"group {p.group}"
    return None


def winograd_eligible(layer: Layer) -> bool:
    """Whether :func:`winograd_reason` finds nothing against ``layer``."""
    return winograd_reason(layer) is None


def tile_counts(out_h: int, out_w: int, tile: WinogradTile) -> tuple[int, int]:
    """Tiles per column and per row that cover an ``out_h x out_w`` output: ``ceil(out / m)``."""
    return ceil(out_h / tile.m), ceil(out_w / tile.m)


def winograd_correlate(x: np.ndarray, U: np.ndarray, tile: WinogradTile, pad=(0, 0),
                       bias: np.ndarray | None = None, offset=(0, 0)) -> np.ndarray:
    """Tile-wise Winograd convolution of ``x`` with Winograd-domain filters ``U`` (reference).

    ``x`` is zero-padded by ``pad``; overlapping ``a x a`` tiles ``d`` are cut at stride ``m``
    (with extra zeros on the bottom/right where the last tile overhangs), and each output tile is
    ``Aᵀ (Σ_c U[t, c] ⊙ Bᵀ d_c B) A``.  The result is cropped to the stride-1 3 x 3 convolution's
    size ``(H + 2 ph - 2, W + 2 pw - 2)`` and the bias is added.  With ``U = to_winograd(g)`` this
    equals Caffe's convolution with ``g``; with any other ``U`` (one pruned in the Winograd
    domain) it is what a Winograd engine computes with it.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    U : array_like, shape (T, C, a, a)
    tile : WinogradTile
    pad : (int, int)
        Zero padding of the convolution, (ph, pw).
    bias : array_like, shape (T,), optional
    offset : (int, int)
        Where the tile grid starts: the first tile row/column produces output rows/columns
        ``-offset, ..., m - 1 - offset`` (the extra ones are discarded).  The Caffe form starts
        it at ``-extra_padding`` (:func:`caffe_tucker.sparsity.winograd_form.extra_padding`);
        it matters only for a ``U`` that is not the transform of a 3 x 3 filter.

    Returns
    -------
    ndarray, shape (N, T, H + 2 ph - 2, W + 2 pw - 2), float64

    References
    ----------
    .. [1] A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
    """
    x = np.asarray(x, dtype=np.float64)
    check_param("x", list(x.shape), x.ndim == 4, "an array of shape (N, C, H, W)",
                "winograd_correlate")
    u = _check_winograd(U, tile, "winograd_correlate")
    check_param("U", list(u.shape), u.ndim == 4 and u.shape[1] == x.shape[1],
                f"an array of shape (T, {x.shape[1]}, {tile.a}, {tile.a})", "winograd_correlate")
    (ph, pw), (eh, ew) = (int(v) for v in pad), (int(v) for v in offset)
    check_param("pad", (ph, pw), ph >= 0 and pw >= 0, "non-negative", "winograd_correlate")
    check_param("offset", (eh, ew), 0 <= eh < tile.m and 0 <= ew < tile.m,
                f"in [0, {tile.m - 1}] (less than m)", "winograd_correlate")
    n, c, h, w = x.shape
    out_h, out_w = h + 2 * ph - (tile.r - 1), w + 2 * pw - (tile.r - 1)
    check_param("x", list(x.shape), out_h > 0 and out_w > 0,
                f"large enough for a 3x3 output with pad {(ph, pw)}", "winograd_correlate")
    nh, nw = ceil((out_h + eh) / tile.m), ceil((out_w + ew) / tile.m)
    top, left = ph + eh, pw + ew
    rows, cols = nh * tile.m + tile.r - 1, nw * tile.m + tile.r - 1
    xp = np.pad(x, ((0, 0), (0, 0), (top, rows - h - top), (left, cols - w - left)))
    d = np.lib.stride_tricks.sliding_window_view(xp, (tile.a, tile.a), axis=(2, 3))
    d = d[:, :, ::tile.m, ::tile.m]                                 # (N, C, nh, nw, a, a)
    v = np.einsum("pu,ncyxuv,qv->ncyxpq", tile.BT, d, tile.BT, optimize=True)
    mm = np.einsum("tcpq,ncyxpq->ntyxpq", u, v, optimize=True)
    y = np.einsum("ip,ntyxpq,jq->ntyixj", tile.AT, mm, tile.AT, optimize=True)
    y = y.reshape(n, u.shape[0], nh * tile.m, nw * tile.m)[:, :, eh:eh + out_h, ew:ew + out_w]
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1)
    return y


@dataclass(frozen=True)
class MultiplyCounts:
    """Element-wise multiplications of one layer per image, dense and sparse, in both domains.

    Attributes
    ----------
    spatial_dense, spatial_sparse : int
        Direct convolution: ``H'W' · T · C · 9``, and ``H'W' · nnz(g)``.
    winograd_dense, winograd_sparse : int
        Winograd: ``tiles · T · C · a²``, and ``tiles · nnz(U)``.

    Counts add up (``sum(counts, MultiplyCounts())`` gives a net's totals).
    """

    spatial_dense: int = 0
    spatial_sparse: int = 0
    winograd_dense: int = 0
    winograd_sparse: int = 0

    def __add__(self, other: "MultiplyCounts") -> "MultiplyCounts":
        if not isinstance(other, MultiplyCounts):
            return NotImplemented
        return MultiplyCounts(*(getattr(self, f.name) + getattr(other, f.name)
                                for f in fields(self)))

    __radd__ = __add__


def layer_multiplies(spatial: np.ndarray, out_hw, tile: WinogradTile,
                     winograd: np.ndarray | None = None) -> MultiplyCounts:
    """The paper's complexity of one stride-1 3 x 3 layer: multiplications per image.

    Only the products of weights with data count: ``out_h · out_w`` windows of ``T · C · 9``
    products for the direct convolution, ``ceil(out_h/m) · ceil(out_w/m)`` tiles of
    ``T · C · a²`` element-wise products in the Winograd domain; a zero weight saves its
    products.  The data transform ``Bᵀ d B`` and the output transform ``Aᵀ M A`` are left out:
    for F(2x2,3x3) they are additions only, and in general they are done once per tile and
    input channel (resp. output channel) and shared by all ``T`` (resp. ``C``) filters, so they
    are amortised.  This is how Lavin & Gray and Choi et al. count complexity.

    Parameters
    ----------
    spatial : array_like, shape (T, C, 3, 3)
        The spatial kernel (zeros count as pruned).
    out_hw : (int, int)
        The layer's output height and width.
    tile : WinogradTile
    winograd : array_like, shape (T, C, a, a), optional
        Winograd-domain weights; ``to_winograd(spatial)`` when not given.

    Returns
    -------
    MultiplyCounts

    References
    ----------
    .. [1] A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016.
    .. [2] Y. Choi, M. El-Khamy and J. Lee, "Compression of Deep Convolutional Neural Networks
           under Joint Sparsity Constraints", arXiv:1805.08303, 2018.
    """
    g = _check_spatial(spatial, tile, "layer_multiplies")
    check_param("spatial", list(g.shape), g.ndim == 4, "an array of shape (T, C, 3, 3)",
                "layer_multiplies")
    u = to_winograd(g, tile) if winograd is None else _check_winograd(
        winograd, tile, "layer_multiplies", "winograd")
    check_param("winograd", list(u.shape), u.shape[:2] == g.shape[:2],
                f"an array of shape ({g.shape[0]}, {g.shape[1]}, {tile.a}, {tile.a})",
                "layer_multiplies")
    out_h, out_w = (int(v) for v in out_hw)
    th, tw = tile_counts(out_h, out_w, tile)
    t, c = g.shape[:2]
    return MultiplyCounts(
        spatial_dense=out_h * out_w * t * c * tile.r * tile.r,
        spatial_sparse=out_h * out_w * int(np.count_nonzero(g)),
        winograd_dense=th * tw * t * c * tile.a * tile.a,
        winograd_sparse=th * tw * int(np.count_nonzero(u)))


def winograd_sparsity(U: np.ndarray) -> float:
    """The fraction of exact zeros in ``U`` (0 for an empty array)."""
    u = np.asarray(U)
    return 1.0 - np.count_nonzero(u) / u.size if u.size else 0.0
