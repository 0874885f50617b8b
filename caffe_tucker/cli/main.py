"""Command-line interface: parses arguments, calls the library, prints.

One parser; each subcommand is a module of this package with
``add_parser(subparsers)`` and ``run(args) -> int``, its flags taken from the
shared groups in :mod:`caffe_tucker.cli.args`.

Every user error is a :class:`caffe_tucker.errors.CaffeTuckerError`; it is
printed as one line on stderr and the exit status is 1.  ``--debug`` (before
or after the subcommand) shows the traceback instead.  Whatever a run is
doing, :func:`main` ends it the same way for the things that come from
outside: Ctrl-C (exit 130) and SIGTERM (exit 143) interrupt it with one line,
letting atomic writes remove their temporaries; a reader that closes the
output pipe early (``| head``) ends it quietly with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
import traceback

from caffe_tucker import __version__
from caffe_tucker.cli import (bench, convert, export, fetch, finetune, info, init, pack, profile,
                              quantize, ranks, reproduce, sparsify, unpack, verify)
from caffe_tucker.errors import CaffeTuckerError

PROG = "caffe-tucker"

#: The subcommands, in the order ``--help`` lists them.
SUBCOMMANDS = (info, convert, ranks, verify, bench, reproduce, init, fetch, finetune, sparsify,
               quantize, pack, unpack, export, profile)

#: Exit statuses of runs ended from outside (the README's "Exit statuses" lists them all).
EXIT_INTERRUPTED = 128 + signal.SIGINT    # 130
EXIT_TERMINATED = 128 + signal.SIGTERM    # 143


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_debug(parser, top: bool) -> None:
    """``--debug`` on the program and, hidden, on every subcommand, so that it may follow the
    subcommand too.  A subcommand's default is SUPPRESS: without the flag it leaves the
    program's value alone."""
    if top:
        parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    else:
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Compress trained Caffe CNNs with VBMF-ranked Tucker "
                     "decompositions (Kim et al., ICLR 2016).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_debug(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in SUBCOMMANDS:
        p = command.add_parser(sub)
        _add_debug(p, top=False)
        p.set_defaults(func=command.run)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds like Ctrl-C: every ``finally``
    and ``except BaseException`` (temporary files, Caffe child processes) runs."""


class _TermAsInterrupt:
    """While in effect, SIGTERM raises :class:`_Terminated`; remembers whether it came (code
    that catches a KeyboardInterrupt and raises a plain one again loses the subclass)."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _handle(self, signum, frame):
        self.received = True
        raise _Terminated()

    def __enter__(self):
        # signal.signal works only in the main thread; elsewhere (main() called from a
        # worker thread by a host program) SIGTERM keeps its host's handling.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _stdout_is_broken() -> bool:
    """Whether stdout's reader has gone (so a BrokenPipeError was about it, not about some other
    pipe, which stays a bug with its traceback).  Asks poll(2) where there is one; elsewhere
    (Windows) assumes so."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return True
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, 0)  # no events asked for: only POLLERR/POLLHUP are reported
    return bool(poller.poll(0))


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at devnull, so that the interpreter's final flush of
    what is still buffered does not fail again (Python's documented recipe, see the
    ``signal`` module's notes on SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (a test's)
        pass


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 1
    signals = _TermAsInterrupt()
    try:
        with signals:
            status = args.func(args)
            sys.stdout.flush()  # a broken pipe shows here, inside the handlers below
        return status
    except CaffeTuckerError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        if not _stdout_is_broken():
            raise
        _silence_stdout()
        return 1
    except KeyboardInterrupt as exc:
        if args.debug:
            traceback.print_exc()
        terminated = signals.received
        detail = f": {exc}" if str(exc) else ""     # e.g. where fine-tuning stopped
        print(f"{PROG}: {'terminated' if terminated else 'interrupted'}{detail}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
