"""An SSD-style net converts: only convolutions change, the fork's layers are written back as read."""

from google.protobuf import text_format

from caffe_tucker import ConvertOptions, convert, read_prototxt, write_outputs
from caffe_tucker.io.read import read_net
from conftest import TEST_MODELS

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
