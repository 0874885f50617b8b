"""The Caffe process layer (:mod:`caffe_tucker.caffe.process`) and the training log
(:mod:`caffe_tucker.caffe.train_log`), without Caffe: command prefixes, chroot paths, Caffe's
error lines, exit-status wording, reading output, and stopping real child processes.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from caffe_tucker.caffe.process import (CaffeCommand, CaffeCommandError, LineReader, Watchdog,
                                        caffe_messages, caffe_reason, child_env, describe_status,
                                        kill_group, one_line, signal_group, spawn, spawn_failure,
                                        stop, terminating_signal)
from caffe_tucker.caffe.pycaffe import ENV_VAR, CaffeRuntimeUnavailable, resolve_command
from caffe_tucker.caffe.train_log import (CSV_COLUMNS, TrainLog, accuracy_rank, csv_text,
                                          read_csv)
from caffe_tucker.errors import CaffeTuckerError

# --------------------------------------------------------------------------------------------
# Command prefixes

def test_plain_command_is_split_like_a_shell():
    cmd = CaffeCommand.parse("caffe --flag 'a b'")
    assert cmd.argv == ("caffe", "--flag", "a b")
    assert (cmd.kind, cmd.root, cmd.root_index) == ("plain", None, None)
    assert str(cmd) == "caffe --flag 'a b'"
    assert cmd.argv_in("/anywhere", ["train"]) == ["caffe", "--flag", "a b", "train"]
    assert CaffeCommand.parse(["caffe", Path("/x/y")]).argv == ("caffe", "/x/y")
    assert CaffeCommand.parse(Path("/opt/bin/caffe")).argv == ("/opt/bin/caffe",)
    assert CaffeCommand.parse("chrooted caffe").kind == "plain"


@pytest.mark.parametrize("text", ['chroot "/opt/caffe root python3', "caffe 'unclosed"])
def test_bad_quoting_is_one_line_naming_the_command(text):
    with pytest.raises(CaffeCommandError) as exc:
        CaffeCommand.parse(text, what="the caffe command")
    msg = str(exc.value)
    assert isinstance(exc.value, CaffeTuckerError)
    assert msg.startswith(f"cannot split the caffe command {text!r}: ")
    assert "check its quoting" in msg and "\n" not in msg


@pytest.mark.parametrize("command", ["", "   ", []])
def test_empty_command(command):
    with pytest.raises(CaffeCommandError, match=r"^the caffe command is empty; hint: use caffe$"):
        CaffeCommand.parse(command, hint="use caffe")


def test_runtime_command_errors_are_unavailable_runtimes(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "chroot '/opt/caffe-root python3")
    with pytest.raises(CaffeRuntimeUnavailable, match=rf"cannot split \${ENV_VAR} .*quoting"):
        resolve_command()
    with pytest.raises(CaffeRuntimeUnavailable, match="runtime command is empty"):
        resolve_command([])


@pytest.mark.parametrize("argv, index", [
    (["chroot", "/r", "caffe"], 1),
    (["/usr/sbin/chroot", "/r", "caffe"], 1),
    (["chroot", "--userspec=1000:1000", "/r", "caffe"], 2),
    (["chroot", "--userspec", "1000:1000", "/r", "caffe"], 3),
    (["chroot", "--groups", "video", "--skip-chdir", "/r", "caffe"], 4),
    (["chroot", "--", "/r", "caffe"], 2),
])
def test_chroot_root_is_found_past_options(argv, index):
    cmd = CaffeCommand.parse(argv)
    assert (cmd.kind, cmd.root, cmd.root_index) == ("chroot", Path("/r"), index)


def test_chroot_without_root_is_plain():
    assert CaffeCommand.parse(["chroot", "--userspec", "u"]).kind == "plain"


def test_docker_and_variable_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("CT_TEST_IMAGE", "caffe-tucker:cpu")
    text = 'docker run --rm -v "$PWD":/work -v ${PWD}/x:/x -w /work $CT_TEST_IMAGE caffe'
    cmd = CaffeCommand.parse(text, pwd=tmp_path)
    assert cmd.kind == "docker" and cmd.root is None
    assert cmd.argv[4] == f"{tmp_path}:/work" and cmd.argv[6] == f"{tmp_path}/x:/x"
    assert cmd.argv[-2:] == ("caffe-tucker:cpu", "caffe")
    kept = CaffeCommand.parse(text)  # no pwd: words as they are
    assert kept.argv[4] == "$PWD:/work" and kept.argv[-2] == "$CT_TEST_IMAGE"
    assert CaffeCommand.parse("podman run -i img python3").kind == "docker"
    assert CaffeCommand.parse("docker exec box caffe").kind == "plain"


def test_expanded_chroot_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CT_TEST_ROOT", str(tmp_path))
    cmd = CaffeCommand.parse("chroot $CT_TEST_ROOT caffe", pwd=tmp_path)
    assert cmd.root == tmp_path and cmd.inside(tmp_path / "a") == "/a"


def test_chroot_paths_both_ways(tmp_path):
    root = tmp_path / "root"
    work = root / "tmp" / "work"
    work.mkdir(parents=True)
    (root / "data").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = tmp_path / "link-to-work"
    link.symlink_to(work)
    cmd = CaffeCommand.parse(["chroot", str(root), "caffe"])

    assert cmd.inside(root) == "/"
    assert cmd.inside(work) == "/tmp/work"
    assert cmd.inside(link / "f.solverstate") == "/tmp/work/f.solverstate"  # real path counts
    assert cmd.inside(outside) is None
    assert CaffeCommand.parse("caffe").inside(work) is None

    assert cmd.path_for_caffe(work / "snapshots" / "s.solverstate", work) == "snapshots/s.solverstate"
    assert cmd.path_for_caffe(root / "data" / "lmdb", work) == "/data/lmdb"
    assert cmd.path_for_caffe(outside / "f", work) == str(outside.resolve() / "f")
    assert CaffeCommand.parse("caffe").path_for_caffe(outside / "f", work) == \
        str(outside.resolve() / "f")

    assert cmd.host_path("snapshots/x.caffemodel", work) == work / "snapshots" / "x.caffemodel"
    assert cmd.host_path("/tmp/work/x.caffemodel", work) == root / "tmp" / "work" / "x.caffemodel"
    assert CaffeCommand.parse("caffe").host_path("/abs/x", work) == Path("/abs/x")


def test_chroot_argv_changes_into_the_directory(tmp_path):
    root = tmp_path / "root"
    work = root / "w"
    work.mkdir(parents=True)
    cmd = CaffeCommand.parse(["chroot", "--userspec=1:1", str(root), "caffe"])
    argv = cmd.argv_in(work, ["train", "--solver", "s.prototxt"])
    assert argv == ["chroot", "--userspec=1:1", str(root), "sh", "-c",
                    'cd "$1" && shift && exec "$@"', "sh", "/w", "caffe", "train", "--solver",
                    "s.prototxt"]
    with pytest.raises(CaffeCommandError, match=r"outside the chroot .*cannot see it"):
        cmd.argv_in(tmp_path, ["train"])


def test_chroot_wrapper_runs_in_the_directory(tmp_path):
    """The shell part of the chroot argv, run without the chroot (ROOT "/" sees host paths)."""
    work = tmp_path / "a dir with spaces"
    work.mkdir()
    argv = CaffeCommand.parse(["chroot", "/", sys.executable]).argv_in(
        work, ["-c", "import os, sys; print(os.getcwd(), sys.argv[1:])", "x y"])
    assert argv[:2] == ["chroot", "/"]
    out = subprocess.run(argv[2:], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{os.path.realpath(work)} ['x y']"


# --------------------------------------------------------------------------------------------
# What Caffe said, and how it ended

STDERR = [
    "WARNING: Logging before InitGoogleLogging() is written to STDERR",
    "I0101 12:00:00.000100  4242 net.cpp:51] Initializing net from parameters:",
    "W0101 12:00:00.000200  4242 net.cpp:60] just a warning",
    "[libprotobuf ERROR google/protobuf/text_format.cc:298] Error parsing text-format "
    "caffe.NetParameter: 7:3: Unknown enumeration value of \"MAXX\" for field \"pool\".",
    "E0101 12:00:00.000300  4242 io.cpp:80] Could not open file nope.binaryproto",
    "F0101 12:00:00.123456  4242 db_lmdb.hpp:15] Check failed: mdb_status == 0 (2 vs. 0) "
    "No such file or directory",
    "*** Check failure stack trace: ***",
    "    @     0x7f0c0ffee  google::LogMessage::Fail()",
    "F0101 12:00:00.123456  4242 db_lmdb.hpp:15] Check failed: mdb_status == 0 (2 vs. 0) "
    "No such file or directory",
    "Aborted (core dumped)",
]


def test_caffe_messages_from_glog_and_protobuf():
    assert caffe_messages(STDERR) == [
        "Error parsing text-format caffe.NetParameter: 7:3: Unknown enumeration value of "
        "\"MAXX\" for field \"pool\". [google/protobuf/text_format.cc:298]",
        "Could not open file nope.binaryproto [io.cpp:80]",
        "Check failed: mdb_status == 0 (2 vs. 0) No such file or directory [db_lmdb.hpp:15]",
    ]
    assert caffe_messages(["something: Check failed: x == y (1 vs. 2)"]) == \
        ["something: Check failed: x == y (1 vs. 2)"]
    assert caffe_messages(STDERR[:3]) == []


def test_caffe_reason_falls_back_sensibly():
    assert caffe_reason(STDERR) == " | ".join(caffe_messages(STDERR))
    assert caffe_reason(["Traceback (most recent call last):", '  File "w.py", line 3',
                         "KeyError: 'x'", "*** SIGSEGV received"]) == "KeyError: 'x'"
    assert caffe_reason(["a", "   ", "b"]) == "a | b"
    assert caffe_reason(["first", "2", "3", "last", "Aborted"]) == "first | ... | last"
    assert caffe_reason(["", "*** Check failure stack trace: ***",
                         "    @     0x7f0c0ffee  (unknown)"]) == "it printed nothing on stderr"
    assert caffe_reason([], where="") == "it printed nothing"


def test_one_line():
    assert one_line("a\n\n  b  \nc") == "a | b | c"
    cut = one_line("x" * 50, limit=20)
    assert len(cut) == 20 and cut.endswith("...")


@pytest.mark.parametrize("code, words", [
    (0, "exit status 0"), (1, "exit status 1"), (130, "exit status 130"),
    (-signal.SIGKILL, "killed by SIGKILL"), (-signal.SIGTERM, "killed by SIGTERM"),
    (128 + signal.SIGABRT, f"exit status {128 + signal.SIGABRT}, i.e. SIGABRT"),
    (128 + signal.SIGSEGV, f"exit status {128 + signal.SIGSEGV}, i.e. SIGSEGV"),
    (-99, "killed by signal 99"), (None, "still running"),
])
def test_status_wording(code, words):
    assert describe_status(code) == words


def test_terminating_signal():
    assert terminating_signal(-signal.SIGABRT) == signal.SIGABRT
    assert terminating_signal(128 + signal.SIGABRT) == signal.SIGABRT
    assert terminating_signal(128 + signal.SIGKILL) == signal.SIGKILL
    for code in (None, 0, 1, 130, -99):
        assert terminating_signal(code) is None


def test_spawn_failure_wording():
    try:
        spawn(["no-such-caffe-binary-here"])
    except FileNotFoundError as exc:
        assert spawn_failure(exc, ["no-such-caffe-binary-here"]).startswith(
            "'no-such-caffe-binary-here' not found (")
    else:
        pytest.fail("spawned a program that does not exist")
    assert spawn_failure(PermissionError(13, "Permission denied"), ["x"]) == "Permission denied"


# --------------------------------------------------------------------------------------------
# Starting and reading

def test_child_env(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/somewhere/else")
    monkeypatch.setenv("GLOG_logtostderr", "0")
    env = child_env(GLOG_logtostderr="1", GLOG_minloglevel="2")
    assert "PYTHONHOME" not in env and "PYTHONHOME" in os.environ
    assert env["GLOG_logtostderr"] == "0" and env["GLOG_minloglevel"] == "2"
    assert child_env({"A": "1", "PYTHONHOME": "/x"}, B="2") == {"A": "1", "B": "2"}


def _python(code: str, **kw) -> subprocess.Popen:
    return spawn([sys.executable, "-u", "-c", code], stdin=subprocess.DEVNULL, **kw)


def test_spawn_starts_a_session_of_its_own(tmp_path):
    proc = _python("import os; print(os.getcwd()); print(os.environ.get('CT_X'))",
                   cwd=tmp_path, env=child_env(CT_X="42"))
    out, _ = proc.communicate()
    assert proc.returncode == 0
    assert out.decode().split() == [os.path.realpath(tmp_path), "42"]
    proc = _python("import os, sys; print(os.getsid(0) == os.getpid() == os.getpgrp())")
    assert proc.communicate()[0].strip() == b"True"


def test_line_reader_keeps_the_tail_and_calls_back():
    r, w = os.pipe()
    seen = []
    reader = LineReader(os.fdopen(r, "rb"), keep=3, on_line=seen.append)
    with os.fdopen(w, "wb") as out:
        out.write(b"one\ntwo\r\nthree\n")
        out.flush()
    assert reader.join(30)
    assert seen == ["one", "two", "three"]
    assert reader.lines() == ["one", "two", "three"] and reader.error is None
    mark = reader.mark()
    assert mark == 3 and reader.lines(mark) == [] and reader.lines(1) == ["two", "three"]


def test_line_reader_bounds_and_survives_a_failing_callback():
    r, w = os.pipe()
    calls = []

    def fail(line):
        calls.append(line)
        raise OSError("disk full")

    reader = LineReader(os.fdopen(r, "rb"), keep=2, on_line=fail)
    long = "x" * (LineReader.MAX_LINE + 10)
    with os.fdopen(w, "wb") as out:
        out.write(b"bad \xff byte\n" + long.encode() + b"\nlast")
    assert reader.join(30)
    assert calls == ["bad \ufffd byte"]           # called once, then no more
    assert isinstance(reader.error, OSError)
    assert reader.lines() == ["x" * LineReader.MAX_LINE + "...", "last"]  # still drained
    assert reader.mark() == 3


# --------------------------------------------------------------------------------------------
# Stopping: real children

# A child that reports every signal it gets instead of dying of it, then starts a grandchild that
# shares its stdout (so the pipe ends only when both are gone) and says it is ready.
STUBBORN = """
import signal, subprocess, sys, time
def report(sig, frame):
    print("got", signal.Signals(sig).name, flush=True)
for name in sys.argv[1:]:
    signal.signal(getattr(signal, name), report)
subprocess.Popen(["sleep", "600"])
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def stubborn():
    """Start :data:`STUBBORN` children: ``stubborn("SIGINT")`` -> ``(proc, reader of its stdout
    past "ready")``.  Whatever is left of their groups is killed afterwards, by other means than
    the code under test."""
    started = []

    def start(*ignored: str) -> tuple[subprocess.Popen, LineReader]:
        proc = spawn([sys.executable, "-u", "-c", STUBBORN, *ignored], stdin=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
        started.append(proc)
        assert proc.stdout.readline() == b"ready\n"
        return proc, LineReader(proc.stdout)

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _wait_ended(reader: LineReader) -> None:
    """Everything that held the child's stdout (it and the grandchild) has ended."""
    assert reader.join(60), "something in the group still holds the pipe"


def test_stop_escalates_to_sigterm_when_sigint_is_ignored(stubborn):
    proc, reader = stubborn("SIGINT")
    code = stop(proc, steps=((signal.SIGINT, 1.0), (signal.SIGTERM, 60.0),
                             (signal.SIGKILL, 60.0)))
    _wait_ended(reader)
    assert code == -signal.SIGTERM
    assert reader.lines() == ["got SIGINT"]


def test_stop_escalates_to_sigkill_and_kills_the_group(stubborn):
    proc, reader = stubborn("SIGINT", "SIGTERM")
    code = stop(proc, steps=((signal.SIGINT, 1.0), (signal.SIGTERM, 1.0),
                             (signal.SIGKILL, 60.0)))
    _wait_ended(reader)
    assert code == -signal.SIGKILL
    assert reader.lines() == ["got SIGINT", "got SIGTERM"]


def test_a_second_ctrl_c_moves_on_to_the_next_signal(stubborn, monkeypatch):
    proc, reader = stubborn("SIGINT")
    real_wait = proc.wait
    waits = []

    def wait(timeout=None):
        waits.append(timeout)
        if len(waits) == 1:
            raise KeyboardInterrupt  # the user presses Ctrl-C again during the grace period
        return real_wait(timeout)

    monkeypatch.setattr(proc, "wait", wait)
    code = stop(proc, steps=((signal.SIGINT, 600.0), (signal.SIGTERM, 60.0)))
    _wait_ended(reader)
    assert code == -signal.SIGTERM and waits[:2] == [600.0, 60.0]


def test_kill_group_kills_the_whole_group(stubborn):
    proc, reader = stubborn("SIGINT", "SIGTERM")
    kill_group(proc)
    _wait_ended(reader)
    assert proc.wait(60) == -signal.SIGKILL
    kill_group(proc)  # ended: nothing left to kill, and no error


def test_stop_lets_a_cooperative_child_exit_on_sigint():
    proc = _python("import time\ntry:\n    print('ready', flush=True); time.sleep(600)\n"
                   "except KeyboardInterrupt:\n    print('snapshot', flush=True)\n")
    try:
        assert proc.stdout.readline() == b"ready\n"
        assert stop(proc) == 0
        assert proc.stdout.read() == b"snapshot\n"
        assert stop(proc) == 0 and not signal_group(proc, signal.SIGTERM)  # already ended
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_watchdog_kills_the_group_when_time_runs_out(stubborn):
    proc, reader = stubborn("SIGINT", "SIGTERM")
    with Watchdog(proc, 0.5) as watch:
        ended = reader.join(60)
    assert ended, "the watchdog left something of the group running"
    assert watch.fired and proc.wait(60) == -signal.SIGKILL


def test_watchdog_leaves_a_process_that_finishes_in_time():
    proc = _python("print('done')")
    with Watchdog(proc, 600) as watch:
        out = proc.stdout.read()
    assert out == b"done\n" and proc.wait() == 0 and not watch.fired


# --------------------------------------------------------------------------------------------
# The training log

LOG = """\
I1122 00:41:50.000000  8168 solver.cpp:347] Iteration 0, Testing net (#0)
I1122 00:41:50.100000  8168 solver.cpp:414]     Test net output #0: accuracy_top5 = 0.5
I1122 00:41:50.100000  8168 solver.cpp:414]     Test net output #1: accuracy_top1 = 0.1
I1122 00:41:50.100000  8168 solver.cpp:414]     Test net output #2: loss = 2.3 (* 1 = 2.3 loss)
I1122 00:41:50.200000  8168 solver.cpp:347] Iteration 0, Testing net (#1)
I1122 00:41:50.200000  8168 solver.cpp:414]     Test net output #0: accuracy_top1 = 0.9
I1122 00:41:50.300000  8168 solver.cpp:239] Iteration 0 (0 iter/s, 0.2s/2 iters), loss = 2.4
I1122 00:41:50.300000  8168 sgd_solver.cpp:112] Iteration 0, lr = 0.01
I1122 00:41:51.300000  8168 solver.cpp:239] Iteration 2 (2 iter/s, 1s/2 iters), loss = nan
I1122 00:41:51.300000  8168 sgd_solver.cpp:112] Iteration 2, lr = 0.01
I1122 00:41:52.000000  8168 solver.cpp:464] Snapshotting to binary proto file snap_iter_4.caffemodel
I1122 00:41:52.000000  8168 sgd_solver.cpp:273] Snapshotting solver state to binary proto file x
I1122 00:41:52.100000  8168 solver.cpp:347] Iteration 4, Testing net (#0)
I1122 00:41:52.200000  8168 solver.cpp:414]     Test net output #1: accuracy_top1 = 0.75
I1122 00:41:52.300000  8168 solver.cpp:332] Optimization Done.
"""


def test_train_log_rows_pick_top1_accuracy_of_test_net_0():
    log = TrainLog({-1: {"iteration": -1, "lr": None, "loss": 9.0, "test_accuracy": None}})
    for line in LOG.splitlines():
        log.feed(line)
    rows = log.sorted_rows()
    assert [r["iteration"] for r in rows] == [-1, 0, 2, 4]
    assert rows[1] == {"iteration": 0, "lr": 0.01, "loss": 2.4, "test_accuracy": 0.1}
    assert rows[2]["lr"] == 0.01 and math.isnan(rows[2]["loss"])
    assert rows[2]["test_accuracy"] is None
    assert rows[3] == {"iteration": 4, "lr": None, "loss": None, "test_accuracy": 0.75}
    assert log.accuracy_name == "accuracy_top1" and log.last_accuracy == 0.75
    # solver states are snapshots too: they are what --resume takes
    assert (log.last_iter, log.done, log.snapshots) == (4, True, ["snap_iter_4.caffemodel", "x"])


def test_accuracy_rank():
    names = ["loss", "accuracy_top5", "acc", "top-1-accuracy", "accuracy"]
    assert sorted(names, key=accuracy_rank) == ["top-1-accuracy", "accuracy", "acc",
                                                "accuracy_top5", "loss"]
    assert accuracy_rank("loss") == 99


def test_csv_round_trip(tmp_path):
    rows = [{"iteration": 0, "lr": 0.01, "loss": 2.5, "test_accuracy": 0.1},
            {"iteration": 2, "lr": None, "loss": float("inf"), "test_accuracy": None},
            {"iteration": 4, "lr": 1e-3, "loss": 0.1 + 0.2, "test_accuracy": 0.75}]
    text = csv_text(rows)
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert text.splitlines()[2] == "2,,inf,"
    path = tmp_path / "finetune.csv"
    path.write_text(text)
    assert read_csv(path) == {r["iteration"]: r for r in rows}
    assert read_csv(tmp_path / "missing.csv") == {}
    path.write_text("iteration,lr\nnot a number,1\n")
    assert read_csv(path) == {}
