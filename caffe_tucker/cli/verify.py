"""``verify``: check a compressed net against the original in real Caffe."""

from __future__ import annotations

import sys

from caffe_tucker.cli.args import (add_caffe_runtime, add_compared_nets, add_format, add_seed,
                                   caffe_runtime, int_in)
from caffe_tucker.report.tables import dumps_json, render, verify_columns


def add_parser(subparsers):
    p = subparsers.add_parser("verify", help="check a compressed net against the original in real Caffe")
    add_compared_nets(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="DIR", help="feed these images (preprocessed like the zoo model)")
    src.add_argument("--random", type=int_in(1), default=2, metavar="N", help="feed N random inputs (default 2)")
    add_seed(p)
    add_format(p)
    add_caffe_runtime(p)
    return p


def run(args) -> int:
    # caffe.verify imports compress.methods, hence tensorly and scipy (about 0.4 s): imported
    # on use so that --help and the other subcommands stay quick.
    from caffe_tucker.caffe.verify import load_pair, verify

    pair = load_pair(args.paths)
    with caffe_runtime(args) as rt:
        result = verify(rt, pair, images=args.images, random=args.random, seed=args.seed)
    if args.format == "json":
        sys.stdout.write(dumps_json(result.to_dict()))
    else:
        rows = [{"check": "vs original", **c.to_dict()} for c in result.approximation]
        rows += [{"check": "vs reconstruction", **c.to_dict()} for c in result.decomposition]
        print(f"inputs: {', '.join(f'{k} {chr(120).join(map(str, v))}' for k, v in result.inputs.items())}; "
              f"compressed layers: {', '.join(result.compressed_layers) or 'none'}")
        sys.stdout.write(render(verify_columns(), rows, args.format))
    print("PASSED" if result.passed else
          "FAILED: the compressed net does not compute its own decomposition (a bug, not approximation)")
    return 0 if result.passed else 1
