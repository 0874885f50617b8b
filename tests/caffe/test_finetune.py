"""``finetune`` end to end in real Caffe: the digits model compressed, then fine-tuned back.

The digits split goes into Caffe LMDBs (``zoo_models/digits/train.py export_lmdb``), ``convert``
writes two compressed nets (VBMF ranks, and the harsher fixed ``--rank-method ratio:0.1``) with
their fine-tuning files, and ``finetune`` runs ``caffe train`` on each.  Accuracy is measured in
Caffe (``CaffeRuntime.forward`` on the 500 test images) for the original, each compressed net
before, and after fine-tuning.  Figures measured on a 2-core machine (5 epochs of batch 64,
105 iterations, about 2 s each):

    original 98.8 %;  VBMF (x5.4 weights, x11 FLOPs): 98.0 % -> 98.4 %;
    ratio:0.1 (x10 weights, x23 FLOPs): 91.0 % -> 97.6 %.

Needs a Caffe runtime ($CAFFE_TUCKER_PYTHON, e.g. ``chroot /opt/caffe-root python3``: the caffe
binary is then ``chroot /opt/caffe-root caffe`` and the work happens in a temporary directory
inside the chroot), scikit-learn and lmdb; under ``CI=true`` any of them missing fails.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from caffe_tucker.cli.main import main
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.caffe.finetune import caffe_argv, finetune, parse_log_line

from conftest import ZOO, in_ci

DIGITS = ZOO / "digits"
EPOCHS = 5
SETTINGS = {"vbmf": [], "ratio0.1": ["--rank-method", "ratio:0.1"]}


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        if in_ci():
            pytest.fail(f"CI must run the fine-tuning tests, but {module} is not installed",
                        pytrace=False)
        pytest.skip(f"needs {module} (pip install '.[test]')")



@pytest.fixture(scope="session")
def caffe_binary(caffe_command):
    """``(command that runs the caffe binary, chroot root or None)``, from $CAFFE_TUCKER_PYTHON:
    ``chroot ROOT python3`` gives ``chroot ROOT caffe``; otherwise ``caffe`` on the PATH."""
    argv = shlex.split(caffe_command)
    if argv and os.path.basename(argv[0]) == "chroot" and len(argv) >= 3:
        root = argv[1]
        if not any(os.path.exists(os.path.join(root, d, "caffe"))
                   for d in ("usr/bin", "usr/local/bin", "opt/caffe/build/tools")):
            pytest.fail(f"{root} has no caffe binary", pytrace=False)
        return f"chroot {root} caffe", Path(root)
    if shutil.which("caffe"):
        return "caffe", None
    message = f"no caffe binary to go with the runtime {caffe_command!r}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def workdir(caffe_binary):
    """A temporary directory Caffe can see (inside the chroot tree when there is one)."""
    _, root = caffe_binary
    base = None
    if root is not None:
        base = root / "tmp"
        base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="caffe_tucker_ft_", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _inside(path: Path, root: Path | None) -> str:
    return str(path) if root is None else "/" + str(path.resolve().relative_to(root.resolve()))


@pytest.fixture(scope="module")
def lmdbs(recipe, workdir, caffe_binary):
    _need("sklearn")
    _need("lmdb")
    train, test = recipe.export_lmdb(workdir)
    _, root = caffe_binary
    return _inside(train, root), _inside(test, root)


def _convert(out: Path, lmdbs, extra=()) -> None:
    code = main(["convert", str(DIGITS / "deploy.prototxt"), "-o", str(out), "--force",
                 "--train-source", lmdbs[0], "--val-source", lmdbs[1],
                 "--train-images", "1297", "--val-images", "500", "--batch-size", "64",
                 "--epochs", str(EPOCHS), "--no-plot", *extra])
    assert code == 0


def _accuracy(caffe, deploy: Path, weights: Path, x, y) -> float:
    prob = caffe.forward(deploy.read_text(), weights.read_bytes(), {"data": x}, blobs=["prob"])
    return float(np.mean(prob["prob"].reshape(len(x), -1).argmax(axis=1) == y.astype(np.int64)))


@pytest.fixture(scope="module")
def runs(caffe, caffe_binary, recipe, workdir, lmdbs):
    """Every setting converted, measured, fine-tuned and measured again."""
    _, _, x_test, y_test = recipe.load_split()
    figures = {"original": _accuracy(caffe, DIGITS / "deploy.prototxt",
                                     DIGITS / "digits.caffemodel", x_test, y_test)}
    out = {}
    for name, extra in SETTINGS.items():
        d = workdir / name
        _convert(d, lmdbs, extra)
        solver_before = (d / "solver.prototxt").read_bytes()
        before = _accuracy(caffe, d / "deploy.prototxt", d / "weights.caffemodel", x_test, y_test)
        result = finetune(d, caffe_binary[0], progress=False)
        after = _accuracy(caffe, d / "deploy.prototxt", d / "finetuned.caffemodel", x_test, y_test)
        total = json.loads((d / "report.json").read_text())["total"]
        figures[name] = {"before": before, "after": after, "log_accuracy": result.final_accuracy,
                         "weights_x": round(total["weights_before"] / total["weights_after"], 2),
                         "flops_x": round(total["flops_before"] / total["flops_after"], 2)}
        out[name] = (d, result, solver_before)
    print("\nfine-tuning figures (top-1 on the 500 test images):", json.dumps(figures, indent=1))
    return figures, out


def test_finetune_recovers_accuracy(runs):
    figures, _ = runs
    original = figures["original"]
    assert original == pytest.approx(0.988, abs=0.004)
    vbmf, harsh = figures["vbmf"], figures["ratio0.1"]
    # VBMF: measured 98.0 % -> 98.4 % (original 98.8 %): within 1 point of the original.
    assert vbmf["after"] >= original - 0.01, figures
    # ratio:0.1 loses ~8 points; measured 91.0 % -> 97.6 %.  Honest bound: fine-tuning wins
    # back at least 4 points and ends within 2.5 points of the original.
    assert harsh["before"] <= original - 0.03, figures
    assert harsh["after"] >= harsh["before"] + 0.04, figures
    assert harsh["after"] >= original - 0.025, figures
    for name in SETTINGS:
        assert figures[name]["log_accuracy"] is not None


def test_finetune_outputs(runs):
    _, out = runs
    for name, (d, result, solver_before) in out.items():
        for f in ("finetune.csv", "finetune.png", "finetune.log", "finetuned.caffemodel",
                  "solver_run.prototxt"):
            assert (d / f).is_file(), f"{name}: {f} missing"
        assert (d / "solver.prototxt").read_bytes() == solver_before  # never modified
        assert (d / "finetune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert result.done and result.iterations == result.max_iter == 105
        final = d / "snapshots" / "finetune_iter_105.caffemodel"
        assert (d / "finetuned.caffemodel").read_bytes() == final.read_bytes()
        assert (d / "snapshots" / "finetune_iter_21.solverstate").is_file()
        with open(d / "finetune.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == ["iteration", "lr", "loss", "test_accuracy"]
        tested = [int(r["iteration"]) for r in rows if r["test_accuracy"]]
        assert tested == [0, 21, 42, 63, 84, 105]  # test_initialization, then every epoch
        assert all(r["loss"] for r in rows if int(r["iteration"]) % 2 == 0)  # display: 2
        assert float(rows[-1]["test_accuracy"]) == pytest.approx(result.final_accuracy)


def test_finetune_outputs_are_kept_and_verified_as_tuned(runs, caffe_binary, caffe_command, cli):
    """After a real run: a second run is refused without --force (before Caffe starts), and
    verify --tuned measures the fine-tuned weights in Caffe instead of failing their decomposition."""
    _, out = runs
    d, _, _ = out["vbmf"]
    before = {name: (d / name).read_bytes() for name in ("finetune.log", "finetuned.caffemodel")}
    code, _, err = cli("finetune", d, "--caffe", caffe_binary[0])
    assert code == 1 and "already exists" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert {name: (d / name).read_bytes() for name in before} == before
    code, stdout, err = cli("verify", d, "--tuned", "--random", "8", "--format", "json",
                            "--caffe-python", caffe_command)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["verdict"] == "measured" and result["decomposition"] is None
    assert result["weights"] == str(d / "finetuned.caffemodel")
    assert result["approximation"][0]["top1_agreement"] is not None
    four = [DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel", d / "deploy.prototxt",
            d / "finetuned.caffemodel"]
    code, stdout, _ = cli("verify", *four, "--caffe-python", caffe_command)
    assert code == 2 and stdout.strip().splitlines()[-1].startswith("FAILED")
    code, stdout, _ = cli("verify", *four, "--tuned", "--caffe-python", caffe_command)
    assert code == 0 and stdout.strip().splitlines()[-1].startswith("MEASURED")


def test_finetune_resume(caffe_binary, workdir, lmdbs, capsys):
    d = workdir / "resume"
    _convert(d, lmdbs)
    caffe_cmd = caffe_binary[0]
    assert main(["finetune", str(d), "--caffe", caffe_cmd, "--max-iter", "42"]) == 0
    capsys.readouterr()
    assert main(["finetune", str(d), "--caffe", caffe_cmd, "--max-iter", "63",
                 "--resume", str(d / "snapshots" / "finetune_iter_21.solverstate")]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned 63 of 63 iterations (resumed at 21)" in out
    log = (d / "finetune.log").read_text()
    assert "Resuming from snapshots/finetune_iter_21.solverstate" in log
    losses = [e[1] for e in map(parse_log_line, log.splitlines()) if e and e[0] == "loss"]
    assert losses and min(losses) > 21 and max(losses) < 63
    assert (d / "finetuned.caffemodel").read_bytes() == \
        (d / "snapshots" / "finetune_iter_63.caffemodel").read_bytes()
    with open(d / "finetune.csv", newline="") as fh:
        its = [int(r["iteration"]) for r in csv.DictReader(fh)]
    assert its[0] == 0 and its[-1] == 63 and its == sorted(set(its))  # earlier rows kept


def test_finetune_caffe_fails(caffe_binary, workdir, lmdbs, capsys):
    d = workdir / "broken"
    _convert(d, (lmdbs[0] + "_missing", lmdbs[1]))
    assert main(["finetune", str(d), "--caffe", caffe_binary[0], "--max-iter", "5"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("caffe-tucker: error: caffe failed (")
    assert "train --solver solver_run.prototxt" in err
    assert "Check failed" in err or "No such file" in err, err
    assert f"its log is {d / 'finetune.failed.log'}" in err
    assert "Check failed" in (d / "finetune.failed.log").read_text() or \
        "No such file" in (d / "finetune.failed.log").read_text()
    assert not (d / "finetune.log").exists() and not (d / "finetuned.caffemodel").exists()


def test_caffe_command_forms(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["train", "--solver", "s.prototxt"]
    assert caffe_argv("caffe", out, args) == ["caffe"] + args
    docker = caffe_argv('docker run --rm -v "$PWD":/work -w /work img caffe', out, args)
    assert docker[4] == f"{out.resolve()}:/work" and docker[-4:] == ["caffe"] + args
    root = tmp_path
    argv = caffe_argv(f"chroot {root} caffe", out, args)
    assert argv == ["chroot", str(root), "sh", "-c", 'cd "$1" && shift && exec "$@"', "sh",
                    "/out", "caffe"] + args
    with pytest.raises(CaffeTuckerError, match="outside the chroot"):
        caffe_argv(f"chroot {root / 'elsewhere'} caffe", out, args)


def test_parse_log_lines():
    assert parse_log_line("I1122 00:41:56.517180  8168 solver.cpp:239] Iteration 94 (29.4 iter/s, "
                          "0.068s/2 iters), loss = 0.00849891") == ("loss", 94, 0.00849891)
    assert parse_log_line("I1122 00:41:56.517231  8168 sgd_solver.cpp:112] Iteration 94, "
                          "lr = 0.001") == ("lr", 94, 0.001)
    assert parse_log_line("I1122 00:41:56.715329  8168 solver.cpp:347] Iteration 105, Testing "
                          "net (#0)") == ("testing", 105, 0)
    assert parse_log_line("I1122 00:41:56.771620  8168 solver.cpp:414]     Test net output #0: "
                          "accuracy_top1 = 0.982422") == ("test_output", 0, "accuracy_top1", 0.982422)
    assert parse_log_line("I1122 00:41:56.714637  8168 solver.cpp:464] Snapshotting to binary "
                          "proto file snapshots/finetune_iter_600.caffemodel") == \
        ("snapshot", "snapshots/finetune_iter_600.caffemodel")
    assert parse_log_line("I1122 00:41:56.715290  8168 sgd_solver.cpp:273] Snapshotting solver "
                          "state to binary proto file snapshots/finetune_iter_600.solverstate") == \
        ("snapshot", "snapshots/finetune_iter_600.solverstate")
    assert parse_log_line("I1122 00:41:56.771651  8168 solver.cpp:332] Optimization Done.") == ("done",)
    assert parse_log_line("I1122 00:41:56.771651  8168 net.cpp:1] Setting up conv1") is None


def test_finetune_missing_inputs(tmp_path, cli):
    code, _, err = cli("finetune", tmp_path, "--caffe", "caffe")
    assert code == 1 and "no such solver" in err and len(err.strip().splitlines()) == 1
