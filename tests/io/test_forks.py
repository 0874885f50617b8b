"""Nets of the Caffe-SSD fork read and write back unchanged; other forks' fields fail in one line."""

import re

import pytest
from google.protobuf import text_format

from caffe_tucker.errors import PrototxtError
from caffe_tucker.io import caffe_pb2
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.io.read import read_caffemodel, read_net, read_prototxt
from conftest import TEST_MODELS, write

SSD = TEST_MODELS / "ssd_tiny"

# Every SSD field a deploy or train net may set, with values away from the defaults.
FORK_LAYERS = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "perm" type: "Permute" bottom: "data" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "norm" type: "Normalize" bottom: "data" top: "norm"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } channel_shared: false eps: 1e-6 } }
layer { name: "prior" type: "PriorBox" bottom: "norm" bottom: "data" top: "prior"
  prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 aspect_ratio: 3 flip: false clip: true
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 img_size: 300 img_h: 300 img_w: 300
    step: 8 step_h: 8 step_w: 8 offset: 0.25 } }
layer { name: "det" type: "DetectionOutput" bottom: "perm" bottom: "norm" bottom: "prior" top: "det"
  detection_output_param { num_classes: 21 share_location: false background_label_id: -1
    nms_param { nms_threshold: 0.45 top_k: 400 eta: 0.9 }
    save_output_param { output_directory: "out" output_name_prefix: "comp4_" output_format: "VOC"
      label_map_file: "labelmap.prototxt" name_size_file: "sizes.txt" num_test_image: 4952
      resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 interp_mode: LINEAR } }
    code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 200
    confidence_threshold: 0.01 visualize: true visualize_threshold: 0.6 save_file: "v.avi" } }
layer { name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "data" top: "eval"
  detection_evaluate_param { num_classes: 21 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false name_size_file: "sizes.txt" } }
layer { name: "loss" type: "MultiBoxLoss" bottom: "perm" bottom: "norm" bottom: "prior" bottom: "data" top: "loss"
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 num_classes: 21
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5
    code_type: CENTER_SIZE ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
layer { name: "adata" type: "AnnotatedData" top: "adata"
  annotated_data_param { batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }
      sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 50 }
    label_map_file: "labelmap.prototxt" anno_type: BBOX } }
layer { name: "video" type: "VideoData" top: "video" video_data_param { video_type: VIDEO video_file: "a.mp4" skip_frames: 2 } }
"""

SSD_FIELDS = {"annotated_data_param": 200, "multibox_loss_param": 201, "permute_param": 202,
              "prior_box_param": 203, "detection_output_param": 204,
              "detection_evaluate_param": 205, "norm_param": 206, "video_data_param": 207}


def test_ssd_field_numbers_are_the_forks():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {name: fields[name].number for name in SSD_FIELDS} == SSD_FIELDS
    assert caffe_pb2.PriorBoxParameter().offset == 0.5 and caffe_pb2.PriorBoxParameter().flip
    assert caffe_pb2.DetectionOutputParameter().keep_top_k == -1
    assert caffe_pb2.DetectionOutputParameter().code_type == caffe_pb2.PriorBoxParameter.CORNER
    assert caffe_pb2.NonMaximumSuppressionParameter().nms_threshold == pytest.approx(0.3)
    assert caffe_pb2.NormalizeParameter().eps == pytest.approx(1e-10)
    assert caffe_pb2.NormalizeParameter().channel_shared


def _net(text):
    net = caffe_pb2.NetParameter()
    text_format.Parse(text, net)
    return net


def test_ssd_layers_round_trip_in_text_and_binary(tmp_path):
    path = write(tmp_path / "ssd.prototxt", FORK_LAYERS)
    net = read_prototxt(path)
    written = prototxt_text(net)
    assert _net(written) == _net(FORK_LAYERS)                   # every field, text form
    again = read_prototxt(write(tmp_path / "again.prototxt", written))
    assert prototxt_text(again) == written                      # stable
    binary = b"".join(caffemodel_chunks(net))
    back = caffe_pb2.NetParameter.FromString(binary)
    assert back == _net(FORK_LAYERS)                            # every field, wire form
    assert len(read_caffemodel(write_bytes(tmp_path / "w.caffemodel", binary)).layers) == 9


def write_bytes(path, data):
    path.write_bytes(data)
    return path


def test_ssd_tiny_weights_round_trip():
    net = read_net(SSD / "deploy.prototxt", SSD / "ssd_tiny.caffemodel")
    norm = net.layer("conv3_norm")
    assert norm.blobs[0].shape == (32,) and float(norm.blobs[0].min()) == 20.0
    assert b"".join(caffemodel_chunks(net)) == (SSD / "ssd_tiny.caffemodel").read_bytes()


@pytest.mark.parametrize("text, pattern", [
    # an Upsample of another fork: its parameter is not in the schema
    ('layer { name: "up" type: "Upsample" bottom: "a" top: "b" upsample_param { scale: 2 } }',
     r":1:\d+: unknown field 'upsample_param' in caffe.LayerParameter; hint: .*Caffe fork"),
    ('layer { name: "p" type: "PriorBox" prior_box_param { min_size: 1 density: 2 } }',
     r":1:\d+: unknown field 'density' in caffe.PriorBoxParameter; hint: .*Caffe fork"),
])
def test_fields_of_other_forks_fail_in_one_line(tmp_path, text, pattern):
    path = write(tmp_path / "net.prototxt", text)
    with pytest.raises(PrototxtError) as e:
        read_prototxt(path)
    assert re.search(pattern, str(e.value)) and "\n" not in str(e.value)


def test_fork_layers_without_parameters_pass_through(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }\n'
            'layer { name: "r6" type: "ReLU6" bottom: "data" top: "data" }\n'
            'layer { name: "up" type: "Upsample" bottom: "data" top: "up" }\n')
    net = read_prototxt(write(tmp_path / "net.prototxt", text))
    assert [l.type for l in net.layers] == ["Input", "ReLU6", "Upsample"]
    assert _net(prototxt_text(net)) == _net(text)
