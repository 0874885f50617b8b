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

Nothing here prints; the progress bar is :class:`caffe_tucker.report.progress.Progress`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from caffe_tucker.errors import CaffeTuckerError, InputFileError
from caffe_tucker.io.fsutil import write_atomic
from caffe_tucker.report.progress import Progress

__all__ = ["FinetuneResult", "finetune", "caffe_argv", "parse_log_line", "CAFFE_ENV_VAR"]

CAFFE_ENV_VAR = "CAFFE_TUCKER_CAFFE"
SNAPSHOT_DIR = "snapshots"
RUN_SOLVER = "solver_run.prototxt"
INTERRUPT_GRACE_S = 120.0

_NUM = r"([-+]?(?:nan|inf|[0-9.]+(?:[eE][-+]?[0-9]+)?))"
_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM)
_LR = re.compile(r"\] Iteration (\d+), lr = " + _NUM)
_TESTING = re.compile(r"\] Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUT = re.compile(r"\]\s+Test net output #(\d+): (\S+) = " + _NUM)
_SNAPSHOT = re.compile(r"\] Snapshotting to (?:binary proto|HDF5) file (\S+)")
_DONE = re.compile(r"\] Optimization Done\.")
_GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]]+)\] ?(.*)$")


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

def _expand(arg: str, cwd: Path) -> str:
    arg = arg.replace("${PWD}", str(cwd)).replace("$PWD", str(cwd))
    return os.path.expandvars(arg)


def _chroot_root(argv: list[str]) -> tuple[int, Path] | None:
    """``(index, ROOT)`` when ``argv`` starts with ``chroot [--opt=value ...] ROOT``."""
    if not argv or os.path.basename(argv[0]) != "chroot":
        return None
    for i in range(1, len(argv)):
        if not argv[i].startswith("-"):
            return i, Path(argv[i])
    return None


def _inside(path: Path, root: Path) -> str | None:
    """``path`` as seen inside the chroot ``root``, or None when it lies outside."""
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return None
    return "/" + rel.as_posix() if str(rel) != "." else "/"


def caffe_argv(caffe_cmd, out_dir, args) -> list[str]:
    """The full argv that runs ``caffe <args>`` with its working directory ``out_dir``.

    For a ``chroot ROOT ...`` prefix the out dir must be under ROOT, and the command changes into
    it inside the chroot first; otherwise the subprocess is simply started in ``out_dir``.
    """
    out = Path(out_dir).resolve()
    if isinstance(caffe_cmd, str):
        try:
            prefix = shlex.split(caffe_cmd)
        except ValueError as exc:
            raise CaffeTuckerError(f"cannot split the caffe command {caffe_cmd!r}: {exc}; "
                                   "hint: check its quoting") from None
    else:
        prefix = [str(a) for a in caffe_cmd]
    if not prefix:
        raise CaffeTuckerError(f"empty caffe command; hint: pass --caffe CMD or set {CAFFE_ENV_VAR}")
    prefix = [_expand(a, out) for a in prefix]
    chroot = _chroot_root(prefix)
    if chroot is None:
        return prefix + list(args)
    i, root = chroot
    inner = _inside(out, root)
    if inner is None:
        raise CaffeTuckerError(
            f"{out}: the output directory is outside the chroot {root} that the caffe command "
            f"'{' '.join(prefix)}' runs in, so Caffe cannot see it; hint: put the directory (and "
            f"the LMDBs) under {root}")
    return (prefix[:i + 1] + ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", inner]
            + prefix[i + 1:] + list(args))


def _path_for_caffe(path: Path, out: Path, caffe_cmd) -> str:
    """A host path as Caffe (started in ``out``, maybe in a chroot) must be given it."""
    real = Path(os.path.realpath(path))
    try:
        return real.relative_to(os.path.realpath(out)).as_posix()
    except ValueError:
        pass
    prefix = shlex.split(caffe_cmd) if isinstance(caffe_cmd, str) else list(caffe_cmd)
    chroot = _chroot_root(prefix)
    if chroot is not None:
        inner = _inside(real, chroot[1])
        if inner is not None:
            return inner
    return str(real)


# ---------------------------------------------------------------------------------------------
# The log

def parse_log_line(line: str) -> tuple | None:
    """One Caffe log line as an event, or None:

    ``("loss", it, value)``, ``("lr", it, value)``, ``("testing", it, net)``,
    ``("test_output", index, name, value)``, ``("snapshot", path)``, ``("done",)``.
    """
    if "] " not in line:
        return None
    if m := _LOSS.search(line):
        return ("loss", int(m.group(1)), float(m.group(2)))
    if m := _LR.search(line):
        return ("lr", int(m.group(1)), float(m.group(2)))
    if m := _TESTING.search(line):
        return ("testing", int(m.group(1)), int(m.group(2)))
    if m := _TEST_OUT.search(line):
        return ("test_output", int(m.group(1)), m.group(2), float(m.group(3)))
    if m := _SNAPSHOT.search(line):
        return ("snapshot", m.group(1))
    if _DONE.search(line):
        return ("done",)
    return None


def _is_accuracy(name: str) -> int:
    """A rank for which test output is "the" accuracy (lower is better; 99: not one)."""
    low = name.lower()
    if "acc" not in low:
        return 99
    if re.search(r"top[-_]?(5|[2-9]|\d\d)", low):
        return 50
    return 0 if re.search(r"top[-_]?1\b|top[-_]?1$", low) or low == "accuracy" else 1


class _LogState:
    def __init__(self, rows: dict[int, dict]):
        self.rows = rows
        self.testing: tuple[int, int] | None = None  # (iteration, net) of the test being printed
        self.snapshots: list[str] = []
        self.done = False
        self.last_iter: int | None = None
        self.accuracy_name: str | None = None
        self.last_loss: float | None = None
        self.last_accuracy: float | None = None

    def row(self, it: int) -> dict:
        return self.rows.setdefault(it, {"iteration": it, "lr": None, "loss": None,
                                         "test_accuracy": None})

    def feed(self, line: str) -> None:
        event = parse_log_line(line)
        if event is None:
            return
        kind = event[0]
        if kind == "loss":
            self.row(event[1])["loss"] = event[2]
            self.last_loss = event[2]
            self.last_iter = event[1]
            self.testing = None
        elif kind == "lr":
            self.row(event[1])["lr"] = event[2]
            self.last_iter = event[1]
            self.testing = None
        elif kind == "testing":
            self.testing = (event[1], event[2])
            self.last_iter = event[1]
        elif kind == "test_output":
            if self.testing is None or self.testing[1] != 0:
                return
            name, value = event[2], event[3]
            rank = _is_accuracy(name)
            current = 99 if self.accuracy_name is None else _is_accuracy(self.accuracy_name)
            if rank < current:
                self.accuracy_name = name
            if name == self.accuracy_name:
                self.row(self.testing[0])["test_accuracy"] = value
                self.last_accuracy = value
        elif kind == "snapshot":
            self.snapshots.append(event[1])
        elif kind == "done":
            self.done = True


def _failure_line(lines: list[str]) -> str:
    """The last fatal/error line Caffe printed, else the last meaningful line."""
    for line in reversed(lines):
        m = _GLOG.match(line)
        if m and m.group(1) in "EF":
            return f"{m.group(3).strip()} [{m.group(2)}]"
        if "Check failed" in line or line.startswith("[libprotobuf ERROR") \
                or line.startswith("[libprotobuf FATAL"):
            return line.strip()
    for line in reversed(lines):
        s = line.strip()
        if s and not s.startswith(("***", "@ ", "@  ", "PC: @")) and not s.startswith("@"):
            return s
    return "it printed nothing"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return repr(v) if isinstance(v, float) else str(v)


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["iteration", "lr", "loss", "test_accuracy"])
    for r in rows:
        w.writerow([r["iteration"], _fmt(r["lr"]), _fmt(r["loss"]), _fmt(r["test_accuracy"])])
    return buf.getvalue()


def _read_csv(path: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                it = int(rec["iteration"])
                rows[it] = {"iteration": it, **{k: float(rec[k]) if rec.get(k) else None
                                                for k in ("lr", "loss", "test_accuracy")}}
    except (OSError, KeyError, ValueError):
        return {}
    return rows


def finetune_png(rows: list[dict], accuracy_name: str | None = None) -> bytes:
    """Training loss and test accuracy against iteration, two panels."""
    from caffe_tucker.report.plots import png_bytes, pyplot

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

def _stop(proc: subprocess.Popen, drain) -> None:
    """Ask Caffe to stop and snapshot (SIGINT), wait for it while draining its output, then
    terminate and kill if it does not end."""
    for sig, wait in ((signal.SIGINT, INTERRUPT_GRACE_S), (signal.SIGTERM, 10.0),
                      (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                drain(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
        except KeyboardInterrupt:
            continue  # a second Ctrl-C: move on to the harsher signal


def finetune(out_dir, caffe_cmd="caffe", gpu=None, max_iter=None, resume=None,
             progress=True) -> FinetuneResult:
    """Fine-tune the compressed net of a ``convert`` output directory in real Caffe.

    Parameters
    ----------
    out_dir : path
        Holds ``solver.prototxt``, ``train_val.prototxt`` and ``weights.caffemodel``.
    caffe_cmd : str or list
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
        error line).  A KeyboardInterrupt stops Caffe with SIGINT (it snapshots) and is re-raised.
    """
    from caffe_tucker.io.read import read_solver
    from caffe_tucker.compress.finetune_files import solver_text

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
        args += ["--snapshot", _path_for_caffe(resume, out, caffe_cmd)]
        m = re.search(r"_iter_(\d+)\.solverstate(?:\.h5)?$", resume.name)
        start = int(m.group(1)) if m else 0
        previous = {k: v for k, v in _read_csv(out / "finetune.csv").items() if k <= start}
    else:
        args += ["--weights", "weights.caffemodel"]
    if gpu:
        args += ["--gpu", str(gpu)]
    argv = caffe_argv(caffe_cmd, out, args)
    shown = " ".join(shlex.quote(a) for a in argv)

    result = FinetuneResult(out_dir=out, command=argv, start_iteration=start,
                            max_iter=solver.max_iter)
    state = _LogState(dict(previous))
    tail: list[str] = []
    log_path = out / "finetune.log"
    t0 = time.monotonic()
    try:
        # glog to stderr only: no caffe.INFO files piling up in (the chroot's) /tmp
        env = {**os.environ, "GLOG_logtostderr": os.environ.get("GLOG_logtostderr", "1")}
        proc = subprocess.Popen(argv, cwd=out, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env)
    except OSError as exc:
        raise CaffeTuckerError(f"cannot run the caffe command '{shown}': {exc.strerror or exc}; "
                               f"hint: pass --caffe CMD or set {CAFFE_ENV_VAR}") from None
    interrupted = False
    bar = Progress(solver.max_iter, "finetune")
    bar.enabled = bar.enabled and bool(progress)
    bar.done = start
    with open(log_path, "w", encoding="utf-8") as log, bar:

        def handle(raw: bytes) -> None:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            log.write(line + "\n")
            tail.append(line)
            del tail[:-200]
            state.feed(line)
            if state.last_iter is not None and state.last_iter > bar.done:
                note = []
                if state.last_loss is not None:
                    note.append(f"loss {state.last_loss:.4g}")
                if state.last_accuracy is not None:
                    note.append(f"test acc {state.last_accuracy:.4f}")
                bar.update(state.last_iter - bar.done, ", ".join(note))

        def drain(timeout: float = 1.0) -> None:
            import select

            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            if ready:
                raw = proc.stdout.readline()
                if raw:
                    handle(raw)

        try:
            for raw in iter(proc.stdout.readline, b""):
                handle(raw)
            proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            _stop(proc, drain)
            for raw in iter(proc.stdout.readline, b""):
                handle(raw)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            log.flush()
            result.seconds = time.monotonic() - t0
            rows = [state.rows[k] for k in sorted(state.rows)]
            result.rows = rows
            result.log = log_path
            if rows:
                result.csv = write_atomic(out / "finetune.csv", _csv_text(rows), force=True)
                result.png = write_atomic(out / "finetune.png",
                                          finetune_png(rows, state.accuracy_name), force=True)

    result.snapshots = [_snapshot_on_host(p, out, caffe_cmd) for p in state.snapshots]
    result.iterations = state.last_iter if state.last_iter is not None else start
    result.done = state.done
    result.accuracy_name = state.accuracy_name
    losses = [r["loss"] for r in result.rows if r["loss"] is not None]
    accs = [r["test_accuracy"] for r in result.rows if r["test_accuracy"] is not None]
    result.final_loss = losses[-1] if losses else None
    result.final_accuracy = accs[-1] if accs else None
    if interrupted:
        raise KeyboardInterrupt
    if proc.returncode != 0:
        status = (f"exit status {proc.returncode}" if proc.returncode > 0
                  else f"killed by signal {-proc.returncode}")
        raise CaffeTuckerError(f"caffe failed ({status}): {shown}: {_failure_line(tail)}; "
                               f"see {log_path}")
    final = next((p for p in reversed(result.snapshots)
                  if p.name.endswith((".caffemodel", ".caffemodel.h5"))), None)
    if final is not None and final.is_file():
        name = "finetuned.caffemodel" + (".h5" if final.name.endswith(".h5") else "")
        result.caffemodel = write_atomic(out / name, _chunks(final), force=True)
    return result


def _snapshot_on_host(path: str, out: Path, caffe_cmd) -> Path:
    p = Path(path)
    if not p.is_absolute():
        return out / p
    prefix = shlex.split(caffe_cmd) if isinstance(caffe_cmd, str) else list(caffe_cmd)
    chroot = _chroot_root(prefix)
    if chroot is not None:
        return chroot[1] / p.relative_to("/")
    return p


def _chunks(path: Path, size: int = 1 << 22):
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk
