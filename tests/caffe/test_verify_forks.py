"""verify of a net from a Caffe fork (SSD): the backbone runs, the fork's layers are named."""

import json

import pytest

from caffe_tucker import ConvertOptions, convert, write_outputs
from caffe_tucker.caffe.verify import load_pair, verify
from fake_runtime import FakeRuntime
from conftest import TEST_MODELS

SSD = TEST_MODELS / "ssd_tiny"
BACKBONE_OUTPUTS = ["conv3", "conv4", "conv4_mbox_loc", "conv4_mbox_conf"]


@pytest.fixture(scope="module")
def ssd_out(tmp_path_factory):
    result = convert(SSD / "deploy.prototxt", SSD / "ssd_tiny.caffemodel",
                     ConvertOptions(rank_method="ratio:0.5", spectra=False), progress=False)
    out = tmp_path_factory.mktemp("ssd") / "out"
    write_outputs(result, out, plot=False)
    return out


def test_verify_runs_the_backbone_with_the_fake_runtime(ssd_out):
    v = verify(FakeRuntime(), load_pair([ssd_out]), random=2, seed=0)
    assert v.passed and [c.blob for c in v.decomposition] == BACKBONE_OUTPUTS
    assert v.part.startswith("verified layers conv1..conv4_mbox_conf (14 of 34); not run in "
                             "BVLC Caffe: Normalize, Permute x4, PriorBox x2, DetectionOutput")
    assert "compressed layers not verified: conv3_norm_mbox_loc, conv3_norm_mbox_conf" in v.part
    assert v.to_dict()["part"] == v.part


def test_a_stock_net_reports_no_part(cifar, tmp_path):
    result = convert(cifar, None, ConvertOptions(ranks={"conv2": [6, 9]}, spectra=False),
                     progress=False)
    write_outputs(result, tmp_path / "out", plot=False)
    assert verify(FakeRuntime(), load_pair([tmp_path / "out"]), random=1).part is None


def test_ssd_backbone_verifies_in_real_caffe(cli, caffe_command, ssd_out):
    code, out, err = cli("verify", ssd_out, "--format", "json", "--caffe-python", caffe_command)
    assert code == 0, err
    result = json.loads(out)
    assert result["verdict"] == "passed"
    assert [c["blob"] for c in result["decomposition"]] == BACKBONE_OUTPUTS
    assert all(c["max_rel"] < 1e-4 for c in result["decomposition"])
    assert "not run in BVLC Caffe" in result["part"] and "PriorBox" in result["part"]
    code, out, err = cli("verify", ssd_out, "--caffe-python", caffe_command)
    assert code == 0 and "verified layers conv1..conv4_mbox_conf" in out, err


def test_the_whole_ssd_net_verifies_under_opencv(cli, ssd_out):
    """OpenCV implements the SSD layers, so verify runs the whole detector there: every
    compressed layer (the heads after Normalize too) is checked on DetectionOutput itself."""
    code, out, err = cli("verify", ssd_out, "--format", "json", "--runtime", "opencv")
    assert code == 0, err
    result = json.loads(out)
    assert result["verdict"] == "passed" and result["runtime"]["name"] == "opencv"
    assert result["part"] is None
    assert [c["blob"] for c in result["decomposition"]] == ["detection_out"]
    assert result["decomposition"][0]["max_rel"] < 1e-4
    assert "conv3_norm_mbox_conf" in result["compressed_layers"]
