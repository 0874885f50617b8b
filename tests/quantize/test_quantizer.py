"""The quantizers (numpy only): error bounds, the dither's error statistics, the step rules,
k-means' nearest-centroid mapping, pruned weights, determinism, and the messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.quantize.codebook import decode, dither
from caffe_tucker.quantize.quantizer import (METHODS, QuantStats, decoded_net, dither_seed,
                                             quant_stats, quantize_blob, quantize_net,
                                             quantized_layers, step_for_bits)


def _weights(shape=(64, 32, 3, 3), sparsity=0.5, seed=0) -> np.ndarray:
    """Laplacian weights (heavy tails, like a trained layer's) with exact zeros."""
    rng = np.random.default_rng(seed)
    w = rng.laplace(0.0, 0.05, shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0.0
    return w


def _ulp(q) -> float:
    return 4 * float(np.spacing(np.float32(np.abs(q.codebook).max() + q.step)))


def test_dithered_error_is_at_most_half_a_step_and_pruned_weights_stay_zero():
    w = _weights()
    for bits in (2, 3, 5, 8):
        q = quantize_blob("conv2", 0, w, method="dithered", bits=bits)
        d = decode(q)
        assert d.dtype == np.float32 and d.shape == w.shape
        assert np.abs(d - w).max() <= q.step / 2 + _ulp(q)
        zero = w == 0
        assert not d[zero].view(np.uint32).any()               # +0.0, bit for bit
        assert (np.asarray(q.symbols)[zero.reshape(-1)] == 0).all()
        assert q.dither_seed == dither_seed(0, "conv2", 0) and q.method == "dithered"
        # the decoded weights are codebook entries less the dither, in C order over the kept
        u = dither(q.dither_seed, int((~zero).sum()), q.step)
        np.testing.assert_array_equal(d[~zero], q.codebook[q.symbols[q.symbols > 0] - 1] - u)


def test_dithered_error_is_uniform_and_independent_of_the_weights():
    # weights piled up at a third of a step from the grid, plus a heavy tail: a plain uniform
    # quantizer's error is then a function of w (here nearly constant), the dithered one's is
    # U[-step/2, step/2] whatever w is.
    step = 0.01
    rng = np.random.default_rng(3)
    n = 40_000
    k = rng.geometric(0.3, n) * rng.choice([-1, 1], n)
    w = (step * (k + 1 / 3) + rng.normal(0, step / 50, n)).astype(np.float32)
    w[:2000] = rng.standard_cauchy(2000).astype(np.float32) * 0.05
    w[w == 0] = step / 3
    q = quantize_blob("fc1", 0, w, method="dithered", step=step, seed=11)
    e = decode(q).astype(np.float64) - w
    var = step ** 2 / 12
    # mean: sd step/sqrt(12 n) = 1.4e-5; 5 sd
    assert abs(e.mean()) < 5 * math.sqrt(var / n)
    # variance: sd of the sample variance is step^2 / sqrt(180 n) = var * 0.0045; 5 sd
    assert e.var() == pytest.approx(var, rel=0.025)
    # uniform: 10 bins of e / step + 1/2, each with n / 10 +- 5 sd
    counts = np.histogram(e / step + 0.5, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - n / 10) < 5 * math.sqrt(n / 10))
    # independent of w: the same in each quarter of the weights by value, and uncorrelated
    order = np.argsort(w, kind="stable")
    for part in np.array_split(order, 4):
        assert abs(e[part].mean()) < 5 * math.sqrt(var / part.size)
        assert e[part].var() == pytest.approx(var, rel=0.06)
    assert abs(np.corrcoef(e, w)[0, 1]) < 5 / math.sqrt(n)
    # the control: the plain uniform quantizer fails the same checks on these weights
    plain = decode(quantize_blob("fc1", 0, w, method="uniform", step=step)).astype(np.float64) - w
    assert abs(plain.mean()) > 100 * math.sqrt(var / n) and plain.var() < var / 4


def test_uniform_error_is_at_most_half_a_step_on_the_grid():
    w = _weights(seed=1)
    for kwargs in (dict(bits=2), dict(bits=4), dict(step=0.003), dict(rel_error=0.2)):
        q = quantize_blob("conv3", 0, w, method="uniform", **kwargs)
        d = decode(q)
        assert np.abs(d - w).max() <= q.step / 2 + _ulp(q)
        assert q.dither_seed is None and not d[w == 0].view(np.uint32).any()
        k = np.rint(q.codebook / q.step)                      # codebook = step * [kmin..kmax]
        np.testing.assert_array_equal(np.diff(k), 1)
        np.testing.assert_allclose(q.codebook, q.step * k, rtol=1e-6)
    # 2 bits: three cells of 2A/3 over [-A, A], A the largest magnitude
    q = quantize_blob("conv3", 0, w, method="uniform", bits=2)
    a = float(np.abs(w).max())
    assert q.step == pytest.approx(2 * a / 3)
    np.testing.assert_allclose(q.codebook, [-2 * a / 3, 0, 2 * a / 3], rtol=1e-6)
    # the ends of the range are ties between the last level and the next: the last is kept
    edge = np.array([-1.5, -0.5, 0.5, 1.5], np.float32)
    q = quantize_blob("c", 0, edge, method="uniform", bits=2)
    assert q.step == 1.0 and list(q.codebook) == [-1, 0, 1]
    np.testing.assert_array_equal(np.abs(decode(q) - edge), 0.5)


def test_kmeans_maps_each_weight_to_its_nearest_centroid():
    w = _weights(seed=2)
    for bits in (1, 2, 3, 6):
        q = quantize_blob("fc1", 0, w, method="kmeans", bits=bits)
        c = q.codebook.astype(np.float64)
        assert q.step == 0.0 and q.dither_seed is None
        assert c.size <= 2 ** bits - 1 and np.all(np.diff(c) > 0)
        kept = (w != 0).reshape(-1)
        values = w.reshape(-1)[kept].astype(np.float64)
        got = np.abs(values - c[q.symbols[kept].astype(int) - 1])
        best = np.abs(values[:, None] - c[None, :]).min(axis=1)
        np.testing.assert_array_equal(got, best)
        assert (q.symbols[~kept] == 0).all() and not decode(q)[w == 0].any()
        # a Lloyd fixed point: each centroid is (to float32) the mean of its weights
        means = np.bincount(q.symbols[kept].astype(int) - 1, weights=values) / \
            np.bincount(q.symbols[kept].astype(int) - 1)
        np.testing.assert_allclose(c, means, rtol=1e-5, atol=1e-7)
    # one level: the mean of the kept weights
    q = quantize_blob("fc1", 0, w, method="kmeans", bits=1)
    assert q.codebook == pytest.approx([w[w != 0].mean()], rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_bits_bound_the_codebook(method):
    rng = np.random.default_rng(4)
    low = 2 if method != "kmeans" else 1
    for trial in range(40):
        bits = low + trial % (7 - low)
        shape = (int(rng.integers(1, 300)),)
        # symmetric, one-sided and skewed ranges; small and large counts
        w = (rng.standard_normal(shape) * rng.uniform(0.01, 2) + rng.uniform(-1, 1) *
             (trial % 3 == 0)).astype(np.float32)
        if trial % 4 == 1:
            w = np.abs(w)
        q = quantize_blob(f"layer{trial}", 0, w, method=method, bits=bits, seed=trial)
        assert len(q.codebook) <= 2 ** bits - 1, (trial, bits)
        stats = quant_stats(q, w)
        assert stats.levels <= stats.codebook == len(q.codebook)
        assert np.asarray(q.symbols).max() <= len(q.codebook)
    # and the step rules, written out
    assert step_for_bits(1.5, 2, "uniform") == 1.0 and step_for_bits(1.0, 2, "dithered") == 1.0
    assert step_for_bits(3.5, 3, "uniform") == 1.0 and step_for_bits(3.0, 3, "dithered") == 1.0


@pytest.mark.parametrize("method", ["dithered", "uniform"])
def test_rel_error_meets_its_target(method):
    w = _weights((128, 1024), seed=5)
    for target in (0.02, 0.05, 0.1):
        q = quantize_blob("fc1", 0, w, method=method, rel_error=target)
        assert quant_stats(q, w).rel_error == pytest.approx(target, rel=0.05)


def test_an_explicit_mask_prunes_nonzero_weights_and_keeps_zero_ones():
    w = _weights(sparsity=0.0, seed=6)
    mask = np.random.default_rng(7).random(w.shape) < 0.3
    w[0, 0, 0, 0] = 0.0
    mask[0, 0, 0, 0] = True
    for method in METHODS:
        q = quantize_blob("conv2", 0, w, method=method, bits=4, mask=mask)
        d = decode(q)
        assert not d[~mask].any() and q.nonzero == mask.sum()
        assert q.symbols.reshape(w.shape)[0, 0, 0, 0] != 0      # a kept zero is a symbol
    q = quantize_blob("conv2", 0, w, method="uniform", bits=4, mask=mask.astype(np.uint8))
    assert q.nonzero == mask.sum()


def test_empty_and_all_zero_blobs():
    for method in METHODS:
        q = quantize_blob("c", 0, np.zeros((3, 4), np.float32), method=method, bits=3)
        assert q.codebook.size == 0 and not np.asarray(q.symbols).any()
        assert decode(q).shape == (3, 4) and not decode(q).any()
        # kept weights that are all exactly zero: one level, 0.0
        q = quantize_blob("c", 0, np.zeros(5, np.float32), method=method, bits=3,
                          mask=np.ones(5, bool))
        assert list(q.codebook) == [0.0] and (q.symbols == 1).all() and not decode(q).any()
    stats = quant_stats(quantize_blob("c", 0, np.zeros(4, np.float32), bits=2), np.zeros(4))
    assert stats.kept == 0 and stats.entropy == 0.0 and stats.rel_error == 0.0


def test_quantization_is_deterministic_and_the_dither_differs_by_layer_and_seed():
    w = _weights(seed=8)
    for method in METHODS:
        a = quantize_blob("conv2", 0, w, method=method, bits=4, seed=3)
        b = quantize_blob("conv2", 0, w.copy(), method=method, bits=4, seed=3)
        assert a.symbols.tobytes() == b.symbols.tobytes()
        assert a.codebook.tobytes() == b.codebook.tobytes()
        assert a.step == b.step and a.dither_seed == b.dither_seed
    seeds = {dither_seed(s, layer, blob) for s in (0, 1) for layer in ("conv2", "conv3")
             for blob in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2 ** 32 for s in seeds)
    assert dither_seed(0, "conv2") == int.from_bytes(
        __import__("hashlib").sha256(b"0\0conv2\x000").digest()[:4], "little")
    x = decode(quantize_blob("conv2", 0, w, bits=6, seed=0))
    y = decode(quantize_blob("conv3", 0, w, bits=6, seed=0))
    assert not np.array_equal(x, y)


def test_stats_report_entropy_levels_and_error():
    w = np.array([0, 0, 1, 1, 2, 2, -1, -1], np.float32)
    q = quantize_blob("c", 0, w, method="uniform", step=1.0)
    stats = quant_stats(q, w)
    assert isinstance(stats, QuantStats)
    assert (stats.count, stats.kept, stats.levels, stats.codebook) == (8, 6, 3, 4)  # -1..2
    assert stats.entropy == pytest.approx(2.0)     # four symbols, two each
    assert stats.rel_error == 0.0 and stats.to_dict()["step"] == 1.0


def _net() -> Net:
    rng = np.random.default_rng(9)
    conv = make_spec("conv", "Convolution", ["data"], ["conv"],
                     convolution_param={"num_output": 4, "kernel_size": [3]})
    relu = make_spec("relu", "ReLU", ["conv"], ["conv"])
    fc = make_spec("fc", "InnerProduct", ["conv"], ["fc"], inner_product_param={"num_output": 3})
    return Net(layers=(
        Layer(conv, (_weights((4, 2, 3, 3), seed=10), rng.standard_normal(4).astype(np.float32))),
        Layer(relu),
        Layer(fc, (_weights((3, 16), seed=11), rng.standard_normal(3).astype(np.float32)))),
        source="net.prototxt")


def test_quantize_net_quantizes_the_weights_and_decoded_net_keeps_the_biases():
    net = _net()
    qs = quantize_net(net, None, "dithered", bits=3, seed=1)
    assert [(q.layer, q.blob) for q in qs] == [("conv", 0), ("fc", 0)]
    assert qs[0].dither_seed != qs[1].dither_seed
    out = decoded_net(net, qs)
    for q in qs:
        layer, before = out.layer(q.layer), net.layer(q.layer)
        np.testing.assert_array_equal(layer.blobs[0], decode(q))
        assert layer.blobs[1] is before.blobs[1]                    # the bias, untouched
    assert out.layer("relu") is net.layer("relu")
    only = quantize_net(net, ["fc"], "kmeans", bits=2)
    assert [q.layer for q in only] == ["fc"]
    assert quantized_layers(net) == ["conv", "fc"] and quantized_layers(net, "fc") == ["fc"]
    with pytest.raises(CaffeTuckerError, match=r"^net.prototxt: layer\(s\) 'relu' cannot be "
                                               r"quantized.*\['conv', 'fc'\]$"):
        quantize_net(net, ["relu"], bits=3)
    with pytest.raises(ValueError, match=r"'masks' parameter of quantize_net .*\['nope'\]"):
        quantize_net(net, ["fc"], bits=3, masks={"nope": np.ones(3, bool)})
    bad = qs[1].__class__(layer="fc", blob=0, shape=(4, 16), symbols=qs[1].symbols,
                          codebook=qs[1].codebook)
    with pytest.raises(CaffeTuckerError, match=r"layer 'fc': quantized blob 0 has shape"):
        decoded_net(net, [bad])


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(), r"'bits', 'step' and 'rel_error' parameters of quantize_blob must be given one at "
             r"a time .* Got none of them instead\.$"),
    (dict(bits=3, step=0.1), r"exactly one of them\)\. Got bits=3, step=0\.1 instead\.$"),
    (dict(bits=3, method="lloyd"), r"^The 'method' parameter of quantize_blob must be one of "
                                   r"\{.*'kmeans'.*\}\. Got 'lloyd' instead\.$"),
    (dict(bits=1), r"^The 'bits' parameter of quantize_blob must be an int in \[2, 16\]\. Got 1 "
                   r"instead\.$"),
    (dict(bits=17, method="kmeans"), r"must be an int in \[1, 16\] for method 'kmeans'"),
    (dict(step=0.1, method="kmeans"), r"'bits' parameter .* for method 'kmeans' .*Got None"),
    (dict(bits=2.0), r"'bits' parameter .* Got 2\.0 instead"),
    (dict(step=-1.0), r"^The 'step' parameter of quantize_blob must be a finite float > 0\. "
                      r"Got -1\.0 instead\.$"),
    (dict(rel_error=float("nan")), r"'rel_error' parameter .* Got nan instead"),
    (dict(bits=3, seed=-1), r"'seed' parameter .* an int >= 0\. Got -1"),
    (dict(bits=3, mask=np.ones(3, bool)), r"^The 'mask' parameter of quantize_blob must be a "
                                          r"bool array shaped like the weights, \(2, 5\)\. Got "
                                          r"an array of shape \(3,\) instead\.$"),
    (dict(bits=3, mask=np.full((2, 5), 0.5)), r"'mask' parameter .* Got values other than 0 "
                                              r"and 1"),
])
def test_bad_parameters_are_refused_in_scikit_learn_s_words(kwargs, pattern):
    w = np.arange(1, 11, dtype=np.float32).reshape(2, 5)
    with pytest.raises(ValueError, match=pattern) as exc:
        quantize_blob("c", 0, w, **kwargs)
    assert "\n" not in str(exc.value)


def test_bad_weights_and_too_fine_a_step_are_refused():
    with pytest.raises(ValueError, match="'weights' parameter of quantize_blob must be finite"):
        quantize_blob("c", 0, np.array([1.0, np.inf]), bits=3)
    with pytest.raises(CaffeTuckerError, match=r"^layer 'c': a step of 1e-09 gives \d+ levels "
                                               r".*at most 65535 fit; hint: a larger step"):
        quantize_blob("c", 0, np.array([-1.0, 1.0], np.float32), method="uniform", step=1e-9)
