"""CP decomposition (method ``cp``): the Caffe chain, a fit that must not be emitted, ranks."""

import json
import re

import numpy as np
import pytest

from caffe_tucker import ConvertOptions, convert, infer_shapes, load_model, read_prototxt, write_outputs
from caffe_tucker.compress.decompose import decompose_layer
from caffe_tucker.compress.methods import DecompositionFailed, get_method
from caffe_tucker.compress.methods import cp as cp_module
from caffe_tucker.compress.ranks import RankChoice
from caffe_tucker.compress.record import record_from_nets
from caffe_tucker.compress.rewrite import replacement_for, rewrite_net
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.fillers import init_weights
from conftest import write
from fake_runtime import FakeRuntime
from reference import conv2d, run_layers

CP = get_method("cp")

# A non-square kernel with different vertical and horizontal stride, pad and dilation, two groups.
ODD = """name: "odd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 dim: 13 dim: 12 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1
                            pad_h: 1 pad_w: 2 dilation: 2 dilation: 3 group: GROUP } }
"""


def _net(tmp_path, group):
    proto = write(tmp_path / f"odd{group}.prototxt", ODD.replace("GROUP", str(group)))
    net = init_weights(read_prototxt(proto), seed=3)
    net = net.with_layers(l.with_blobs([l.blobs[0], np.linspace(-1, 1, 8, dtype=np.float32)])
                          if l.name == "conv" else l for l in net.layers)
    return net, infer_shapes(net)


def rank_r_kernel(shape, r, seed=0):
    rng = np.random.default_rng(seed)
    return np.einsum("tr,sr,ir,jr->tsij", *(rng.standard_normal((d, r)) for d in shape))


@pytest.mark.parametrize("group, rank", [(1, 5), (2, 4), (2, 1)])
def test_caffe_chain_is_the_convolution_with_the_reconstruction(tmp_path, group, rank):
    net, shapes = _net(tmp_path, group)
    layer, info = net.layer("conv"), shapes.layers["conv"]
    choice = RankChoice(layer="conv", method="cp", ranks=(rank,), full=(), group_ranks=(),
                        source="test")
    d = decompose_layer(layer, info, choice)
    new = rewrite_net(net, {"conv": replacement_for(layer, info, "cp", (rank,), d.blobs)})
    new_shapes = infer_shapes(new)
    layers = [new.layer(f"conv_tk{i}") for i in (1, 2, 3, 4)]
    params = [l.spec.convolution_param for l in layers]
    assert [p.group for p in params] == [group, group * rank, group * rank, group]
    assert list(params[1].kernel_size) == [3, 1] and list(params[2].kernel_size) == [1, 2]
    assert list(params[1].stride) == [2, 1] and list(params[2].pad) == [0, 2]
    assert list(params[1].dilation) == [2, 1] and list(params[2].dilation) == [1, 3]
    assert new_shapes.layers["conv_tk4"].outputs == info.outputs
    kernel = np.concatenate([CP.reconstruct(f) for f in d.groups]).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((2, 6, 13, 12)).astype(np.float32)
    geo = info.geometry
    want = conv2d(x, kernel, layer.blobs[1], geo.stride, geo.pad, geo.dilation, group)
    got = run_layers(new, new_shapes, {"data": x})["conv"]
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
    with FakeRuntime() as rt:
        fake = rt.forward(new, None, {"data": x}, blobs=["conv"])["conv"]
    assert np.max(np.abs(fake - want)) <= 1e-4 * np.max(np.abs(want))
    np.testing.assert_allclose(CP.kernel_from_blobs([l.blobs for l in layers], group), kernel,
                               atol=1e-5)
    assert CP.ranks_from_layers(layers, group) == (rank,) and CP.matches(layer, info, layers)
    # the fit is reported: the record's error is the reconstruction's
    k = layer.blobs[0].astype(np.float64)
    assert d.rel_error == pytest.approx(np.linalg.norm(k - kernel) / np.linalg.norm(k), rel=1e-4)


def test_an_exact_low_rank_kernel_is_recovered():
    k = rank_r_kernel((12, 10, 3, 3), 4)
    factors, rel = cp_module.cp_fit(k, 4)
    assert rel < 1e-4
    assert np.linalg.norm(k - CP.reconstruct(factors)) / np.linalg.norm(k) == pytest.approx(rel, abs=1e-9)
    # weights spread evenly: every factor column of a component has the same norm
    norms = np.array([np.linalg.norm(f, axis=0) for f in factors])
    np.testing.assert_allclose(norms, np.broadcast_to(norms[0], norms.shape), rtol=1e-9)


def test_a_breakdown_of_als_is_never_emitted():
    """A tensor of rank 4 and border rank 2 with axis-aligned vectors: ALS at rank 2 meets a
    singular system in its first sweep."""
    a, b = np.eye(2)
    outer = lambda *v: np.einsum("i,j,k,l->ijkl", *v)  # noqa: E731
    w = outer(a, a, a, b) + outer(a, a, b, a) + outer(a, b, a, a) + outer(b, a, a, a)
    with pytest.raises(DecompositionFailed, match="CP-ALS at rank 2 broke down"):
        cp_module.cp_fit(w, 2)


def test_a_fit_worse_than_nothing_is_never_emitted(monkeypatch):
    rng = np.random.default_rng(0)
    vectors = [v / np.linalg.norm(v) for v in (rng.standard_normal(d) for d in (4, 3, 3, 3))]
    k = 2.0 * np.einsum("t,s,i,j->tsij", *vectors)

    def negated(tensor, rank, **_):  # the kernel with its sign flipped: relative error 2
        return np.array([-2.0]), [v[:, None] for v in vectors], []

    monkeypatch.setattr(cp_module, "parafac", negated)
    with pytest.raises(DecompositionFailed, match=r"did not fit \(relative error 2, no better "
                       r"than a zero kernel\)"):
        cp_module.cp_fit(k, 1)


@pytest.mark.parametrize("fake, reason", [
    ("nan", r"diverged \(NaN or infinite factors\)"),
    ("huge", r"degenerate \(a component 1e\+03 times the kernel's norm"),
])
def test_a_diverged_fit_leaves_the_layer_untouched_with_the_reason(cifar, monkeypatch, fake, reason):
    def parafac(tensor, rank, **_):
        factors = [np.zeros((d, rank)) for d in tensor.shape]
        for f in factors:
            f[0, :] = 1.0
        if fake == "nan":
            return np.full(rank, np.nan), factors, []
        # a fair rank-1 fit (the projection on the unfoldings' leading singular vectors) plus
        # two huge components that cancel exactly
        for mode, f in enumerate(factors):
            unfolded = np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)
            f[:, 0] = np.linalg.svd(unfolded)[0][:, 0]
        weights = np.zeros(rank)
        weights[0] = np.einsum("tsij,t,s,i,j->", tensor, *(f[:, 0] for f in factors))
        weights[1:3] = [1e3 * np.linalg.norm(tensor), -1e3 * np.linalg.norm(tensor)]
        return weights, factors, []

    monkeypatch.setattr(cp_module, "parafac", parafac)
    result = convert(cifar, None, ConvertOptions(ranks={"conv2": {"method": "cp", "ranks": 6}},
                                                 spectra=False), progress=False)
    row = result.record.layer("conv2")
    assert not row.compressed and row.method == "cp"
    assert row.skipped_reason.startswith("CP-ALS at rank 6") and "left untouched" in row.skipped_reason
    assert re.search(reason, row.skipped_reason), row.skipped_reason
    assert result.compressed.layer("conv2").blobs[0].shape == (32, 32, 5, 5)   # unchanged
    assert "conv2" not in result.ranks and row.weights_after == row.weights_before


def test_automatic_rank_matches_tucker2_multiply_adds(cifar):
    model = load_model(cifar, cifar.with_suffix(".caffemodel"))
    layer, info = model.net.layer("conv2"), model.shapes.layers["conv2"]
    t2 = get_method("tucker2")
    (r,) = CP.auto_ranks((14, 13), layer, info, {})
    target = sum(t2.cost(layer, info, (14, 13))[1])
    assert sum(CP.cost(layer, info, (r,))[1]) <= target < sum(CP.cost(layer, info, (r + 1,))[1])
    assert sum(CP.cost(layer, info, (r,))[1]) >= 0.97 * target
    assert CP.auto_ranks((0, 13), layer, info, {}) == (0,)
    assert CP.full_ranks(layer, info) == (32 * 25,)
    with pytest.raises(CaffeTuckerError, match=r"an int in \[1, 800\]"):
        CP.check_ranks(801, layer, info, "conv2", "r.json")


def test_cp_through_convert_and_the_four_file_record(cifar, tmp_path):
    result = convert(cifar, None, ConvertOptions(method="cp", layers=("conv2", "conv3"),
                                                 spectra=False), progress=False)
    rows = {l.name: l for l in result.record.layers}
    assert rows["conv2"].method == "cp" and rows["conv2"].compressed
    assert 0 < rows["conv2"].rel_error < 1
    write_outputs(result, tmp_path / "o", plot=False)
    ranks = json.loads((tmp_path / "o" / "ranks.json").read_text())
    assert ranks["conv2"] == {"method": "cp", "ranks": rows["conv2"].ranks[0]}
    md = (tmp_path / "o" / "report.md").read_text()
    r = rows["conv2"].ranks[0]
    assert f"| conv2* (cp) | {r} | {r} |" in md
    told = record_from_nets(result.original, load_model(tmp_path / "o" / "deploy.prototxt",
                                                        tmp_path / "o" / "weights.caffemodel"))
    assert told.layer("conv2").method == "cp" and told.layer("conv2").ranks == (r,)
    assert told.layer("conv2").rel_error == pytest.approx(rows["conv2"].rel_error, rel=1e-3)
