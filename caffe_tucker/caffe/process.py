"""The one place that runs Caffe processes: the ``caffe`` binary and the pycaffe worker alike.

Both ways of driving Caffe -- :mod:`caffe_tucker.caffe.pycaffe` (a Python with pycaffe, talked to
over pipes) and :mod:`caffe_tucker.caffe.finetune` (``caffe train``) -- start it from a *command
prefix* the user gives, and share everything about such a process:

- :class:`CaffeCommand`: the prefix, split once like a shell would, optionally with ``$PWD`` and
  ``$VARS`` expanded, and recognised as plain, ``chroot [opts] ROOT ...`` or ``docker run ...``;
  for a chroot it translates host paths to paths as Caffe sees them and back, and builds the argv
  that starts Caffe in a given directory inside the chroot;
- :func:`child_env` and :func:`spawn`: the environment and the start, in a session (and process
  group) of its own, so that the whole of it -- ``conda run``, ``sudo``, ``docker run`` and what
  they start -- can be signalled at once;
- :class:`LineReader`: the child's output read on a thread into a bounded tail, so it never
  blocks on a full pipe;
- :func:`caffe_messages`, :func:`caffe_reason`, :func:`describe_status`, :func:`one_line`: what
  Caffe said (glog ``Check failed: ...``, protobuf parse errors) and how it ended, in one line;
- :class:`Watchdog`, :func:`stop`, :func:`kill_group`, :func:`signal_group`: timeouts, and the
  escalation SIGINT (Caffe snapshots and stops) -> SIGTERM -> SIGKILL, to the whole group.

Nothing here prints or raises Caffe-specific errors beyond :class:`CaffeCommandError`; the two
drivers word their own messages from these parts.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from caffe_tucker.errors import CaffeTuckerError

__all__ = ["CaffeCommand", "CaffeCommandError", "ESCALATION", "INTERRUPT_GRACE_S", "LineReader",
           "Watchdog", "caffe_messages", "caffe_reason", "child_env", "describe_status",
           "kill_group", "one_line", "signal_group", "spawn", "spawn_failure", "stop",
           "terminating_signal"]

INTERRUPT_GRACE_S = 120.0
"""Seconds Caffe gets after SIGINT to snapshot and stop before it is sent SIGTERM."""

ESCALATION: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, INTERRUPT_GRACE_S), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))
"""The default ``(signal, seconds to wait for the exit)`` steps of :func:`stop`."""

_CHROOT_VALUE_OPTIONS = ("--userspec", "--groups")  # GNU chroot options that take a value
_CHDIR_THEN_EXEC = 'cd "$1" && shift && exec "$@"'


class CaffeCommandError(CaffeTuckerError):
    """A command prefix that cannot be used: bad quoting, empty, or a directory it cannot see."""


# --------------------------------------------------------------------------------------------
# The command prefix

def _expand(word: str, pwd: Path) -> str:
    word = word.replace("${PWD}", str(pwd)).replace("$PWD", str(pwd))
    return os.path.expandvars(word)


def _chroot_root_index(argv: Sequence[str]) -> int | None:
    """The index of ROOT when ``argv`` is ``chroot [options] ROOT ...``, else None."""
    if not argv or os.path.basename(argv[0]) != "chroot":
        return None
    i = 1
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return i + 1 if i + 1 < len(argv) else None
        if word in _CHROOT_VALUE_OPTIONS:
            i += 2
            continue
        if not word.startswith("-"):
            return i
        i += 1
    return None


def _is_docker_run(argv: Sequence[str]) -> bool:
    return (len(argv) >= 2 and os.path.basename(argv[0]) in ("docker", "podman")
            and argv[1] == "run")


@dataclass(frozen=True)
class CaffeCommand:
    """A command prefix that runs Caffe, split once.

    Build one with :meth:`parse`.  ``argv + args`` runs Caffe; for a chroot, use :meth:`argv_in`
    to start it in a directory as seen inside the chroot.

    Attributes
    ----------
    argv : tuple of str
        The prefix, e.g. ``("chroot", "/opt/caffe-root", "caffe")``.
    kind : str
        ``"chroot"`` (``chroot [options] ROOT ...``), ``"docker"`` (``docker run ...`` or
        ``podman run ...``) or ``"plain"``.
    root : Path or None
        The chroot's ROOT, for ``kind == "chroot"``.
    root_index : int or None
        Where ROOT stands in ``argv``.
    """

    argv: tuple[str, ...]
    kind: str = "plain"
    root: Path | None = None
    root_index: int | None = None

    @classmethod
    def parse(cls, command, *, pwd=None, what: str = "the caffe command",
              hint: str = "") -> "CaffeCommand":
        """Split and classify a command prefix.

        Parameters
        ----------
        command : str, path or sequence of str
            A string is split like a shell would (``shlex``); a path is one word; a sequence is
            taken word by word.
        pwd : path, optional
            When given, ``$PWD`` and ``${PWD}`` in every word become this directory and other
            ``$VARS`` are expanded from the environment (as a shell would for a command typed
            in ``pwd``); otherwise the words are kept as they are.
        what : str
            How error messages name the command.
        hint : str
            What to do about an empty command, for its message.

        Raises
        ------
        CaffeCommandError
            When the string cannot be split (an unclosed quote) or gives no words.
        """
        if isinstance(command, os.PathLike):
            words = [os.fspath(command)]
        elif isinstance(command, str):
            try:
                words = shlex.split(command)
            except ValueError as exc:
                raise CaffeCommandError(f"cannot split {what} {command!r}: {exc}; hint: check "
                                        "its quoting") from None
        else:
            words = [os.fspath(w) if isinstance(w, os.PathLike) else str(w) for w in command]
        if not words:
            raise CaffeCommandError(f"{what} is empty" + (f"; hint: {hint}" if hint else ""))
        if pwd is not None:
            here = Path(pwd)
            words = [_expand(w, here) for w in words]
        i = _chroot_root_index(words)
        if i is not None:
            return cls(tuple(words), "chroot", Path(words[i]), i)
        return cls(tuple(words), "docker" if _is_docker_run(words) else "plain")

    def __str__(self) -> str:
        return shlex.join(self.argv)

    def inside(self, path) -> str | None:
        """``path`` (a host path) as Caffe sees it inside the chroot, or None when it lies outside
        ROOT or the command is not a chroot."""
        if self.root is None:
            return None
        try:
            rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(self.root))
        except ValueError:
            return None
        return "/" if str(rel) == "." else "/" + rel.as_posix()

    def argv_in(self, cwd, args: Iterable[str] = ()) -> list[str]:
        """The argv that runs ``prefix + args`` with the working directory ``cwd``.

        A plain or docker command is simply started in ``cwd`` (see :func:`spawn`); for a chroot
        the command first changes into ``cwd`` as seen inside it::

            chroot ROOT sh -c 'cd "$1" && shift && exec "$@"' sh /INSIDE caffe ARGS...

        Raises
        ------
        CaffeCommandError
            When ``cwd`` lies outside the chroot, so Caffe could not see it.
        """
        if self.root_index is None:
            return [*self.argv, *args]
        inner = self.inside(cwd)
        if inner is None:
            raise CaffeCommandError(
                f"{Path(cwd).resolve()}: the directory is outside the chroot {self.root} that "
                f"the caffe command '{self}' runs in, so Caffe cannot see it; hint: put the "
                f"directory (and the files Caffe reads, such as LMDBs) under {self.root}")
        i = self.root_index
        return [*self.argv[:i + 1], "sh", "-c", _CHDIR_THEN_EXEC, "sh", inner,
                *self.argv[i + 1:], *args]

    def path_for_caffe(self, path, cwd) -> str:
        """A host path as Caffe, started in ``cwd``, must be given it: relative to ``cwd`` when
        it lies there, else as seen inside the chroot, else the host's real path."""
        real = Path(os.path.realpath(path))
        try:
            return real.relative_to(os.path.realpath(cwd)).as_posix()
        except ValueError:
            pass
        inner = self.inside(real)
        return inner if inner is not None else str(real)

    def host_path(self, path, cwd) -> Path:
        """A path Caffe printed (relative to its working directory ``cwd``, or absolute inside
        the chroot) as a path on this machine."""
        p = Path(path)
        if not p.is_absolute():
            return Path(cwd) / p
        if self.root is not None:
            return self.root / p.relative_to("/")
        return p


# --------------------------------------------------------------------------------------------
# Starting a process

def child_env(env: Mapping[str, str] | None = None, **defaults: str) -> dict[str, str]:
    """The environment for a Caffe process: ``env`` (default: this process's), without
    ``PYTHONHOME`` (this interpreter's; it would break another Python, and Caffe's embedded one),
    with ``defaults`` for the variables it does not set."""
    out = dict(os.environ if env is None else env)
    out.pop("PYTHONHOME", None)
    for key, value in defaults.items():
        out.setdefault(key, value)
    return out


def spawn(argv: Sequence[str], *, cwd=None, env: Mapping[str, str] | None = None,
          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
          ) -> subprocess.Popen:
    """Start ``argv`` in a new session, hence a process group of its own (its pgid is its pid).

    Terminal signals (Ctrl-C) then reach only this process, which decides what Caffe gets
    (:func:`stop`), and :func:`signal_group` reaches whatever the command prefix started.
    ``OSError`` (e.g. ``FileNotFoundError``) propagates; :func:`spawn_failure` words it.
    """
    return subprocess.Popen(list(argv), cwd=cwd, env=None if env is None else dict(env),
                            stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True,
                            close_fds=True)


def spawn_failure(exc: OSError, argv: Sequence[str]) -> str:
    """Why :func:`spawn` failed, in a few words: ``'caffe' not found (No such file ...)``."""
    if isinstance(exc, FileNotFoundError) and argv:
        return f"{argv[0]!r} not found ({exc.strerror})"
    return str(exc.strerror or exc)


# --------------------------------------------------------------------------------------------
# Reading its output

class LineReader:
    """Read a child's output stream on a thread, line by line, keeping the last lines.

    The child never blocks on a full pipe, whatever the caller is doing.

    Parameters
    ----------
    stream : binary file
        The pipe (closed when it ends).
    keep : int
        How many of the last lines are kept (each cut at 4000 characters).
    on_line : callable, optional
        Called on the reader thread with every whole line (decoded, without its newline).  If it
        raises, the exception is kept in :attr:`error`, it is not called again, and the stream
        is still drained.
    name : str
        The thread's name.
    """

    MAX_LINE = 4000

    def __init__(self, stream, keep: int = 200, on_line: Callable[[str], None] | None = None,
                 name: str = "caffe-output"):
        self._lines: collections.deque = collections.deque(maxlen=max(int(keep), 1))
        self._count = 0
        self._lock = threading.Lock()
        self._on_line = on_line
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True, name=name)
        self._thread.start()

    def _run(self, stream):
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._lock:
                    self._lines.append(line if len(line) <= self.MAX_LINE
                                       else line[:self.MAX_LINE] + "...")
                    self._count += 1
                if self._on_line is not None:
                    try:
                        self._on_line(line)
                    except Exception as exc:  # noqa: BLE001 -- kept for the owner to raise
                        self.error = exc
                        self._on_line = None
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def mark(self) -> int:
        """How many lines have been read so far: pass it to :meth:`lines` later."""
        with self._lock:
            return self._count

    def lines(self, since: int = 0) -> list[str]:
        """The kept lines read after the :meth:`mark` ``since`` (as many as are kept)."""
        with self._lock:
            keep = min(len(self._lines), max(self._count - since, 0))
            return list(self._lines)[len(self._lines) - keep:]

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end of the stream; True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


# --------------------------------------------------------------------------------------------
# What Caffe said, and how it ended

_GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]]+)\] ?(.*)$")
_PROTOBUF = re.compile(r"^\[libprotobuf (?:ERROR|FATAL) ([^\]]+)\] ?(.*)$")
_NOISE = re.compile(r"^(\*\*\* Check failure stack trace: \*\*\*|\s*@\s+0x[0-9a-f]+|"
                    r"\*\*\* (Aborted|SIGABRT|SIGSEGV).*|PC: @.*|Aborted.*)", re.I)
_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception|Exit)\b.*:")
_MAX_MESSAGE = 1200


def one_line(text, limit: int = _MAX_MESSAGE) -> str:
    """``text`` on one line (its non-blank lines joined by `` | ``), cut at ``limit``."""
    line = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def caffe_messages(lines: Iterable[str]) -> list[str]:
    """Caffe's own error lines in its output, without repeats, in order.

    glog ERROR and FATAL lines (``Check failed: ...``) and protobuf parse errors become
    ``message [file:line]``; a ``Check failed`` line without glog's prefix is kept as it is.
    """
    found = []
    for line in lines:
        m = _GLOG.match(line)
        if m:
            if m.group(1) in "EF":
                found.append(f"{m.group(3).strip()} [{m.group(2)}]")
            continue
        m = _PROTOBUF.match(line)
        if m:
            found.append(f"{m.group(2).strip()} [{m.group(1)}]")
        elif "Check failed" in line:
            found.append(line.strip())
    return list(dict.fromkeys(found))


def caffe_reason(lines: Sequence[str], *, where: str = "on stderr") -> str:
    """What Caffe said about a failure, from its output lines.

    :func:`caffe_messages` joined by `` | ``; without any, the last Python exception line
    (``ValueError: ...``); else the meaningful lines (stack-trace noise dropped), the first and
    last of them when there are more than three; else ``it printed nothing {where}``.
    """
    found = caffe_messages(lines)
    if found:
        return " | ".join(found)
    meaningful = [ln.strip() for ln in lines if ln.strip() and not _NOISE.match(ln.strip())]
    if not meaningful:
        return f"it printed nothing {where}".rstrip()
    for line in reversed(meaningful):
        if _EXCEPTION.match(line):
            return line
    if len(meaningful) <= 3:
        return " | ".join(meaningful)
    return f"{meaningful[0]} | ... | {meaningful[-1]}"


def terminating_signal(code: int | None) -> signal.Signals | None:
    """The signal that ended a process with return code ``code``: ``-N`` (killed by it), or
    ``128 + N`` for SIGABRT, SIGSEGV and SIGKILL (a shell or ``chroot`` passing the death of
    its child on); None otherwise."""
    if code is None or code == 0:
        return None
    if code < 0:
        number = -code
    elif code - 128 in (signal.SIGABRT, signal.SIGSEGV, signal.SIGKILL):
        number = code - 128
    else:
        return None
    try:
        return signal.Signals(number)
    except ValueError:
        return None


def describe_status(code: int | None) -> str:
    """A return code in words: ``exit status 1``, ``killed by SIGKILL``, ``exit status 134,
    i.e. SIGABRT``, ``killed by signal 77``, ``still running`` (None)."""
    if code is None:
        return "still running"
    sig = terminating_signal(code)
    if code < 0:
        return f"killed by {sig.name}" if sig is not None else f"killed by signal {-code}"
    if sig is not None:
        return f"exit status {code}, i.e. {sig.name}"
    return f"exit status {code}"


# --------------------------------------------------------------------------------------------
# Signals, timeouts, stopping

def signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """Send ``sig`` to the process group of ``proc`` (started by :func:`spawn`), or to ``proc``
    alone when the group cannot be signalled.  False when ``proc`` has already ended."""
    if proc.poll() is not None:
        return False
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return False
    return True


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and whatever the command prefix started with it (conda run, sudo)."""
    signal_group(proc, signal.SIGKILL)


def stop(proc: subprocess.Popen,
         steps: Sequence[tuple[int, float]] = ESCALATION) -> int | None:
    """Stop ``proc``'s group, escalating: by default SIGINT (Caffe snapshots and stops), up to
    :data:`INTERRUPT_GRACE_S` seconds, then SIGTERM, then SIGKILL, 10 s each.

    A ``KeyboardInterrupt`` while waiting (a second Ctrl-C) moves on to the next signal.  Whoever
    reads the child's output must keep doing so meanwhile (e.g. a :class:`LineReader`), or a full
    pipe may hold it up.

    Returns
    -------
    int or None
        The return code, or None if the process outlived every step.
    """
    for sig, seconds in steps:
        if not signal_group(proc, sig):
            break
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue
        break
    return proc.poll()


class Watchdog:
    """Kill a process group (:func:`kill_group`) unless the ``with`` block ends in time.

    Parameters
    ----------
    proc : Popen
        Started by :func:`spawn`.
    seconds : float
        The time the block may take.

    Attributes
    ----------
    fired : bool
        Whether time ran out and the group was killed.

    Examples
    --------
    >>> with Watchdog(proc, 30) as watch:         # doctest: +SKIP
    ...     reply = proc.stdout.readline()        # returns b"" once the child is killed
    >>> watch.fired                               # doctest: +SKIP
    """

    def __init__(self, proc: subprocess.Popen, seconds: float):
        self.proc = proc
        self.seconds = float(seconds)
        self.fired = False
        self._timer: threading.Timer | None = None

    def _fire(self):
        self.fired = True
        kill_group(self.proc)

    def __enter__(self) -> "Watchdog":
        self.fired = False
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
