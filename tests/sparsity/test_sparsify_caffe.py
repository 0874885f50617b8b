"""``sparsify`` end to end in real Caffe: the digits classifier and the VDSR super-resolution net.

Short schedules (tens of iterations) so the suite stays quick; the full runs and their figures
are ``benchmarks/sparsity_compare.py`` and the README.  Needs a Caffe runtime (skipped locally
without one, failed under ``CI=true``) and scikit-learn for the digits data.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.read import read_net
from caffe_tucker.model import load_model
from caffe_tucker.sparsity.data import eval_set_from_npz, train_set_from_npz
from caffe_tucker.sparsity.outputs import OUTPUTS, output_files
from caffe_tucker.sparsity.record import sparsity_record
from caffe_tucker.sparsity.schedule import SparsifyOptions, sparsify
from caffe_tucker.sparsity.winograd import to_winograd, winograd_tile

from conftest import TEST_MODELS, ZOO, in_ci

DIGITS = ZOO / "digits"
VDSR = TEST_MODELS / "vdsr"
SR = TEST_MODELS / "sr"


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory, recipe):
    try:
        importlib.import_module("sklearn")
    except ImportError:
        if in_ci():
            pytest.fail("CI must run the sparsify tests, but scikit-learn is missing", pytrace=False)
        pytest.skip("needs scikit-learn (pip install '.[test]')")
    x_tr, y_tr, x_te, y_te = recipe.load_split()
    d = tmp_path_factory.mktemp("digits")
    np.savez(d / "train.npz", data=x_tr, label=y_tr)
    np.savez(d / "test.npz", data=x_te, label=y_te)
    return d / "train.npz", d / "test.npz"


def _zeros(a) -> int:
    return int(np.size(a) - np.count_nonzero(a))


def test_digits_joint_sparsify_cli_writes_a_model_sparse_in_both_domains(cli, caffe_command,
                                                                          digits_npz, tmp_path):
    train, test = digits_npz
    out = tmp_path / "out"
    code, stdout, err = cli("sparsify", DIGITS / "deploy.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--train-data", train, "--test-data", test,
                            "--spatial", "0.6", "--winograd", "0.5", "--regularize-iterations", "30",
                            "--finetune-iterations", "20", "--batch", "32", "--lr", "0.005",
                            "--checkpoint-every", "10", "-o", out, "--caffe-python", caffe_command)
    assert code == 0, stdout + err
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert not (tmp_path / ".out.sparsify-work").exists()       # checkpoints go when done
    record = json.loads((out / "sparsify.json").read_text())
    sparse = read_net(out / "deploy.prototxt", out / "sparse.caffemodel")
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        w = sparse.layer(name).blobs[0]
        assert _zeros(w) == int(np.floor(0.6 * w.size)), name          # exactly the target
    form = read_net(out / "winograd.prototxt", out / "winograd.caffemodel")
    tile = winograd_tile(2)
    for name in ("conv1", "conv2", "conv3"):           # the three stride-1 3x3 convolutions
        assert name not in [l.name for l in form.layers]
        muls = [l for l in form.layers if l.name.startswith(name) and l.type == "Convolution"
                and l.spec.convolution_param.group == 16]
        assert len(muls) == 1, name
        u = muls[0].blobs[0]
        assert _zeros(u) >= int(np.floor(0.5 * u.size)), name
        # the deployed filters are G g G^T of the sparse spatial ones, pruned: the kept entries
        # are unchanged values of the transform
        full = to_winograd(sparse.layer(name).blobs[0], tile)            # (T, C, 4, 4)
        kept = np.transpose(full, (2, 3, 0, 1)).reshape(u.shape)
        mask = u != 0
        np.testing.assert_allclose(u[mask], kept[mask], rtol=1e-5, atol=1e-7)
    layers = {l["name"]: l for l in record["layers"]}
    assert [n for n, l in layers.items() if l["winograd"]] == ["conv1", "conv2", "conv3"]
    assert layers["fc1"]["winograd"] is False and layers["fc1"]["reason"]
    for l in layers.values():
        assert l["spatial_sparse"] < l["spatial_dense"] and l["winograd_sparse"] <= l["winograd_dense"]
    stages = {m["stage"]: m["value"] for m in record["measures"]}
    assert list(stages) == ["original", "regularized", "pruned", "sparse", "winograd"]
    assert stages["original"] == pytest.approx(0.988)   # the zoo model's measured accuracy
    assert stages["sparse"] > 0.8 and stages["winograd"] > 0.5
    assert record["winograd_form_max_rel_error"] < 1e-4
    rows = (out / "training.csv").read_text().splitlines()
    assert len(rows) == 1 + 50 and rows[1].startswith("1,regularize,")
    assert rows[-1].startswith("50,finetune,")
    assert (out / "sparsify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sparse Winograd" in stdout and "winograd" in stdout


def _run(caffe, train, test, options, work=None, resume=False, stop_at=None):
    model = load_model(DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel")

    def on_iteration(row):
        if stop_at is not None and row.iteration == stop_at:
            raise KeyboardInterrupt
    return sparsify(model, train, test, options, caffe, work_dir=work, resume=resume,
                    on_iteration=on_iteration)


def test_an_interrupted_run_resumes_to_the_same_bytes(caffe, digits_npz, tmp_path):
    train = train_set_from_npz(digits_npz[0])
    test = eval_set_from_npz(digits_npz[1])
    options = SparsifyOptions(spatial=0.5, winograd=0.4, regularize_iterations=12,
                              finetune_iterations=8, batch=16, lr=0.005, checkpoint_every=5)
    whole = _run(caffe, train, test, options)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        _run(caffe, train, test, options, work=work, stop_at=17)      # in the fine-tuning phase
    state = json.loads((work / "state.json").read_text())
    assert state["phase"] == "finetune" and state["iteration"] == 5   # the checkpoint at 12 + 5
    resumed = _run(caffe, train, test, options, work=work, resume=True)
    a = output_files(whole, sparsity_record(whole, "digits"), plot=False)
    b = output_files(resumed, sparsity_record(resumed, "digits"), plot=False)
    def blob(contents):
        return contents.encode() if isinstance(contents, str) else b"".join(map(bytes, contents))
    for name in a:
        assert blob(a[name]) == blob(b[name]), name
    assert not work.exists()
    # a checkpoint made with other options is refused, not silently mixed in
    with pytest.raises(KeyboardInterrupt):
        _run(caffe, train, test, options, work=work, stop_at=7)
    other = SparsifyOptions(spatial=0.6, winograd=0.4, regularize_iterations=12,
                            finetune_iterations=8, batch=16, lr=0.005, checkpoint_every=5)
    with pytest.raises(CaffeTuckerError, match="other inputs or options"):
        _run(caffe, train, test, other, work=work, resume=True)


def test_vdsr_super_resolution_sparsify_in_caffe(cli, caffe_command, tmp_path):
    out = tmp_path / "vdsr"
    code, stdout, err = cli("sparsify", VDSR / "VDSR_net_deploy.prototxt", "--weights",
                            VDSR / "VDSR_Adam.caffemodel", "--train-data", SR / "train",
                            "--test-data", SR / "test", "--scale", "3", "--patch", "24",
                            "--spatial", "0.5", "--winograd", "0.4", "--regularize-iterations", "3",
                            "--finetune-iterations", "2", "--batch", "4", "--lr", "1e-5",
                            "--format", "json", "-o", out, "--caffe-python", caffe_command)
    assert code == 0, stdout + err
    record = json.loads(stdout)
    assert record == json.loads((out / "sparsify.json").read_text())
    layers = record["layers"]
    assert len(layers) == 20 and all(l["winograd"] for l in layers)   # all 3x3, stride 1
    assert all(l["spatial_sparsity"] == pytest.approx(0.5, abs=1e-3) for l in layers)
    assert all(l["winograd_sparsity"] >= 0.4 - 1e-3 for l in layers)
    stages = {m["stage"]: m["value"] for m in record["measures"]}
    assert all(m["metric"] == "psnr" for m in record["measures"])
    # the crops' bicubic PSNR is far below VDSR's: the original measure is VDSR's, in Caffe
    assert 20 < stages["original"] < 60 and stages["winograd"] > 10
    assert record["winograd_form_max_rel_error"] < 1e-4
    t = record["totals"]
    assert t["spatial_dense"] / t["spatial_sparse"] == pytest.approx(2.0, rel=0.01)
    assert t["winograd_speedup"] > t["spatial_speedup"]
