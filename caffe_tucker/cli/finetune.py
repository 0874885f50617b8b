"""``finetune``: fine-tune a convert output directory in real Caffe (``caffe train``)."""

from __future__ import annotations

import os

from caffe_tucker.caffe.finetune import CAFFE_ENV_VAR, finetune
from caffe_tucker.cli.args import int_in

def add_parser(subparsers):
    p = subparsers.add_parser("finetune", help="fine-tune a convert output directory in real Caffe "
                              "(caffe train), with a log, CSV and plot")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the output directory of convert")
    p.add_argument("--caffe", metavar="CMD",
                   help="command that runs the caffe binary, e.g. 'caffe', "
                   "'chroot /opt/caffe-root caffe' (OUT_DIR must then be under /opt/caffe-root) or "
                   "'docker run --rm -v \"$PWD\":/work -w /work caffe-tucker:cpu caffe'; "
                   "default: $CAFFE_TUCKER_CAFFE, else caffe")
    p.add_argument("--gpu", metavar="all|0,1", help="train on these GPUs (a GPU build of Caffe)")
    p.add_argument("--max-iter", type=int_in(1), metavar="N", help="override the solver's max_iter")
    p.add_argument("--resume", metavar="FILE.solverstate",
                   help="continue from a snapshot instead of starting from weights.caffemodel "
                   "(replaces the earlier run's log, CSV, plot and finetuned.caffemodel)")
    p.add_argument("--force", action="store_true",
                   help="replace the log, CSV, plot and finetuned.caffemodel of an earlier run")
    return p


def run(args) -> int:
    caffe_cmd = args.caffe or os.environ.get(CAFFE_ENV_VAR) or "caffe"
    # An interrupt (FinetuneInterrupted) carries where Caffe stopped; main prints it.
    r = finetune(args.out_dir, caffe_cmd, gpu=args.gpu, max_iter=args.max_iter,
                 resume=args.resume, force=args.force)
    loss = "n/a" if r.final_loss is None else f"{r.final_loss:.4g}"
    acc = ("n/a" if r.final_accuracy is None
           else f"{r.final_accuracy:.4f} ({r.accuracy_name})")
    first = f" (resumed at {r.start_iteration})" if r.start_iteration else ""
    print(f"fine-tuned {r.iterations} of {r.max_iter} iterations{first} in {r.seconds:.1f} s; "
          f"final loss {loss}, final test accuracy {acc}")
    made = ", ".join(str(p) for p in (r.log, r.csv, r.png) if p is not None)
    print(f"wrote {r.caffemodel or '(no snapshot: snapshot_after_train is off)'}; log, CSV and "
          f"plot: {made}")
    return 0
