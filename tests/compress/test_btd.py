"""Block-term decomposition (method ``btd``): the algorithm's guarantees, the Caffe chain, ranks,
the paper's VGG-16 configuration (from shapes alone), and the method through convert."""

import json

import numpy as np
import pytest

from caffe_tucker import (ConvertOptions, convert, infer_shapes, load_model, read_prototxt,
                          write_outputs)
from caffe_tucker.analysis.cost import analyze
from caffe_tucker.compress.decompose import decompose_layer
from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.methods.btd import block_term
from caffe_tucker.compress.ranks import RankChoice
from caffe_tucker.compress.record import CompressionRecord, LayerRecord, Totals, record_from_nets
from caffe_tucker.compress.reproduce import agrees, compare_with_paper, paper_of, paper_ranks
from caffe_tucker.compress.rewrite import replacement_for, rewrite_net
from caffe_tucker.compress.tensorly_wrapper import partial_tucker
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.zoo import zoo_model
from conftest import ZOO, write
from fake_runtime import FakeRuntime
from reference import conv2d, run_layers

BTD = get_method("btd")

GROUPED = """name: "grouped"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 8 dim: 11 dim: 11 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 12 kernel_size: 3 stride: 2 pad: 2 dilation: 2 group: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


def low_rank_kernel(seed=0, t=12, s=10, d=3, rank=4, noise=0.05):
    """A kernel with structure (a sum of a few Tucker terms) plus noise, like a trained one."""
    rng = np.random.default_rng(seed)
    k = np.einsum("abij,sb,ta->tsij", rng.standard_normal((rank, rank, d, d)),
                  rng.standard_normal((s, rank)), rng.standard_normal((t, rank)))
    return k + noise * np.linalg.norm(k) / np.sqrt(k.size) * rng.standard_normal(k.shape)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def tucker2_error(k, r3, r4):
    core, (v, u) = partial_tucker(k, [r4, r3], [0, 1])
    return rel(k, np.einsum("abij,sb,ta->tsij", core, u, v))


def test_one_block_is_tucker2_exactly(tmp_path):
    k = low_rank_kernel()
    factors = BTD.factorize(k, (3, 5, 1))
    t2 = get_method("tucker2").factorize(k, (3, 5))
    np.testing.assert_array_equal(BTD.reconstruct(factors), get_method("tucker2").reconstruct(t2))
    # and the same new layers (the middle convolution has group 1)
    net, shapes = _grouped_net(1, tmp_path)
    layer, info = net.layer("conv"), shapes.layers["conv"]
    geo = BTD.geometry(layer, info)
    assert [l.spec for l in BTD.new_layers(layer, geo, (3, 5, 1))] == \
        [l.spec for l in get_method("tucker2").new_layers(layer, geo, (3, 5))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("blocks, r3, r4", [(2, 2, 3), (4, 1, 2), (3, 2, 2)])
def test_error_never_above_tucker2_at_the_block_ranks(seed, blocks, r3, r4):
    k = low_rank_kernel(seed)
    (u, core, v), errors = block_term(k, r3, r4, blocks)
    assert u.shape == (blocks, 10, r3) and core.shape == (blocks, r4, r3, 3, 3)
    assert v.shape == (blocks, 12, r4)
    err = rel(k, BTD.reconstruct((u, core, v)))
    assert err == pytest.approx(errors[-1], rel=1e-9)
    # guaranteed: the sweeps never raise the error, and N blocks do no worse than one
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))
    assert err <= tucker2_error(k, r3, r4) + 1e-12
    # a BTD is a Tucker-2 at (N·R3, N·R4) with a block-diagonal core: not better than that
    # Tucker-2 (up to HOOI's own shortfall, hence the slack)
    assert err >= tucker2_error(k, blocks * r3, blocks * r4) - 0.02
    # deterministic
    (u2, core2, v2), _ = block_term(k, r3, r4, blocks)
    np.testing.assert_array_equal(core, core2)


def test_blocks_fit_a_true_block_term_kernel():
    rng = np.random.default_rng(3)
    blocks = [(rng.standard_normal((10, 2)), rng.standard_normal((3, 2, 3, 3)),
               rng.standard_normal((12, 3))) for _ in range(3)]
    k = sum(np.einsum("abij,sb,ta->tsij", c, u, v) for u, c, v in blocks)
    factors = BTD.factorize(k, (6, 9, 3))
    assert rel(k, BTD.reconstruct(factors)) < tucker2_error(k, 2, 3)
    assert rel(k, BTD.reconstruct(factors)) < 0.35


def _grouped_net(group, tmp_path):
    proto = write(tmp_path / f"grouped{group}.prototxt", GROUPED.replace("group: 2", f"group: {group}"))
    net = init_weights(read_prototxt(proto), seed=7)
    conv = net.layer("conv")
    net = net.with_layers(l.with_blobs([l.blobs[0], np.linspace(-1, 1, 12, dtype=np.float32)])
                          if l.name == "conv" else l for l in net.layers)
    assert conv.blobs[0].shape[1] == 8 // group
    return net, infer_shapes(net)


@pytest.mark.parametrize("group, ranks", [(1, (6, 6, 2)), (2, (4, 6, 2)), (2, (2, 3, 1)),
                                           (2, (4, 6, 1)), (1, (8, 12, 4))])
def test_caffe_chain_is_the_convolution_with_the_sum_of_blocks(group, ranks, tmp_path):
    net, shapes = _grouped_net(group, tmp_path)
    layer, info = net.layer("conv"), shapes.layers["conv"]
    choice = RankChoice(layer="conv", method="btd", ranks=ranks, full=(), group_ranks=(),
                        source="test")
    d = decompose_layer(layer, info, choice)
    new = rewrite_net(net, {"conv": replacement_for(layer, info, "btd", ranks, d.blobs)})
    new_shapes = infer_shapes(new)
    s_, t_, n = ranks
    tk1, tk2, tk3 = (new.layer(f"conv_tk{i}") for i in (1, 2, 3))
    p1, p2, p3 = (l.spec.convolution_param for l in (tk1, tk2, tk3))
    assert (p1.num_output, p1.group, p2.num_output, p2.group, p3.group) == \
        (group * s_, group, group * t_, group * n, group)
    assert tk2.blobs[0].shape == (group * t_, s_ // n, 3, 3)
    # The chain, run as Caffe runs it, against the direct convolution with each group's kernel
    # rebuilt from the factors themselves (not from the blobs): this checks the block ordering.
    kernel = np.concatenate([BTD.reconstruct(f) for f in d.groups]).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((2, 8, 11, 11)).astype(np.float32)
    geo = info.geometry
    want = conv2d(x, kernel, layer.blobs[1], geo.stride, geo.pad, geo.dilation, group)
    got = run_layers(new, new_shapes, {"data": x})["conv"]
    assert np.max(np.abs(got - np.maximum(want, 0))) <= 1e-4 * np.max(np.abs(want))
    # The same chain in the numpy Caffe stand-in (Caffe's own grouped-convolution layout).
    with FakeRuntime() as rt:
        fake = rt.forward(new, None, {"data": x}, blobs=["conv"])["conv"]
    assert np.max(np.abs(fake - np.maximum(want, 0))) <= 1e-4 * np.max(np.abs(want))
    # Blobs back to factors, and the ranks read off the layers.
    np.testing.assert_allclose(BTD.kernel_from_blobs([tk1.blobs, tk2.blobs, tk3.blobs], group),
                               kernel, atol=1e-5)
    assert BTD.ranks_from_layers([tk1, tk2, tk3], group) == ranks
    assert BTD.matches(layer, info, [tk1, tk2, tk3])
    assert not get_method("tucker2").matches(layer, info, [tk1, tk2, tk3]) or n == 1
    # cost = what analysis counts on the emitted layers = the formula (per group)
    w, f = BTD.cost(layer, info, ranks)
    sg, tg = 8 // group, 12 // group
    (h, wd), (ho, wo) = info.inputs[0][2:], info.outputs[0][2:]
    assert sum(w) == group * (sg * s_ + 9 * s_ * t_ // n + t_ * tg)
    assert sum(f) == group * (h * wd * sg * s_ + ho * wo * (9 * s_ * t_ // n + t_ * tg))
    after = analyze(new, new_shapes)
    assert sum(after.row(f"conv_tk{i}").flops for i in (1, 2, 3)) == sum(f)


def test_fixed_ranks_are_checked(tmp_path):
    net, shapes = _grouped_net(2, tmp_path)
    layer, info = net.layer("conv"), shapes.layers["conv"]
    assert BTD.full_ranks(layer, info) == (4, 6, 4)
    assert BTD.check_ranks([4, 6, 2], layer, info, "conv", "r.json") == (4, 6, 2)
    with pytest.raises(CaffeTuckerError, match=r"'S'' parameter of r.json must be a multiple of N = 2"):
        BTD.check_ranks([3, 6, 2], layer, info, "conv", "r.json")
    with pytest.raises(CaffeTuckerError, match=r"'T'' parameter .* must be an int in \[1, 6\]"):
        BTD.check_ranks([4, 8, 2], layer, info, "conv", "r.json")
    with pytest.raises(CaffeTuckerError, match=r"a list \[S', T', N\] for the btd layer 'conv'"):
        BTD.check_ranks([4, 6], layer, info, "conv", "r.json")
    with pytest.raises(CaffeTuckerError, match="'N' parameter .* an int >= 1"):
        BTD.check_ranks([4, 6, 0], layer, info, "conv", "r.json")


def test_automatic_ranks_split_the_unfolding_ranks_into_blocks(tmp_path):
    net, shapes = _grouped_net(1, tmp_path)
    layer, info = net.layer("conv"), shapes.layers["conv"]   # S = 8, T = 12
    auto = lambda found, blocks: BTD.auto_ranks(found, layer, info, {"blocks": blocks})  # noqa: E731
    assert auto((5, 7), 4) == (8, 8, 4)      # rounded up to multiples of N
    assert auto((5, 7), 2) == (6, 8, 2)
    assert auto((2, 7), 4) == (2, 8, 2)      # N at most the smaller rank
    assert auto((7, 11), 3) == (6, 12, 3)    # at most the largest multiple of N within S
    assert auto((0, 7), 4)[-1] == 0          # no component: the layer is left untouched
    assert auto((5, 7), 1) == (5, 7, 1)      # one block: Tucker-2's ranks


def test_paper_vgg16_configuration_costs_from_shapes(zoo_meta):
    """Wang & Cheng's VGG-16 ranks: conv multiply-adds 15.35G -> 1.28G (x12.0), whole net x11.0."""
    meta = zoo_meta("vgg16")
    config = meta["methods"]["btd"]["paper"]
    net = read_prototxt(ZOO / "vgg16" / "deploy.prototxt")
    shapes = infer_shapes(net)
    before = analyze(net, shapes)
    conv = sum(r.flops for r in before.layers if r.type == "Convolution")
    total = before.total_flops
    saved = 0
    ranks = {row["layer"]: tuple(row["ranks"]) for row in config["layers"]}
    assert set(ranks) == {l.name for l in net.layers if l.type == "Convolution"} - {"conv1_1"}
    for name, r in ranks.items():
        layer, info = net.layer(name), shapes.layers[name]
        BTD.check_ranks(list(r), layer, info, name, "model.json")
        saved += before.row(name).flops - sum(BTD.cost(layer, info, r)[1])
    assert round(conv / 1e9, 2) == 15.35
    assert round((conv - saved) / 1e9, 2) == 1.28
    assert round(conv / (conv - saved), 1) == config["totals"]["conv_flops_ratio"] == 12.0
    assert round(total / (total - saved), 1) == config["totals"]["flops_ratio"] == 11.0


@pytest.fixture
def digits(tmp_path):
    import shutil

    shutil.copy(ZOO / "digits" / "deploy.prototxt", tmp_path / "digits.prototxt")
    shutil.copy(ZOO / "digits" / "digits.caffemodel", tmp_path / "digits.caffemodel")
    return tmp_path / "digits.prototxt"


def test_bare_method_and_the_ranks_file_forms(digits, tmp_path, cli):
    # a bare --method: every planned layer it applies to (conv1..conv3; fc1 keeps svd)
    code, out, err = cli("convert", digits, "--method", "btd", "--blocks", "2", "-o",
                         tmp_path / "a", "--no-plot")
    assert code == 0, err
    ranks = json.loads((tmp_path / "a" / "ranks.json").read_text())
    assert ranks["conv2"]["method"] == "btd" and ranks["conv2"]["ranks"][2] == 2
    assert isinstance(ranks["fc1"], int)
    record = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {l["name"]: l["method"] for l in record["layers"]}["fc1"] == "svd"
    assert "(btd, N=2)" in (tmp_path / "a" / "report.md").read_text()
    # its ranks.json, read back, gives the same net (the entries name their method)
    code, _, err = cli("convert", digits, "--ranks", tmp_path / "a" / "ranks.json", "-o",
                       tmp_path / "b", "--no-plot")
    assert code == 0, err
    for f in ("weights.caffemodel", "ranks.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    body = lambda d: [l for l in (d / "deploy.prototxt").read_text().splitlines()  # noqa: E731
                      if not l.startswith("#")]
    assert body(tmp_path / "a") == body(tmp_path / "b")   # the header names the ranks' source
    # LAYER=METHOD wins over the bare one; plain forms still work beside the method form
    f = write(tmp_path / "r.json", json.dumps({"conv2": {"method": "btd", "ranks": [16, 16, 2]},
                                               "conv3": [8, 8], "fc1": 20}))
    result = convert(digits, None, ConvertOptions(ranks=json.loads(f.read_text()), spectra=False),
                     progress=False)
    assert [(l.name, l.method, l.ranks) for l in result.record.layers] == [
        ("conv2", "btd", (16, 16, 2)), ("conv3", "tucker2", (8, 8)), ("fc1", "svd", (20,))]
    result = convert(digits, None, ConvertOptions(method="btd", methods={"conv3": "tucker2"},
                                                  spectra=False), progress=False)
    assert {l.name: l.method for l in result.record.layers} == {
        "conv1": "btd", "conv2": "btd", "conv3": "tucker2", "fc1": "svd"}
    bad = write(tmp_path / "bad.json", json.dumps({"conv2": {"method": "btd", "ranks": [15, 16, 2]}}))
    code, _, err = cli("convert", digits, "--ranks", bad, "-o", tmp_path / "c")
    assert code == 1 and "multiple of N = 2" in err and len(err.strip().splitlines()) == 1
    bad.write_text(json.dumps({"conv2": {"method": "nope", "ranks": 3}}))
    code, _, err = cli("convert", digits, "--ranks", bad, "-o", tmp_path / "c")
    assert code == 1 and "must be one of" in err
    code, _, err = cli("convert", digits, "--method", "btd", "--method", "cp", "-o", tmp_path / "c")
    assert code == 1 and "--method" in err


def test_four_file_record_tells_btd_from_tucker2(digits, tmp_path):
    ranks = {"conv2": {"method": "btd", "ranks": [16, 16, 4]}, "conv3": [8, 8]}
    result = convert(digits, None, ConvertOptions(ranks=ranks, spectra=False), progress=False)
    write_outputs(result, tmp_path / "o", plot=False)
    told = record_from_nets(result.original, load_model(tmp_path / "o" / "deploy.prototxt",
                                                        tmp_path / "o" / "weights.caffemodel"))
    assert [(r.name, r.method, r.ranks) for r in told.layers] == [
        ("conv2", "btd", (16, 16, 4)), ("conv3", "tucker2", (8, 8))]
    mine = result.record.layer("conv2")
    assert told.layer("conv2").rel_error == pytest.approx(mine.rel_error, rel=1e-4)
    assert told.layer("conv2").flops_after == mine.flops_after


def test_reproduce_compares_btd_with_its_paper_from_shapes(cli):
    """`reproduce vgg16 --method btd --paper-ranks`'s comparison, on a record built from the
    shapes alone (the real run needs the 553 MB weights, or random ones from `init`)."""
    meta = zoo_model("vgg16")
    ranks = paper_ranks(meta, "btd")
    assert ranks["conv2_2"] == {"method": "btd", "ranks": [28, 28, 2]} and "conv1_1" not in ranks
    net = read_prototxt(meta["deploy_path"])
    shapes = infer_shapes(net)
    before = analyze(net, shapes)
    rows, saved = [], 0
    for name, entry in ranks.items():
        layer, info, b = net.layer(name), shapes.layers[name], before.row(name)
        w, f = BTD.cost(layer, info, entry["ranks"])
        saved += b.flops - sum(f)
        rows.append(LayerRecord(
            name=name, method="btd", ranks=tuple(entry["ranks"]), group_ranks=(),
            full_ranks=BTD.full_ranks(layer, info), rank_source="file", in_channels=b.in_channels,
            out_channels=b.out_channels, kernel=b.kernel, group=b.group, weights_before=b.weights,
            flops_before=b.flops, weights_after=sum(w), flops_after=sum(f), weights_parts=w,
            flops_parts=f, new_layers=tuple(BTD.new_layer_names(name))))
    t = before.total_flops
    total = Totals(weights_before=before.total_weights, weights_after=before.total_weights,
                   flops_before=t, flops_after=t - saved, bias_flops_before=0, bias_flops_after=0)
    record = CompressionRecord(model="VGG16", preset="vgg16", rank_method="fixed", weaken=1.0,
                               layers=tuple(rows), total=total)
    conv = sum(r.flops for r in before.layers if r.type == "Convolution")
    cmp = compare_with_paper(meta, record, "btd", (conv, conv - saved))
    assert all(r["ranks_match"] for r in cmp["layers"]) and len(cmp["layers"]) == 12
    assert cmp["layers"][0]["paper_weights_after"] == ""      # not printed by the paper
    tot = cmp["total"]
    assert round(tot["conv_flops_ratio"], 1) == tot["paper_conv_flops_ratio"] == 12.0
    assert round(tot["flops_ratio"], 1) == tot["paper_flops_ratio"] == 11.0
    assert tot["paper_conv_flops_after"] == "1.28G" and agrees(tot["conv_flops_after"], "1.28G")
    with pytest.raises(CaffeTuckerError, match="no paper figures for method 'cp'.*btd"):
        paper_of(meta, "cp")
    code, _, err = cli("reproduce", "vgg16", "--method", "cp", "--weights", "none.caffemodel")
    assert code == 1 and "no paper figures for method 'cp'" in err
