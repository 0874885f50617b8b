"""Command-line interface: parses arguments, calls the library, prints.

One parser; each subcommand is a module of this package with
``add_parser(subparsers)`` and ``run(args) -> int``, its flags taken from the
shared groups in :mod:`caffe_tucker.cli.args`.

Every user error is a :class:`caffe_tucker.errors.CaffeTuckerError`; it is
printed as one line on stderr and the exit status is 1.  ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from caffe_tucker import __version__
from caffe_tucker.cli import bench, convert, fetch, finetune, info, init, ranks, reproduce, verify
from caffe_tucker.errors import CaffeTuckerError

PROG = "caffe-tucker"

#: The subcommands, in the order ``--help`` lists them.
SUBCOMMANDS = (info, convert, ranks, verify, bench, reproduce, init, fetch, finetune)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Compress trained Caffe CNNs with VBMF-ranked Tucker "
                     "decompositions (Kim et al., ICLR 2016).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in SUBCOMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 1
    try:
        return args.func(args)
    except CaffeTuckerError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
