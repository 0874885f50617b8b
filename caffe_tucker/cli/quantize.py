"""``quantize``: universally quantize a (sparse) model, fine-tune its codebooks in Caffe, pack it.

Choi, El-Khamy & Lee 2018: dithered uniform quantization (or plain uniform, or k-means for
comparison) of the weights, pruned weights kept at exactly zero, the shared values fine-tuned with
the average gradient of their weights, the result in a ``.ctz`` container (``unpack`` turns it back
into a caffemodel).
"""

from __future__ import annotations

import sys
from pathlib import Path

from caffe_tucker.cli.args import (add_caffe_runtime, add_force, add_format, add_output,
                                   add_prototxt, add_seed, add_weights, caffe_runtime, float_in,
                                   int_in, names, non_empty)
from caffe_tucker.errors import InputFileError
from caffe_tucker.io.fsutil import check_output
from caffe_tucker.report.progress import Progress
from caffe_tucker.report.tables import dumps_json, human, quantize_columns, render


def add_parser(subparsers):
    p = subparsers.add_parser("quantize", help="quantize a (sparse) model universally, fine-tune "
                              "its codebooks in Caffe and pack it into a .ctz container")
    add_prototxt(p, "deploy net definition (e.g. a sparsify output's deploy.prototxt)")
    add_weights(p, "its weights (default: <prototxt stem>.caffemodel beside it)")
    add_output(p, "OUT.ctz", "the container (default: the weights' name with .ctz, beside them)")
    p.add_argument("--method", default="dithered", choices=["dithered", "uniform", "kmeans"],
                   help="dithered: universal (randomized) uniform quantization, the paper's; "
                   "uniform: plain; kmeans: a k-means codebook (default dithered)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--bits", type=int_in(1, 16), help="2^bits - 1 levels per layer (default 4)")
    target.add_argument("--step", type=float_in(0), help="one quantization step for every layer")
    target.add_argument("--rel-error", type=float_in(0), metavar="E",
                        help="per-layer step for an RMS error of E times the weights' RMS")
    p.add_argument("--layers", type=names, metavar="L1,L2",
                   help="quantize only these layers (default: every Convolution and InnerProduct)")
    p.add_argument("--codec", default="bz2", choices=["bz2", "lzma", "zlib"],
                   help="universal lossless code of the container (default bz2)")
    p.add_argument("--train-data", type=non_empty, metavar="NPZ|DIR",
                   help="training data for codebook fine-tuning (as sparsify reads it)")
    p.add_argument("--test-data", type=non_empty, metavar="NPZ|DIR",
                   help="test data: the model is measured in Caffe before and after")
    p.add_argument("--scale", type=int_in(2, 8), default=3,
                   help="super-resolution scale for image directories (default 3)")
    p.add_argument("--patch", type=int_in(8), default=41,
                   help="training patch size for image directories (default 41)")
    p.add_argument("--finetune-iterations", type=int_in(0), default=0, metavar="N",
                   help="codebook fine-tuning iterations in Caffe (default 0: none)")
    p.add_argument("--lr", type=float_in(0), default=0.1,
                   help="step of the shared values on their average gradient (default 0.1; an "
                   "entry shared by most weights, such as zero, is the most sensitive)")
    p.add_argument("--momentum", type=float_in(0.0, 1.0, low_open=False), default=0.9,
                   help="codebook momentum (default 0.9)")
    p.add_argument("--batch", type=int_in(1), default=32, help="minibatch (default 32)")
    add_seed(p)
    add_force(p, "replace an existing output")
    add_format(p)
    add_caffe_runtime(p)
    return p


def _shown(metric, value) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.2f} dB"


def run(args) -> int:
    # imported on use so that --help and the other subcommands stay quick
    from caffe_tucker.sparsity.data import load_sets
    from caffe_tucker.io.fsutil import write_atomic
    from caffe_tucker.io.read import weights_for
    from caffe_tucker.model import load_model
    from caffe_tucker.quantize.pipeline import QuantizeOptions, quantize_model

    proto = Path(args.prototxt)
    weights = weights_for(proto, args.weights)
    out = Path(args.output) if args.output else weights.with_suffix(".ctz")
    inputs = [proto, weights, args.train_data, args.test_data]
    check_output(out, args.force, inputs)  # fail before the work, not after
    if args.finetune_iterations and not (args.train_data and args.test_data):
        raise InputFileError("codebook fine-tuning needs --train-data and --test-data; hint: give "
                             "both, or drop --finetune-iterations")
    options = QuantizeOptions(method=args.method, bits=args.bits, step=args.step,
                              rel_error=args.rel_error, layers=args.layers, seed=args.seed,
                              codec=args.codec, finetune_iterations=args.finetune_iterations,
                              lr=args.lr, momentum=args.momentum, batch=args.batch)
    model = load_model(proto, weights)
    train = test = None
    if args.test_data:
        train, test = load_sets(args.train_data, args.test_data, args.scale, args.patch)
    rt = caffe_runtime(args) if test is not None else None
    try:
        with Progress(options.finetune_iterations or None, f"quantize {weights.name}") as bar:
            result = quantize_model(model, options, runtime=rt, train=train, test=test,
                                    meta={"prototxt": proto.name, "weights": weights.name},
                                    on_iteration=lambda row: bar.update(1, f"loss {row.loss:.4g}"))
    finally:
        if rt is not None:
            rt.close()
    write_atomic(out, [result.data], force=args.force, inputs=inputs)
    report = result.report
    if args.format == "json":
        sys.stdout.write(dumps_json(report.to_dict()))
        return 0
    sys.stdout.write(render(quantize_columns(), list(report.layers), args.format))
    if args.format == "table":
        s = report.sizes
        print(f"caffemodel {s['caffemodel']:,} bytes; gzip {s['gzip']:,}, bzip2 {s['bzip2']:,}, "
              f"xz {s['xz']:,}; container {s['container']:,} bytes "
              f"(x{s['caffemodel'] / s['container']:.1f} the caffemodel)")
        print(f"compression ratio as the paper counts it (32 bits x {human(report.parameters)} "
              f"parameters / coded bits): x{report.paper_ratio:.1f}")
        for stage in ("original", "quantized", "finetuned"):
            if stage in report.measures:
                print(f"{stage}: {_shown(report.metric, report.measures[stage])} (in Caffe)")
        print(f"wrote {out}")
    return 0
