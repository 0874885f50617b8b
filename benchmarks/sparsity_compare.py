#!/usr/bin/env python3
"""Joint spatial/Winograd sparsity against spatial-only pruning, measured in real Caffe.

    CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" python benchmarks/sparsity_compare.py digits
    CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" python benchmarks/sparsity_compare.py vdsr

For each spatial sparsity ``r`` the same model is trained twice with the same budget of
iterations: (a) ``spatial`` - plain training, magnitude pruning to ``r`` per layer, fine-tuning
with masks; (b) ``joint`` - the partial-L2 penalties in both domains, the same pruning and
fine-tuning.  Both are then deployed in the Winograd domain F(2x2,3x3) with the filters pruned
to the same Winograd sparsity ``r`` (``--winograd`` to choose another), and measured in Caffe:
the sparse spatial model and the Winograd-pruned three-layer form.  ``natural`` is the share of
exact zeros that ``G g G^T`` of the sparse spatial filters has before any Winograd pruning.

digits: scikit-learn's digits split (``zoo_models/digits/train.py``), accuracy on its 500 test
images.  vdsr: ``../shared/models/vdsr`` trained on Set14 patches, PSNR on Set5 (x3, Y channel).
Prints a row per run as it ends, then a Markdown table, and writes ``sparsity_<model>.json``/``.csv``/``.png`` beside this script (or
``--out DIR``).  Figures go to the README by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_data  # noqa: E402
from caffe_tucker.caffe.pycaffe import CaffeRuntime  # noqa: E402
from caffe_tucker.sparsity.record import sparsity_record  # noqa: E402
from caffe_tucker.sparsity.regularizer import PenaltyOptions  # noqa: E402
from caffe_tucker.sparsity.schedule import SparsifyOptions, sparsify  # noqa: E402


#: Per model: the schedule both methods get.
SCHEDULES = {
    "digits": dict(regularize_iterations=1000, finetune_iterations=1000, batch=64, lr=0.005,
                   finetune_lr=0.001, momentum=0.9, weight_decay=0.0),
    "vdsr": dict(regularize_iterations=150, finetune_iterations=150, batch=8, lr=1e-4,
                 finetune_lr=1e-4, momentum=0.9, weight_decay=0.0, solver_type="Adam"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=["digits", "vdsr"])
    p.add_argument("--spatial", default=None, help="comma-separated spatial sparsities "
                   "(default digits 0.5,0.7,0.9; vdsr 0.5)")
    p.add_argument("--winograd", type=float, help="Winograd sparsity (default: the spatial one)")
    p.add_argument("--iterations", default=None, metavar="N1,N2",
                   help="regularize and fine-tune iterations (default digits 1000,1000; vdsr 150,150)")
    p.add_argument("--omega-lr", type=float, default=None,
                   help="the coefficients' step (default digits 0.02, vdsr 0.1: a shorter ramp)")
    p.add_argument("--methods", default="spatial,joint", help="which of spatial,joint to run")
    p.add_argument("--patch", type=int, default=32, help="vdsr training patch (default 32)")
    p.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared folder")
    p.add_argument("--out", default=str(HERE), help="where the JSON/CSV/PNG go")
    args = p.parse_args(argv)
    model, train, test = (bench_data.digits() if args.model == "digits"
                          else bench_data.vdsr(Path(args.shared), args.patch))
    base = dict(SCHEDULES[args.model])
    levels = [float(x) for x in (args.spatial or ("0.5,0.7,0.9" if args.model == "digits"
                                                  else "0.5")).split(",")]
    if args.iterations:
        n1, n2 = (int(x) for x in args.iterations.split(","))
        base.update(regularize_iterations=n1, finetune_iterations=n2)
    omega_lr = args.omega_lr or (0.02 if args.model == "digits" else 0.1)
    rows = []
    with CaffeRuntime(timeout=3600) as rt:
        for r in levels:
            for method in args.methods.split(","):
                w = args.winograd if args.winograd is not None else r
                options = SparsifyOptions(method=method, spatial=r, winograd=w, tile=2,
                                          penalty=PenaltyOptions(omega_lr=omega_lr), **base)
                t0 = time.perf_counter()
                result = sparsify(model, train, test, options, rt)
                seconds = time.perf_counter() - t0
                rec = sparsity_record(result, args.model)
                wl = [l for l in rec.layers if l.winograd]
                natural = (sum(l.winograd_natural * np.prod(l.shape) for l in wl)
                           / sum(np.prod(l.shape) for l in wl))
                t = rec.totals()
                row = {"model": args.model, "spatial": r, "winograd": w, "method": method,
                       "metric": test.metric, "original": rec.measure("original"),
                       "pruned": rec.measure("pruned"), "sparse": rec.measure("sparse"),
                       "winograd_pruned": rec.measure("winograd"), "natural": float(natural),
                       "spatial_speedup": t["spatial_speedup"],
                       "winograd_speedup": t["winograd_speedup"], "seconds": round(seconds, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    stem = out / f"sparsity_{args.model}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fmt = (lambda v: f"{100 * v:.1f}%") if test.metric == "accuracy" else (lambda v: f"{v:.2f} dB")
    print(f"\n| spatial zeros | method | {test.metric} pruned | sparse (spatial) | Winograd zeros "
          f"(natural) | Winograd zeros (deployed) | {test.metric} Winograd | mults x less "
          "(spatial / Winograd) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {100 * r['spatial']:.0f}% | {r['method']} | {fmt(r['pruned'])} | "
              f"{fmt(r['sparse'])} | {100 * r['natural']:.1f}% | {100 * r['winograd']:.0f}% | "
              f"{fmt(r['winograd_pruned'])} | {r['spatial_speedup']:.2f} / "
              f"{r['winograd_speedup']:.2f} |")
    print(f"original: {fmt(rows[0]['original'])}")
    _png(rows, stem.with_suffix(".png"), test.metric)
    return 0


def _png(rows, path, metric):
    from caffe_tucker.report.plots import png_bytes, pyplot

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for method, style in (("spatial", "o--"), ("joint", "s-")):
        rs = [r for r in rows if r["method"] == method]
        x = [100 * r["spatial"] for r in rs]
        a.plot(x, [r["natural"] * 100 for r in rs], style, label=f"{method}: natural Winograd zeros")
        b.plot(x, [r["sparse"] for r in rs], style, label=f"{method}: spatial model")
        b.plot(x, [r["winograd_pruned"] for r in rs], style, alpha=0.6,
               label=f"{method}: Winograd-pruned")
    a.set_xlabel("spatial zeros (%)")
    a.set_ylabel("zeros of G g G^T (%)")
    a.legend(fontsize=8)
    b.set_xlabel("spatial zeros (%)")
    b.set_ylabel(metric)
    b.legend(fontsize=8)
    fig.suptitle(f"{rows[0]['model']}: joint vs spatial-only sparsity (measured in Caffe)")
    fig.tight_layout()
    Path(path).write_bytes(png_bytes(fig))


if __name__ == "__main__":
    sys.exit(main())
