"""Shape inference follows Caffe's rules, layer type by layer type."""

import pytest

from caffe_tucker import infer_shapes, read_prototxt
from caffe_tucker.errors import ShapeError
from caffe_tucker.analysis.shapes import parse_input_shapes
from conftest import write


def shapes_of(tmp_path, body, inputs=None, shape="1 3 32 32"):
    dims = " ".join(f"dim: {d}" for d in shape.split())
    text = f'layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n' + body
    net = read_prototxt(write(tmp_path / "n.prototxt", text)).for_state("TEST")
    return infer_shapes(net, inputs)


def conv(name, bottom, top, params):
    return f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" convolution_param {{ {params} }} }}\n'


def pool(name, bottom, top, params):
    return f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{top}" pooling_param {{ {params} }} }}\n'


@pytest.mark.parametrize("params, out, weight", [
    ("num_output: 8 kernel_size: 3", (1, 8, 30, 30), (8, 3, 3, 3)),
    ("num_output: 8 kernel_size: 3 pad: 1 stride: 2", (1, 8, 16, 16), (8, 3, 3, 3)),
    ("num_output: 8 kernel_size: 3 dilation: 2", (1, 8, 28, 28), (8, 3, 3, 3)),
    ("num_output: 8 kernel_h: 1 kernel_w: 5 pad_w: 2", (1, 8, 32, 32), (8, 3, 1, 5)),
    ("num_output: 8 kernel_size: 3 kernel_size: 5 stride: 1 stride: 3", (1, 8, 30, 10), (8, 3, 3, 5)),
    ("num_output: 6 kernel_size: 1 group: 3", (1, 6, 32, 32), (6, 1, 1, 1)),
])
def test_convolution(tmp_path, params, out, weight):
    info = shapes_of(tmp_path, conv("c", "data", "c", params))
    assert info.blobs["c"] == out
    assert info.layers["c"].params == (weight, (out[1],))


def test_convolution_without_bias_and_deconvolution(tmp_path):
    body = conv("c", "data", "c", "num_output: 4 kernel_size: 3 bias_term: false")
    body += ('layer { name: "up" type: "Deconvolution" bottom: "c" top: "up" '
             'convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 } }\n')
    info = shapes_of(tmp_path, body)
    assert info.layers["c"].params == ((4, 3, 3, 3),)
    # Deconvolution: out = stride*(in-1) + kernel - 2*pad = 2*29 + 4 - 2 = 60
    assert info.blobs["up"] == (1, 2, 60, 60)
    assert info.layers["up"].params == ((4, 2, 4, 4), (2,))


@pytest.mark.parametrize("size, params, out", [
    (55, "pool: MAX kernel_size: 3 stride: 2", 27),            # AlexNet pool1
    (109, "pool: MAX kernel_size: 3 stride: 3", 37),           # VGG-S pool1: ceil
    (33, "pool: MAX kernel_size: 2 stride: 2", 17),            # ceil rounding
    (6, "pool: AVE kernel_size: 3 stride: 2 pad: 1", 4),
    (5, "pool: MAX kernel_size: 2 stride: 2 pad: 1", 3),       # Caffe's clipping rule
    (33, "pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR", 16),
    (7, "pool: AVE global_pooling: true", 1),
])
def test_pooling(tmp_path, size, params, out):
    info = shapes_of(tmp_path, pool("p", "data", "p", params), shape=f"2 4 {size} {size}")
    assert info.blobs["p"] == (2, 4, out, out)


def test_inner_product_axis_and_transpose(tmp_path):
    body = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 10 } }\n'
            'layer { name: "fc2" type: "InnerProduct" bottom: "data" top: "fc2" '
            'inner_product_param { num_output: 7 axis: 2 transpose: true bias_term: false } }\n')
    info = shapes_of(tmp_path, body)
    assert info.blobs["fc"] == (1, 10)
    assert info.layers["fc"].params == ((10, 3 * 32 * 32), (10,))
    assert info.blobs["fc2"] == (1, 3, 7)
    assert info.layers["fc2"].params == ((32 * 32, 7),)


def test_structural_layers(tmp_path):
    body = """
layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 1 slice_point: 1 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" bottom: "b" top: "cat" }
layer { name: "e" type: "Eltwise" bottom: "a" bottom: "a" top: "e" }
layer { name: "sp" type: "Split" bottom: "cat" top: "x" top: "y" }
layer { name: "f" type: "Flatten" bottom: "x" top: "f" }
layer { name: "r" type: "Reshape" bottom: "y" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 16 } } }
layer { name: "relu" type: "ReLU" bottom: "r" top: "r" }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
layer { name: "pr" type: "PReLU" bottom: "x" top: "x" }
layer { name: "sm" type: "Softmax" bottom: "f" top: "sm" }
layer { name: "am" type: "ArgMax" bottom: "sm" top: "am" argmax_param { top_k: 3 axis: 1 } }
"""
    info = shapes_of(tmp_path, body)
    assert info.blobs["a"] == (1, 1, 32, 32) and info.blobs["b"] == (1, 2, 32, 32)
    assert info.blobs["cat"] == (1, 5, 32, 32)
    assert info.blobs["e"] == (1, 1, 32, 32)
    assert info.blobs["f"] == (1, 5 * 32 * 32)
    assert info.blobs["r"] == (1, 5 * 64, 16)   # in-place ReLU keeps it
    assert info.layers["bn"].params == ((5,), (5,), (1,))
    assert info.layers["sc"].params == ((5,), (5,))
    assert info.layers["pr"].params == ((5,),)
    assert info.blobs["am"] == (1, 3)


def test_loss_accuracy_and_dummy_data(tmp_path):
    body = """
layer { name: "lbl" type: "DummyData" top: "label" dummy_data_param { shape { dim: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" top: "per_class" }
"""
    info = shapes_of(tmp_path, body)
    assert info.blobs["label"] == (1,)
    assert info.blobs["loss"] == ()
    assert info.blobs["acc"] == () and info.blobs["per_class"] == (10,)


def test_data_layer_needs_an_input_shape(tmp_path):
    text = """layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" batch_size: 8 } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }
"""
    net = read_prototxt(write(tmp_path / "d.prototxt", text)).for_state("TEST")
    with pytest.raises(ShapeError, match=r"d.prototxt:1: layer 'd': .*--input-shape data="):
        infer_shapes(net)
    for spec in (["8,3,10,10"], ["data=8,3,10,10"]):
        info = infer_shapes(net, parse_input_shapes(spec))
        assert info.blobs["c"] == (8, 4, 8, 8) and info.blobs["label"] == (8,)
    with pytest.raises(ShapeError, match="--input-shape names"):
        infer_shapes(net, parse_input_shapes(["data=8,3,10,10", "nope=1,2,3,4"]))


def test_input_shape_overrides_declared_input(tmp_path):
    info = shapes_of(tmp_path, conv("c", "data", "c", "num_output: 2 kernel_size: 3"),
                     inputs=parse_input_shapes(["4,3,10,10"]))
    assert info.blobs["c"] == (4, 2, 8, 8)


@pytest.mark.parametrize("bad", ["", "1,x,3", "data=", "0,3,4,4"])
def test_bad_input_shape_option(bad):
    with pytest.raises(ShapeError, match="--input-shape"):
        parse_input_shapes([bad])


def test_unknown_layer_type_is_reported_and_the_rest_inferred(tmp_path):
    body = """
layer { name: "odd" type: "FancyUpsample" bottom: "data" top: "odd" }
layer { name: "after" type: "ReLU" bottom: "odd" top: "after" }
layer { name: "side" type: "ReLU" bottom: "data" top: "side" }
"""
    info = shapes_of(tmp_path, body)
    assert len(info.problems) == 1
    assert "layer 'odd'" in info.problems[0] and "'FancyUpsample'" in info.problems[0]
    assert info.blobs["odd"] is None and info.blobs["after"] is None
    assert info.blobs["side"] == (1, 3, 32, 32)


@pytest.mark.parametrize("body, pattern", [
    (conv("c", "nothing", "c", "num_output: 2 kernel_size: 3"), "bottom blob 'nothing'"),
    (conv("c", "data", "c", "num_output: 4 kernel_size: 3 group: 2"), "divisible by group"),
    (conv("c", "data", "c", "num_output: 4 kernel_size: 40"), "output size"),
    (conv("c", "data", "c", "num_output: 4"), "kernel size must be given"),
    ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "p" top: "e" }\n',
     "bottom blob 'p'"),
])
def test_impossible_layers_name_file_line_and_layer(tmp_path, body, pattern):
    with pytest.raises(ShapeError, match=rf"n.prototxt:2: layer '\w+': .*{pattern}"):
        shapes_of(tmp_path, body)
