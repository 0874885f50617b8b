"""Stage 7, fine-tune: run ``caffe train`` on a ``convert`` output directory and follow its log.

:func:`finetune` runs::

    <caffe_cmd> train --solver solver_run.prototxt --weights weights.caffemodel [--gpu all]

(``--snapshot FILE.solverstate`` instead of ``--weights`` to resume) as a subprocess whose working
directory is the output directory.  ``solver_run.prototxt`` is a copy of the user's
``solver.prototxt`` (never modified) with ``max_iter`` overridden if asked and ``snapshot_prefix``
moved under ``snapshots/``.  Caffe's log (glog, on stderr) is parsed as it streams into a progress
bar and a temporary file.  When Caffe ends, the run's products are written as one set:
``finetune.log`` (the whole log), ``finetune.csv`` and ``finetune.png`` (loss and test accuracy
against iteration) and ``finetuned.caffemodel`` (a copy of the last snapshot).  A run that fails
leaves the earlier set as it was and keeps its own log as ``finetune.failed.log``; the set of an
earlier run is replaced only with ``force``, or by a run that resumes it.

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

import os
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
from caffe_tucker.errors import CaffeTuckerError, InputFileError, OutputExistsError
from caffe_tucker.io.fsutil import check_writable, stage_file, write_atomic
from caffe_tucker.io.read import read_solver
from caffe_tucker.report.plots import png_bytes, pyplot
from caffe_tucker.report.progress import Progress

__all__ = ["FinetuneResult", "FinetuneInterrupted", "finetune", "finetune_png", "caffe_argv",
           "parse_log_line", "CAFFE_ENV_VAR", "PRODUCTS", "FAILED_LOG"]

CAFFE_ENV_VAR = "CAFFE_TUCKER_CAFFE"
SNAPSHOT_DIR = "snapshots"
RUN_SOLVER = "solver_run.prototxt"
LOG_TAIL_LINES = 200
LOG = "finetune.log"
TUNED = "finetuned.caffemodel"
#: The outputs of one run, written as a set (see :func:`finetune`).
PRODUCTS = (LOG, "finetune.csv", "finetune.png", TUNED, TUNED + ".h5")
#: The log of the last run that failed (the earlier set is then left as it was).
FAILED_LOG = "finetune.failed.log"
_ITER = re.compile(r"_iter_(\d+)\.solverstate(?:\.h5)?$")


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
# The products of one run, written as a set

def _stage(out: Path, name: str, chunks) -> Path:
    """Write ``chunks`` (bytes or str) to a hidden temporary file in ``out``, for :func:`_commit`."""
    return stage_file(out / name, chunks)


def _discard(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _commit(out: Path, staged: dict[str, Path]) -> None:
    """Move the staged files into place, and remove the products of an earlier run that this run
    did not make, so that the directory holds one run's set, never a mix."""
    for name, tmp in staged.items():
        os.replace(tmp, out / name)
    for name in PRODUCTS:
        if name not in staged:
            _discard(out / name)


def _write_set(out: Path, log_tmp: Path, state: TrainLog, caffemodel: Path | None) -> dict:
    """Stage and commit the set of a run whose log is ``log_tmp``: log, CSV and plot (when the
    log has rows) and ``finetuned.caffemodel`` (a copy of ``caffemodel``, the last snapshot)."""
    staged: dict[str, Path] = {}
    try:
        rows = state.sorted_rows()
        if rows:
            staged["finetune.csv"] = _stage(out, "finetune.csv", csv_text(rows))
            staged["finetune.png"] = _stage(out, "finetune.png",
                                            finetune_png(rows, state.accuracy_name))
        if caffemodel is not None and caffemodel.is_file():
            name = TUNED + (".h5" if caffemodel.name.endswith(".h5") else "")
            staged[name] = _stage(out, name, _chunks(caffemodel))
        staged[LOG] = log_tmp
        _commit(out, staged)
    except BaseException:
        _discard(*(p for n, p in staged.items() if n != LOG))
        raise
    return {name: out / name for name in staged}


def _last_solverstate(out: Path, command: CaffeCommand, state: TrainLog) -> tuple[Path | None, bool]:
    """The solver state Caffe last snapshotted in this run (from its log), else the one of the
    highest iteration in ``out/snapshots``; and whether it is this run's."""
    for printed in reversed(state.snapshots):
        path = command.host_path(printed, out)
        if path.name.endswith((".solverstate", ".solverstate.h5")) and path.is_file():
            return path, True

    def iteration(p: Path) -> int:
        m = _ITER.search(p.name)
        return int(m.group(1)) if m else -1

    found = sorted((out / SNAPSHOT_DIR).glob("*.solverstate*"), key=iteration)
    return (found[-1] if found else None), False


def _interrupted(out: Path, result: FinetuneResult, snapshot: Path | None, this_run: bool,
                 ran: bool, wrote: bool, max_iter, gpu) -> str:
    """The message of an interrupted run: where it stopped, its last snapshot, how to resume."""
    where = (f"Caffe stopped at iteration {result.iterations} of {result.max_iter}" if ran
             else "Caffe stopped before its first iteration")
    kept = (f"; this run's log, CSV, plot and finetuned.caffemodel are in {out}" if wrote
            else f"; its log is {out / FAILED_LOG}, the earlier outputs in {out} are untouched")
    if snapshot is None:
        return f"{where}, with no snapshot to resume from{kept}; hint: run finetune again"
    flags = "".join(f" {k} {shlex.quote(str(v))}" for k, v in
                    (("--max-iter", max_iter), ("--gpu", gpu)) if v)
    earlier = "" if this_run else " (from an earlier run)"
    resume = shlex.join(["caffe-tucker", "finetune", str(out), "--resume", str(snapshot)])
    return (f"{where}; Caffe's last snapshot{earlier} is {snapshot}{kept}; hint: continue with "
            f"'{resume}{flags}' (and the same --caffe)")


class FinetuneInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt (Ctrl-C, or SIGTERM made one) stopped a fine-tuning run; the message
    says where Caffe's last snapshot is and how to resume from it.

    Attributes
    ----------
    result : FinetuneResult
        What the run did up to the interrupt.
    snapshot : Path or None
        The solver state to ``--resume`` from.
    """

    def __init__(self, message: str, result: FinetuneResult, snapshot: Path | None):
        super().__init__(message)
        self.result = result
        self.snapshot = snapshot


# ---------------------------------------------------------------------------------------------
# The run

def _prepare(out: Path, resume, max_iter, force: bool):
    """Check the inputs and the outputs before anything runs; returns the resume state path."""
    if not out.is_dir():
        what = "it is a file" if out.exists() else "no such directory"
        raise InputFileError(f"{out}: not a convert output directory ({what}); hint: pass the "
                             "output directory of 'convert'")
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
    existing = [name for name in PRODUCTS if (out / name).exists()]
    if existing and resume is None and not force:
        raise OutputExistsError(f"{out / existing[0]}: already exists (an earlier run's "
                                f"{', '.join(existing)}); hint: pass --force to replace that "
                                "run's outputs, or --resume one of its snapshots to continue it")
    check_writable(out / LOG)
    return resume


def finetune(out_dir, caffe_cmd="caffe", gpu=None, max_iter=None, resume=None,
             progress=True, force: bool = False) -> FinetuneResult:
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
        A resumed run continues the earlier one, so it replaces its outputs without ``force``.
    progress : bool
        Draw a progress bar on stderr (when it is a terminal).
    force : bool
        Replace the outputs of an earlier run (:data:`PRODUCTS`); without it, and without
        ``resume``, any of them existing is refused before Caffe runs.

    The run's products (:data:`PRODUCTS`) are written as a set when Caffe ends: its log streams
    to a temporary file, which is moved into place together with the CSV, the plot and
    ``finetuned.caffemodel``; products of an earlier run that this one did not make are removed.
    A failed run leaves the earlier set untouched and keeps its own log as
    :data:`FAILED_LOG`.

    Raises
    ------
    CaffeTuckerError
        On missing inputs, existing outputs (without ``force`` or ``resume``), an output directory
        that cannot be written, when Caffe exits non-zero (one line: the command, Caffe's last
        error line and where its log is), or when the command ran no iteration and wrote no
        snapshot (a ``--caffe`` that is not Caffe).
    FinetuneInterrupted
        A KeyboardInterrupt (Ctrl-C, or SIGTERM, which the command line turns into one) stops Caffe
        (:func:`caffe_tucker.caffe.process.stop`: SIGINT, so that it snapshots, then SIGTERM and
        SIGKILL); the run's set is written as for a finished run, and the message says where the
        last snapshot is and how to ``--resume`` from it.
    """
    out = Path(out_dir)
    resume = _prepare(out, resume, max_iter, force)
    command = _command(caffe_cmd, out)

    solver = read_solver(out / "solver.prototxt")
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
        m = _ITER.search(resume.name)
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
    log_tmp = _stage(out, LOG, b"")
    t0 = time.monotonic()
    try:
        # glog to stderr only: no caffe.INFO files piling up in (the chroot's) /tmp
        proc = spawn(argv, cwd=out, env=child_env(GLOG_logtostderr="1"),
                     stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    except OSError as exc:
        _discard(log_tmp)
        raise CaffeTuckerError(f"cannot run the caffe command '{shown}': "
                               f"{spawn_failure(exc, argv)}; hint: pass --caffe CMD or set "
                               f"{CAFFE_ENV_VAR}") from None
    interrupted = False
    bar = Progress(solver.max_iter, "finetune")
    bar.enabled = bar.enabled and bool(progress)
    bar.done = start
    with open(log_tmp, "w", encoding="utf-8") as log, bar:

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

    result.rows = state.sorted_rows()
    result.snapshots = [command.host_path(p, out) for p in state.snapshots]
    result.iterations = state.last_iter if state.last_iter is not None else start
    result.done = state.done
    result.accuracy_name = state.accuracy_name
    losses = [r["loss"] for r in result.rows if r["loss"] is not None]
    accs = [r["test_accuracy"] for r in result.rows if r["test_accuracy"] is not None]
    result.final_loss = losses[-1] if losses else None
    result.final_accuracy = accs[-1] if accs else None
    ran = state.last_iter is not None or bool(state.snapshots) or state.done
    final = next((p for p in reversed(result.snapshots)
                  if p.name.endswith((".caffemodel", ".caffemodel.h5"))), None)
    earlier = [name for name in PRODUCTS if (out / name).exists()]
    untouched = (f"; the earlier {', '.join(earlier)} are untouched" if earlier else "")

    def failed(message: str, hint: str = "") -> CaffeTuckerError:
        os.replace(log_tmp, out / FAILED_LOG)
        return CaffeTuckerError(f"{message}; its log is {out / FAILED_LOG}{untouched}"
                                + (f"; hint: {hint}" if hint else ""))

    if interrupted:
        wrote = ran
        if wrote:
            _use(result, _write_set(out, log_tmp, state, final))
        else:
            os.replace(log_tmp, out / FAILED_LOG)
        snapshot, this_run = _last_solverstate(out, command, state)
        raise FinetuneInterrupted(_interrupted(out, result, snapshot, this_run,
                                               state.last_iter is not None, wrote, max_iter, gpu),
                                  result, snapshot)
    if reader.error is not None:
        raise failed(f"cannot follow the caffe log: {reader.error}") from reader.error
    if proc.returncode != 0:
        reason = one_line(caffe_reason(reader.lines(), where=""), 600)
        raise failed(f"caffe failed ({describe_status(proc.returncode)}): {shown}: {reason}")
    if not ran:
        raise failed(f"the caffe command '{shown}' exited 0 but ran no iteration and wrote no "
                     "snapshot", "--caffe must run Caffe's caffe binary, e.g. 'caffe' or "
                     "'chroot /opt/caffe-root caffe'")
    _use(result, _write_set(out, log_tmp, state, final))
    return result


def _use(result: FinetuneResult, written: dict) -> None:
    """Record the paths of the set :func:`_write_set` wrote in ``result``."""
    result.log = written.get(LOG)
    result.csv = written.get("finetune.csv")
    result.png = written.get("finetune.png")
    result.caffemodel = written.get(TUNED) or written.get(TUNED + ".h5")


def _chunks(path: Path, size: int = 1 << 22):
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk
