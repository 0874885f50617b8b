"""Shapes through the Caffe-SSD fork's layers (and identity-shaped layers of other forks)."""

import pytest

from caffe_tucker import infer_shapes, read_prototxt
from caffe_tucker.analysis.shapes import prior_count
from caffe_tucker.errors import ShapeError
from caffe_tucker.io import caffe_pb2
from conftest import TEST_MODELS, write

SSD = TEST_MODELS / "ssd_tiny" / "deploy.prototxt"


def test_ssd_tiny_shapes():
    s = infer_shapes(read_prototxt(SSD))
    assert s.problems == ()
    b = s.blobs
    assert b["conv3_norm"] == (1, 32, 16, 16) and b["conv4"] == (1, 32, 8, 8)
    assert b["conv3_norm_mbox_loc_perm"] == (1, 16, 16, 16)        # (N, H, W, C)
    assert b["conv4_mbox_conf_perm"] == (1, 8, 8, 18)
    assert b["conv4_mbox_loc_flat"] == (1, 8 * 8 * 24)
    # 16x16 locations x 4 priors (1, max, 2, 1/2) x 4 coordinates; 8x8 x 6 (1, max, 2, 1/2, 3, 1/3)
    assert b["conv3_norm_mbox_priorbox"] == (1, 2, 16 * 16 * 4 * 4)
    assert b["conv4_mbox_priorbox"] == (1, 2, 8 * 8 * 6 * 4)
    assert b["mbox_loc"] == (1, 5632) and b["mbox_priorbox"] == (1, 2, 5632)
    assert b["mbox_conf_flatten"] == (1, 4224)
    assert b["detection_out"] is None                              # data-dependent
    assert s.layers["conv3_norm"].params == ((32,),)


def test_prior_count_follows_the_fork():
    p = caffe_pb2.PriorBoxParameter(min_size=[30], max_size=[60], aspect_ratio=[2, 2, 1, 3])
    assert prior_count(p) == 6                     # duplicates and 1 ignored, each ratio flipped
    p.flip = False
    assert prior_count(p) == 4
    assert prior_count(caffe_pb2.PriorBoxParameter(min_size=[10, 20], aspect_ratio=[2])) == 6


NET = ('layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 4 dim: 6 dim: 8 }} }} }}\n'
       '{}')


@pytest.mark.parametrize("layer, shape", [
    ('layer { name: "p" type: "Permute" bottom: "data" top: "p" permute_param { order: 0 order: 3 } }',
     (2, 8, 4, 6)),                                 # the unnamed axes follow in order
    ('layer { name: "n" type: "Normalize" bottom: "data" top: "n" }', (2, 4, 6, 8)),
    ('layer { name: "r" type: "ReLU6" bottom: "data" top: "r" }', (2, 4, 6, 8)),
    ('layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "s" }', (2, 4, 6, 8)),
])
def test_fork_layer_shapes(tmp_path, layer, shape):
    net = read_prototxt(write(tmp_path / "n.prototxt", NET.format(layer)))
    s = infer_shapes(net)
    assert s.blobs[net.layers[-1].tops[0]] == shape and s.problems == ()


def test_shared_normalize_scale_is_a_scalar(tmp_path):
    net = read_prototxt(write(tmp_path / "n.prototxt", NET.format(
        'layer { name: "n" type: "Normalize" bottom: "data" top: "n" norm_param { channel_shared: true } }')))
    assert infer_shapes(net).layers["n"].params == ((),)


@pytest.mark.parametrize("layer, message", [
    ('layer { name: "p" type: "Permute" bottom: "data" top: "p" permute_param { order: 0 order: 4 } }',
     "permute order 4 is out of range"),
    ('layer { name: "p" type: "Permute" bottom: "data" top: "p" permute_param { order: 1 order: 1 } }',
     "repeats axis 1"),
    ('layer { name: "b" type: "PriorBox" bottom: "data" bottom: "data" top: "b" prior_box_param { max_size: 3 } }',
     "needs at least one min_size"),
    ('layer { name: "b" type: "PriorBox" bottom: "data" top: "b" prior_box_param { min_size: 3 } }',
     "takes exactly 2 bottoms"),
])
def test_fork_layer_errors_name_the_layer(tmp_path, layer, message):
    net = read_prototxt(write(tmp_path / "n.prototxt", NET.format(layer)))
    with pytest.raises(ShapeError) as e:
        infer_shapes(net)
    assert message in str(e.value) and "n.prototxt:2" in str(e.value)


def test_layers_after_an_unknown_layer_have_unknown_shapes(tmp_path):
    net = read_prototxt(write(tmp_path / "n.prototxt", NET.format(
        'layer { name: "up" type: "Upsample" bottom: "data" top: "up" }\n'
        'layer { name: "c" type: "Convolution" bottom: "up" top: "c" convolution_param { num_output: 2 kernel_size: 3 } }')))
    s = infer_shapes(net)
    assert s.blobs["up"] is None and s.blobs["c"] is None
    assert len(s.problems) == 1 and "unknown layer type 'Upsample'" in s.problems[0]
