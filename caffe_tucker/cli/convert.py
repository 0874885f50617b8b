"""``convert``: compress a net and write the compressed net, its weights and fine-tuning files."""

from __future__ import annotations

import sys
from pathlib import Path

from caffe_tucker.cli.args import (add_compression, add_force, add_output, convert_options, float_in,
                                   int_in, non_empty)
from caffe_tucker.io.fsutil import check_out_dir
from caffe_tucker.report.tables import human


def add_parser(subparsers):
    p = subparsers.add_parser("convert", help="compress a net: VBMF ranks, Tucker decomposition, "
                              "rewritten net and fine-tuning files")
    add_compression(p)
    add_output(p, "DIR", "output directory (default: <prototxt stem>_tucker/ beside the input)")
    add_force(p, "write into an existing non-empty directory")
    p.add_argument("--train-val", type=non_empty, metavar="FILE", help="your train_val prototxt, rewritten like the deploy")
    p.add_argument("--train-source", type=non_empty, metavar="LMDB", help="training LMDB for the generated train_val")
    p.add_argument("--val-source", type=non_empty, metavar="LMDB", help="validation LMDB for the generated train_val")
    p.add_argument("--batch-size", type=int_in(1), help="fine-tuning batch size (default: the zoo model's, else 32)")
    p.add_argument("--train-images", type=int_in(1), default=1281167,
                   help="training set size, for epochs in iterations (default: ImageNet's 1,281,167)")
    p.add_argument("--val-images", type=int_in(1), default=50000, help="validation set size (default 50,000)")
    p.add_argument("--epochs", type=float_in(0), default=15, help="fine-tuning epochs (default 15)")
    p.add_argument("--no-plot", action="store_true", help="do not draw ranks.png")
    # -- issue 13: the rank policy (compress/policy.py) and its cost profile (profile)
    p.add_argument("--rank-policy", default="vbmf", choices=["vbmf", "latency"],
                   help="vbmf (default): VBMF's ranks as they are; latency: per layer the fastest "
                   "of rounded ranks, Tucker-1 or the original layer at no higher error, as a "
                   "cost profile predicts (run 'profile' first)")
    p.add_argument("--profile", type=non_empty, metavar="FILE",
                   help="the cost profile for --rank-policy latency (default: the newest cached "
                   "one of this CPU)")
    return p


def run(args) -> int:
    # compress.convert imports tensorly and scipy (about 0.4 s): imported on use so that
    # --help and the other subcommands stay quick.
    from caffe_tucker.compress.convert import convert, write_outputs

    options = convert_options(
        args, train_val=args.train_val, train_source=args.train_source, val_source=args.val_source,
        batch_size=args.batch_size, train_images=args.train_images, val_images=args.val_images,
        epochs=args.epochs, spectra=not args.no_plot,
        rank_policy=args.rank_policy, profile=args.profile)
    proto = Path(args.prototxt)
    out = Path(args.output) if args.output else proto.parent / f"{proto.stem}_tucker"
    inputs = [proto, args.weights, args.train_val, args.ranks, args.profile]
    check_out_dir(out, args.force, inputs)  # fail before the work, not after
    result = convert(proto, args.weights, options)
    for problem in result.original.shapes.problems:
        print(f"warning: {problem}", file=sys.stderr)
    write_outputs(result, out, force=args.force, plot=not args.no_plot, inputs=inputs)
    record, t = result.record, result.record.total
    print(f"preset {result.preset}; compressed {len(record.compressed)} of "
          f"{len(record.layers)} planned layers")
    for row in record.layers:
        if not row.compressed:
            print(f"  {row.name}: untouched ({row.skipped_reason})")
        else:
            print(f"  {row.name}: {row.method} ranks {list(row.ranks)}  "
                  f"weights {human(row.weights_before)} -> {human(row.weights_after)}  "
                  f"FLOPs {human(row.flops_before)} -> {human(row.flops_after)}  "
                  f"rel. error {row.rel_error:.3f}")
        if row.policy:  # issue 13
            p = row.policy
            print(f"    latency policy: {p.decision}; predicted {p.chosen_ms:.3f} ms "
                  f"(VBMF's {p.vbmf_ms:.3f} ms, original {p.original_ms:.3f} ms)")
    print(f"total: weights {human(t.weights_before)} -> {human(t.weights_after)} "
          f"(x{t.weights_ratio:.2f}), FLOPs {human(t.flops_before)} -> "
          f"{human(t.flops_after)} (x{t.flops_ratio:.2f})")
    print(f"wrote {out}/: " + ", ".join(f for f in sorted(p.name for p in out.iterdir())
                                          if not f.startswith(".")))
    return 0
