"""``reproduce``: convert a paper model and compare with the paper's tables."""

from __future__ import annotations

import sys
from pathlib import Path

from caffe_tucker.caffe.bench import bench
from caffe_tucker.cli.args import (add_caffe_runtime, add_force, add_format, add_output, add_weights,
                                   caffe_runtime, non_empty)
from caffe_tucker.io.fsutil import check_out_dir
from caffe_tucker.report.tables import dumps_json, human, render, reproduce_columns


def add_parser(subparsers):
    p = subparsers.add_parser("reproduce", help="convert a paper model and compare with the paper's tables")
    p.add_argument("model", type=non_empty, help="alexnet, vgg_s, googlenet or vgg16")
    add_weights(p, "the zoo weights (default: fetch them)")
    p.add_argument("--paper-ranks", action="store_true", help="use the paper's ranks instead of VBMF")
    p.add_argument("--method", metavar="METHOD",
                   help="compress the preset's layers with METHOD and compare with that method's "
                   "paper (vgg16: btd, Wang & Cheng 2016); default: Kim et al.'s methods")
    add_output(p, "DIR", "output directory (default: MODEL_tucker/)")
    add_force(p, "write into an existing non-empty directory")
    p.add_argument("--bench", action="store_true", help="also time both nets in Caffe (CPU)")
    add_format(p)
    add_caffe_runtime(p)
    return p


def run(args) -> int:
    # compress.reproduce imports tensorly and scipy (about 0.4 s): imported on use so that
    # --help and the other subcommands stay quick.
    from caffe_tucker.caffe.verify import load_pair
    from caffe_tucker.compress.reproduce import reproduce

    out_dir = Path(args.output or f"{args.model}_tucker")
    check_out_dir(out_dir, args.force, [args.weights])  # fail before the fetch and the work
    result, cmp, out = reproduce(args.model, weights=args.weights, paper_ranks_only=args.paper_ranks,
                                 out_dir=out_dir, force=args.force, method=args.method)
    if args.bench:
        with caffe_runtime(args) as rt:
            cmp["bench"] = {str(b): r for b, r in bench(
                rt, load_pair([out]), (1,), 10, 3)["batches"].items()}
    if args.format == "json":
        sys.stdout.write(dumps_json(cmp))
        return 0
    method = f", method {args.method}" if args.method else ""
    print(f"{args.model}: preset {result.preset}{method}, ranks "
          f"{'from the paper' if args.paper_ranks else 'by VBMF'}; outputs in {out}/  (* = compressed)")
    sys.stdout.write(render(reproduce_columns(), cmp["layers"], args.format))
    t = cmp["total"]
    if "paper_conv_flops_ratio" in t:  # another paper's totals: convolutions and whole-net ratio
        print(f"convolution multiply-adds {human(t['conv_flops_before'])} (paper "
              f"{t['paper_conv_flops_before']}) -> {human(t['conv_flops_after'])} (paper "
              f"{t['paper_conv_flops_after']}), x{t['conv_flops_ratio']:.1f} (paper "
              f"x{t['paper_conv_flops_ratio']}); whole net x{t['flops_ratio']:.1f} (paper "
              f"x{t['paper_flops_ratio']}); weights {human(t['weights_before'])} -> "
              f"{human(t['weights_after'])} (x{t['weights_ratio']:.2f})")
    else:
        print(f"Table 1: weights {human(t['weights_before'])} (paper {t['paper_weights_before']}) "
              f"-> {human(t['weights_after'])} (paper {t['paper_weights_after']}), "
              f"x{t['weights_ratio']:.2f} (paper x{t['paper_weights_ratio']}); FLOPs incl. bias "
              f"adds {human(t['flops_before'])} (paper {t['paper_flops_before']}) -> "
              f"{human(t['flops_after'])} (paper {t['paper_flops_after']}), "
              f"x{t['flops_ratio']:.2f} (paper x{t['paper_flops_ratio']})")
    if "bench" in cmp:
        b = cmp["bench"]["1"]["total"]
        print(f"Caffe CPU, batch 1: {b['original_ms']:.1f} ms -> {b['compressed_ms']:.1f} ms "
              f"(x{b['speedup']:.2f}; FLOPs x{b['theoretical']:.2f})")
    print(f"misprints in the paper's tables: see zoo_models/{args.model}/model.json 'errata' "
          f"({len(cmp['errata'])} entries) and the README")
    return 0
