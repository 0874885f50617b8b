"""Stage 7, fine-tune: run ``caffe train`` on a ``convert`` output directory and follow its log.

:func:`finetune` runs::

    <caffe_cmd> train --solver solver_run.prototxt --weights weights.caffemodel [--gpu all]

(``--snapshot FILE.solverstate`` instead of ``--weights`` to resume) as a subprocess whose working
directory is the output directory.  ``solver_run.prototxt`` is a copy of the user's
``solver.prototxt`` (never modified) with ``max_iter`` overridden if asked and ``snapshot_prefix``
moved under ``snapshots/``.  Caffe's log (glog, on stderr) is parsed as it streams: a progress bar,
``finetune.log`` (the whole log), ``finetune.csv`` and ``finetune.png`` (loss and test accuracy
against iteration); the last snapshot is copied to ``finetuned.caffemodel``.

``caffe_cmd`` is a command prefix, split like a shell would, that runs the ``caffe`` binary:
``caffe``, ``docker run --rm -v "$PWD":/work -w /work caffe-tucker:cpu caffe`` (``$PWD`` and
other ``$VARS`` are expanded, ``$PWD`` to the output directory), or ``chroot ROOT caffe``.  Every
path Caffe reads (the LMDB sources in ``train_val.prototxt``) must be visible inside that
environment.  For ``chroot ROOT ...`` the output directory must lie under ``ROOT``; the command
becomes ``chroot ROOT sh -c 'cd "$1" && shift && exec "$@"' sh /DIR/INSIDE caffe ...`` so that
Caffe starts in the same directory as seen inside the chroot.

The process itself (the command prefix, the chroot paths, the start, Caffe's error lines, the
stop on Ctrl-C) is :mod:`caffe_tucker.caffe.process`; the log is read by
:mod:`caffe_tucker.caffe.train_log`.  Nothing here prints; the progress bar is
:class:`caffe_tucker.report.progress.Progress`.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from caffe_tucker.caffe.process import (CaffeCommand, LineReader, caffe_reason, child_env,
                                        describe_status, kill_group, one_line, spawn,
                                        spawn_failure, stop)
from caffe_tucker.caffe.train_log import TrainLog, csv_text, parse_log_line, read_csv
from caffe_tucker.compress.finetune_files import solver_text
from caffe_tucker.errors import CaffeTuckerError, InputFileError
from caffe_tucker.io.fsutil import write_atomic
from caffe_tucker.io.read import read_solver
from caffe_tucker.report.plots import png_bytes, pyplot
from caffe_tucker.report.progress import Progress

__all__ = ["FinetuneResult", "finetune", "finetune_png", "caffe_argv",
           "parse_log_line", "CAFFE_ENV_VAR"]

CAFFE_ENV_VAR = "CAFFE_TUCKER_CAFFE"
SNAPSHOT_DIR = "snapshots"
RUN_SOLVER = "solver_run.prototxt"
LOG_TAIL_LINES = 200


@dataclass
class FinetuneResult:
    """What one ``caffe train`` run did."""

    out_dir: Path
    command: list[str]
    start_iteration: int = 0
    iterations: int = 0                       # the last iteration Caffe reported
    max_iter: int = 0
    final_loss: float | None = None
    final_accuracy: float | None = None       # last test accuracy (net #0)
    accuracy_name: str | None = None          # which test output that is
    caffemodel: Path | None = None            # finetuned.caffemodel
    snapshots: list[Path] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    log: Path | None = None
    csv: Path | None = None
    png: Path | None = None
    seconds: float = 0.0
    done: bool = False                        # Caffe printed "Optimization Done."


# ---------------------------------------------------------------------------------------------
# The command

def _command(caffe_cmd, out_dir) -> CaffeCommand:
    """The command prefix that runs ``caffe`` for the output directory ``out_dir``: split, with
    ``$PWD`` expanded to ``out_dir`` and other ``$VARS`` from the environment.

    Raises
    ------
    CaffeTuckerError
        When it cannot be split or is empty.
    """
    if isinstance(caffe_cmd, CaffeCommand):
        return caffe_cmd
    return CaffeCommand.parse(caffe_cmd, pwd=Path(out_dir).resolve(), what="the caffe command",
                              hint=f"pass --caffe CMD or set {CAFFE_ENV_VAR}")


def caffe_argv(caffe_cmd, out_dir, args) -> list[str]:
    """The full argv that runs ``caffe <args>`` with its working directory ``out_dir``.

    For a ``chroot ROOT ...`` prefix the out dir must be under ROOT, and the command changes into
    it inside the chroot first; otherwise the subprocess is simply started in ``out_dir``.
    """
    return _command(caffe_cmd, out_dir).argv_in(Path(out_dir).resolve(), args)


# ---------------------------------------------------------------------------------------------
# The plot

def finetune_png(rows: list[dict], accuracy_name: str | None = None) -> bytes:
    """Training loss and test accuracy against iteration, two panels."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    loss = [(r["iteration"], r["loss"]) for r in rows if r["loss"] is not None]
    acc = [(r["iteration"], r["test_accuracy"]) for r in rows if r["test_accuracy"] is not None]
    if loss:
        ax1.plot(*zip(*loss), color="tab:blue", lw=1)
    ax1.set_ylabel("training loss")
    ax1.grid(alpha=0.3)
    if acc:
        ax2.plot(*zip(*acc), color="tab:orange", marker="o", ms=3, lw=1)
    ax2.set_ylabel(f"test {accuracy_name or 'accuracy'}")
    ax2.set_xlabel("iteration")
    ax2.grid(alpha=0.3)
    fig.suptitle("caffe_tucker finetune")
    fig.tight_layout()
    return png_bytes(fig)


# ---------------------------------------------------------------------------------------------
# The run

def finetune(out_dir, caffe_cmd="caffe", gpu=None, max_iter=None, resume=None,
             progress=True) -> FinetuneResult:
    """Fine-tune the compressed net of a ``convert`` output directory in real Caffe.

    Parameters
    ----------
    out_dir : path
        Holds ``solver.prototxt``, ``train_val.prototxt`` and ``weights.caffemodel``.
    caffe_cmd : str, list or CaffeCommand
        Command prefix that runs the ``caffe`` binary (see the module docstring).
    gpu : str, optional
        Passed as ``--gpu`` (``all``, ``0``, ``0,1``): needs a GPU build of Caffe.
    max_iter : int, optional
        Overrides the solver's ``max_iter``.
    resume : path, optional
        A ``.solverstate`` to continue from (``--snapshot``) instead of starting from the weights.
    progress : bool
        Draw a progress bar on stderr (when it is a terminal).

    Raises
    ------
    CaffeTuckerError
        On missing inputs, or when Caffe exits non-zero (one line: the command and Caffe's last
        error line).  A KeyboardInterrupt stops Caffe (:func:`caffe_tucker.caffe.process.stop`:
        SIGINT, so that it snapshots, then SIGTERM and SIGKILL) and is re-raised.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputFileError(f"{out}: no such directory; hint: pass the output directory of "
                             "'convert'")
    solver_path = out / "solver.prototxt"
    if not solver_path.is_file():
        raise InputFileError(f"{solver_path}: no such solver; hint: is {out} an output directory "
                             "of 'convert'?")
    if resume is None and not (out / "weights.caffemodel").is_file():
        raise InputFileError(f"{out / 'weights.caffemodel'}: missing; hint: is {out} an output "
                             "directory of 'convert'?")
    if resume is not None:
        resume = Path(resume)
        if not resume.is_file() and not (out / resume).is_file():
            raise InputFileError(f"{resume}: no such solver state; hint: pass a "
                                 f"{SNAPSHOT_DIR}/*.solverstate of an earlier run")
        if not resume.is_file():
            resume = out / resume
    if max_iter is not None and (not isinstance(max_iter, int) or max_iter < 1):
        raise CaffeTuckerError(f"finetune: max_iter must be an int >= 1, got {max_iter!r}")
    command = _command(caffe_cmd, out)

    solver = read_solver(solver_path)
    if max_iter is not None:
        solver.max_iter = max_iter
    prefix_name = Path(solver.snapshot_prefix).name if solver.snapshot_prefix else "finetune"
    solver.snapshot_prefix = f"{SNAPSHOT_DIR}/{prefix_name or 'finetune'}"
    (out / SNAPSHOT_DIR).mkdir(exist_ok=True)
    write_atomic(out / RUN_SOLVER, solver_text(
        solver, f"Written by caffe_tucker finetune from solver.prototxt (max_iter "
        f"{solver.max_iter}, snapshots under {SNAPSHOT_DIR}/); rewritten on every run."), force=True)

    args = ["train", "--solver", RUN_SOLVER]
    start = 0
    previous: dict[int, dict] = {}
    if resume is not None:
        args += ["--snapshot", command.path_for_caffe(resume, out)]
        m = re.search(r"_iter_(\d+)\.solverstate(?:\.h5)?$", resume.name)
        start = int(m.group(1)) if m else 0
        previous = {k: v for k, v in read_csv(out / "finetune.csv").items() if k <= start}
    else:
        args += ["--weights", "weights.caffemodel"]
    if gpu:
        args += ["--gpu", str(gpu)]
    argv = command.argv_in(out.resolve(), args)
    shown = shlex.join(argv)

    result = FinetuneResult(out_dir=out, command=argv, start_iteration=start,
                            max_iter=solver.max_iter)
    state = TrainLog(previous)
    log_path = out / "finetune.log"
    t0 = time.monotonic()
    try:
        # glog to stderr only: no caffe.INFO files piling up in (the chroot's) /tmp
        proc = spawn(argv, cwd=out, env=child_env(GLOG_logtostderr="1"),
                     stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise CaffeTuckerError(f"cannot run the caffe command '{shown}': "
                               f"{spawn_failure(exc, argv)}; hint: pass --caffe CMD or set "
                               f"{CAFFE_ENV_VAR}") from None
    interrupted = False
    bar = Progress(solver.max_iter, "finetune")
    bar.enabled = bar.enabled and bool(progress)
    bar.done = start
    with open(log_path, "w", encoding="utf-8") as log, bar:

        def handle(line: str) -> None:  # on the reader's thread
            log.write(line + "\n")
            state.feed(line)
            if state.last_iter is not None and state.last_iter > bar.done:
                note = []
                if state.last_loss is not None:
                    note.append(f"loss {state.last_loss:.4g}")
                if state.last_accuracy is not None:
                    note.append(f"test acc {state.last_accuracy:.4f}")
                bar.update(state.last_iter - bar.done, ", ".join(note))

        reader = LineReader(proc.stdout, LOG_TAIL_LINES, handle, name="caffe-train-log")
        try:
            proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            stop(proc)
        finally:
            if proc.poll() is None:
                kill_group(proc)
                proc.wait()
            reader.join(30)
            log.flush()
            result.seconds = time.monotonic() - t0
            rows = state.sorted_rows()
            result.rows = rows
            result.log = log_path
            if rows:
                result.csv = write_atomic(out / "finetune.csv", csv_text(rows), force=True)
                result.png = write_atomic(out / "finetune.png",
                                          finetune_png(rows, state.accuracy_name), force=True)

    result.snapshots = [command.host_path(p, out) for p in state.snapshots]
    result.iterations = state.last_iter if state.last_iter is not None else start
    result.done = state.done
    result.accuracy_name = state.accuracy_name
    losses = [r["loss"] for r in result.rows if r["loss"] is not None]
    accs = [r["test_accuracy"] for r in result.rows if r["test_accuracy"] is not None]
    result.final_loss = losses[-1] if losses else None
    result.final_accuracy = accs[-1] if accs else None
    if interrupted:
        raise KeyboardInterrupt
    if reader.error is not None:
        raise CaffeTuckerError(f"cannot follow the caffe log into {log_path}: "
                               f"{reader.error}") from reader.error
    if proc.returncode != 0:
        reason = one_line(caffe_reason(reader.lines(), where=""), 600)
        raise CaffeTuckerError(f"caffe failed ({describe_status(proc.returncode)}): {shown}: "
                               f"{reason}; see {log_path}")
    final = next((p for p in reversed(result.snapshots)
                  if p.name.endswith((".caffemodel", ".caffemodel.h5"))), None)
    if final is not None and final.is_file():
        name = "finetuned.caffemodel" + (".h5" if final.name.endswith(".h5") else "")
        result.caffemodel = write_atomic(out / name, _chunks(final), force=True)
    return result


def _chunks(path: Path, size: int = 1 << 22):
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk
