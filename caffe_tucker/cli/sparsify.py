"""``sparsify``: train a net sparse in the spatial and the Winograd domain, in real Caffe.

Choi, El-Khamy & Lee 2018: regularized training -> prune -> fine-tune with masks; writes the
sparse caffemodel, the Winograd-pruned three-layer form, the report and the curves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from caffe_tucker.cli.args import (add_caffe_runtime, add_force, add_format, add_output,
                                   add_prototxt, add_seed, add_weights, caffe_runtime, float_in,
                                   fraction,
                                   int_in, names, non_empty)
from caffe_tucker.errors import OutputExistsError
from caffe_tucker.io.fsutil import check_out_dir
from caffe_tucker.report.progress import Progress
from caffe_tucker.report.tables import dumps_json, human, measure_columns, render, sparsify_columns


def add_parser(subparsers):
    p = subparsers.add_parser(
        "sparsify", help="train a net sparse in both the spatial and the Winograd domain "
        "(Choi et al. 2018) in real Caffe")
    add_prototxt(p, "deploy net definition")
    add_weights(p, "trained weights (default: <prototxt stem>.caffemodel beside it)")
    p.add_argument("--train-data", required=True, type=non_empty, metavar="NPZ|DIR",
                   help="training data: an .npz with one array per input of the net and 'label', "
                   "or a directory of images for super-resolution (with --scale)")
    p.add_argument("--test-data", required=True, type=non_empty, metavar="NPZ|DIR",
                   help="test data: an .npz with 'data' and 'label' (accuracy for class labels, "
                   "PSNR for images), or a directory of images (PSNR, with --scale)")
    p.add_argument("--scale", type=int_in(2, 8), default=3,
                   help="super-resolution scale for image directories (default 3)")
    p.add_argument("--patch", type=int_in(8), default=41,
                   help="training patch size for image directories (default 41)")
    p.add_argument("--train-val", type=non_empty, metavar="FILE",
                   help="train net with Input layers and a loss (default: built from the deploy "
                   "net: SoftmaxWithLoss for class labels, EuclideanLoss for images)")
    p.add_argument("--method", default="joint", choices=["joint", "spatial"],
                   help="joint: penalties in both domains (the paper); spatial: magnitude pruning "
                   "and fine-tuning only (the baseline) (default joint)")
    p.add_argument("--spatial", type=fraction, default=0.7, metavar="R",
                   help="spatial sparsity per layer, fraction of zeros (default 0.7)")
    p.add_argument("--winograd", type=fraction, default=0.6, metavar="R",
                   help="Winograd-domain sparsity per stride-1 3x3 layer (default 0.6)")
    p.add_argument("--tile", type=int, choices=[2, 4], default=2,
                   help="Winograd output tile m of F(m x m, 3 x 3) (default 2)")
    p.add_argument("--regularize-iterations", type=int_in(0), default=1000, metavar="N",
                   help="phase 1: iterations of regularized training (default 1000)")
    p.add_argument("--finetune-iterations", type=int_in(0), default=1000, metavar="N",
                   help="phase 3: iterations of fine-tuning with masks (default 1000)")
    p.add_argument("--batch", type=int_in(1), default=32, help="minibatch (default 32)")
    p.add_argument("--lr", type=float_in(0), default=1e-3, help="learning rate of phase 1 (default 1e-3)")
    p.add_argument("--finetune-lr", type=float_in(0), metavar="LR",
                   help="learning rate of phase 3 (default: --lr)")
    p.add_argument("--momentum", type=float_in(0.0, 1.0, low_open=False), default=0.9,
                   help="solver momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float_in(0.0, low_open=False), default=0.0,
                   help="solver weight decay (default 0)")
    p.add_argument("--solver-type", choices=["SGD", "Nesterov", "Adam"], default="SGD",
                   help="Caffe solver (default SGD)")
    p.add_argument("--clip-gradients", type=float_in(0), metavar="NORM",
                   help="Caffe's clip_gradients (off by default)")
    p.add_argument("--coefficient-init", type=float_in(0), default=1e-3, metavar="C",
                   help="both penalty coefficients' start exp(w0) (default 1e-3)")
    p.add_argument("--omega-lr", type=float_in(0), default=0.02, metavar="ETA",
                   help="step of the learnt log-coefficients (default 0.02)")
    p.add_argument("--coefficient-target", type=float_in(0), default=1.0, metavar="C",
                   help="where the coefficients settle while the penalties have not fallen: "
                   "a = C * R(w_0) (default 1)")
    p.add_argument("--layers", type=names, metavar="L1,L2",
                   help="sparsify only these layers (default: every Convolution and InnerProduct)")
    p.add_argument("--eval-every", type=int_in(0), default=0, metavar="N",
                   help="also measure on the test data every N iterations (default: only at the "
                   "ends of the phases)")
    p.add_argument("--checkpoint-every", type=int_in(1), default=100, metavar="N",
                   help="save a checkpoint every N iterations (default 100)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint")
    add_seed(p)
    add_output(p, "DIR", "output directory (default: <prototxt stem>_sparse/ beside the input)")
    add_force(p, "replace an existing output directory")
    p.add_argument("--no-plot", action="store_true", help="do not draw sparsify.png")
    add_format(p)
    add_caffe_runtime(p)
    return p


def _shown(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.2f} dB"


def run(args) -> int:
    # imported on use so that --help and the other subcommands stay quick.
    from caffe_tucker.io.read import read_net, weights_for
    from caffe_tucker.model import load_model
    from caffe_tucker.sparsity.data import load_sets
    from caffe_tucker.sparsity.outputs import write_outputs
    from caffe_tucker.sparsity.record import sparsity_record
    from caffe_tucker.sparsity.regularizer import PenaltyOptions
    from caffe_tucker.sparsity.schedule import (STATE_FILE, SparsifyOptions, prepare_train_net,
                                               sparsify)

    proto = Path(args.prototxt)
    weights = weights_for(proto, args.weights, " (sparsify starts from a trained model)")
    out = Path(args.output) if args.output else proto.parent / f"{proto.stem}_sparse"
    inputs = [proto, weights, args.train_val, args.train_data, args.test_data]
    check_out_dir(out, args.force, inputs)  # fail before the work, not after
    options = SparsifyOptions(
        method=args.method, spatial=args.spatial, winograd=args.winograd, tile=args.tile,
        regularize_iterations=args.regularize_iterations,
        finetune_iterations=args.finetune_iterations, batch=args.batch, lr=args.lr,
        finetune_lr=args.finetune_lr, momentum=args.momentum, weight_decay=args.weight_decay,
        solver_type=args.solver_type, clip_gradients=args.clip_gradients, seed=args.seed,
        layers=args.layers, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        penalty=PenaltyOptions(coefficient_init=args.coefficient_init, omega_lr=args.omega_lr,
                               coefficient_target=args.coefficient_target))
    model = load_model(proto, weights)
    train, test = load_sets(args.train_data, args.test_data, args.scale, args.patch)
    train_net = read_net(args.train_val).for_state("TRAIN") if args.train_val else None
    train_net = prepare_train_net(model, train, test, options, train_net)  # before Caffe starts
    work = out.parent / f".{out.name}.sparsify-work"
    if (work / STATE_FILE).is_file() and not (args.resume or args.force):
        raise OutputExistsError(f"{work}: an interrupted run's checkpoint is there; hint: pass "
                                "--resume to continue it, or --force to start afresh")
    total = options.total_iterations
    rt = caffe_runtime(args)
    try:
        with Progress(total, f"sparsify {proto.name}", unit="") as bar:
            def on_iteration(row):
                bar.update(1, f"{row.phase} loss {row.loss:.4g}")

            def on_stage(stage):
                bar.set_note(stage)

            result = sparsify(model, train, test, options, rt, train_net=train_net,
                              work_dir=work, resume=args.resume, on_iteration=on_iteration,
                              on_stage=on_stage)
    finally:
        rt.close()
    record = sparsity_record(result, proto.name)
    write_outputs(result, record, out, force=args.force, plot=not args.no_plot, inputs=inputs)
    if args.format == "json":
        sys.stdout.write(dumps_json(record.to_dict()))
        return 0
    t = record.totals()
    sys.stdout.write(render(sparsify_columns(), record.rows(), args.format))
    rows = [dict(m.to_dict(), shown=_shown(m.metric, m.value)) for m in record.measures]
    sys.stdout.write(render(measure_columns(), rows, args.format))
    if args.format == "table":
        print(f"multiplies per image: dense {human(t['spatial_dense'])}, sparse spatial "
              f"{human(t['spatial_sparse'])} (x{t['spatial_speedup'] or 0:.2f} less), sparse "
              f"Winograd {human(t['winograd_sparse'])} (x{t['winograd_speedup'] or 0:.2f} less); "
              f"Winograd form vs spatial in Caffe: max rel. error {record.form_error:.2g}")
        print(f"wrote {out}/: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0
