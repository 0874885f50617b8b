"""finetune's outputs: never replaced without --force, written as one run's set, failures and
interrupts that say what they left behind.

Caffe is played by ``fake_caffe.py`` (Caffe-like glog lines, snapshot files, a failure, nothing
at all, or a slow run that snapshots on SIGINT), so these run everywhere; the real-Caffe runs
are in test_finetune.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from caffe_tucker.caffe.finetune import FAILED_LOG, PRODUCTS, finetune
from caffe_tucker.errors import OutputExistsError
from conftest import ZOO

FAKE = Path(__file__).resolve().parent / "fake_caffe.py"
SET = ("finetune.log", "finetune.csv", "finetune.png", "finetuned.caffemodel")


def fake(mode: str) -> str:
    return shlex.join([sys.executable, str(FAKE), mode])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from caffe_tucker.cli.main import main

    out = tmp_path_factory.mktemp("ft") / "digits_tucker"
    assert main(["convert", str(ZOO / "digits" / "deploy.prototxt"), "-o", str(out),
                 "--no-plot", "--train-images", "100", "--batch-size", "10"]) == 0
    return out


@pytest.fixture
def out(converted, tmp_path):
    """A fresh copy of a digits convert output directory (solver: 10 iterations per epoch)."""
    d = tmp_path / "out"
    shutil.copytree(converted, d)
    return d


def snapshot_of(d: Path):
    """Every file of the directory (snapshots included) with its bytes."""
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def hidden(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".")]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# A run and its set

def test_a_run_writes_its_set(cli, out):
    code, stdout, err = cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "25")
    assert code == 0, err
    assert "fine-tuned 25 of 25 iterations" in stdout
    for name in SET:
        assert (out / name).is_file(), name
    assert (out / "finetuned.caffemodel").read_bytes() == b"weights 25"
    assert (out / "snapshots" / "finetune_iter_10.solverstate").is_file()
    assert "Optimization Done." in (out / "finetune.log").read_text()
    assert (out / "finetune.csv").read_text().splitlines()[0] == "iteration,lr,loss,test_accuracy"
    assert not (out / FAILED_LOG).exists() and hidden(out) == []


@pytest.mark.parametrize("existing", SET)
def test_an_earlier_output_is_not_replaced_without_force(cli, out, existing):
    (out / existing).write_bytes(b"earlier run")
    before = snapshot_of(out)
    code, _, err = cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "5")
    assert code == 1
    line = one_line(err)
    assert f"{out / existing}: already exists" in line and "--force" in line and "--resume" in line
    assert snapshot_of(out) == before          # Caffe did not run: no snapshot, no solver_run
    code, _, err = cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "5", "--force")
    assert code == 0, err
    assert (out / "finetuned.caffemodel").read_bytes() == b"weights 5"
    assert b"earlier run" not in (out / existing).read_bytes()


def test_force_replaces_the_whole_set(cli, out):
    assert cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "5")[0] == 0
    (out / "finetune.csv").unlink()
    (out / "finetune.png").write_bytes(b"stale")
    # a run whose log has no rows: its set is the log and the weights, no CSV or plot
    (out / "solver.prototxt").write_text((out / "solver.prototxt").read_text()
                                         .replace("test_interval", "# test_interval")
                                         .replace("display:", "# display:"))
    code, _, err = cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "3", "--force")
    assert code == 0, err
    assert (out / "finetuned.caffemodel").read_bytes() == b"weights 3"
    assert (out / "finetune.csv").exists() == (out / "finetune.png").exists()


def test_resume_continues_the_run_without_force(cli, out):
    assert cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "10")[0] == 0
    state = out / "snapshots" / "finetune_iter_10.solverstate"
    code, stdout, err = cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "20",
                            "--resume", state)
    assert code == 0, err
    assert "fine-tuned 20 of 20 iterations (resumed at 10)" in stdout
    assert (out / "finetuned.caffemodel").read_bytes() == b"weights 20"
    its = [int(l.split(",")[0]) for l in (out / "finetune.csv").read_text().splitlines()[1:]]
    assert its[0] == 0 and its[-1] == 20           # the earlier rows kept


# --------------------------------------------------------------------------------------------
# Runs that fail, or run nothing

def test_a_failed_run_leaves_the_earlier_set_and_keeps_its_log(cli, out):
    assert cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "5")[0] == 0
    earlier = {name: (out / name).read_bytes() for name in SET}
    code, _, err = cli("finetune", out, "--caffe", fake("fail"), "--force")
    assert code == 1
    line = one_line(err)
    assert line.startswith("caffe-tucker: error: caffe failed (exit status 1): ")
    assert "Check failed: mdb_status == 0" in line
    assert f"its log is {out / FAILED_LOG}" in line and "untouched" in line
    assert {name: (out / name).read_bytes() for name in SET} == earlier
    assert "Check failed" in (out / FAILED_LOG).read_text()
    assert hidden(out) == []


def test_a_failed_first_run_leaves_no_outputs(cli, out):
    code, _, err = cli("finetune", out, "--caffe", fake("fail"))
    assert code == 1 and "untouched" not in one_line(err)
    assert not any((out / name).exists() for name in PRODUCTS) and (out / FAILED_LOG).is_file()
    # the failed log is no output of a run: the next run needs no --force
    assert cli("finetune", out, "--caffe", fake("ok"), "--max-iter", "2")[0] == 0


@pytest.mark.parametrize("command", ["true", fake("nothing")])
def test_a_command_that_runs_nothing_is_an_error(cli, out, command):
    code, _, err = cli("finetune", out, "--caffe", command)
    assert code == 1
    line = one_line(err)
    assert "exited 0 but ran no iteration and wrote no snapshot" in line and "--caffe" in line
    assert not any((out / name).exists() for name in PRODUCTS)


def test_spawn_failure_leaves_no_temporary_file(cli, out):
    code, _, err = cli("finetune", out, "--caffe", "/nonexistent/caffe")
    assert code == 1 and "'/nonexistent/caffe' not found" in one_line(err)
    assert hidden(out) == [] and not (out / FAILED_LOG).exists()


# --------------------------------------------------------------------------------------------
# Interrupts

def _interrupt_when_running(out: Path, sig: int) -> threading.Thread:
    """Send ``sig`` to this process once the fake Caffe has logged a few iterations."""
    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for log in out.glob(".finetune.log.*.tmp"):
                if "Iteration 5," in log.read_text(errors="replace"):
                    os.kill(os.getpid(), sig)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_names_the_snapshot_and_how_to_resume(cli, out, sig):
    watcher = _interrupt_when_running(out, sig)
    code, _, err = cli("finetune", out, "--caffe", fake("slow"), "--max-iter", "100000")
    watcher.join()
    assert code == 128 + sig                      # 130 for Ctrl-C, 143 for SIGTERM
    (line,) = err.strip().splitlines()           # one line: the interrupt and where Caffe stopped
    assert line.startswith(f"caffe-tucker: {'interrupted' if sig == signal.SIGINT else 'terminated'}: ")
    assert "Traceback" not in err
    states = {int(p.name.split("_iter_")[1].split(".")[0]): p
              for p in (out / "snapshots").glob("*.solverstate")}
    it = max(states)                    # the snapshot Caffe made when it was stopped
    state = states[it]
    assert 5 <= it < 100000, states
    assert f"Caffe stopped at iteration {it} of 100000" in line
    assert f"Caffe's last snapshot is {state}" in line
    assert f"'caffe-tucker finetune {out} --resume {state} --max-iter 100000'" in line
    # the interrupted run's set: its log, CSV, plot and last snapshot's weights
    assert (out / "finetuned.caffemodel").read_bytes() == b"weights %d" % it
    assert "Optimization stopped early." in (out / "finetune.log").read_text()
    assert hidden(out) == []
    code, stdout, err = cli("finetune", out, "--caffe", fake("ok"), "--resume", state,
                            "--max-iter", str(it + 3))
    assert code == 0 and f"(resumed at {it})" in stdout, err


def test_the_library_raises_a_keyboard_interrupt(out, monkeypatch):
    watcher = _interrupt_when_running(out, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
        finetune(out, fake("slow"), max_iter=100000, progress=False)
    watcher.join()
    assert info.value.snapshot is not None and info.value.snapshot.is_file()
    assert info.value.result.iterations >= 5


# --------------------------------------------------------------------------------------------
# Bad input: exit 1, one line, no traceback, nothing run

def test_finetune_bad_inputs(cli, out, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([tmp_path / "nope"], "no such directory"),
        ([out / "solver.prototxt"], "not a convert output directory (it is a file)"),
        ([empty], "no such solver"),
        ([out, "--resume", out / "snapshots" / "finetune_iter_7.solverstate"],
         "no such solver state"),
    ]
    for argv, expected in cases:
        code, _, err = cli("finetune", *argv, "--caffe", fake("ok"))
        assert code == 1 and expected in one_line(err), (argv, err)
    assert not (out / "snapshots").exists() and not (out / "solver_run.prototxt").exists()


def test_an_unwritable_output_directory_is_refused_before_caffe_runs(cli, out, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("caffe_tucker.io.fsutil.tempfile.mkstemp", refuse)
    code, _, err = cli("finetune", out, "--caffe", fake("ok"))
    assert code == 1
    assert f"{out / 'finetune.log'}: cannot write the output (permission denied)" in one_line(err)
    assert not (out / "snapshots").exists()


def test_existing_outputs_are_refused_by_the_library(out):
    (out / "finetuned.caffemodel").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="already exists"):
        finetune(out, fake("ok"), progress=False)
