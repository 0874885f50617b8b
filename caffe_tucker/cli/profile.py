"""``profile``: time candidate layers of a net's geometries in Caffe and fit a cost model.

The model and the cache are :mod:`caffe_tucker.caffe.profile`'s; ``bench`` predicts times from
it and ``convert --rank-policy latency`` chooses ranks and methods with it.
"""

from __future__ import annotations

import sys

from caffe_tucker.cli.args import (add_caffe_runtime, add_force, add_input_shape, add_output,
                                   add_prototxt, add_weights, caffe_runtime, input_shapes, int_in,
                                   non_empty)
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.fsutil import check_output
from caffe_tucker.report.progress import Progress


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


def _kinds(args):
    from caffe_tucker.caffe.profile import layer_kinds
    from caffe_tucker.compress.plan import detect_preset, make_plan
    from caffe_tucker.model import load_model

    model = load_model(args.prototxt, args.weights, input_shapes=input_shapes(args), deploy=True)
    net, shapes = model.net, model.shapes
    plan = make_plan(net, shapes, args.preset or detect_preset(net))
    kinds = {}
    for name, method in plan.items():
        for kind, points in layer_kinds(net.layer(name), shapes.layers[name], method):
            kinds.setdefault(kind.key, (kind, set()))[1].update(points)
    if not kinds:
        raise CaffeTuckerError(f"{args.prototxt}: no Tucker-2 or Tucker-1 convolution is planned, "
                               "so there is nothing to profile; hint: check the plan with 'ranks'")
    return [(kind, sorted(points)) for kind, points in kinds.values()]


def profile_table(profile, keys=None) -> str:
    """A readable table of the fits: kind, points, a (ms), b (us per channel), c (ms per GMAC),
    residual."""
    rows = [("kind", "points", "a ms", "b us/ch", "c ms/GMAC", "residual")]
    for key, (kind, fit) in sorted(profile.fits.items()):
        if keys is not None and key not in keys:
            continue
        rows.append((key, str(len(fit.points)), f"{fit.a:.4f}", f"{fit.b * 1e3:.3f}",
                     f"{fit.c * 1e9:.2f}", f"{fit.residual:.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(r, widths))).rstrip() + "\n"
                   for r in rows)


def run(args) -> int:
    from caffe_tucker.caffe.profile import (CostProfile, cached_profile, machine_key, measure,
                                            profile_path, save_profile)

    if args.output:
        check_output(args.output, force=args.force, inputs=[args.prototxt, args.weights])
    kinds = _kinds(args)
    with caffe_runtime(args) as rt:
        hello = rt.hello()
        blas = dict(hello.get("blas") or {})
        if args.threads is not None:
            blas["threads"] = args.threads
        key = machine_key(hello, blas, args.batch)
        cached = None if args.force else cached_profile(key)
        todo = [(k, p) for k, p in kinds if cached is None or cached.fit_for(k) is None]
        repeats = 3
        if todo:
            with Progress(repeats, f"profile {len(todo)} kinds") as bar:
                fresh = measure(rt, todo, batch=args.batch, threads=args.threads,
                                iterations=args.iterations, repeats=repeats, progress=bar)
            # the threads actually in force; other nets' kinds in the file are kept
            profile = (cached_profile(fresh.machine) or CostProfile(fresh.machine)).merged(fresh)
        else:
            profile = cached
    path = save_profile(profile, profile_path(profile.machine))
    print(f"{profile.machine.describe()}: {len(kinds)} kinds "
          f"({len(todo)} measured, {len(kinds) - len(todo)} cached)")
    sys.stdout.write(profile_table(profile, {k.key for k, _ in kinds}))
    print(f"model: t = a + b*(cin + cout) + c*MACs; wrote {path}")
    if args.output:
        save_profile(profile, args.output, force=True)
        print(f"wrote {args.output}")
    return 0
