"""``verify``: check a compressed net against the original in real Caffe.

Exit status: 0 when no check failed (PASSED, or MEASURED with ``--tuned``, where nothing is
judged), 2 when the decomposition check FAILED, 1 for bad input (one line on stderr).
"""

from __future__ import annotations

import sys

from caffe_tucker.caffe.runtimes import RUNTIMES
from caffe_tucker.cli.args import (add_caffe_runtime, add_compared_nets, add_format, add_seed,
                                   caffe_runtime, int_in)
from caffe_tucker.report.progress import Progress
from caffe_tucker.report.tables import dumps_json, render, verify_columns

#: Exit status of a verify whose decomposition check failed (bad input is 1).
EXIT_FAILED = 2


def add_parser(subparsers):
    p = subparsers.add_parser("verify", help="check a compressed net against the original in real Caffe (or OpenCV)")
    add_compared_nets(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="DIR", help="feed these images (preprocessed like the zoo model)")
    src.add_argument("--random", type=int_in(1), default=2, metavar="N", help="feed N random inputs (default 2)")
    p.add_argument("--tuned", action="store_true",
                   help="the compressed weights are fine-tuned: OUT_DIR/finetuned.caffemodel, or "
                   "the NEW.caffemodel given; measures the approximation, skips the decomposition "
                   "check (fine-tuning changes the factors)")
    add_seed(p)
    add_format(p)
    add_caffe_runtime(p, RUNTIMES)
    return p


def run(args) -> int:
    # caffe.verify imports compress.methods, hence tensorly and scipy (about 0.4 s): imported
    # on use so that --help and the other subcommands stay quick.
    from caffe_tucker.caffe.verify import load_pair, verify, verify_passes

    pair = load_pair(args.paths, tuned=args.tuned)
    # A bar on stderr when it is a terminal: one step per forward pass in Caffe (issue 14).
    with caffe_runtime(args) as rt, Progress(verify_passes(pair), "verify") as bar:
        result = verify(rt, pair, images=args.images, random=args.random, seed=args.seed,
                        progress=bar)
        runtime = rt.hello() if hasattr(rt, "hello") else {}
    if args.format == "json":
        data = result.to_dict()
        data["runtime"] = {"name": runtime.get("runtime", "caffe"),
                           "version": runtime.get("version", runtime.get("caffe_version"))}
        sys.stdout.write(dumps_json(data))
    else:
        shown = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in result.inputs.items())
        tuned = " (fine-tuned)" if result.tuned else ""
        print(f"inputs: {shown}; compressed layers: {', '.join(result.compressed_layers) or 'none'}; "
              f"weights: {result.weights}{tuned}")
        if result.part:
            print(result.part)
        sys.stdout.write(render(verify_columns(), result.rows(), args.format))
        print(result.verdict_line())
    return 0 if result.passed else EXIT_FAILED
