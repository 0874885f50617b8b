"""``ranks``: only choose the ranks (what ``convert`` would write as ranks.json)."""

from __future__ import annotations

import sys

from caffe_tucker.cli.args import add_compression, add_format, convert_options
from caffe_tucker.report.tables import dumps_json, ranks_columns, render


def add_parser(subparsers):
    p = subparsers.add_parser("ranks", help="only choose the ranks (what convert would write as ranks.json)")
    add_compression(p)
    add_format(p)
    return p


def run(args) -> int:
    # compress.convert and compress.ranks import tensorly and scipy (about 0.4 s): imported on
    # use so that --help and the other subcommands stay quick.
    from caffe_tucker.compress.convert import choose_ranks
    from caffe_tucker.compress.methods import get_method
    from caffe_tucker.compress.ranks import ranks_json

    model, preset, choices = choose_ranks(args.prototxt, args.weights, convert_options(args))
    if args.format == "json":
        sys.stdout.write(dumps_json(ranks_json(choices)))
        return 0
    rows = []
    for c in choices.values():
        w, f = (get_method(c.method).cost(model.net.layer(c.layer), model.shapes.layers[c.layer],
                                          c.ranks) if min(c.ranks) else ((), ()))
        rows.append({"layer": c.layer, "method": c.method, "ranks": c.ranks,
                     "groups": " ".join("/".join(map(str, r)) for r in c.group_ranks)
                     if len(c.group_ranks) > 1 else "", "full": c.full,
                     "weights": sum(w) if w else None, "flops": sum(f) if f else None,
                     "status": c.skipped_reason or "compress"})
    if args.format == "table":
        print(f"preset {preset}")
    sys.stdout.write(render(ranks_columns(), rows, args.format))
    return 0
