"""Command-line interface: parses arguments, calls the library, prints.

Every user error is a :class:`~caffe_tucker.errors.CaffeTuckerError`; it is
printed as one line on stderr and the exit status is 1.  ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import __version__
from .errors import CaffeTuckerError

PROG = "caffe-tucker"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_common_net_args(p, weights_required=False):
    p.add_argument("prototxt", help="net definition (deploy or train_val; current, V1 or legacy input format)")
    p.add_argument("--weights", "-w", required=weights_required, metavar="CAFFEMODEL",
                   help="trained weights (.caffemodel, current or V1 format)")
    p.add_argument("--input-shape", action="append", metavar="[BLOB=]N,C,H,W",
                   help="shape of a data input the net does not declare (repeatable)")
    p.add_argument("--phase", default="TEST", choices=["TRAIN", "TEST"],
                   help="which phase's layers to keep for a train_val net (default TEST)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Compress trained Caffe CNNs with VBMF-ranked Tucker "
                     "decompositions (Kim et al., ICLR 2016).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("info", help="per-layer shapes, weights and FLOPs of a net")
    _add_common_net_args(p)
    p.add_argument("--format", "-f", default="table", choices=["table", "markdown", "csv", "json"])
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write random weights drawn from each layer's fillers")
    p.add_argument("prototxt")
    p.add_argument("-o", "--output", required=True, metavar="CAFFEMODEL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", action="append", metavar="[BLOB=]N,C,H,W")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("fetch", help="download a zoo model's weights and check their SHA1")
    p.add_argument("model", help="zoo model name (alexnet, vgg_s, googlenet, vgg16)")
    p.add_argument("-o", "--output", metavar="PATH", help="where to save (default: the cache directory)")
    p.add_argument("--url", help="download from here instead of the zoo URL (e.g. a mirror or file://)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_fetch)
    return parser


def cmd_info(args) -> int:
    from .analyze import analyze
    from .read import read_net
    from .report import info_columns, render
    from .shapes import fit_weights, infer_shapes, parse_input_shapes

    net = read_net(args.prototxt, args.weights).for_state(args.phase)
    shapes = infer_shapes(net, parse_input_shapes(args.input_shape))
    if args.weights:
        net = fit_weights(net, shapes)
    result = analyze(net, shapes)
    payload = result.to_dict()
    if args.format == "json":
        sys.stdout.write(render([], [], "json", payload=payload))
        return 0
    rows = payload["layers"]
    footer = {"name": "total", **payload["total"]}
    if args.format == "table":
        inputs = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in payload["input"].items())
        print(f"model: {result.model or '(unnamed)'}   input: {inputs}"
              + (f"   upgraded: {', '.join(net.upgrades)}" if net.upgrades else ""))
    sys.stdout.write(render(info_columns(), rows, args.format, footer=footer))
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def cmd_init(args) -> int:
    from .emit import write_caffemodel
    from .fillers import init_weights
    from .read import read_prototxt
    from .shapes import parse_input_shapes

    net = init_weights(read_prototxt(args.prototxt), seed=args.seed,
                       input_shapes=parse_input_shapes(args.input_shape))
    path = write_caffemodel(net, args.output, force=args.force, inputs=[args.prototxt])
    n = sum(b.size for layer in net.layers for b in layer.blobs)
    print(f"wrote {path}: {n:,} parameters in {sum(1 for l in net.layers if l.blobs)} layers, seed {args.seed}")
    return 0


def cmd_fetch(args) -> int:
    from .zoo import fetch, sha1_of, zoo_model

    path = fetch(args.model, dest=args.output, url=args.url, force=args.force)
    if not zoo_model(args.model)["weights"].get("sha1"):
        print(f"warning: no SHA1 is published for {args.model}; saved unverified "
              f"(sha1 {sha1_of(path)})", file=sys.stderr)
    print(f"{path}")
    return 0


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
