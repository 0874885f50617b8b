"""Drive real BVLC Caffe (pycaffe) in its own interpreter, as a subprocess.

The tool never imports caffe.  A :class:`CaffeRuntime` starts the Python that has pycaffe from a
command prefix -- ``chroot /opt/caffe-root python3``, ``docker run --rm -i caffe-tucker:cpu
python3``, ``conda run -n caffe python`` -- given explicitly or by ``$CAFFE_TUCKER_PYTHON``, runs
:mod:`caffe_tucker.caffe.worker` in it and talks to it over its stdin/stdout (the framing is
described in that module)::

    with CaffeRuntime() as caffe:
        print(caffe.hello()["caffe_version"])
        out = caffe.forward(prototxt_text, caffemodel_bytes, {"data": x})   # {"prob": array}
        timing = caffe.time(prototxt_text, caffemodel_bytes, batch=32, iterations=10)
        trained = caffe.train(solver_text, train_net_text, {"data": x, "label": y})
        with caffe.open_training(solver_text, train_net_text) as session:    # a custom loop
            for x, y in batches:
                result = session.step({"data": x, "label": y}, add_diffs={"conv1": d},
                                      masks={"conv1": keep}, fetch=["conv1"],
                                      fetch_diffs=["conv1"])

Every failure is a :class:`CaffeRuntimeError` with a one-line message that names the command:
no runtime configured, a command that does not exist, an interpreter without caffe, a worker that
Caffe aborted (the message carries glog's ``Check failed: ...`` line from the worker's stderr), a
request Caffe refused, or a timeout (the worker is then killed).  After a worker dies the next
request starts a fresh one.  Starting, reading, timing out and killing the worker, and picking
Caffe's words out of its stderr, are :mod:`caffe_tucker.caffe.process`'s.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from caffe_tucker.caffe import worker as _proto
from caffe_tucker.caffe.process import (CaffeCommand, CaffeCommandError, LineReader, Watchdog,
                                        caffe_messages, caffe_reason, child_env, describe_status,
                                        kill_group, one_line, spawn, spawn_failure,
                                        terminating_signal)
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.graph import Net
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text

__all__ = ["CaffeRuntime", "CaffeRuntimeError", "CaffeRuntimeUnavailable", "ENV_VAR",
           "DEFAULT_TIMEOUT", "StepResult", "TrainingSession", "resolve_command",
           "runtime_available"]

ENV_VAR = "CAFFE_TUCKER_PYTHON"
DEFAULT_TIMEOUT = 600.0
HOW_TO_GET_ONE = ("set CAFFE_TUCKER_PYTHON or pass --caffe-python, e.g. "
                  "CAFFE_TUCKER_PYTHON=\"chroot /opt/caffe-root python3\" after "
                  "'sudo docker/caffe-rootfs.sh /opt/caffe-root'")
NO_RUNTIME = f"no Caffe runtime: {HOW_TO_GET_ONE}"


class CaffeRuntimeError(CaffeTuckerError):
    """Caffe could not be run, or refused or failed a request.

    Attributes
    ----------
    command : str or None
        The command prefix that was run (shell-quoted), when there was one.
    stderr_tail : list of str
        The last lines the worker printed on stderr (Caffe's glog output), for ``--debug``.
    """

    def __init__(self, message: str, command: str | None = None, stderr_tail: Sequence[str] = ()):
        super().__init__(one_line(message))
        self.command = command
        self.stderr_tail = list(stderr_tail)


class CaffeRuntimeUnavailable(CaffeRuntimeError):
    """No usable Caffe: none configured, the command does not exist, or it has no caffe module."""


def _parse_command(command) -> CaffeCommand:
    """The :class:`CaffeCommand` of ``command``, else of ``$CAFFE_TUCKER_PYTHON``."""
    what = "the Caffe runtime command"
    if command is None:
        command = os.environ.get(ENV_VAR)
        what = f"${ENV_VAR}"
    if command is None or (isinstance(command, str) and not command.strip()):
        raise CaffeRuntimeUnavailable(NO_RUNTIME)
    try:
        return CaffeCommand.parse(command, what=what, hint=HOW_TO_GET_ONE)
    except CaffeCommandError as exc:
        raise CaffeRuntimeUnavailable(str(exc)) from None


def resolve_command(command: str | Sequence[str] | os.PathLike | None = None) -> list[str]:
    """The argv prefix of the Caffe interpreter: ``command``, else ``$CAFFE_TUCKER_PYTHON``.

    A string is split like a shell would (``shlex``); a list is taken as it is.

    Raises
    ------
    CaffeRuntimeUnavailable
        When neither gives a command, or the string cannot be split.
    """
    return list(_parse_command(command).argv)


def _echo(line: str) -> None:
    """Copy a line of the worker's stderr to ours (not a method: the reader thread must not keep
    the runtime alive, or its finalizer would never kill the worker)."""
    print(line, file=sys.stderr, flush=True)


def _text(value, what: str) -> str:
    """Prototxt text from text, UTF-8 bytes or a path; a TypeError starting ``what`` otherwise."""
    if isinstance(value, os.PathLike):
        return Path(value).read_text()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"{what}, not {type(value).__name__}")
    return value


def _net_sources(prototxt, caffemodel) -> tuple[str, bytes | None]:
    """Prototxt text and caffemodel bytes from text/bytes, paths, or a caffe_tucker Net."""
    if isinstance(prototxt, Net):
        net = prototxt
        prototxt = prototxt_text(net)
        if caffemodel is None and any(layer.blobs for layer in net.layers):
            caffemodel = b"".join(bytes(c) for c in caffemodel_chunks(net))
    else:
        prototxt = _text(prototxt, "prototxt must be text, a path or a Net")
    if isinstance(caffemodel, os.PathLike):
        caffemodel = Path(caffemodel).read_bytes()
    elif caffemodel is not None and not isinstance(caffemodel, (bytes, bytearray, memoryview)):
        raise TypeError("caffemodel must be bytes, a path or None, not "
                        f"{type(caffemodel).__name__}")
    return prototxt, caffemodel


class CaffeRuntime:
    """A pycaffe worker process, started from a command prefix (see the module docstring).

    Parameters
    ----------
    command : str, list of str, or None
        The interpreter with pycaffe, as a shell-like string or an argv list; ``None`` takes
        ``$CAFFE_TUCKER_PYTHON``.  The worker is started as ``command + ["-c", BOOTSTRAP]``.
    timeout : float
        Seconds one request (and the start) may take before the worker is killed.
    echo_stderr : bool
        Also copy the worker's stderr (Caffe's log) to this process's stderr.
    stderr_lines : int
        How many of the worker's last stderr lines are kept for messages.
    env : mapping, optional
        The worker's environment (default: this process's), always without ``PYTHONHOME``.

    The worker starts on the first request (or on ``start()`` / entering the ``with`` block) and
    is restarted after it died.  Requests are serialised; one worker serves them all.

    Attributes
    ----------
    caffe_command : CaffeCommand
        The parsed command prefix (:mod:`caffe_tucker.caffe.process`).
    argv : list of str
        Its words.
    command : str
        Its words shell-quoted, as messages name it.
    """

    def __init__(self, command: str | Sequence[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, echo_stderr: bool = False,
                 stderr_lines: int = 200, env: Mapping[str, str] | None = None):
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise ValueError("The 'timeout' parameter of CaffeRuntime must be a number of seconds "
                             f"> 0. Got {timeout!r} instead.")
        self.caffe_command = _parse_command(command)
        self.argv = list(self.caffe_command.argv)
        self.command = str(self.caffe_command)
        self.timeout = float(timeout)
        self.echo_stderr = echo_stderr
        self.stderr_lines = int(stderr_lines)
        self.env = dict(env) if env is not None else None
        self.ready: dict | None = None      # the worker's ready message
        self._proc: subprocess.Popen | None = None
        self._stderr: LineReader | None = None
        self._lock = threading.RLock()
        self._timed_out = False
        self._net_key: str | None = None
        self._last_sources: tuple | None = None  # (text, weights object, key): skips rehashing
        self._training: str | None = None   # the token of the worker's open training session
        self._finalizer = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "CaffeRuntime":
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "running" if self.alive else "stopped"
        return f"CaffeRuntime({self.command!r}, {state})"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid of the started command (the worker itself, or its wrapper)."""
        return self._proc.pid if self._proc is not None else None

    def stderr_tail(self, n: int = 20) -> list[str]:
        """The worker's last ``n`` stderr lines (Caffe's log)."""
        return self._stderr.lines()[-n:] if self._stderr is not None else []

    def start(self) -> dict:
        """Start the worker (if it is not running) and return its ready message."""
        with self._lock:
            if self.alive and self.ready is not None:
                return self.ready
            self._discard()
            argv = self.argv + ["-c", _proto.BOOTSTRAP]
            env = child_env(self.env, GLOG_minloglevel="2", PYTHONDONTWRITEBYTECODE="1")
            try:
                proc = spawn(argv, env=env)
            except OSError as exc:
                raise CaffeRuntimeUnavailable(
                    f"cannot run the Caffe runtime `{self.command}`: "
                    f"{spawn_failure(exc, self.argv)}; {HOW_TO_GET_ONE}", self.command) from None
            self._proc = proc
            self._stderr = LineReader(proc.stderr, self.stderr_lines,
                                      _echo if self.echo_stderr else None,
                                      name="caffe-worker-stderr")
            self._finalizer = weakref.finalize(self, kill_group, proc)
            self._net_key = None
            source = Path(_proto.__file__).read_bytes()
            ready = self._exchange("start", lambda out: out.write(b"%d\n" % len(source) + source))
            if ready.get("type") != "ready":
                self._fail_protocol("start", repr(ready)[:200])
            if not ready.get("ok"):
                error = ready.get("error", "unknown error")
                self.close()
                python = (f"Python {ready.get('python_version', '?')} at "
                          f"{ready.get('python_executable', '?')}")
                raise CaffeRuntimeUnavailable(
                    f"the Caffe runtime `{self.command}` cannot import caffe: {error} ({python}); "
                    f"hint: point {ENV_VAR} (or --caffe-python) at a Python with pycaffe, e.g. "
                    "\"chroot /opt/caffe-root python3\" after 'sudo docker/caffe-rootfs.sh "
                    "/opt/caffe-root'", self.command)
            self.ready = ready
            return ready

    def close(self):
        """Ask the worker to quit, and kill it if it does not within a few seconds."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    _proto.write_message(proc.stdin, {"type": "quit"})
                except (OSError, ValueError):
                    pass
                try:
                    proc.stdin.close()
                except (OSError, ValueError):
                    pass
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    kill_group(proc)
            self._discard()

    def kill(self):
        """Kill the worker now (the next request starts a new one)."""
        with self._lock:
            if self._proc is not None:
                kill_group(self._proc)
            self._discard()

    def _discard(self):
        proc, self._proc = self._proc, None
        self.ready = None
        self._net_key = None
        self._training = None
        if proc is None:
            return
        kill_group(proc)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        if self._stderr is not None:
            self._stderr.join(2)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    # -- one exchange ---------------------------------------------------------------------------
    def _exchange(self, what: str, send) -> dict:
        """Run ``send(stdin)`` and read one message, under the timeout; raise if the worker dies."""
        proc = self._proc
        mark = self._stderr.mark()
        garbage = None
        with Watchdog(proc, self.timeout) as watch:
            try:
                send(proc.stdin)
                proc.stdin.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the worker is gone: reading tells why
            try:
                message = _proto.read_message(proc.stdout)
            except (EOFError, OSError, ValueError):
                message = None
            except _proto.ProtocolError as exc:
                garbage = exc.args[0]
                message = None
        self._timed_out = watch.fired
        if message is None:
            if garbage is not None:
                self._fail_protocol(what, garbage, mark)
            self._fail_dead(what, mark)
        return message

    def _fail_dead(self, what: str, mark: int):
        proc = self._proc
        timed_out = self._timed_out
        if not timed_out:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        code = proc.poll()
        status = describe_status(code)
        self._stderr.join(3 if proc.poll() is not None else 0.2)
        lines = self._stderr.lines(mark) or self._stderr.lines()
        command = self.command
        self._discard()
        if timed_out:
            doing = "start" if what == "start" else f"finish {what}"
            raise CaffeRuntimeError(
                f"the Caffe worker `{command}` did not {doing} within {self.timeout:g} s and was "
                "killed; hint: raise the timeout for larger nets or more iterations",
                command, lines)
        during = "while starting" if what == "start" else f"during {what}"
        reason = caffe_reason(lines)
        if terminating_signal(code) == signal.SIGABRT and caffe_messages(lines):
            # A CHECK failure or a glog FATAL: Caffe's own way of refusing the net or its inputs.
            raise CaffeRuntimeError(f"Caffe aborted {during}: {reason} (worker `{command}`)",
                                    command, lines)
        raise CaffeRuntimeError(f"the Caffe worker `{command}` died {during} ({status}): {reason}",
                                command, lines)

    def _fail_protocol(self, what: str, garbage, mark: int = 0):
        proc = self._proc
        kill_group(proc)
        rest = b""
        try:
            rest = proc.stdout.read(300) or b""
        except (OSError, ValueError):
            pass
        if isinstance(garbage, bytes):
            garbage = (garbage + rest).decode("utf-8", "replace")
        command = self.command
        lines = self._stderr.lines(mark)
        self._discard()
        raise CaffeRuntimeError(
            f"`{command}` did not answer the caffe_tucker worker protocol ({what}); it printed "
            f"{garbage[:200]!r} on stdout; hint: the command must start a Python interpreter and "
            "keep its stdout to itself (stderr: " + caffe_reason(lines) + ")", command, lines)

    def _request(self, what: str, message: dict) -> dict:
        with self._lock:
            self.start()
            response = self._exchange(what, lambda out: _proto.write_message(out, message))
            if "net_key" in response:
                self._net_key = response["net_key"]
            return response

    def _raise_refused(self, what: str, response: dict):
        lines = self._stderr.lines() if self._stderr is not None else []
        raise CaffeRuntimeError(f"Caffe {what} failed: {response.get('error', 'unknown error')} "
                                f"(worker `{self.command}`)", self.command, lines)

    def _request_net(self, what: str, message: dict, prototxt, caffemodel) -> dict:
        """Send a request about a net; the net itself only when the worker does not hold it."""
        text, weights = _net_sources(prototxt, caffemodel)
        last = self._last_sources
        if last is not None and last[0] == text and last[1] is weights:
            key = last[2]
        else:
            digest = hashlib.sha1(text.encode("utf-8"))
            digest.update(b"\0weights\0" if weights is not None else b"\0none\0")
            if weights is not None:
                digest.update(weights)
            key = digest.hexdigest()
            self._last_sources = (text, weights, key)
        with self._lock:
            if self.alive and self._net_key == key:
                response = self._request(what, dict(message, net_key=key))
                if response.get("ok") or response.get("code") != "net_not_loaded":
                    return response
            full = dict(message, net_key=key, prototxt=text)
            if weights is not None:
                full["caffemodel"] = weights
            return self._request(what, full)

    # -- requests -------------------------------------------------------------------------------
    def hello(self) -> dict:
        """Versions of Caffe, Python and numpy in the worker, and Caffe's layer types.

        Returns ``{"caffe_version", "caffe_path", "python_version", "python_executable",
        "numpy_version", "protocol", "pid", "nets_loaded", "layer_types", "blas"}``; ``blas`` is
        ``{"library", "threads", "corename", "config"}`` of the OpenBLAS Caffe computes with,
        every value None when there is no OpenBLAS in the worker.
        """
        response = self._request("hello", {"type": "hello"})
        if not response.get("ok"):
            self._raise_refused("hello", response)
        return {k: v for k, v in response.items() if k not in ("ok", "net_key")}

    def release(self) -> None:
        """Let the worker drop the net it keeps loaded between forwards (and its blobs' memory);
        a no-op when the worker is not running."""
        with self._lock:
            if not self.alive:
                return
            response = self._request("release", {"type": "release"})
            self._net_key = None
        if not response.get("ok"):
            self._raise_refused("release", response)

    def forward(self, prototxt, caffemodel=None, inputs: Mapping[str, np.ndarray] | None = None,
                blobs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one TEST-phase forward pass in Caffe (CPU) and return blobs.

        Parameters
        ----------
        prototxt : str, path or Net
            The net definition as prototxt *text* (or a path to read, or a caffe_tucker ``Net``,
            whose blobs become the weights when ``caffemodel`` is None).
        caffemodel : bytes, path or None
            Binary ``.caffemodel`` contents; None keeps the weights Caffe's fillers draw.
        inputs : dict of str to array
            An array for every input blob of the net; each input is reshaped to its array.
        blobs : list of str, optional
            The blobs to return (default: the net's outputs).

        Returns
        -------
        dict of str to float32 ndarray, in the order asked for.
        """
        arrays = {str(k): np.ascontiguousarray(v, dtype=np.float32)
                  for k, v in (inputs or {}).items()}
        message = {"type": "forward", "inputs": arrays,
                   "blobs": None if blobs is None else [str(b) for b in blobs]}
        response = self._request_net("forward", message, prototxt, caffemodel)
        if not response.get("ok"):
            self._raise_refused("forward", response)
        return {name: response["blobs"][name] for name in response["order"]}

    def time(self, prototxt, caffemodel=None, batch: int = 1, iterations: int = 10,
             warmup: int = 2, threads: int | None = None) -> dict:
        """Time the forward pass in Caffe (CPU), layer by layer, on random inputs.

        Each iteration times every layer alone (``net._forward(i, i)``) and then the whole net;
        the medians over ``iterations`` are returned, after ``warmup`` untimed passes.

        Parameters
        ----------
        threads : int or None
            OpenBLAS threads to set in the worker before timing (they stay set for later
            requests); None leaves them as they are.

        Returns
        -------
        dict
            ``{"layers": [{"name", "type", "ms"}, ...] (in net order), "forward_ms",
            "layers_sum_ms", "batch", "iterations", "warmup", "input_shapes", "blas"}``;
            ``blas`` as in :meth:`hello`, with the threads in force while timing.
        """
        for name, value, low in (("batch", batch, 1), ("iterations", iterations, 1),
                                 ("warmup", warmup, 0), ("threads", threads, 1)):
            if name == "threads" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"The '{name}' parameter of CaffeRuntime.time must be an int "
                                 f">= {low}{' or None' if name == 'threads' else ''}. "
                                 f"Got {value!r} instead.")
        message = {"type": "time", "batch": batch, "iterations": iterations, "warmup": warmup,
                   "threads": threads}
        response = self._request_net("time", message, prototxt, caffemodel)
        if not response.get("ok"):
            self._raise_refused("time", response)
        return {k: v for k, v in response.items() if k not in ("ok", "net_key")}


    def train(self, solver, net, inputs: Mapping[str, np.ndarray], caffemodel=None, *,
              seed: int | None = None, shuffle: bool = True,
              timeout: float | None = None) -> dict:
        """Train a net in Caffe (CPU) with a solver, feeding its Input blobs from arrays.

        Parameters
        ----------
        solver : str or path
            SolverParameter prototxt text (or a path to read): the lr policy, momentum, weight
            decay, ``max_iter``, ``random_seed`` and so on.  Its net fields, test nets and
            snapshot settings are ignored; ``iter_size`` must be 1.
        net : str, path or Net
            The train net.  Its inputs are Input layers whose first dimension is the batch size,
            e.g. ``data`` (B, C, H, W) and ``label`` (B,), followed by a loss layer.
        inputs : dict of str to array
            One array per input blob of the net, all with the same first dimension N (the
            samples), e.g. ``{"data": X (N, C, H, W), "label": y (N,)}``, as float32.
        caffemodel : bytes, path or None
            Initial weights, copied by layer name (``Net.copy_from``); None keeps the fillers'.
        seed : int, optional
            Overrides the solver's ``random_seed`` and seeds the shuffling (numpy
            ``RandomState(seed)``; 0 when None): the same seed gives the same weights.
        shuffle : bool
            Draw each epoch in a fresh random order (else in the order given).
        timeout : float, optional
            Seconds this request may take (default: the runtime's ``timeout``).

        Returns
        -------
        dict
            ``{"caffemodel": bytes (the trained train net, net.save), "iterations": int array
            1..max_iter, "loss": float32 array (the weighted loss after each iteration),
            "outputs": {scalar output blob: float32 array}, "batch", "max_iter", "seconds"}``.
        """
        solver = _text(solver, "solver must be prototxt text or a path")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError("The 'seed' parameter of CaffeRuntime.train must be an int >= 0 or "
                             f"None. Got {seed!r} instead.")
        if timeout is not None and (not isinstance(timeout, (int, float))
                                    or isinstance(timeout, bool) or not timeout > 0):
            raise ValueError("The 'timeout' parameter of CaffeRuntime.train must be a number of "
                             f"seconds > 0 or None. Got {timeout!r} instead.")
        text, weights = _net_sources(net, caffemodel)
        arrays = {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        message = {"type": "train", "solver": solver, "net": text, "inputs": arrays,
                   "seed": seed, "shuffle": bool(shuffle)}
        if weights is not None:
            message["caffemodel"] = weights
        with self._lock:
            saved = self.timeout
            if timeout is not None:
                self.timeout = float(timeout)
            try:
                response = self._request("train", message)
            finally:
                self.timeout = saved
        if not response.get("ok"):
            self._raise_refused("train", response)
        result = {k: v for k, v in response.items() if k not in ("ok", "net_key")}
        result["caffemodel"] = bytes(result["caffemodel"])
        return result

    def open_training(self, solver, net, caffemodel=None, *,
                      seed: int | None = None) -> "TrainingSession":
        """Open a training session: a Caffe solver that runs one iteration per step, on batches
        the caller gives, for training loops of the caller's own.

        The worker holds one session at a time: opening one closes the one open (its
        :class:`TrainingSession` then refuses every call).

        Parameters
        ----------
        solver : str or path
            SolverParameter prototxt text (or a path to read), as for :meth:`train`: its lr
            policy, momentum, weight decay and ``random_seed`` apply; its net fields, test nets
            and snapshot settings are ignored; ``iter_size`` must be 1; ``max_iter`` does not
            stop a session (it still shapes the ``poly`` policy).
        net : str, path or Net
            The train net, fed through Input layers whose first dimension is the batch size.
        caffemodel : bytes, path or None
            Initial weights, copied by layer name; None keeps the fillers'.
        seed : int, optional
            Overrides the solver's ``random_seed`` (fillers, dropout).

        Returns
        -------
        TrainingSession
            A context manager; closing it frees the solver in the worker.
        """
        solver = _text(solver, "solver must be prototxt text or a path")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError("The 'seed' parameter of CaffeRuntime.open_training must be an int "
                             f">= 0 or None. Got {seed!r} instead.")
        text, weights = _net_sources(net, caffemodel)
        token = uuid.uuid4().hex
        message = {"type": "session_open", "solver": solver, "net": text, "seed": seed,
                   "session": token}
        if weights is not None:
            message["caffemodel"] = weights
        with self._lock:
            self._training = None  # the worker closes the session it holds, if any
            response = self._request("open_training", message)
            if not response.get("ok"):
                self._raise_refused("open_training", response)
            self._training = token
        return TrainingSession(self, token, response)


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`TrainingSession.step` did.

    Attributes
    ----------
    iteration : int
        The solver's iteration after the step (1 after a fresh session's first step).
    loss : float
        The loss of the step's forward pass: the loss outputs weighted by their loss weights,
        before the update (as :meth:`CaffeRuntime.train` reports it).
    outputs : dict of str to float
        Every scalar output blob of the net (losses, accuracies) after the forward pass.
    lr : float or None
        The learning rate the update used (``solver.lr`` read between the backward pass and
        the update); None for a ``multistep`` policy whose step values do not increase, where
        reading it would change the schedule.
    weights : dict of str to float32 ndarray
        The weights (blob 0) after the update of the layers asked for with ``fetch``.
    diffs : dict of str to float32 ndarray
        The gradient of the weights (blob 0) of the layers asked for with ``fetch_diffs``, as
        the update received it: after the backward pass, ``add_diffs`` and ``masks``, before
        weight decay, momentum and the learning rate.
    """

    iteration: int
    loss: float
    outputs: dict[str, float]
    lr: float | None
    weights: dict[str, np.ndarray]
    diffs: dict[str, np.ndarray] = field(default_factory=dict)


def _layer_names(value, what: str, owner: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, set, frozenset)) \
            or not all(isinstance(v, str) for v in value):
        raise ValueError(f"The '{what}' parameter of {owner} must be a sequence of layer names. "
                         f"Got {value!r} instead.")
    return list(value)


def _float_arrays(value, what: str, owner: str) -> dict[str, np.ndarray]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"The '{what}' parameter of {owner} must be a mapping of names to "
                         f"arrays or None. Got {type(value).__name__} instead.")
    return {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in value.items()}


def _mask_arrays(value, what: str, owner: str) -> dict[str, np.ndarray]:
    """Masks as uint8 0/1 arrays: a quarter of float32's bytes on the pipe."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"The '{what}' parameter of {owner} must be a mapping of layer names "
                         f"to 0/1 arrays or None. Got {type(value).__name__} instead.")
    out = {}
    for layer, mask in value.items():
        mask = np.ascontiguousarray(mask)
        if mask.dtype == np.bool_:
            out[str(layer)] = mask.view(np.uint8)
            continue
        small = mask.astype(np.uint8)
        if not np.array_equal(small, mask):
            raise ValueError(f"The '{what}' parameter of {owner} must hold bool or 0/1 arrays. "
                             f"Got values other than 0 and 1 for layer {layer!r} instead.")
        out[str(layer)] = small
    return out


def _bytes(value, what: str, owner: str) -> bytes | bytearray | memoryview:
    if isinstance(value, os.PathLike):
        return Path(value).read_bytes()
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"The '{what}' parameter of {owner} must be bytes or a path. "
                         f"Got {type(value).__name__} instead.")
    return value


class TrainingSession:
    """A Caffe solver in the worker, stepped one iteration at a time by the caller.

    Made by :meth:`CaffeRuntime.open_training`; a context manager.  Each :meth:`step` feeds one
    batch and runs ``solver.step(1)`` with a hook between the backward pass and the update
    that adds extra gradients (``add_diffs``, e.g. a regularizer's, computed in this process)
    and masks them, and can copy the gradients out (``fetch_diffs``); the update itself is the
    solver's own (lr policy, momentum, weight decay).  Arrays travel as binary payloads; masks
    as uint8.

    Attributes
    ----------
    batch : int
        The batch size: the first dimension of every input blob.
    input_shapes : dict of str to tuple
        The shape of one sample of each input blob (without the batch dimension): a step takes
        ``(batch,) + input_shapes[name]`` for each.
    param_shapes : dict of str to tuple of tuples
        The shapes of the blobs of every layer with learnable blobs, in net order; blob 0 (the
        weights) is what ``add_diffs``, ``masks``, ``fetch`` and ``fetch_diffs`` address.
    outputs : tuple of str
        The net's scalar output blobs (reported by every step).
    iteration : int
        The solver's iteration (after the last step or restore).
    """

    def __init__(self, runtime: CaffeRuntime, token: str, info: dict):
        self._runtime = runtime
        self._token = token
        self._closed = False
        self.batch = int(info["batch"])
        self.input_shapes = {n: tuple(shape) for n, shape in info["inputs"].items()}
        self.param_shapes = {layer: tuple(tuple(shape) for shape in shapes)
                             for layer, shapes in info["params"].items()}
        self.outputs = tuple(info["outputs"])
        self.iteration = int(info["iter"])

    def __enter__(self) -> "TrainingSession":
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return (f"TrainingSession(batch={self.batch}, iteration={self.iteration}, "
                f"layers={list(self.param_shapes)}, {state})")

    @property
    def closed(self) -> bool:
        """Whether the session is closed, or lost with its worker or to another session."""
        runtime = self._runtime
        return self._closed or runtime._training != self._token or not runtime.alive

    def _call(self, what: str, message: dict) -> dict:
        runtime = self._runtime
        with runtime._lock:
            if self._closed:
                raise CaffeRuntimeError(f"cannot run the {what}: the training session is closed",
                                        runtime.command)
            if runtime._training == self._token and not runtime.alive:
                runtime._training = None
            if runtime._training != self._token:
                reason = ("its Caffe worker stopped (it died, timed out or was closed)"
                          if runtime._training is None else
                          "CaffeRuntime.open_training opened another (a worker holds one at a "
                          "time)")
                raise CaffeRuntimeError(f"cannot run the {what}: the training session is no "
                                        f"longer open: {reason}", runtime.command)
            response = runtime._request(what, dict(message, session=self._token))
        if not response.get("ok"):
            runtime._raise_refused(what, response)
        return response

    def step(self, inputs: Mapping[str, np.ndarray], *,
             add_diffs: Mapping[str, np.ndarray] | None = None,
             masks: Mapping[str, np.ndarray] | None = None,
             fetch: Sequence[str] = (), fetch_diffs: Sequence[str] = ()) -> StepResult:
        """Run one solver iteration on one batch.

        Parameters
        ----------
        inputs : dict of str to array
            One array per input blob, of exactly ``(batch,) + input_shapes[name]`` (as float32).
        add_diffs : dict of str to array, optional
            Layer -> an array shaped like its weights (blob 0), added to their gradient after
            the backward pass, before the update, which then treats it as gradient: with plain
            SGD the weights move by ``-lr * lr_mult * add_diffs[layer]`` more (momentum and
            weight decay aside).
        masks : dict of str to array, optional
            Layer -> a bool or 0/1 array shaped like its weights: where it is 0 the gradient
            (after ``add_diffs``) is zeroed before the update and the weights are set to 0.0
            after it, so pruned weights stay exactly 0.  Masks apply to this step only.
        fetch : sequence of str
            Layers whose weights (after the update) to return.
        fetch_diffs : sequence of str
            Layers whose weight gradient to return (``StepResult.diffs``): the diff of blob 0
            between the backward pass (plus ``add_diffs``, masked) and the update.  With a
            solver at ``base_lr`` 0 the weights do not move and a caller can apply its own
            update rule to them (codebook fine-tuning does).

        Returns
        -------
        StepResult

        Raises
        ------
        CaffeRuntimeError
            When Caffe refuses the step (an unknown layer, a wrong shape: the message names
            them; nothing is changed then) or the session is closed.
        """
        if not isinstance(inputs, Mapping):
            raise ValueError("The 'inputs' parameter of TrainingSession.step must be a mapping of "
                             f"input blob names to arrays. Got {type(inputs).__name__} instead.")
        owner = "TrainingSession.step"
        message = {"type": "session_step", "inputs": _float_arrays(inputs, "inputs", owner),
                   "add_diffs": _float_arrays(add_diffs, "add_diffs", owner),
                   "masks": _mask_arrays(masks, "masks", owner),
                   "fetch": _layer_names(fetch, "fetch", owner),
                   "fetch_diffs": _layer_names(fetch_diffs, "fetch_diffs", owner)}
        response = self._call("training step", message)
        self.iteration = int(response["iter"])
        lr = response.get("lr")
        return StepResult(iteration=self.iteration, loss=float(response["loss"]),
                          outputs={k: float(v) for k, v in response["outputs"].items()},
                          lr=None if lr is None else float(lr), weights=dict(response["weights"]),
                          diffs=dict(response.get("diffs") or {}))

    def set_params(self, params: Mapping[str, Sequence[np.ndarray]]) -> None:
        """Overwrite learnable blobs: layer -> its first k blobs' new values (e.g. ``[weights]``
        or ``[weights, bias]``), each of exactly the blob's shape.  All are checked before any is
        written; the solver's history (momentum) is kept."""
        if not isinstance(params, Mapping):
            raise ValueError("The 'params' parameter of TrainingSession.set_params must be a "
                             "mapping of layer names to lists of arrays. Got "
                             f"{type(params).__name__} instead.")
        arrays = {}
        for layer, blobs in params.items():
            if isinstance(blobs, np.ndarray) or not isinstance(blobs, Sequence):
                raise ValueError("The 'params' parameter of TrainingSession.set_params must map "
                                 "each layer to a list of arrays, one per blob (e.g. [weights, "
                                 f"bias]). Got {type(blobs).__name__} for layer {layer!r} "
                                 "instead.")
            arrays[str(layer)] = [np.ascontiguousarray(b, dtype=np.float32) for b in blobs]
        self._call("training set_params", {"type": "session_set_params", "params": arrays})

    def get_weights(self, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """The weights (blob 0, float32 copies) of ``layers``."""
        fetch = _layer_names(layers, "layers", "TrainingSession.get_weights")
        response = self._call("training get_weights", {"type": "session_get", "fetch": fetch})
        return dict(response["weights"])

    def caffemodel(self) -> bytes:
        """All the net's weights as ``.caffemodel`` bytes (``net.save``)."""
        return bytes(self._call("training caffemodel", {"type": "session_weights"})["caffemodel"])

    def snapshot(self) -> tuple[bytes, bytes]:
        """``(caffemodel, solverstate)`` bytes: the weights, and the iteration, lr schedule step
        and momentum history (``solver.snapshot()``), for :meth:`restore`.  Dropout's random
        state is not in them."""
        response = self._call("training snapshot", {"type": "session_snapshot"})
        return bytes(response["caffemodel"]), bytes(response["solverstate"])

    def restore(self, caffemodel: bytes | None, solverstate: bytes) -> int:
        """Restore a :meth:`snapshot` (of this net and solver type) and return the iteration.

        ``caffemodel`` (bytes or a path; None keeps the current weights) sets the weights,
        ``solverstate`` (bytes or a path) the iteration, lr schedule step and history.
        """
        owner = "TrainingSession.restore"
        message = {"type": "session_restore",
                   "solverstate": _bytes(solverstate, "solverstate", owner)}
        if caffemodel is not None:
            message["caffemodel"] = _bytes(caffemodel, "caffemodel", owner)
        self.iteration = int(self._call("training restore", message)["iter"])
        return self.iteration

    def close(self) -> None:
        """Free the solver in the worker (no request when the worker no longer holds it)."""
        if self._closed:
            return
        self._closed = True
        runtime = self._runtime
        with runtime._lock:
            if runtime._training != self._token:
                return
            runtime._training = None
            if runtime.alive:
                try:
                    runtime._request("training close",
                                     {"type": "session_close", "session": self._token})
                except CaffeRuntimeError:
                    pass  # the worker died meanwhile: it took the session along


def runtime_available(command: str | Sequence[str] | None = None,
                      timeout: float = 120.0) -> str | None:
    """None when a Caffe runtime can be started and answers hello; else the one-line reason."""
    try:
        with CaffeRuntime(command, timeout=timeout) as runtime:
            runtime.hello()
    except CaffeRuntimeError as exc:
        return str(exc)
    return None
