#!/usr/bin/env python3
"""Compression ratio against accuracy/PSNR: dithered vs uniform vs k-means, with and without
codebook fine-tuning, on a dense and on a jointly sparse model, measured in real Caffe.

    CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" python benchmarks/quantize_compare.py digits
    CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" python benchmarks/quantize_compare.py vdsr

For each starting model (``dense``: the trained model; ``sparse``: the output of ``sparsify``
(joint, spatial and Winograd 0.9 for digits, 0.5 for VDSR, trained first by this script, or
``--sparse DIR`` to reuse one), each method and each bit width, the model is quantized, packed
(bzip2) and measured in Caffe; ``--finetune N`` adds a run with N iterations of codebook
fine-tuning.  The ratio is the paper's ``32 bits x parameters / container bits``.  Prints a row
per run as it ends and a Markdown table, and writes ``quantize_<model>.json``/``.csv``/``.png``
beside this script (or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_data  # noqa: E402
from caffe_tucker.caffe.pycaffe import CaffeRuntime  # noqa: E402
from caffe_tucker.quantize.pipeline import QuantizeOptions, quantize_model  # noqa: E402
from caffe_tucker.sparsity.regularizer import PenaltyOptions  # noqa: E402
from caffe_tucker.sparsity.schedule import SparsifyOptions, sparsify  # noqa: E402


#: Per model: the sparsify run that makes the sparse start, and the codebook fine-tuning settings.
SPARSE = {
    "digits": SparsifyOptions(spatial=0.9, winograd=0.9, regularize_iterations=600,
                              finetune_iterations=400, batch=64, lr=0.005, finetune_lr=0.001),
    "vdsr": SparsifyOptions(spatial=0.5, winograd=0.5, regularize_iterations=150,
                            finetune_iterations=150, batch=8, lr=1e-4, finetune_lr=1e-4,
                            solver_type="Adam", penalty=PenaltyOptions(omega_lr=0.1)),
}
TUNE = {"digits": dict(lr=0.1, batch=64), "vdsr": dict(lr=1e-3, batch=8)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=["digits", "vdsr"])
    p.add_argument("--bits", default=None, help="comma-separated (default digits 2,3,4,5; vdsr 3,4,5)")
    p.add_argument("--methods", default="dithered,uniform,kmeans")
    p.add_argument("--finetune", type=int, default=None,
                   help="codebook fine-tuning iterations for the extra runs (default digits 100, "
                   "vdsr 0)")
    p.add_argument("--no-sparse", action="store_true", help="only the dense model")
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    model, train, test = (bench_data.digits() if args.model == "digits"
                          else bench_data.vdsr(Path(args.shared), 32))
    sparse_options, tune = SPARSE[args.model], TUNE[args.model]
    bits = [int(b) for b in (args.bits or ("2,3,4,5" if args.model == "digits" else "3,4,5")).split(",")]
    finetune = args.finetune if args.finetune is not None else (100 if args.model == "digits" else 0)
    rows = []
    with CaffeRuntime(timeout=3600) as rt:
        starts = {"dense": model}
        if not args.no_sparse:
            t0 = time.perf_counter()
            run = sparsify(model, train, test, sparse_options, rt)
            from dataclasses import replace
            starts["sparse"] = replace(model, net=run.deploy)
            print(f"sparsified in {time.perf_counter() - t0:.0f} s: "
                  f"{dict((m.stage, round(m.value, 4)) for m in run.measures)}", flush=True)
        for start, m in starts.items():
            original = None
            for method in args.methods.split(","):
                for b in bits:
                    for iters in sorted({0, finetune}):
                        options = QuantizeOptions(method=method, bits=b, finetune_iterations=iters,
                                                  **tune)
                        t0 = time.perf_counter()
                        res = quantize_model(m, options, runtime=rt, train=train, test=test,
                                             original=original)
                        r = res.report
                        original = r.measures.get("original")
                        row = {"model": args.model, "start": start, "method": method, "bits": b,
                               "finetune": iters, "container": r.sizes["container"],
                               "caffemodel": r.sizes["caffemodel"], "xz": r.sizes["xz"],
                               "ratio": r.paper_ratio, "metric": r.metric,
                               "original": r.measures.get("original"),
                               "quantized": r.measures.get("quantized"),
                               "finetuned": r.measures.get("finetuned"),
                               "seconds": round(time.perf_counter() - t0, 1)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    stem = Path(args.out) / f"quantize_{args.model}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metric = rows[0]["metric"]
    fmt = (lambda v: "" if v is None else f"{100 * v:.1f}%") if metric == "accuracy" else \
        (lambda v: "" if v is None else f"{v:.2f} dB")
    print(f"\n| model | method | bits | fine-tune | container bytes | ratio (paper) | {metric} | "
          f"{metric} fine-tuned |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['start']} | {r['method']} | {r['bits']} | {r['finetune'] or ''} | "
              f"{r['container']:,} | x{r['ratio']:.1f} | {fmt(r['quantized'])} | "
              f"{fmt(r['finetuned'])} |")
    print(f"original: {fmt(rows[0]['original'])}; caffemodel {rows[0]['caffemodel']:,} bytes, "
          f"xz of it {rows[0]['xz']:,}")
    _png(rows, stem.with_suffix(".png"), metric)
    return 0


def _png(rows, path, metric):
    from caffe_tucker.report.plots import png_bytes, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"dithered": "o", "uniform": "s", "kmeans": "^"}
    for start, style in (("dense", "--"), ("sparse", "-")):
        for method, marker in markers.items():
            for tuned in (False, True):
                rs = [r for r in rows if r["start"] == start and r["method"] == method
                      and bool(r["finetune"]) == tuned]
                if not rs:
                    continue
                y = [r["finetuned"] if tuned else r["quantized"] for r in rs]
                ax.plot([r["ratio"] for r in rs], y, style, marker=marker, alpha=1 if tuned else 0.5,
                        label=f"{start} {method}{' +ft' if tuned else ''}")
    ax.axhline(rows[0]["original"], color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (32 bits x parameters / container bits)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{rows[0]['model']}: universal quantization + bzip2, measured in Caffe")
    fig.tight_layout()
    Path(path).write_bytes(png_bytes(fig))


if __name__ == "__main__":
    sys.exit(main())
