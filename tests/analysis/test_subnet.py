"""The part of a net BVLC Caffe can run (verify of nets from Caffe forks)."""

from caffe_tucker import read_prototxt
from caffe_tucker.analysis.subnet import BVLC_LAYER_TYPES, describe_cut, runnable_subnet
from conftest import TEST_MODELS, write

SSD = TEST_MODELS / "ssd_tiny" / "deploy.prototxt"


def test_ssd_tiny_backbone_is_kept_and_fork_layers_cut():
    net = read_prototxt(SSD)
    sub = runnable_subnet(net)
    kept = [l.name for l in sub.net.layers]
    assert kept == ["data", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
                    "pool3", "conv4", "relu4", "conv4_mbox_loc", "conv4_mbox_conf"]
    assert {t for _, t in sub.unknown} == {"Normalize", "Permute", "PriorBox", "DetectionOutput"}
    # what the cut-off part reads (conv3 by Normalize, conv4 by PriorBox, the heads by Permute);
    # the input is fed, not compared
    assert sub.outputs == ("conv3", "conv4", "conv4_mbox_loc", "conv4_mbox_conf")
    assert not sub.whole and len(sub.dropped) == len(net.layers) - len(kept)
    line = describe_cut(sub, len(net.layers), compressed=["conv2", "conv3_norm_mbox_loc"])
    assert line.startswith("verified layers conv1..conv4_mbox_conf (14 of 34); not run in BVLC "
                           "Caffe: Normalize, Permute x4, PriorBox x2, DetectionOutput (Caffe-SSD)")
    assert line.endswith("compressed layers not verified: conv3_norm_mbox_loc")


def test_a_stock_net_runs_whole(cifar):
    net = read_prototxt(cifar).for_state("TEST")
    sub = runnable_subnet(net)
    assert sub.whole and sub.net.layers == net.layers and sub.unknown == ()


def test_an_unknown_in_place_layer_cuts_its_blob(tmp_path):
    net = read_prototxt(write(tmp_path / "n.prototxt", """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "r6" type: "ReLU6" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "side" type: "Convolution" bottom: "data" top: "side" convolution_param { num_output: 2 kernel_size: 1 } }
"""))
    sub = runnable_subnet(net)
    # c2 would read c1 without the ReLU6 the real net applies: it is cut, not run wrongly
    assert [l.name for l in sub.net.layers] == ["data", "c1", "side"]
    assert sub.outputs == ("c1", "side") and sub.unknown == (("r6", "ReLU6"),)
    # a runtime that knows ReLU6 runs it all
    assert runnable_subnet(net, BVLC_LAYER_TYPES | {"ReLU6"}).whole
