"""reproduce: the comparison with the paper's tables, on the paper-rank path with random weights."""


import pytest

from caffe_tucker.io.emit import write_caffemodel
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.io.read import read_prototxt
from caffe_tucker.compress.reproduce import agrees, compare_with_paper, paper_ranks, printed_value, reproduce
from conftest import ZOO


def test_printed_values():
    assert printed_value("75.0M") == (75e6, pytest.approx(1e5))
    assert printed_value("35K") == (35e3, 1e3)
    assert printed_value("279") == (279, 1) and printed_value("(blank)") is None
    assert agrees(74_760_192, "75.0M") is False and agrees(74_760_192, "75M") is True
    assert agrees(11_934, "11K") is True          # the paper truncates
    assert agrees(1000, "x") is None


def test_paper_ranks_of_every_model(zoo_meta):
    alex = paper_ranks(zoo_meta("alexnet"))
    assert alex == {"conv1": 26, "conv2": [25, 59], "conv3": [105, 112], "conv4": [49, 46],
                    "conv5": [40, 34], "fc6": [210, 584], "fc7": 301, "fc8": 195}
    # GoogLeNet's conv2* row prints no R3: it is left out rather than guessed
    assert "conv2/3x3" not in paper_ranks(zoo_meta("googlenet"))
    assert len(paper_ranks(zoo_meta("vgg16"))) == 12


def test_reproduce_googlenet_with_paper_ranks(tmp_path, zoo_meta):
    weights = tmp_path / "googlenet.caffemodel"
    write_caffemodel(init_weights(read_prototxt(ZOO / "googlenet" / "deploy.prototxt"), seed=0),
                     weights)
    result, cmp, out = reproduce("googlenet", weights=weights, paper_ranks_only=True,
                                 out_dir=tmp_path / "out", progress=False)
    assert (out / "report.json").is_file() and result.preset == "googlenet"
    rows = {r["layer"]: r for r in cmp["layers"]}
    assert all(r["ranks_match"] for n, r in rows.items() if n != "conv2/3x3")
    assert rows["conv2/3x3"]["ranks"] is None            # its printed row has no R3
    for name in ("inception_3a/3x3", "inception_4e/3x3", "inception_5b/3x3"):
        assert rows[name]["weights_after_agrees"] and rows[name]["flops_after_agrees"], name
    t = cmp["total"]
    assert t["paper_weights_before"] == "6.9M" and round(t["weights_before"] / 1e5) == 70
    assert round(t["weights_after"] / 1e5) == 49 and t["paper_weights_after"] == "4.7M"


def test_compare_needs_paper_tables(zoo_meta):
    from caffe_tucker.errors import CaffeTuckerError
    with pytest.raises(CaffeTuckerError, match="no paper tables"):
        compare_with_paper({"name": "digits", "paper": None}, None)
