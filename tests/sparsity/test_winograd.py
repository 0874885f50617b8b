"""The Winograd algebra F(m x m, 3 x 3): tiles, transforms, the tile-wise reference, counts.

Every expectation is computed here from first principles (direct correlation, the interpolation
points of the filter transform), never copied from the module under test.
"""

import re

import numpy as np
import pytest

from caffe_tucker.graph import Layer, make_spec
from caffe_tucker.sparsity.winograd import (MultiplyCounts, WinogradTile, layer_multiplies,
                                            spatial_from_winograd, tile_counts, to_winograd,
                                            winograd_correlate, winograd_eligible,
                                            winograd_reason, winograd_sparsity, winograd_tile)

TILES = [2, 4]


def correlate(x, w, pad, bias=None):
    """Caffe's stride-1 convolution (cross-correlation), straight from its definition."""
    ph, pw = pad
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for u in range(kh):
        for v in range(kw):
            y += np.einsum("nchw,tc->nthw", xp[:, :, u:u + oh, v:v + ow], w[:, :, u, v])
    return y if bias is None else y + np.asarray(bias).reshape(1, -1, 1, 1)


def conv_layer(**param):
    return Layer(spec=make_spec("c", "Convolution", ["x"], ["y"],
                                convolution_param={"num_output": 4, **param}))


@pytest.mark.parametrize("m", TILES)
def test_tile_identity_is_correlation(m):
    """Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A is the m x m correlation of an a x a tile with a 3 x 3 filter."""
    t = winograd_tile(m)
    assert isinstance(t, WinogradTile) and (t.m, t.r, t.a) == (m, 3, m + 2)
    assert t.name == f"F({m}x{m},3x3)"
    assert t.BT.shape == (t.a, t.a) and t.G.shape == (t.a, 3) and t.AT.shape == (m, t.a)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal((t.a, t.a)), rng.standard_normal((3, 3))
        y = t.AT @ ((t.G @ g @ t.G.T) * (t.BT @ d @ t.BT.T)) @ t.AT.T
        direct = np.array([[np.sum(g * d[i:i + 3, j:j + 3]) for j in range(m)] for i in range(m)])
        assert np.abs(y - direct).max() < 1e-12


def test_tiles_are_read_only_and_shared():
    t = winograd_tile(2)
    assert winograd_tile() is t and winograd_tile(np.int64(4)) is winograd_tile(4)
    with pytest.raises(ValueError):
        t.G[0, 0] = 7.0


@pytest.mark.parametrize("m", [3, 0, 2.0, True, "2"])
def test_tile_size_is_checked(m):
    shown = repr(m) if isinstance(m, str) else str(m)
    message = f"The 'm' parameter of winograd_tile must be one of {{2, 4}}. Got {shown} instead."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        winograd_tile(m)


@pytest.mark.parametrize("m", TILES)
def test_to_winograd_shape_dtype_and_linearity(m):
    t = winograd_tile(m)
    rng = np.random.default_rng(0)
    g, h = rng.standard_normal((2, 5, 3, 3, 3))
    u = to_winograd(g.astype(np.float32), t)
    assert u.shape == (5, 3, t.a, t.a) and u.dtype == np.float64
    assert np.allclose(to_winograd(2.5 * g - 0.5 * h, t),
                       2.5 * to_winograd(g, t) - 0.5 * to_winograd(h, t), atol=1e-13)
    # each filter on its own, as G g Gᵀ
    assert np.allclose(u[2, 1], t.G @ g[2, 1].astype(np.float32) @ t.G.T, atol=1e-12)
    with pytest.raises(ValueError, match=r"The 'weights' parameter of to_winograd must be an "
                                         r"array of shape \(\.\.\., 3, 3\)\. Got \[4, 4\]"):
        to_winograd(np.zeros((4, 4)), t)


@pytest.mark.parametrize("m", TILES)
def test_spatial_from_winograd_inverts_and_projects(m):
    t = winograd_tile(m)
    rng = np.random.default_rng(1)
    g = rng.standard_normal((4, 2, 3, 3))
    assert np.abs(spatial_from_winograd(to_winograd(g, t), t) - g).max() < 1e-12
    # a pruned U is not a transform: the result is the nearest one (an orthogonal projection)
    u = to_winograd(g, t)
    u[np.abs(u) < np.median(np.abs(u))] = 0
    proj = to_winograd(spatial_from_winograd(u, t), t)
    assert np.allclose(to_winograd(spatial_from_winograd(proj, t), t), proj, atol=1e-12)
    residual = (u - proj).reshape(8, -1)
    basis = np.kron(t.G, t.G)                                   # columns span the transforms
    assert np.abs(residual @ basis).max() < 1e-10


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("pad", [(0, 0), (1, 1), (2, 2), (0, 1), (2, 1)])
@pytest.mark.parametrize("hw", [(7, 9), (8, 6), (3, 4)])
def test_winograd_correlate_is_the_convolution(m, pad, hw):
    """Odd and even output sizes, pads 0/1/2: tile-wise Winograd with U = G g Gᵀ is exact."""
    t = winograd_tile(m)
    rng = np.random.default_rng([m, *pad, *hw])
    x = rng.standard_normal((2, 3) + hw)
    g, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    want = correlate(x, g, pad, b)
    got = winograd_correlate(x, to_winograd(g, t), t, pad=pad, bias=b)
    assert got.shape == want.shape == (2, 4, hw[0] + 2 * pad[0] - 2, hw[1] + 2 * pad[1] - 2)
    assert got.dtype == np.float64
    assert np.abs(got - want).max() < 1e-10 * max(1.0, np.abs(want).max())
    # where the tile grid starts does not matter for a transform...
    for offset in [(1, 0), (m - 1, m - 1)]:
        shifted = winograd_correlate(x, to_winograd(g, t), t, pad=pad, bias=b, offset=offset)
        assert np.abs(shifted - want).max() < 1e-10 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("m", TILES)
def test_winograd_correlate_with_pruned_weights_is_tile_wise(m):
    """With a U that is no transform, each output tile is Aᵀ(Σ_c U ⊙ Bᵀ d B)A of its own tile."""
    t = winograd_tile(m)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 2 * m + 1, m + 3))
    u = rng.standard_normal((3, 2, t.a, t.a)) * (rng.random((3, 2, t.a, t.a)) < 0.5)
    for offset in [(0, 0), (1, m - 1)]:
        got = winograd_correlate(x, u, t, pad=(1, 1), offset=offset)
        xp = np.pad(x[0], ((0, 0), (1 + offset[0], 4 * m), (1 + offset[1], 4 * m)))
        for ty in range(3):
            for tx in range(2):
                d = xp[:, ty * m:ty * m + t.a, tx * m:tx * m + t.a]
                v = np.einsum("pu,cuv,qv->cpq", t.BT, d, t.BT)
                tile_out = np.einsum("ip,tpq,jq->tij", t.AT, np.einsum("tcpq,cpq->tpq", u, v), t.AT)
                rows = np.arange(ty * m, ty * m + m) - offset[0]
                cols = np.arange(tx * m, tx * m + m) - offset[1]
                keep_r = (rows >= 0) & (rows < got.shape[2])
                keep_c = (cols >= 0) & (cols < got.shape[3])
                sub = got[0][:, rows[keep_r]][:, :, cols[keep_c]]
                assert np.abs(sub - tile_out[:, keep_r][:, :, keep_c]).max() < 1e-10
    # ...and here the grid does matter
    assert not np.allclose(winograd_correlate(x, u, t, pad=(1, 1)),
                           winograd_correlate(x, u, t, pad=(1, 1), offset=(1, 1)))


def test_winograd_correlate_checks_its_arguments():
    t = winograd_tile(2)
    x = np.zeros((1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"The 'U' parameter of winograd_correlate must be an "
                                         r"array of shape \(T, 3, 4, 4\)\. Got \[2, 2, 4, 4\]"):
        winograd_correlate(x, np.zeros((2, 2, 4, 4)), t)
    with pytest.raises(ValueError, match="'U' parameter of winograd_correlate must be an array of "
                                         r"shape \(\.\.\., 4, 4\) for F\(2x2,3x3\)"):
        winograd_correlate(x, np.zeros((2, 3, 6, 6)), t)
    with pytest.raises(ValueError, match=r"'offset' parameter .* must be in \[0, 1\]"):
        winograd_correlate(x, np.zeros((2, 3, 4, 4)), t, offset=(2, 0))
    with pytest.raises(ValueError, match="'x' parameter"):
        winograd_correlate(np.zeros((1, 3, 2, 2)), np.zeros((2, 3, 4, 4)), t)


def test_tile_counts():
    assert tile_counts(8, 8, winograd_tile(2)) == (4, 4)
    assert tile_counts(7, 9, winograd_tile(2)) == (4, 5)
    assert tile_counts(7, 9, winograd_tile(4)) == (2, 3)
    assert tile_counts(1, 4, winograd_tile(4)) == (1, 1)


def test_multiply_counts_by_hand():
    """Two one-tap filters; their Winograd nonzeros follow from the interpolation points.

    G evaluates the filter polynomial g0 + g1 x + g2 x² at the points (0, ±1, ∞ for F(2,3);
    0, ±1, ±2, ∞ for F(4,3); ∞ picks g2).  A centre tap (g1 only) is 0 at 0 and ∞ and nonzero
    elsewhere: 2 of 4 (F2) or 4 of 6 (F4) per axis.  A corner tap (g0 only) is 0 only at ∞:
    3 of 4 or 5 of 6 per axis.  U is the outer product over the two axes.
    """
    g = np.zeros((2, 1, 3, 3))
    g[0, 0, 1, 1] = 1.5     # centre
    g[1, 0, 0, 0] = -2.0    # corner
    out = (5, 6)
    windows = 5 * 6
    counts = layer_multiplies(g, out, winograd_tile(2))
    assert counts == MultiplyCounts(spatial_dense=windows * 2 * 1 * 9, spatial_sparse=windows * 2,
                                    winograd_dense=(3 * 3) * 2 * 1 * 16,
                                    winograd_sparse=(3 * 3) * (2 * 2 + 3 * 3))
    counts4 = layer_multiplies(g, out, winograd_tile(4))
    assert counts4 == MultiplyCounts(540, 60, (2 * 2) * 2 * 36, (2 * 2) * (4 * 4 + 5 * 5))
    # explicit (pruned) Winograd weights are counted as given; the spatial ones still count
    u = np.zeros((2, 1, 4, 4))
    u[0, 0, :2, :3] = 1.0
    assert layer_multiplies(g, out, winograd_tile(2), winograd=u).winograd_sparse == 9 * 6
    assert counts + counts4 == MultiplyCounts(1080, 120, 288 + 288, 117 + 164)
    assert sum([counts, counts4], MultiplyCounts()) == counts + counts4


def test_multiply_counts_check_shapes():
    with pytest.raises(ValueError, match=r"'winograd' parameter of layer_multiplies must be an "
                                         r"array of shape \(2, 1, 4, 4\)"):
        layer_multiplies(np.ones((2, 1, 3, 3)), (4, 4), winograd_tile(2),
                         winograd=np.ones((1, 1, 4, 4)))


def test_winograd_sparsity():
    u = np.ones((2, 3, 4, 4))
    assert winograd_sparsity(u) == 0.0
    u[0] = 0
    u[1, 0, 0, 0] = -0.0
    assert winograd_sparsity(u) == pytest.approx(49 / 96)
    assert winograd_sparsity(np.zeros((0, 4, 4))) == 0.0


@pytest.mark.parametrize("param, reason", [
    ({"kernel_size": [5]}, "kernel 5x5"),
    ({"kernel_h": 3, "kernel_w": 1}, "kernel 3x1"),
    ({"kernel_size": [3], "stride": [2]}, "stride 2"),
    ({"kernel_size": [3], "stride_h": 1, "stride_w": 2}, "stride 1x2"),
    ({"kernel_size": [3], "dilation": [2]}, "dilation 2"),
    ({"kernel_size": [3], "group": 2}, "group 2"),
    ({"kernel_size": [3, 3, 3]}, "not a 2-D convolution"),
    ({"kernel_size": [3], "axis": 2}, "axis 2 (channels must be axis 1)"),
])
def test_winograd_reason_refuses(param, reason):
    layer = conv_layer(**param)
    assert winograd_reason(layer) == reason
    assert not winograd_eligible(layer)


def test_winograd_reason_other_types_and_blob_counts():
    pool = Layer(spec=make_spec("p", "Pooling", ["x"], ["y"]))
    assert winograd_reason(pool) == "not a Convolution (Pooling)"
    deconv = Layer(spec=make_spec("d", "Deconvolution", ["x"], ["y"],
                                  convolution_param={"num_output": 4, "kernel_size": [3]}))
    assert winograd_reason(deconv) == "not a Convolution (Deconvolution)"
    shared = Layer(spec=make_spec("c", "Convolution", ["x1", "x2"], ["y1", "y2"],
                                  convolution_param={"num_output": 4, "kernel_size": [3]}))
    assert winograd_reason(shared).startswith("2 bottoms and 2 tops")


@pytest.mark.parametrize("param", [
    {"kernel_size": [3]},
    {"kernel_size": [3], "pad": [1], "bias_term": False},
    {"kernel_h": 3, "kernel_w": 3, "pad_h": 0, "pad_w": 2, "stride": [1], "dilation": [1]},
    {"kernel_size": [3, 3], "stride": [1, 1], "group": 1},
])
def test_winograd_reason_accepts(param):
    assert winograd_reason(conv_layer(**param)) is None
    assert winograd_eligible(conv_layer(**param))
