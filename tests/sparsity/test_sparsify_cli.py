"""sparsify's command line without Caffe: what is refused before any training starts."""

from __future__ import annotations

import numpy as np

from conftest import ZOO

DIGITS = ZOO / "digits"


def _data(tmp_path):
    np.savez(tmp_path / "d.npz", data=np.zeros((8, 1, 8, 8), np.float32), label=np.arange(8) % 10)
    return tmp_path / "d.npz"


def test_an_interrupted_runs_checkpoint_is_not_discarded_without_resume_or_force(cli, tmp_path):
    data = _data(tmp_path)
    work = tmp_path / ".out.sparsify-work"
    work.mkdir()
    (work / "state.json").write_text("{}")
    code, out, err = cli("sparsify", DIGITS / "deploy.prototxt", "--train-data", data,
                         "--test-data", data, "-o", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1
    assert "checkpoint is there; hint: pass --resume to continue it, or --force" in err
    assert (work / "state.json").read_text() == "{}"


def test_help_names_the_phases_and_the_targets(cli):
    code, text, err = cli("sparsify", "--help")
    assert code == 0, err
    for flag in ("--spatial", "--winograd", "--regularize-iterations", "--finetune-iterations",
                 "--resume", "--tile"):
        assert flag in text


def test_a_net_without_weights_is_refused_with_a_hint(cli, tmp_path):
    import shutil

    shutil.copy(DIGITS / "deploy.prototxt", tmp_path / "net.prototxt")
    data = _data(tmp_path)
    code, out, err = cli("sparsify", tmp_path / "net.prototxt", "--train-data", data,
                         "--test-data", data)
    assert code == 1 and err.count("\n") == 1
    assert "no weights given and no net.caffemodel beside it; hint: pass --weights" in err
