"""Codebook fine-tuning: the averaging rule (numpy) and the loop in real Caffe on the digits model.

The Caffe tests need a Caffe runtime (skipped locally without one, failed under ``CI=true``) and
scikit-learn for the digits data; 30 iterations each, a few seconds.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest

from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.model import load_model
from caffe_tucker.quantize.codebook import QuantizedBlob, decode
from caffe_tucker.quantize.finetune import (CodebookRun, average_gradients, codebook_step,
                                            finetune_codebooks)
from caffe_tucker.quantize.quantizer import quantize_blob, quantize_net
from caffe_tucker.sparsity.data import EvalSet, TrainSet
from caffe_tucker.sparsity.prune import apply_mask, magnitude_mask

from conftest import ZOO, in_ci

DIGITS = ZOO / "digits"
LAYERS = ("conv2", "conv3", "fc1")


def test_each_shared_value_moves_by_the_mean_gradient_of_its_weights():
    #           pruned  k=0   k=1   k=0   k=2   pruned k=1   (k=3 unused)
    q = QuantizedBlob("fc", 0, (2, 4), np.array([0, 1, 2, 1, 3, 0, 2, 0], np.uint8),
                      np.array([-1.0, 0.0, 1.0, 2.0], np.float32))
    g = np.array([[100.0, 1.0, 2.0, 3.0], [4.0, -50.0, 6.0, 7.0]])
    mean = average_gradients(q, g)
    np.testing.assert_array_equal(mean, [(1 + 3) / 2, (2 + 6) / 2, 4.0, 0.0])  # pruned ignored
    c, h = codebook_step(q.codebook, mean, np.zeros(4), lr=0.5, momentum=0.0)
    np.testing.assert_array_equal(c, [-2.0, -2.0, -1.0, 2.0])
    new = decode(q.with_codebook(c))
    np.testing.assert_array_equal(new, [[0, -2, -2, -2], [-1, 0, -2, 0]])  # pruned stay 0.0
    assert not new[q.symbols.reshape(2, 4) == 0].view(np.uint32).any()
    # momentum: Caffe's convention, h = mu h + lr g, c = c - h
    c2, h2 = codebook_step(c, mean, h, lr=0.5, momentum=0.9)
    np.testing.assert_allclose(h2, 0.9 * h + 0.5 * mean)
    np.testing.assert_allclose(c2, c - h2)
    # the mean is the gradient with respect to the shared value over the number sharing it: a
    # numerical derivative of a quadratic loss of the decoded (dithered) weights
    w = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    w[0] = 0.0
    qd = quantize_blob("fc", 0, w, method="dithered", bits=3)
    target = np.random.default_rng(1).standard_normal(w.shape)

    def loss(codebook):
        return 0.5 * np.sum((decode(qd.with_codebook(codebook)).astype(np.float64) - target) ** 2)

    grad = decode(qd).astype(np.float64) - target
    mean = average_gradients(qd, grad)
    counts = np.bincount(qd.symbols[qd.symbols > 0].astype(int) - 1, minlength=qd.codebook.size)
    for k in range(qd.codebook.size):
        e = np.zeros(qd.codebook.size)
        e[k] = 1e-2
        numeric = (loss(qd.codebook + e) - loss(qd.codebook - e)) / 2e-2
        assert mean[k] * counts[k] == pytest.approx(numeric, rel=1e-3, abs=1e-3)
    with pytest.raises(ValueError, match=r"'grad' parameter of average_gradients must have the "
                                         r"shape of layer 'fc' blob 0, \(2, 4\)"):
        average_gradients(q, np.zeros(5))


@pytest.fixture(scope="module")
def digits(recipe):
    try:
        importlib.import_module("sklearn")
    except ImportError:
        if in_ci():
            pytest.fail("CI must run the quantization tests, but scikit-learn is missing",
                        pytrace=False)
        pytest.skip("needs scikit-learn (pip install '.[test]')")
    x_tr, y_tr, x_te, y_te = recipe.load_split()
    train = TrainSet({"data": x_tr, "label": y_tr}, "digits train")
    test = EvalSet(tuple(({"data": x_te[i:i + 100]}, y_te[i:i + 100])
                         for i in range(0, len(x_te), 100)), "accuracy", source="digits test")
    model = load_model(DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel")
    # a sparse model (the 10% smallest weights of each quantized layer pruned) as sparsify makes
    net = model.net.with_layers(
        layer.with_blobs([apply_mask(layer.blobs[0], magnitude_mask(layer.blobs[0], 0.1)),
                          *layer.blobs[1:]]) if layer.name in LAYERS else layer
        for layer in model.net.layers)
    return replace(model, net=net), train, test


@pytest.mark.parametrize("method, lr", [("uniform", 0.3), ("dithered", 1.0)])
def test_two_bit_codebooks_recover_accuracy_in_caffe(caffe, digits, method, lr):
    model, train, test = digits
    qs = quantize_net(model.net, LAYERS, method, bits=2, seed=0)
    assert all(len(q.codebook) <= 3 for q in qs)
    seen = []
    run = finetune_codebooks(model, qs, train, test, caffe, iterations=30, lr=lr, batch=32,
                             on_iteration=seen.append)
    assert isinstance(run, CodebookRun) and run.metric == "accuracy"
    assert run.before < 0.9                     # the zoo model measures 0.988 unquantized
    assert run.after > run.before + 0.03, (run.before, run.after)
    assert [r.iteration for r in run.rows] == list(range(1, 31)) and list(run.rows) == seen
    assert all(np.isfinite(r.loss) and r.shift > 0 for r in run.rows)
    for old, new in zip(qs, run.quantized):
        assert new.symbols.tobytes() == old.symbols.tobytes()        # the same sharing
        assert (new.step, new.dither_seed, new.method) == (old.step, old.dither_seed, method)
        assert new.codebook.dtype == np.float32 and not np.array_equal(new.codebook, old.codebook)
        zero = model.net.layer(new.layer).blobs[0] == 0
        assert zero.mean() == pytest.approx(0.1, abs=1e-3)
        weights = run.net.layer(new.layer).blobs[0]
        assert not weights[zero].view(np.uint32).any()                # pruned: +0.0 exactly
        assert weights.tobytes() == decode(new).tobytes()
        np.testing.assert_array_equal(run.net.layer(new.layer).blobs[1],
                                      model.net.layer(new.layer).blobs[1])   # biases untouched
    for name in ("conv1", "fc2"):                                     # not quantized: untouched
        assert run.net.layer(name).blobs[0] is model.net.layer(name).blobs[0]
    assert run.options == dict(iterations=30, lr=lr, momentum=0.9, batch=32, seed=0)


def test_codebook_finetuning_is_deterministic_and_refuses_bad_input(caffe, digits):
    model, train, test = digits
    qs = quantize_net(model.net, ["fc1"], "kmeans", bits=2)
    a = finetune_codebooks(model, qs, train, test, caffe, iterations=3, lr=0.3, batch=16, seed=4)
    b = finetune_codebooks(model, qs, train, test, caffe, iterations=3, lr=0.3, batch=16, seed=4)
    assert a.quantized[0].codebook.tobytes() == b.quantized[0].codebook.tobytes()
    assert [r.loss for r in a.rows] == [r.loss for r in b.rows] and a.after == b.after
    none = finetune_codebooks(model, qs, train, test, caffe, iterations=0, lr=0.3)
    assert none.after == none.before and none.quantized[0].codebook.tobytes() == \
        qs[0].codebook.tobytes()

    def refused(exc, pattern, quantized=qs, **kwargs):
        options = dict(iterations=1, lr=0.1) | kwargs
        with pytest.raises(exc, match=pattern):
            finetune_codebooks(model, quantized, train, test, caffe, **options)

    refused(ValueError, r"^The 'lr' parameter of finetune_codebooks must be a finite float > 0\. "
                        r"Got 0 instead\.$", lr=0)
    refused(ValueError, r"'momentum' parameter .* in \[0, 1\)\. Got 1\.0", momentum=1.0)
    refused(ValueError, r"'iterations' parameter .* Got -1", iterations=-1)
    refused(ValueError, r"'quantized' parameter .* non-empty sequence of QuantizedBlob", ())
    refused(CaffeTuckerError, r"layer 'fc1' is quantized twice", qs + qs)
    refused(CaffeTuckerError, r"no layer 'nope' for its quantized weights",
            (replace(qs[0], layer="nope"),))
    refused(CaffeTuckerError, r"trains the weights \(blob 0\), not blob 1",
            (replace(qs[0], blob=1),))
    refused(CaffeTuckerError, r"layer 'fc2': quantized blob 0 has shape \(128, 1024\)",
            (replace(qs[0], layer="fc2"),))
