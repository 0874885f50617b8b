"""``profile``: time candidate layers of a net's geometries in Caffe and fit a cost model.

The model and the cache are :mod:`caffe_tucker.caffe.profile`'s; ``bench`` predicts times from
it and ``convert --rank-policy latency`` chooses ranks and methods with it.
"""

from __future__ import annotations

import sys

from caffe_tucker.cli.args import (add_caffe_runtime, add_force, add_input_shape, add_output,
                                   add_prototxt, add_weights, caffe_runtime, input_shapes, int_in,
                                   non_empty)
from caffe_tucker.io.fsutil import check_output
from caffe_tucker.report.progress import Progress
from caffe_tucker.report.tables import profile_table


def add_parser(subparsers):
    p = subparsers.add_parser("profile", help="fit a per-machine cost model of the net's "
                              "decomposed layers in Caffe (for bench and --rank-policy latency)")
    add_prototxt(p, "deploy net definition")
    add_weights(p, "trained weights (optional: only the shapes are used)")
    p.add_argument("--preset", type=non_empty, help="which layers are planned (as for convert)")
    p.add_argument("--batch", type=int_in(1), default=1, metavar="N", help="batch size (default 1)")
    p.add_argument("--threads", type=int_in(1), metavar="N",
                   help="OpenBLAS threads in Caffe while timing (default: Caffe's own)")
    p.add_argument("--iterations", type=int_in(1), default=20, help="timed passes per repetition (default 20)")
    add_input_shape(p, "shape of a data input the net does not declare (repeatable)")
    add_output(p, "OUT.json", "also write the profile here (it is always cached)")
    add_force(p, "measure every kind again (default: reuse the cached ones) and overwrite -o")
    add_caffe_runtime(p)
    return p


def run(args) -> int:
    from caffe_tucker.caffe.profile import plan_kinds, profile_kinds, save_profile
    from caffe_tucker.compress.plan import detect_preset, make_plan
    from caffe_tucker.model import load_model

    if args.output:
        check_output(args.output, force=args.force, inputs=[args.prototxt, args.weights])
    model = load_model(args.prototxt, args.weights, input_shapes=input_shapes(args), deploy=True)
    kinds = plan_kinds(model.net, model.shapes,
                       make_plan(model.net, model.shapes, args.preset or detect_preset(model.net)))
    with caffe_runtime(args) as rt:
        done = profile_kinds(rt, kinds, batch=args.batch, threads=args.threads,
                             iterations=args.iterations, force=args.force,
                             progress=lambda n, k: Progress(n, f"profile {k} kinds"))
    print(f"{done.profile.machine.describe()}: {len(kinds)} kinds "
          f"({done.measured} measured, {len(kinds) - done.measured} cached)")
    sys.stdout.write(profile_table(done.profile, done.keys))
    print(f"model: t = a + b*(cin + cout) + c*MACs; wrote {done.path}")
    if args.output:
        save_profile(done.profile, args.output, force=True)
        print(f"wrote {args.output}")
    return 0
