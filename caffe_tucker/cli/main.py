"""Command-line interface: parses arguments, calls the library, prints.

Every user error is a :class:`caffe_tucker.errors.CaffeTuckerError`; it is
printed as one line on stderr and the exit status is 1.  ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from caffe_tucker import __version__
from caffe_tucker.errors import CaffeTuckerError

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


def _add_convert_args(p):
    p.add_argument("prototxt", help="deploy net definition")
    p.add_argument("--weights", "-w", metavar="CAFFEMODEL",
                   help="trained weights (default: <prototxt stem>.caffemodel beside it)")
    p.add_argument("--preset", help="which layers to compress and how: auto or a zoo model's "
                   "(alexnet, vgg_s, googlenet, vgg16, digits); default: the zoo net this is, else auto")
    p.add_argument("--layers", metavar="L1,L2", help="compress only these layers")
    p.add_argument("--ranks", metavar="FILE", help="fixed ranks per layer (ranks.json); others untouched")
    p.add_argument("--rank-method", default="vbmf", metavar="vbmf|energy:F|ratio:F",
                   help="how ranks are chosen (default vbmf)")
    p.add_argument("--weaken", type=float, default=1.0,
                   help="scale VBMF's estimated noise variance (>1 keeps fewer components)")
    p.add_argument("--input-shape", action="append", metavar="[BLOB=]N,C,H,W")


def _add_caffe_args(p):
    p.add_argument("--caffe-python", metavar="CMD",
                   help="command that runs pycaffe's Python, e.g. 'chroot /opt/caffe-root python3' "
                   "(default: $CAFFE_TUCKER_PYTHON)")
    p.add_argument("--caffe-timeout", type=float, default=600, metavar="S",
                   help="give up on a Caffe call after S seconds (default 600)")


def _convert_options(args, **extra):
    from caffe_tucker.compress.convert import ConvertOptions, load_ranks_file
    from caffe_tucker.analysis.shapes import parse_input_shapes

    return ConvertOptions(
        preset=args.preset,
        layers=tuple(x for x in args.layers.split(",") if x) if args.layers else None,
        ranks=load_ranks_file(args.ranks) if args.ranks else None,
        ranks_source=args.ranks or "ranks file",
        rank_method=args.rank_method, weaken=args.weaken,
        input_shapes=parse_input_shapes(args.input_shape), **extra)


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

    p = sub.add_parser("convert", help="compress a net: VBMF ranks, Tucker decomposition, "
                       "rewritten net and fine-tuning files")
    _add_convert_args(p)
    p.add_argument("-o", "--output", metavar="DIR",
                   help="output directory (default: <prototxt stem>_tucker/ beside the input)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty directory")
    p.add_argument("--train-val", metavar="FILE", help="your train_val prototxt, rewritten like the deploy")
    p.add_argument("--train-source", metavar="LMDB", help="training LMDB for the generated train_val")
    p.add_argument("--val-source", metavar="LMDB", help="validation LMDB for the generated train_val")
    p.add_argument("--batch-size", type=int, help="fine-tuning batch size (default: the zoo model's, else 32)")
    p.add_argument("--train-images", type=int, default=1281167,
                   help="training set size, for epochs in iterations (default: ImageNet's 1,281,167)")
    p.add_argument("--val-images", type=int, default=50000, help="validation set size (default 50,000)")
    p.add_argument("--epochs", type=float, default=15, help="fine-tuning epochs (default 15)")
    p.add_argument("--no-plot", action="store_true", help="do not draw ranks.png")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("ranks", help="only choose the ranks (what convert would write as ranks.json)")
    _add_convert_args(p)
    p.add_argument("--format", "-f", default="table", choices=["table", "markdown", "csv", "json"])
    p.set_defaults(func=cmd_ranks)

    p = sub.add_parser("verify", help="check a compressed net against the original in real Caffe")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a convert output directory, or ORIG.prototxt ORIG.caffemodel NEW.prototxt NEW.caffemodel")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="DIR", help="feed these images (preprocessed like the zoo model)")
    src.add_argument("--random", type=int, default=2, metavar="N", help="feed N random inputs (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", "-f", default="table", choices=["table", "markdown", "csv", "json"])
    _add_caffe_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("bench", help="time the original and the compressed net in real Caffe")
    p.add_argument("paths", nargs="+", metavar="PATH", help="as for verify")
    p.add_argument("--batch", default="1", metavar="B1,B2", help="batch sizes (default 1)")
    p.add_argument("--iterations", type=int, default=20, help="timed passes per repetition")
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions (medians)")
    p.add_argument("--format", "-f", default="table", choices=["table", "markdown", "csv", "json"])
    p.add_argument("--png", metavar="FILE", help="bar chart per layer (default: bench.png in the output dir)")
    _add_caffe_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("reproduce", help="convert a paper model and compare with the paper's tables")
    p.add_argument("model", help="alexnet, vgg_s, googlenet or vgg16")
    p.add_argument("--weights", "-w", metavar="CAFFEMODEL", help="the zoo weights (default: fetch them)")
    p.add_argument("--paper-ranks", action="store_true", help="use the paper's ranks instead of VBMF")
    p.add_argument("-o", "--output", metavar="DIR", help="output directory (default: MODEL_tucker/)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty directory")
    p.add_argument("--bench", action="store_true", help="also time both nets in Caffe (CPU)")
    p.add_argument("--format", "-f", default="table", choices=["table", "markdown", "csv", "json"])
    _add_caffe_args(p)
    p.set_defaults(func=cmd_reproduce)

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

    p = sub.add_parser("finetune", help="fine-tune a convert output directory in real Caffe "
                       "(caffe train), with a log, CSV and plot")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the output directory of convert")
    p.add_argument("--caffe", metavar="CMD",
                   help="command that runs the caffe binary, e.g. 'caffe', "
                   "'chroot /opt/caffe-root caffe' (OUT_DIR must then be under /opt/caffe-root) or "
                   "'docker run --rm -v \"$PWD\":/work -w /work caffe-tucker:cpu caffe'; "
                   "default: $CAFFE_TUCKER_CAFFE, else caffe")
    p.add_argument("--gpu", metavar="all|0,1", help="train on these GPUs (a GPU build of Caffe)")
    p.add_argument("--max-iter", type=int, metavar="N", help="override the solver's max_iter")
    p.add_argument("--resume", metavar="FILE.solverstate",
                   help="continue from a snapshot instead of starting from weights.caffemodel")
    p.set_defaults(func=cmd_finetune)
    return parser


def cmd_info(args) -> int:
    from caffe_tucker.analysis.cost import analyze
    from caffe_tucker.io.read import read_net
    from caffe_tucker.report.tables import info_columns, render
    from caffe_tucker.analysis.shapes import fit_weights, infer_shapes, parse_input_shapes

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


def cmd_convert(args) -> int:
    from pathlib import Path

    from caffe_tucker.compress.convert import check_out_dir, convert, write_outputs
    from caffe_tucker.report.tables import human

    options = _convert_options(
        args, train_val=args.train_val, train_source=args.train_source, val_source=args.val_source,
        batch_size=args.batch_size, train_images=args.train_images, val_images=args.val_images,
        epochs=args.epochs, spectra=not args.no_plot)
    proto = Path(args.prototxt)
    out = Path(args.output) if args.output else proto.parent / f"{proto.stem}_tucker"
    check_out_dir(out, args.force)  # fail before the work, not after
    result = convert(proto, args.weights, options)
    write_outputs(result, out, force=args.force, plot=not args.no_plot,
                  inputs=[proto, args.weights, args.train_val, args.ranks])
    t = result.report["total"]
    print(f"preset {result.preset}; compressed {len(result.decompositions)} of "
          f"{len(result.choices)} planned layers")
    for row in result.report["layers"]:
        if row["skipped_reason"]:
            print(f"  {row['name']}: untouched ({row['skipped_reason']})")
        else:
            print(f"  {row['name']}: {row['method']} ranks {row['ranks']}  "
                  f"weights {human(row['weights_before'])} -> {human(row['weights_after'])}  "
                  f"FLOPs {human(row['flops_before'])} -> {human(row['flops_after'])}  "
                  f"rel. error {row['rel_error']:.3f}")
    print(f"total: weights {human(t['weights_before'])} -> {human(t['weights_after'])} "
          f"(x{t['weights_before'] / t['weights_after']:.2f}), FLOPs {human(t['flops_before'])} -> "
          f"{human(t['flops_after'])} (x{t['flops_before'] / t['flops_after']:.2f})")
    print(f"wrote {out}/: " + ", ".join(f for f in sorted(p.name for p in out.iterdir())
                                          if not f.startswith(".")))
    return 0


def cmd_ranks(args) -> int:
    from caffe_tucker.compress.convert import choose_ranks, ranks_json
    from caffe_tucker.compress.ranks import decomposed_cost
    from caffe_tucker.report.tables import Column, dumps_json, human, render

    net, shapes, preset, choices = choose_ranks(args.prototxt, args.weights, _convert_options(args))
    if args.format == "json":
        sys.stdout.write(dumps_json(ranks_json(choices)))
        return 0
    rows = []
    for c in choices.values():
        w, f = decomposed_cost(net, shapes, c.layer, c.method, c.ranks) if min(c.ranks) else ((), ())
        rows.append({"layer": c.layer, "method": c.method, "ranks": c.ranks,
                     "groups": " ".join("/".join(map(str, r)) for r in c.group_ranks)
                     if len(c.group_ranks) > 1 else "", "full": c.full,
                     "weights": sum(w) if w else None, "flops": sum(f) if f else None,
                     "status": c.skipped_reason or "compress"})
    cols = [Column("layer", "layer"), Column("method", "method"),
            Column("ranks", "ranks", lambda v: "/".join(map(str, v))),
            Column("per group", "groups"), Column("full", "full", lambda v: "/".join(map(str, v))),
            Column("weights after", "weights", human, ">"), Column("FLOPs after", "flops", human, ">"),
            Column("status", "status")]
    if args.format == "table":
        print(f"preset {preset}")
    sys.stdout.write(render(cols, rows, args.format))
    return 0


def cmd_verify(args) -> int:
    from caffe_tucker.report.tables import Column, render
    from caffe_tucker.caffe.pycaffe import CaffeRuntime
    from caffe_tucker.caffe.verify import resolve_verify_args, verify

    o_proto, o_w, n_proto, n_w, report, preset = resolve_verify_args(args.paths)
    preprocess = None
    if preset and preset != "auto":
        from caffe_tucker.zoo import zoo_model
        preprocess = zoo_model(preset).get("preprocess")
    with CaffeRuntime(args.caffe_python, timeout=args.caffe_timeout) as rt:
        result = verify(rt, o_proto, o_w, n_proto, n_w, report, images=args.images,
                        random=args.random, seed=args.seed, preprocess=preprocess)
    if args.format == "json":
        from caffe_tucker.report.tables import dumps_json
        sys.stdout.write(dumps_json(result.to_dict()))
    else:
        fmt = lambda v: "" if v is None else f"{v:.3g}"
        pct = lambda v: "" if v is None else f"{100 * v:.1f}%"
        cols = [Column("check", "check"), Column("blob", "blob"), Column("max abs", "max_abs", fmt, ">"),
                Column("max rel", "max_rel", fmt, ">"), Column("top-1 agree", "top1_agreement", pct, ">"),
                Column("top-5 agree", "top5_agreement", pct, ">")]
        rows = [{"check": "vs original", **c.to_dict()} for c in result.approximation]
        rows += [{"check": "vs reconstruction", **c.to_dict()} for c in result.decomposition]
        print(f"inputs: {', '.join(f'{k} {chr(120).join(map(str, v))}' for k, v in result.inputs.items())}; "
              f"compressed layers: {', '.join(result.compressed_layers) or 'none'}")
        sys.stdout.write(render(cols, rows, args.format))
    print("PASSED" if result.passed else
          "FAILED: the compressed net does not compute its own decomposition (a bug, not approximation)")
    return 0 if result.passed else 1


def cmd_bench(args) -> int:
    from pathlib import Path

    from caffe_tucker.caffe.bench import bench, bench_png
    from caffe_tucker.io.fsutil import write_atomic
    from caffe_tucker.io.read import read_net
    from caffe_tucker.report.tables import Column, dumps_json, render
    from caffe_tucker.caffe.pycaffe import CaffeRuntime
    from caffe_tucker.analysis.shapes import fit_weights, infer_shapes
    from caffe_tucker.caffe.verify import _report_from_nets, resolve_verify_args

    o_proto, o_w, n_proto, n_w, report, _ = resolve_verify_args(args.paths)
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        from caffe_tucker.errors import check_param
        check_param("batch", args.batch, False, "positive integers separated by commas", "bench",
                    exc=CaffeTuckerError)
    nets = []
    for proto, w in ((o_proto, o_w), (n_proto, n_w)):
        net = read_net(proto, w).for_state("TEST")
        nets.append(fit_weights(net, infer_shapes(net)))
    report = report or _report_from_nets(*nets)
    with CaffeRuntime(args.caffe_python, timeout=args.caffe_timeout) as rt:
        result = bench(rt, nets[0], nets[1], report, batches, args.iterations, args.repeats)
    png = args.png or (Path(args.paths[0]) / "bench.png" if len(args.paths) == 1 else None)
    if png:
        write_atomic(png, bench_png(result), force=True)
    if args.format == "json":
        sys.stdout.write(dumps_json({str(b): r for b, r in result["batches"].items()}))
        return 0
    ms = lambda v: "" if v is None else f"{v:.2f}"
    x = lambda v: "" if v is None else f"x{v:.2f}"
    cols = [Column("layer", "name"), Column("method", "method", lambda v: v or ""),
            Column("original ms", "original_ms", ms, ">"), Column("compressed ms", "compressed_ms", ms, ">"),
            Column("(= parts)", "parts_ms", lambda v: "(=" + "+".join(f"{p:.2f}" for p in v) + ")" if v else ""),
            Column("speed-up", "speedup", x, ">"), Column("FLOPs ratio", "theoretical", x, ">"),
            Column("quotient", "quotient", lambda v: "" if v is None else f"{v:.2f}", ">")]
    for batch, r in result["batches"].items():
        print(f"batch {batch} (Caffe CPU, medians of {args.repeats} alternating runs x {args.iterations} passes)")
        sys.stdout.write(render(cols, r["layers"], args.format, footer={"name": "whole net", **r["total"]}))
    if png:
        print(f"wrote {png}")
    return 0


def cmd_reproduce(args) -> int:
    from caffe_tucker.report.tables import Column, dumps_json, human, render
    from caffe_tucker.compress.reproduce import reproduce

    result, cmp, out = reproduce(args.model, weights=args.weights, paper_ranks_only=args.paper_ranks,
                                 out_dir=args.output, force=args.force)
    if args.bench:
        from caffe_tucker.caffe.bench import bench
        from caffe_tucker.caffe.pycaffe import CaffeRuntime
        with CaffeRuntime(args.caffe_python, timeout=args.caffe_timeout) as rt:
            cmp["bench"] = {str(b): r for b, r in bench(
                rt, result.original, result.compressed, result.report, (1,), 10, 3)["batches"].items()}
    if args.format == "json":
        sys.stdout.write(dumps_json(cmp))
        return 0
    ranks = lambda v: "" if not v else "/".join("?" if x is None else str(x) for x in v)
    num = lambda v: "" if v is None else human(v)
    cols = [Column("layer", "layer"), Column("paper", "paper_name"), Column("method", "method"),
            Column("ranks", "ranks", ranks, ">"), Column("paper ranks", "paper_ranks", ranks, ">"),
            Column("weights", "weights_before", num, ">"), Column("paper", "paper_weights", str, ">"),
            Column("weights*", "weights_after", num, ">"), Column("paper*", "paper_weights_after", str, ">"),
            Column("FLOPs*", "flops_after", num, ">"), Column("paper*", "paper_flops_after", str, ">"),
            Column("note", "note", lambda v: v or "")]
    print(f"{args.model}: preset {result.preset}, ranks {'from the paper' if args.paper_ranks else 'by VBMF'}; "
          f"outputs in {out}/  (* = compressed)")
    sys.stdout.write(render(cols, cmp["layers"], args.format))
    t = cmp["total"]
    print(f"Table 1: weights {human(t['weights_before'])} (paper {t['paper_weights_before']}) -> "
          f"{human(t['weights_after'])} (paper {t['paper_weights_after']}), x{t['weights_ratio']:.2f} "
          f"(paper x{t['paper_weights_ratio']}); FLOPs incl. bias adds {human(t['flops_before'])} "
          f"(paper {t['paper_flops_before']}) -> {human(t['flops_after'])} (paper {t['paper_flops_after']}), "
          f"x{t['flops_ratio']:.2f} (paper x{t['paper_flops_ratio']})")
    if "bench" in cmp:
        b = cmp["bench"]["1"]["total"]
        print(f"Caffe CPU, batch 1: {b['original_ms']:.1f} ms -> {b['compressed_ms']:.1f} ms "
              f"(x{b['speedup']:.2f}; FLOPs x{b['theoretical']:.2f})")
    print(f"misprints in the paper's tables: see zoo_models/{args.model}/model.json 'errata' "
          f"({len(cmp['errata'])} entries) and the README")
    return 0


def cmd_init(args) -> int:
    from caffe_tucker.io.emit import write_caffemodel
    from caffe_tucker.io.fillers import init_weights
    from caffe_tucker.io.read import read_prototxt
    from caffe_tucker.analysis.shapes import parse_input_shapes

    net = init_weights(read_prototxt(args.prototxt), seed=args.seed,
                       input_shapes=parse_input_shapes(args.input_shape))
    path = write_caffemodel(net, args.output, force=args.force, inputs=[args.prototxt])
    n = sum(b.size for layer in net.layers for b in layer.blobs)
    print(f"wrote {path}: {n:,} parameters in {sum(1 for l in net.layers if l.blobs)} layers, seed {args.seed}")
    return 0


def cmd_fetch(args) -> int:
    from caffe_tucker.zoo import fetch, sha1_of, zoo_model

    path = fetch(args.model, dest=args.output, url=args.url, force=args.force)
    if not zoo_model(args.model)["weights"].get("sha1"):
        print(f"warning: no SHA1 is published for {args.model}; saved unverified "
              f"(sha1 {sha1_of(path)})", file=sys.stderr)
    print(f"{path}")
    return 0


def cmd_finetune(args) -> int:
    import os

    from caffe_tucker.caffe.finetune import CAFFE_ENV_VAR, finetune

    caffe_cmd = args.caffe or os.environ.get(CAFFE_ENV_VAR) or "caffe"
    r = finetune(args.out_dir, caffe_cmd, gpu=args.gpu, max_iter=args.max_iter, resume=args.resume)
    loss = "n/a" if r.final_loss is None else f"{r.final_loss:.4g}"
    acc = ("n/a" if r.final_accuracy is None
           else f"{r.final_accuracy:.4f} ({r.accuracy_name})")
    first = f" (resumed at {r.start_iteration})" if r.start_iteration else ""
    print(f"fine-tuned {r.iterations} of {r.max_iter} iterations{first} in {r.seconds:.1f} s; "
          f"final loss {loss}, final test accuracy {acc}")
    print(f"wrote {r.caffemodel or '(no snapshot: snapshot_after_train is off)'}; log, CSV and "
          f"plot: {r.log}, {r.csv}, {r.png}")
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
