"""convert: exact rewrites, the paper's numbers from its ranks, outputs, and bad input."""


import numpy as np
import pytest

from caffe_tucker import infer_shapes, load, read_prototxt
from caffe_tucker.compress.decompose import decompose_layer
from caffe_tucker.compress.methods import get_method
from caffe_tucker.io.emit import write_caffemodel
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.compress.ranks import RankChoice
from caffe_tucker.compress.reproduce import agrees
from caffe_tucker.compress.rewrite import replacement_for, rewrite_net
from conftest import ZOO, write
from reference import conv2d, inner_product, run_layers

TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 13 dim: 13 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "r1" }
layer { name: "conv2" type: "Convolution" bottom: "r1" top: "conv2"
        convolution_param { num_output: 12 kernel_size: 3 pad: 2 dilation: 2 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "r2" }
layer { name: "fc1" type: "InnerProduct" bottom: "r2" top: "fc1" inner_product_param { num_output: 16 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 5 } }
"""


@pytest.fixture
def tiny(tmp_path):
    proto = write(tmp_path / "tiny.prototxt", TINY)
    net = init_weights(read_prototxt(proto), seed=5)
    # non-zero biases, so that they are checked too
    net = net.with_layers(l.with_blobs([l.blobs[0], np.linspace(-1, 1, l.blobs[1].size, dtype=np.float32)])
                          if len(l.blobs) == 2 else l for l in net.layers)
    write_caffemodel(net, tmp_path / "tiny.caffemodel")
    return load(proto, tmp_path / "tiny.caffemodel")


def compress(net, shapes, name, method, ranks):
    choice = RankChoice(layer=name, method=method, ranks=tuple(ranks), full=(), group_ranks=(),
                        source="test")
    d = decompose_layer(net.layer(name), shapes.layers[name], choice)
    new = rewrite_net(net, {name: replacement_for(net.layer(name), shapes.layers[name], method,
                                                  ranks, d.blobs)})
    return d, new, infer_shapes(new)


CASES = [("conv1", "tucker1", [8]), ("conv2", "tucker2", [4, 6]), ("fc1", "tucker2", [12, 16]),
         ("fc1", "svd", [16]), ("fc2", "svd", [5])]


@pytest.mark.parametrize("name, method, ranks", CASES)
def test_full_rank_rewrite_reproduces_the_layer(tiny, name, method, ranks):
    net, shapes = tiny
    d, new, new_shapes = compress(net, shapes, name, method, ranks)
    assert d.rel_error < 1e-6
    x = np.random.default_rng(0).standard_normal((2, 3, 13, 13))
    ref = run_layers(net, shapes, {"data": x})["fc2"]
    out = run_layers(new, new_shapes, {"data": x})["fc2"].reshape(ref.shape)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("name, method, ranks", [("conv1", "tucker1", [3]), ("conv2", "tucker2", [2, 3]),
                                                 ("fc1", "tucker2", [4, 5]), ("fc1", "svd", [4])])
def test_low_rank_layers_compute_the_reconstructed_kernel(tiny, name, method, ranks):
    net, shapes = tiny
    d, new, new_shapes = compress(net, shapes, name, method, ranks)
    assert 0.05 < d.rel_error < 1
    x = np.random.default_rng(1).standard_normal((2, 3, 13, 13))
    blobs = run_layers(net, shapes, {"data": x})
    layer = net.layer(name)
    inp = blobs[layer.bottoms[0]]
    kernel = np.concatenate([get_method(method).reconstruct(g) for g in d.groups])
    if layer.type == "Convolution":
        g = shapes.layers[name].geometry
        expected = conv2d(inp, kernel, layer.blobs[1], g.stride, g.pad, g.dilation, g.group)
    else:
        expected = inner_product(inp, kernel.reshape(kernel.shape[0], -1), layer.blobs[1])
    got = run_layers(new, new_shapes, {"data": x})[layer.tops[0]].reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert not np.allclose(got, blobs[layer.tops[0]].reshape(expected.shape), rtol=1e-3)


def test_rewritten_layers_layout(tiny):
    net, shapes = tiny
    _, new, new_shapes = compress(net, shapes, "conv2", "tucker2", [2, 3])
    names = get_method("tucker2").new_layer_names("conv2")
    layers = [new.layer(n) for n in names]
    assert [l.type for l in layers] == ["Convolution"] * 3
    assert [l.bottoms[0] for l in layers] == ["r1", "conv2_tk1", "conv2_tk2"]
    assert layers[-1].tops == ("conv2",)
    p = [l.spec.convolution_param for l in layers]
    assert [(q.num_output, q.group, q.bias_term) for q in p] == [(4, 2, False), (6, 2, False), (12, 2, True)]
    assert list(p[1].kernel_size) == [3] and list(p[1].pad) == [2] and list(p[1].dilation) == [2]
    assert [tuple(b.shape) for b in layers[0].blobs + layers[1].blobs + layers[2].blobs] == [
        (4, 4, 1, 1), (6, 2, 3, 3), (12, 3, 1, 1), (12,)]
    assert new_shapes.blobs["conv2"] == shapes.blobs["conv2"]
    _, new, _ = compress(net, shapes, "conv1", "tucker1", [3])
    tk1, tk2 = (new.layer(n) for n in get_method("tucker1").new_layer_names("conv1"))
    # weight multipliers go to every new layer, bias multipliers to the last
    assert [(q.lr_mult, q.decay_mult) for q in tk1.spec.param] == [(1, 1)]
    assert [(q.lr_mult, q.decay_mult) for q in tk2.spec.param] == [(1, 1), (2, 0)]
    assert list(tk1.spec.convolution_param.stride) == [2] and tk2.tops == ("conv1",)


def paper_rank_net(name, zoo_meta):
    """The zoo deploy with the paper's ranks (structure only) and its analysis."""
    from caffe_tucker import analyze

    meta = zoo_meta(name)
    net = read_prototxt(ZOO / name / "deploy.prototxt").for_state("TEST")
    shapes = infer_shapes(net)
    reps = {}
    for row in meta["paper"]["layers"]:
        ranks = row["ranks"] if isinstance(row["ranks"], list) else [row["ranks"]]
        if None not in ranks:
            reps[row["layer"]] = replacement_for(net.layer(row["layer"]), shapes.layers[row["layer"]],
                                                 row["method"], ranks)
    new = rewrite_net(net, reps)
    return meta, reps, analyze(new)


@pytest.mark.parametrize("name", ["alexnet", "vgg_s", "googlenet", "vgg16"])
def test_paper_ranks_give_the_papers_compressed_rows(name, zoo_meta):
    meta, reps, a = paper_rank_net(name, zoo_meta)
    bad = {(e["layer"], f) for e in meta["paper"]["errata"] for f in e["field"].split("/")}
    checked = 0
    for row in meta["paper"]["layers"]:
        if row["layer"] not in reps:
            continue  # GoogLeNet conv2*: a copy of conv1*'s row, its R3 is not printed
        parts = [a.row(n) for n in get_method(row["method"]).new_layer_names(row["layer"])]
        w, f = sum(p.weights for p in parts), sum(p.flops for p in parts)
        for field, value in (("weights_after", w), ("flops_after", f)):
            if (row["layer"], field) in bad:
                continue
            assert agrees(value, row[field]), (name, row["layer"], field, row[field], value)
            checked += 1
        if row["method"] == "tucker2" and (row["layer"], "flops_after") not in bad:
            # the printed split (=a+b+c) too
            for part, text in zip(parts, row["flops_after_parts"]):
                value, unit = float(text) * 1e6, 10 ** (6 - len(text.partition(".")[2]))
                assert abs(part.flops - value) < unit, (name, row["layer"], text, part.flops)
    assert checked >= 8


def test_paper_rank_totals(zoo_meta):
    """Table 1's compressed totals where they follow from the ranks (see README for the rest)."""
    _, _, alex = paper_rank_net("alexnet", zoo_meta)
    assert round(alex.total_weights / 1e6) == 11
    assert round(alex.total_flops / 1e6) == 166            # Table 1 prints 272M (README)
    _, _, vgg_s = paper_rank_net("vgg_s", zoo_meta)
    assert round(vgg_s.total_weights / 1e6) == 14 and round(vgg_s.total_flops / 1e6) == 549
    _, _, vgg16 = paper_rank_net("vgg16", zoo_meta)
    assert round(vgg16.total_weights / 1e6) == 127
    assert round(vgg16.total_flops / 1e6) == 3833         # Table 1 prints 3139M (README)
    from caffe_tucker import analyze
    orig = analyze(read_prototxt(ZOO / "vgg16" / "deploy.prototxt").for_state("TEST"))
    assert round(orig.total_flops / vgg16.total_flops, 2) == 4.04
    orig = analyze(read_prototxt(ZOO / "alexnet" / "deploy.prototxt").for_state("TEST"))
    assert round(orig.total_flops / alex.total_flops, 2) == 4.37


@pytest.mark.parametrize("name, method, ranks", CASES + [("conv2", "tucker2", [1, 2])])
def test_rank_selection_cost_formula_agrees_with_the_emitted_layers(tiny, name, method, ranks):
    """Method.cost (used to skip layers that would not shrink) == analyze of the rewrite."""
    from caffe_tucker import analyze

    net, shapes = tiny
    weights, flops = get_method(method).cost(net.layer(name), shapes.layers[name], tuple(ranks))
    new = rewrite_net(net, {name: replacement_for(net.layer(name), shapes.layers[name], method,
                                                  ranks)})
    a = analyze(new)
    rows = [a.row(n) for n in get_method(method).new_layer_names(name)]
    assert weights == tuple(r.weights for r in rows)
    assert flops == tuple(r.flops for r in rows)


def test_tucker2_fc_layout_is_conv_then_inner_products(tiny):
    """Issue 13: fc1 (reading a 12×7×7 map) becomes 1×1 conv → InnerProduct → InnerProduct, with
    2-D InnerProduct weights and the original (N, 16) output."""
    net, shapes = tiny
    d, new, new_shapes = compress(net, shapes, "fc1", "tucker2", [5, 7])
    layers = [new.layer(n) for n in get_method("tucker2").new_layer_names("fc1")]
    assert [l.type for l in layers] == ["Convolution", "InnerProduct", "InnerProduct"]
    c, h, w = shapes.layers["fc1"].inputs[0][1:]
    assert [tuple(b.shape) for l in layers for b in l.blobs] == [
        (5, c, 1, 1), (7, 5 * h * w), (16, 7), (16,)]
    assert new_shapes.blobs["fc1"] == shapes.blobs["fc1"] == (2, 16)
    assert layers[1].spec.inner_product_param.bias_term is False
    # the blobs read back give the decomposition's kernel
    kernel = get_method("tucker2").kernel_from_blobs([l.blobs for l in layers])
    assert np.allclose(kernel.reshape(16, -1), get_method("tucker2").reconstruct(d.groups[0])
                       .reshape(16, -1), atol=1e-5)


def test_with_fc_adds_the_fc_layers_the_preset_leaves_alone():
    from caffe_tucker.compress.plan import make_plan

    net = read_prototxt(ZOO / "vgg16" / "deploy.prototxt").for_state("TEST")
    shapes = infer_shapes(net)
    plain = make_plan(net, shapes, "vgg16")
    more = make_plan(net, shapes, "vgg16", with_fc=True)
    assert not any(n.startswith("fc") for n in plain)
    assert {k: v for k, v in more.items() if k not in plain} == {
        "fc6": "svd", "fc7": "svd", "fc8": "svd"}
    assert list(more) == [l.name for l in net.layers if l.name in more]  # net order
    alex = read_prototxt(ZOO / "alexnet" / "deploy.prototxt").for_state("TEST")
    alex_shapes = infer_shapes(alex)
    assert make_plan(alex, alex_shapes, "alexnet", with_fc=True) == make_plan(alex, alex_shapes,
                                                                               "alexnet")
