"""The Winograd form in stock Caffe layers: its layers, sizes and cost, a numpy emulation of those
layers, and real Caffe (the digits model and a net of odd sizes) against the numpy reference.

The emulation below implements Caffe's Convolution (groups, stride, pad), Deconvolution, MAX
Pooling and Crop from their definitions (tests/fake_runtime.py has no Deconvolution or Crop), so
a run without Caffe still checks the layouts; the Caffe tests then check them against Caffe's
own layers.
"""

import numpy as np
import pytest

from caffe_tucker.analysis.cost import analyze
from caffe_tucker.analysis.shapes import infer_shapes
from caffe_tucker.errors import (CaffeTuckerError, ShapeError, UnsupportedLayerError,
                                 WeightsMismatchError)
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.caffe_pb2 import NetParameter
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.model import load_model
from caffe_tucker.sparsity.winograd import to_winograd, winograd_correlate, winograd_tile
from caffe_tucker.sparsity.winograd_form import (extra_padding, form_names, input_transform_blob,
                                                 output_transform_blob, winograd_blob,
                                                 winograd_from_blob, winograd_layers,
                                                 winograd_net)
from conftest import ZOO

F32 = np.float32
TILES = [2, 4]
# (ph, pw) of the synthetic convolutions: 7x9 input gives odd outputs 5x7, 7x9, 9x11, 11x13, 7x11
PADS = [(0, 0), (1, 1), (2, 2), (3, 3), (1, 2)]


# ---------------------------------------------------------------- nets and helpers

def synthetic(pads=PADS, shape=(2, 3, 7, 9), t=4, seed=0) -> Net:
    """An Input and one 3x3 convolution per pad, all reading it (with biases)."""
    rng = np.random.default_rng(seed)
    layers = [Layer(spec=make_spec("data", "Input", [], ["data"],
                                   input_param={"shape": [{"dim": list(shape)}]}))]
    for i, (ph, pw) in enumerate(pads):
        pad = {"pad": [ph]} if ph == pw else {"pad_h": ph, "pad_w": pw}
        spec = make_spec(f"conv{i}", "Convolution", ["data"], [f"conv{i}"],
                         convolution_param={"num_output": t, "kernel_size": [3], **pad})
        blobs = (rng.standard_normal((t, shape[1], 3, 3)).astype(F32),
                 rng.standard_normal(t).astype(F32))
        layers.append(Layer(spec=spec, blobs=blobs))
    return Net(layers=tuple(layers), header=NetParameter(name="odd"))


def prune(u, fraction=0.5):
    """Zero the ``fraction`` of entries of smallest magnitude."""
    cut = np.quantile(np.abs(u), fraction)
    return np.where(np.abs(u) <= cut, 0.0, u)


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def pads_of(layer):
    p = layer.spec.convolution_param
    if p.HasField("pad_h"):
        return p.pad_h, p.pad_w
    return (p.pad[0], p.pad[0]) if p.pad else (0, 0)


def reference(net, x, weights, tile):
    """winograd_correlate of every replaced layer, with the form's tile grid."""
    out = {}
    for name, u in weights.items():
        layer = net.layer(name)
        ph, pw = pads_of(layer)
        out_hw = (x.shape[2] + 2 * ph - 2, x.shape[3] + 2 * pw - 2)
        out[name] = winograd_correlate(x, u, tile, (ph, pw), layer.blobs[1],
                                       offset=extra_padding(out_hw, tile))
    return out


# ---------------------------------------------------------------- numpy emulation of Caffe

def _conv(x, w, geo):
    (sh, sw), (ph, pw), g = geo.stride, geo.pad, geo.group
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    cin, tout = x.shape[1] // g, w.shape[0] // g
    xg = xp.reshape(x.shape[0], g, cin, xp.shape[2], xp.shape[3])
    wg = w.reshape(g, tout, cin, kh, kw)
    y = np.zeros((x.shape[0], g, tout, oh, ow), F32)
    for u in range(kh):
        for v in range(kw):
            window = xg[:, :, :, u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw]
            y += np.einsum("ngchw,gtc->ngthw", window, wg[:, :, :, u, v])
    return y.reshape(x.shape[0], g * tout, oh, ow)


def _deconv(x, w, geo):
    assert geo.group == 1 and geo.pad == (0, 0)
    (sh, sw), (kh, kw) = geo.stride, w.shape[2:]
    n, _, h, wd = x.shape
    y = np.zeros((n, w.shape[1], sh * (h - 1) + kh, sw * (wd - 1) + kw), F32)
    for u in range(kh):
        for v in range(kw):
            y[:, :, u:u + sh * (h - 1) + 1:sh, v:v + sw * (wd - 1) + 1:sw] += np.einsum(
                "nihw,io->nohw", x, w[:, :, u, v])
    return y


def _max_pool(x, geo):
    assert geo.stride == (1, 1)
    (kh, kw), (ph, pw) = geo.kernel, geo.pad
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3)).max(axis=(4, 5))


def emulate(net, inputs):
    """Run ``net`` with the layers above; every blob's shape must be what infer_shapes says."""
    shapes = infer_shapes(net)
    blobs = {k: np.asarray(v, F32) for k, v in inputs.items()}
    for layer in net.layers:
        info = shapes.layers[layer.name]
        if layer.type == "Input":
            continue
        x = blobs[layer.bottoms[0]]
        if layer.type in ("Convolution", "Deconvolution"):
            run = _conv if layer.type == "Convolution" else _deconv
            y = run(x, layer.blobs[0], info.geometry)
            if len(layer.blobs) > 1:
                y = y + layer.blobs[1].reshape(1, -1, 1, 1)
        elif layer.type == "Pooling":
            y = _max_pool(x, info.geometry)
        elif layer.type == "Crop":
            p = layer.spec.crop_param
            assert p.axis == 2 and len(p.offset) == 2
            (oh, ow), (rh, rw) = p.offset, blobs[layer.bottoms[1]].shape[2:]
            y = x[:, :, oh:oh + rh, ow:ow + rw]
        elif layer.type == "ReLU":
            y = np.maximum(x, 0)
        else:
            raise AssertionError(layer.type)
        assert y.shape == info.outputs[0], layer.name
        blobs[layer.tops[0]] = y
    return blobs


# ---------------------------------------------------------------- sizes

@pytest.mark.parametrize("m", TILES)
def test_extra_padding_covers_every_output_size(m):
    """Caffe's a x a stride-m convolution with pad p + e gives (H + 2(p+e) - a) // m + 1 tiles;
    they must cover output positions -e .. out-1 for every size (one form for any input), and
    m - 1 is the smallest e that does so for all of them."""
    t = winograd_tile(m)
    for h in range(1, 30):
        for p in range(4):
            out = h + 2 * p - 2
            if out <= 0:
                continue
            e, e_w = extra_padding((out, out + 1), t)
            assert (e, e_w) == (m - 1, m - 1)

            def tiles(extra):
                return (h + 2 * (p + extra) - t.a) // m + 1

            assert tiles(e) * m - e >= out                     # covers the output
            assert tiles(e) <= -(-out // m) + 1                # at most one tile more than needed
    # a smaller e leaves some size uncovered
    short = [out for out in range(1, 30) if ((out + 2 * (m - 2)) // m) * m - (m - 2) < out]
    assert short


def test_extra_padding_checks_sizes():
    with pytest.raises(ValueError, match=r"'out_hw' parameter of extra_padding must be positive"):
        extra_padding((0, 3), winograd_tile(2))


# ---------------------------------------------------------------- blobs

@pytest.mark.parametrize("m", TILES)
def test_blobs_hold_the_transforms(m):
    t = winograd_tile(m)
    a, c, n = t.a, 3, 5
    w1 = input_transform_blob(c, t)
    assert w1.shape == (a * a * c, c, a, a) and w1.dtype == F32
    w3 = output_transform_blob(n, t)
    assert w3.shape == (a * a * n, n, m, m) and w3.dtype == F32
    for i in range(a):
        for j in range(a):
            k = i * a + j
            for ch in range(c):
                assert np.array_equal(w1[k * c + ch, ch], np.outer(t.BT[i], t.BT[j]).astype(F32))
                assert not np.delete(w1[k * c + ch], ch, axis=0).any()
            for o in range(n):
                want = np.outer(t.AT[:, i], t.AT[:, j]).astype(F32)
                assert np.array_equal(w3[k * n + o, o], want)
                assert not np.delete(w3[k * n + o], o, axis=0).any()
    u = np.random.default_rng(0).standard_normal((n, c, a, a))
    b = winograd_blob(u)
    assert b.shape == (a * a * n, c, 1, 1) and b.dtype == F32
    assert b[(2 * a + 1) * n + 4, 1, 0, 0] == F32(u[4, 1, 2, 1])
    assert np.array_equal(winograd_from_blob(b, t), u.astype(F32))
    with pytest.raises(ValueError, match="'blob' parameter of winograd_from_blob"):
        winograd_from_blob(b[1:], t)


# ---------------------------------------------------------------- layers

def test_form_layers_names_params_and_tops():
    net = synthetic(pads=[(1, 1)], shape=(1, 3, 8, 6))
    layer = net.layer("conv0")
    spec = make_spec(layer.name, layer.type, layer.bottoms, layer.tops, base=layer.spec)
    spec.param.add(lr_mult=3, decay_mult=0.5, name="shared")
    spec.param.add(lr_mult=2, decay_mult=0)
    spec.include.add(phase=1)
    layer = Layer(spec=spec, blobs=layer.blobs, line=12)
    t = winograd_tile(2)
    new = winograd_layers(layer, to_winograd(layer.blobs[0], t), t, (1, 3, 8, 6))
    assert [(l.name, l.type, l.bottoms, l.tops) for l in new] == [
        ("conv0_wg_in", "Convolution", ("data",), ("conv0_wg_in",)),
        ("conv0_wg_mul", "Convolution", ("conv0_wg_in",), ("conv0_wg_mul",)),
        ("conv0_wg_out", "Deconvolution", ("conv0_wg_mul",), ("conv0_wg_out",)),
        ("conv0_wg_crop", "Crop", ("conv0_wg_out", "data"), ("conv0",)),
    ]
    first, mul, out = (l.spec for l in new[:3])
    assert [(p.lr_mult, p.decay_mult) for p in first.param] == [(0, 0)]
    assert [(p.lr_mult, p.decay_mult, p.name) for p in mul.param] == [(3, 0.5, "")]
    assert [(p.lr_mult, p.decay_mult) for p in out.param] == [(0, 0), (2, 0)]
    cp = first.convolution_param
    assert (cp.num_output, list(cp.kernel_size), list(cp.stride), list(cp.pad), cp.group,
            cp.bias_term) == (16 * 3, [4], [2], [2], 1, False)     # pad 1 + e (1)
    cp = mul.convolution_param
    assert (cp.num_output, list(cp.kernel_size), cp.group, cp.bias_term) == (16 * 4, [1], 16, False)
    cp = out.convolution_param
    assert (cp.num_output, list(cp.kernel_size), list(cp.stride), cp.group,
            cp.bias_term) == (4, [2], [2], 1, True)
    assert all(len(l.spec.include) == 1 and l.spec.include[0].phase == 1 for l in new)
    assert all(l.line == 12 for l in new)
    assert np.array_equal(new[2].blobs[1], layer.blobs[1])
    assert form_names("conv0") == {s: f"conv0_wg_{s}" for s in ("in", "mul", "out", "ref", "crop")}


@pytest.mark.parametrize("m, pad, extra", [
    (2, (1, 1), ["crop"]),            # 7x9 -> 7x9: odd, the input is the reference
    (2, (0, 0), ["ref", "crop"]),     # 5x7: a Pooling gives the reference
    (4, (1, 2), ["ref", "crop"]),     # 7x11
    (2, (2, 2), ["ref", "crop"]),     # 9x11
])
def test_form_crops_odd_outputs(m, pad, extra):
    net = synthetic(pads=[pad])
    t = winograd_tile(m)
    layer = net.layer("conv0")
    new = winograd_layers(layer, to_winograd(layer.blobs[0], t), t, (2, 3, 7, 9))
    assert [l.name for l in new] == [f"conv0_wg_{s}" for s in ["in", "mul", "out"] + extra]
    out_hw = (7 + 2 * pad[0] - 2, 9 + 2 * pad[1] - 2)
    crop = new[-1]
    assert crop.type == "Crop" and crop.tops == ("conv0",)
    assert crop.bottoms == ("conv0_wg_out", "data" if pad == (1, 1) else "conv0_wg_ref")
    assert list(crop.spec.crop_param.offset) == list(extra_padding(out_hw, t))
    assert crop.spec.crop_param.axis == 2
    first = new[0].spec.convolution_param
    e = extra_padding(out_hw, t)
    want = [pad[0] + e[0]] if pad[0] + e[0] == pad[1] + e[1] else [pad[0] + e[0], pad[1] + e[1]]
    assert list(first.pad) == want


def test_pad_as_a_list_of_two_is_pad_h_and_pad_w():
    t = winograd_tile(4)
    u = np.zeros((4, 3, 6, 6))

    def form(**pad):
        layer = Layer(spec=make_spec("c", "Convolution", ["data"], ["c"], convolution_param={
            "num_output": 4, "kernel_size": [3], "bias_term": False, **pad}))
        return [(l.type, l.bottoms, list(l.spec.convolution_param.pad),
                 l.spec.pooling_param.kernel_h, l.spec.pooling_param.kernel_w,
                 list(l.spec.crop_param.offset)) for l in winograd_layers(layer, u, t, (1, 3, 7, 9))]

    assert form(pad=[0, 2]) == form(pad_h=0, pad_w=2)
    with pytest.raises(ShapeError, match="^layer 'c': 3 pad values for 2 spatial axes$"):
        form(pad=[0, 2, 1])


def test_one_form_serves_every_input_size():
    """The form built for one input size runs at others (fully convolutional nets): its layers
    are the same whatever the size, and always end in the Crop."""
    net = synthetic(pads=[(1, 1)], shape=(1, 3, 8, 4))
    layer = net.layer("conv0")
    for m in TILES:
        t = winograd_tile(m)
        u = to_winograd(layer.blobs[0], t)
        forms = [[(l.type, l.spec.SerializeToString()) for l in
                  winograd_layers(layer, u, t, (1, 3, h, w))] for h, w in ((8, 4), (7, 9), (5, 5))]
        assert forms[0] == forms[1] == forms[2]
        assert [typ for typ, _ in forms[0]] == ["Convolution", "Convolution", "Deconvolution", "Crop"]


@pytest.mark.parametrize("m", TILES)
def test_form_shapes_and_cost(m):
    """Shapes as infer_shapes computes them; FLOPs as analyze counts the dense Caffe layers."""
    net = synthetic()
    t = winograd_tile(m)
    a = t.a
    weights = {l.name: to_winograd(l.blobs[0], t) for l in net.layers if l.type == "Convolution"}
    before = infer_shapes(net)
    form = winograd_net(net, before, weights, t)
    after = infer_shapes(form)
    cost = analyze(form, after)
    n, c, tt = 2, 3, 4
    for name in weights:
        assert after.blobs[name] == before.blobs[name]
        oh, ow = before.blobs[name][2:]
        th, tw = (oh + 2 * (m - 1)) // m, (ow + 2 * (m - 1)) // m     # the tiles of pad p + m - 1
        assert after.blobs[f"{name}_wg_in"] == (n, a * a * c, th, tw)
        assert cost.row(f"{name}_wg_in").flops == (a * a * c) * c * a * a * th * tw
        assert cost.row(f"{name}_wg_mul").flops == (a * a * tt) * c * th * tw
        assert cost.row(f"{name}_wg_out").flops == (a * a * tt) * tt * m * m * th * tw
        assert cost.row(f"{name}_wg_out").bias_flops == tt * (th * m) * (tw * m)
        for extra in ("ref", "crop"):
            if f"{name}_wg_{extra}" in after.layers:
                assert cost.row(f"{name}_wg_{extra}").flops == 0


@pytest.mark.parametrize("m", TILES)
def test_numpy_emulation_of_the_form_equals_the_reference(m):
    """The layers, run as Caffe defines them (float32), compute winograd_correlate with a pruned U
    on the form's tile grid, and with U = G g Gᵀ the plain convolution."""
    net = synthetic()
    t = winograd_tile(m)
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 9)).astype(F32)
    convs = [l.name for l in net.layers if l.type == "Convolution"]
    dense = {name: to_winograd(net.layer(name).blobs[0], t) for name in convs}
    pruned = {name: prune(u) for name, u in dense.items()}
    shapes = infer_shapes(net)
    plain = emulate(net, {"data": x})
    got_dense = emulate(winograd_net(net, shapes, dense, t), {"data": x})
    got_pruned = emulate(winograd_net(net, shapes, pruned, t), {"data": x})
    want = reference(net, x, pruned, t)
    for name in convs:
        assert rel(got_dense[name], plain[name]) <= 1e-5
        assert rel(got_pruned[name], want[name]) <= 1e-5
        assert rel(plain[name], want[name]) > 1e-2     # pruning changed something


def test_winograd_net_keeps_everything_else():
    model = load_model(ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel")
    t = winograd_tile(2)
    u = to_winograd(model.net.layer("conv2").blobs[0], t)
    form = winograd_net(model.net, model.shapes, {"conv2": u}, t)
    assert form is not model.net and model.net.layer("conv2").type == "Convolution"
    names = [l.name for l in form.layers]
    i = names.index("conv2_wg_in")
    assert names[i:i + 5] == ["conv2_wg_in", "conv2_wg_mul", "conv2_wg_out", "conv2_wg_crop", "relu2"]
    kept = [l for l in form.layers if not l.name.startswith("conv2_wg_")]
    assert [l.name for l in kept] == [l.name for l in model.net.layers if l.name != "conv2"]
    assert all(l is model.net.layer(l.name) for l in kept)
    assert form.header is model.net.header


def test_errors():
    net = synthetic(pads=[(1, 1)], shape=(1, 3, 8, 6))
    layer = net.layer("conv0")
    t = winograd_tile(2)
    u = to_winograd(layer.blobs[0], t)
    strided = Layer(spec=make_spec("c", "Convolution", ["x"], ["y"],
                                   convolution_param={"num_output": 4, "kernel_size": [3],
                                                      "stride": [2]}))
    with pytest.raises(UnsupportedLayerError,
                       match=r"^layer 'c': cannot be computed with F\(2x2,3x3\): stride 2$"):
        winograd_layers(strided, u, t, (1, 3, 8, 6))
    with pytest.raises(ValueError, match=r"^The 'U' parameter of winograd_layers must be an array "
                                         r"of shape \[4, 3, 4, 4\] for layer 'conv0' and "
                                         r"F\(2x2,3x3\)\. Got \[4, 3, 6, 6\] instead\.$"):
        winograd_layers(layer, to_winograd(layer.blobs[0], winograd_tile(4)), t, (1, 3, 8, 6))
    with pytest.raises(WeightsMismatchError, match="has a bias term but no bias blob"):
        winograd_layers(layer.with_blobs(layer.blobs[:1]), u, t, (1, 3, 8, 6))
    shapes = infer_shapes(net)
    with pytest.raises(CaffeTuckerError, match="layer 'conv9' to be put in Winograd form is not"):
        winograd_net(net, shapes, {"conv9": u}, t)
    taken = net.with_layers(net.layers + (Layer(spec=make_spec(
        "relu", "ReLU", ["conv0"], ["conv0_wg_mul"])),))
    with pytest.raises(CaffeTuckerError, match="the name 'conv0_wg_mul' for a new layer is "
                                               "already used"):
        winograd_net(taken, infer_shapes(taken), {"conv0": u}, t)
    sourced = Net(layers=(net.layers[0], Layer(spec=make_spec("c", "Convolution", ["data"], ["y"],
                                                              base=strided.spec),
                                               blobs=layer.blobs, line=7)), source="n.prototxt")
    with pytest.raises(UnsupportedLayerError, match=r"^n\.prototxt:7: layer 'c': cannot be "
                                                    r"computed with F\(2x2,3x3\): stride 2$"):
        winograd_net(sourced, infer_shapes(sourced), {"c": u}, t)


# ---------------------------------------------------------------- real Caffe

def test_digits_in_caffe(caffe):
    """conv1 (1 -> 32), conv2 and conv3 in Winograd form: the net's outputs are unchanged; with
    half of U pruned, every replaced layer computes winograd_correlate of the input Caffe fed it
    (its top is read after the in-place ReLU)."""
    model = load_model(ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel")
    net = model.net
    x = np.random.default_rng(3).uniform(0, 1, (3, 1, 8, 8)).astype(F32)
    convs = ["conv1", "conv2", "conv3"]
    inputs = {"conv1": "data", "conv2": "conv1", "conv3": "conv2"}
    want = caffe.forward(prototxt_text(net), b"".join(caffemodel_chunks(net)), {"data": x},
                         ["fc2", "prob"] + convs)
    errors = {}
    for m in TILES:
        t = winograd_tile(m)
        dense = {name: to_winograd(net.layer(name).blobs[0], t) for name in convs}
        form = winograd_net(net, model.shapes, dense, t)
        got = caffe.forward(prototxt_text(form), b"".join(caffemodel_chunks(form)), {"data": x},
                            ["fc2", "prob"] + convs)
        errors[m, "dense"] = max(rel(got[k], want[k]) for k in want)
        pruned = {name: prune(u) for name, u in dense.items()}
        form = winograd_net(net, model.shapes, pruned, t)
        got = caffe.forward(form, None, {"data": x}, ["data"] + convs)
        errors[m, "pruned"] = max(
            rel(got[name], np.maximum(winograd_correlate(
                got[inputs[name]], pruned[name], t, (1, 1), net.layer(name).blobs[1],
                offset=extra_padding((8, 8), t)), 0))
            for name in convs)
    assert max(errors.values()) <= 1e-4, errors


def test_odd_sizes_in_caffe(caffe):
    """Pads 0..3 and (1, 2) on a 7x9 input (odd outputs): Crop, and Pooling references, in Caffe."""
    net = synthetic()
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 9)).astype(F32)
    convs = [l.name for l in net.layers if l.type == "Convolution"]
    want = caffe.forward(net, None, {"data": x}, convs)
    shapes = infer_shapes(net)
    errors = {}
    for m in TILES:
        t = winograd_tile(m)
        dense = {name: to_winograd(net.layer(name).blobs[0], t) for name in convs}
        got = caffe.forward(winograd_net(net, shapes, dense, t), None, {"data": x}, convs)
        errors[m, "dense"] = max(rel(got[k], want[k]) for k in convs)
        pruned = {name: prune(u) for name, u in dense.items()}
        got = caffe.forward(winograd_net(net, shapes, pruned, t), None, {"data": x}, convs)
        ref = reference(net, x, pruned, t)
        errors[m, "pruned"] = max(rel(got[k], ref[k]) for k in convs)
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.parametrize("m", TILES)
def test_a_form_built_for_one_size_runs_at_others_in_caffe(caffe, m):
    """VDSR's deploy says 256x256 but runs on whole images: the form built for the declared
    size must compute the same pruned Winograd convolution at any other size."""
    net = synthetic(pads=[(1, 1), (0, 0)], shape=(1, 3, 8, 8))
    t = winograd_tile(m)
    pruned = {l.name: prune(to_winograd(l.blobs[0], t)) for l in net.layers if l.blobs}
    form = winograd_net(net, infer_shapes(net), pruned, t)
    rng = np.random.default_rng(1)
    for h, w in ((7, 9), (11, 6), (8, 8)):
        x = rng.standard_normal((1, 3, h, w)).astype(F32)
        got = caffe.forward(form, None, {"data": x}, list(pruned))
        for name, (ph, pw) in (("conv0", (1, 1)), ("conv1", (0, 0))):
            out_hw = (h + 2 * ph - 2, w + 2 * pw - 2)
            want = winograd_correlate(x, pruned[name], t, (ph, pw), net.layer(name).blobs[1],
                                      offset=extra_padding(out_hw, t))
            assert got[name].shape == want.shape
            assert rel(got[name], want) <= 1e-4, (name, h, w)
