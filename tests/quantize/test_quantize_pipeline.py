"""``quantize`` -> ``unpack`` -> ``verify``: the compressed-model path end to end.

The first tests need no Caffe (the stage and the container agree bit for bit, the bytes are
deterministic, a sparse model keeps its zeros); the last runs the unpacked model in real Caffe.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from caffe_tucker.io.read import read_net
from caffe_tucker.model import load_model
from caffe_tucker.quantize.codebook import decode
from caffe_tucker.quantize.container import read_container
from caffe_tucker.quantize.pipeline import QuantizeOptions, generic_sizes, quantize_model

from conftest import ZOO

DIGITS = ZOO / "digits"


@pytest.fixture(scope="module")
def digits():
    return load_model(DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel")


def _sparse(model, ratio=0.8):
    """The digits model with the smallest ``ratio`` of every weight blob zeroed."""
    from caffe_tucker.sparsity.prune import apply_mask, magnitude_mask

    net = model.net.with_layers(
        layer.with_blobs([apply_mask(layer.blobs[0], magnitude_mask(layer.blobs[0], ratio)),
                          *layer.blobs[1:]]) if layer.blobs else layer
        for layer in model.net.layers)
    from dataclasses import replace
    return replace(model, net=net)


@pytest.mark.parametrize("method", ["dithered", "uniform", "kmeans"])
def test_sparse_model_keeps_its_zeros_and_the_container_holds_the_quantized_weights(digits, method):
    model = _sparse(digits)
    result = quantize_model(model, QuantizeOptions(method=method, bits=3, codec="lzma"))
    again = quantize_model(model, QuantizeOptions(method=method, bits=3, codec="lzma"))
    assert result.data == again.data                          # deterministic bytes
    for q in result.packed.quantized:
        w = model.net.layer(q.layer).blobs[0]
        got = decode(q)
        assert np.all(got[w == 0] == 0)                       # the pruned stay exactly zero
        np.testing.assert_array_equal(q.symbols.reshape(w.shape) == 0, w == 0)
        if method == "dithered":                              # dither: no kept weight lands on 0
            assert np.all(got[w != 0] != 0)
        assert len(q.codebook) <= 7                           # 2^3 - 1 levels
    report = result.report
    assert report.sizes["container"] == len(result.data)
    assert report.sizes["container"] < report.sizes["xz"] / 4  # far below a generic code
    assert report.paper_ratio == pytest.approx(32 * report.parameters / (8 * len(result.data)))
    for row in report.layers:
        assert 0 < row["bits_per_nonzero"] < 32 and row["nonzero"] < row["weights"]


def test_generic_sizes_are_those_of_the_codecs():
    import bz2
    import lzma
    import zlib

    data = bytes(range(256)) * 100
    assert generic_sizes(data) == {"caffemodel": 25600, "gzip": len(zlib.compress(data, 9)),
                                   "bzip2": len(bz2.compress(data, 9)),
                                   "xz": len(lzma.compress(data))}


def test_quantize_options_refuse_two_targets():
    with pytest.raises(ValueError, match="The 'bits' parameter of quantize must be given alone"):
        QuantizeOptions(bits=4, step=0.1)
    assert QuantizeOptions().bits == 4


def test_quantize_unpack_verify_in_caffe(cli, caffe_command, tmp_path):
    ctz = tmp_path / "digits.ctz"
    code, out, err = cli("quantize", DIGITS / "deploy.prototxt", "--weights",
                         DIGITS / "digits.caffemodel", "--bits", "5", "-o", ctz, "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["sizes"]["container"] == ctz.stat().st_size
    code, out, err = cli("unpack", ctz, "-o", tmp_path / "un")
    assert code == 0, err
    unpacked = read_net(tmp_path / "un" / "deploy.prototxt", tmp_path / "un" / "weights.caffemodel")
    packed = read_container(ctz)
    for q in packed.quantized:                                  # bit for bit
        np.testing.assert_array_equal(unpacked.layer(q.layer).blobs[0], decode(q))
    code, out, err = cli("verify", DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel",
                         tmp_path / "un" / "deploy.prototxt", tmp_path / "un" / "weights.caffemodel",
                         "--tuned", "--random", "4", "--format", "json", "--caffe-python",
                         caffe_command)
    assert code == 0, err
    result = json.loads(out)
    assert result["verdict"] == "measured" and result["checks"]["decomposition"] == "not applicable"
    blob = result["approximation"][0]
    # 5-bit weights change the probabilities a little, not the decisions
    assert 0 < blob["max_abs"] < 0.2 and blob["top1_agreement"] >= 0.75
