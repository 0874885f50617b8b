"""An SSD-style net converts: only convolutions change, the fork's layers are written back as read."""

from google.protobuf import text_format

from caffe_tucker import ConvertOptions, convert, read_prototxt, write_outputs
from caffe_tucker.io.read import read_net
from conftest import TEST_MODELS, write

SSD = TEST_MODELS / "ssd_tiny"
FORK_TYPES = {"Permute", "PriorBox", "Normalize", "DetectionOutput"}


def _text(layer) -> str:
    return text_format.MessageToString(layer.spec, as_utf8=True)


def test_ssd_tiny_converts_and_keeps_the_fork_layers(tmp_path):
    result = convert(SSD / "deploy.prototxt", SSD / "ssd_tiny.caffemodel",
                     ConvertOptions(rank_method="ratio:0.5", spectra=False), progress=False)
    compressed = {r.name for r in result.record.compressed}
    assert compressed == {"conv1", "conv2", "conv3", "conv4", "conv3_norm_mbox_loc",
                          "conv3_norm_mbox_conf", "conv4_mbox_loc", "conv4_mbox_conf"}
    out = tmp_path / "out"
    write_outputs(result, out, plot=False)
    original = read_prototxt(SSD / "deploy.prototxt")
    written = read_prototxt(out / "deploy.prototxt")
    by_name = {l.name: l for l in written.layers}
    for layer in original.layers:
        if layer.type == "Convolution":
            continue
        assert _text(by_name[layer.name]) == _text(layer), layer.name     # byte-equal text form
    forks = [l for l in written.layers if l.type in FORK_TYPES]
    assert len(forks) == 8
    text = (out / "deploy.prototxt").read_text()
    assert "prior_box_param" in text and "code_type: CENTER_SIZE" in text
    # the Normalize scale blob goes through unchanged
    weights = read_net(out / "deploy.prototxt", out / "weights.caffemodel")
    assert weights.layer("conv3_norm").blobs[0].shape == (32,)
    assert (weights.layer("conv3_norm").blobs[0] == 20).all()


UNKNOWN = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 dim: 16 dim: 16 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "up" type: "Upsample" bottom: "c2" top: "up" }
layer { name: "c3" type: "Convolution" bottom: "up" top: "c3" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
"""


def test_layers_after_an_unknown_type_pass_through(cli, tmp_path):
    net = write(tmp_path / "up.prototxt", UNKNOWN)
    assert cli("init", net, "-o", tmp_path / "up.caffemodel")[0] == 0
    code, out, err = cli("convert", net, "-o", tmp_path / "out", "--rank-method", "ratio:0.5")
    assert code == 0, err
    assert "warning: " in err and "unknown layer type 'Upsample'" in err
    assert "compressed 2 of 2 planned layers" in out          # c1, c2; c3's shapes are unknown
    written = read_prototxt(tmp_path / "out" / "deploy.prototxt")
    assert [l.name for l in written.layers][-2:] == ["up", "c3"]
    code, out, err = cli("convert", net, "-o", tmp_path / "out2", "--layers", "c3")
    assert code == 1 and "layer 'c3' cannot be compressed: its shapes are unknown" in err
