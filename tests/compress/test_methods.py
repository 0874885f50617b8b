"""The method table: each registered method, and adding a method is one module plus one registration."""

import numpy as np
import pytest

from caffe_tucker import ConvertOptions, convert, load_model, write_outputs
from caffe_tucker.analysis.cost import analyze
from caffe_tucker.compress.methods import get_method, method_names, register, unregister
from caffe_tucker.compress.methods.base import Method, conv_kernel_groups, conv_kernel_shape, conv_param
from caffe_tucker.compress.record import read_record, record_from_nets
from caffe_tucker.errors import CaffeTuckerError
from reference import conv2d


class InputTucker1(Method):
    """A toy method: Tucker-1 on the *input* mode, 1×1 (S→R) then D×D (R→T)."""

    name = "toy_in"
    rank_labels = ("R3",)
    unfolding_labels = {"input": "mode-3 unfolding"}
    new_types = ("Convolution", "Convolution")
    applies_to_types = ("Convolution",)

    def why_not(self, layer, info):
        if layer.type != "Convolution" or info.geometry.group != 1:
            return "toy_in takes ungrouped convolutions only"
        return None

    def kernel_shape(self, layer, info):
        return conv_kernel_shape(info)

    def kernel_groups(self, layer, info):
        return conv_kernel_groups(layer, info)

    def unfoldings(self, kernel):
        return {"input": kernel.transpose(1, 0, 2, 3).reshape(kernel.shape[1], -1)}

    def full_ranks(self, layer, info):
        return (self.kernel_shape(layer, info)[1],)

    def factorize(self, kernel, ranks):
        s = kernel.shape[1]
        u, _, _ = np.linalg.svd(kernel.transpose(1, 0, 2, 3).reshape(s, -1), full_matrices=False)
        u3 = u[:, :ranks[0]]
        return u3, np.einsum("tsij,sr->trij", kernel.astype(np.float64), u3)

    def reconstruct(self, factors):
        u3, core = factors
        return np.einsum("trij,sr->tsij", core, u3)

    def new_layer_params(self, layer, geo, ranks, bias):
        return [("Convolution", "convolution_param", conv_param(ranks[0], (1, 1))),
                ("Convolution", "convolution_param",
                 conv_param(geo.num_output, geo.kernel, geo.stride, geo.pad, geo.dilation, bias=bias))]

    def layer_blobs(self, groups, bias):
        ((u3, core),) = groups
        return ((u3.T[:, :, None, None].astype(np.float32),), (core.astype(np.float32),) + tuple(bias))

    def factors_from_blobs(self, blobs, group):
        return [(blobs[0][0][:, :, 0, 0].T.astype(np.float64), blobs[1][0].astype(np.float64))]

    def ranks_from_layers(self, new_layers, group):
        return (new_layers[0].spec.convolution_param.num_output,)


@pytest.fixture
def toy():
    method = register(InputTucker1())
    yield method
    unregister(method.name)


def test_the_methods_are_registered():
    assert set(method_names()) >= {"tucker2", "tucker1", "svd", "btd", "cp"}
    assert get_method("tucker2").rank_labels == ("R3", "R4")
    assert get_method("btd").rank_labels == ("S'", "T'", "N")
    with pytest.raises(CaffeTuckerError, match="The 'method' parameter of convert must be one of"):
        get_method("tt")


@pytest.mark.parametrize("name", ["tucker2", "tucker1"])
def test_method_blobs_invert_and_cost_matches_the_emitted_layers(cifar, name):
    model = load_model(cifar, cifar.with_suffix(".caffemodel"))
    method = get_method(name)
    layer, info = model.net.layer("conv2"), model.shapes.layers["conv2"]
    ranks = (5, 7)[:len(method.rank_labels)]
    groups = [method.factorize(k, ranks) for k in method.kernel_groups(layer, info)]
    blobs = method.layer_blobs(groups, tuple(layer.blobs[1:]))
    assert np.allclose(method.kernel_from_blobs(blobs), np.concatenate(
        [method.reconstruct(g) for g in groups]), atol=1e-5)
    new = method.new_layers(layer, method.geometry(layer, info), ranks, blobs)
    assert method.ranks_from_layers(new, 1) == ranks and method.matches(layer, info, new)
    weights, flops = method.cost(layer, info, ranks)
    assert sum(weights) < layer.blobs[0].size and len(weights) == method.n_layers


def test_a_registered_toy_method_converts_a_net(cifar, toy, tmp_path):
    options = ConvertOptions(methods={"conv2": "toy_in"}, ranks={"conv2": 8}, spectra=False)
    result = convert(cifar, None, options, progress=False)
    row = result.record.layer("conv2")
    assert row.method == "toy_in" and row.ranks == (8,) and row.new_layers == ("conv2_tk1", "conv2_tk2")
    tk1, tk2 = result.compressed.layer("conv2_tk1"), result.compressed.layer("conv2_tk2")
    assert tk1.blobs[0].shape == (8, 32, 1, 1) and tk2.blobs[0].shape == (32, 8, 5, 5)
    # The record's cost is what analysis counts on the emitted layers.
    after = analyze(result.compressed, result.compressed_shapes)
    assert row.weights_after == after.row("conv2_tk1").weights + after.row("conv2_tk2").weights
    assert row.weights_after == 8 * 32 + 32 * 8 * 25
    # The two new layers compute the convolution with the reconstructed kernel.
    original = result.original.net.layer("conv2")
    x = np.random.default_rng(0).standard_normal((2, 32, 16, 16)).astype(np.float32)
    geo = result.original.shapes.layers["conv2"].geometry
    y_new = conv2d(conv2d(x, tk1.blobs[0]), tk2.blobs[0], tk2.blobs[1], geo.stride, geo.pad)
    kernel = toy.kernel_from_blobs([tk1.blobs, tk2.blobs])
    y_ref = conv2d(x, kernel, original.blobs[1], geo.stride, geo.pad)
    assert np.max(np.abs(y_new - y_ref)) <= 1e-4 * np.max(np.abs(y_ref))
    rel = np.linalg.norm(original.blobs[0] - kernel) / np.linalg.norm(original.blobs[0])
    assert row.rel_error == pytest.approx(rel, rel=1e-5)
    # Written and read back; the four-file record recognises the toy method too.
    out = tmp_path / "out"
    write_outputs(result, out, plot=False)
    assert read_record(out).layer("conv2").method == "toy_in"
    assert (out / "ranks.json").read_text().count('"conv2": 8') == 1
    pair = record_from_nets(result.original, load_model(out / "deploy.prototxt", out / "weights.caffemodel"))
    assert pair.layer("conv2").method == "toy_in" and pair.layer("conv2").ranks == (8,)
    assert pair.layer("conv2").rel_error == pytest.approx(rel, rel=1e-4)


def test_four_file_record_tells_tucker1_from_tucker2(cifar, tmp_path):
    result = convert(cifar, None, ConvertOptions(ranks={"conv1": 12, "conv2": [6, 9], "ip1": 20},
                                                 spectra=False), progress=False)
    write_outputs(result, tmp_path / "o", plot=False)
    told = record_from_nets(result.original, load_model(tmp_path / "o" / "deploy.prototxt",
                                                        tmp_path / "o" / "weights.caffemodel"))
    assert [(r.name, r.method, r.ranks) for r in told.layers] == [
        (r.name, r.method, r.ranks) for r in result.record.compressed]
    for mine, theirs in zip(result.record.compressed, told.layers):
        assert theirs.weights_after == mine.weights_after and theirs.flops_after == mine.flops_after
        assert theirs.rel_error == pytest.approx(mine.rel_error, rel=1e-4, abs=1e-6)
    assert told.total == result.record.total
