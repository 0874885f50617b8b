"""Benchmark: realized Caffe CPU speed-up of the paper-rank nets, in the layout of the paper's Table 1.

    CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" \\
        python benchmarks/caffe_speed.py [alexnet vgg16 vgg16_fc] [--batch 1,8] \\
            [--iterations 10] [--repeats 3] [--threads N] [--json FILE] [--keep DIR]

For each model: random weights from `init` (seed 0; a net's time does not depend on its
weights), `convert` with the paper's ranks (``zoo_models/NAME/model.json``; ``vgg16_fc`` is
VGG-16 with its fc6-fc8 compressed too, SVD ranks 512/301/195, the `--with-fc` option), then
`bench` in real Caffe: both nets timed in alternation, medians of --repeats runs of
--iterations passes.  Prints, per model and batch, the paper's Table 1 columns that apply here
(weights, FLOPs) with this project's Caffe CPU columns: whole-net time original -> compressed,
the speed-up, the FLOPs ratio, the ceiling the untouched layers allow (every compressed layer
at its FLOPs ratio, the rest at its measured time) and the share of it realized; then the
per-layer rows (speed-up against the layer's own FLOPs ratio).  Each report states Caffe's
version, the OpenBLAS core type and the threads in force.  Figures are printed; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Extra SVD ranks of VGG-16's fully connected layers for ``vgg16_fc`` (issue 13's figures).
VGG16_FC = {"fc6": 512, "fc7": 301, "fc8": 195}


def _cli(*args, capture=True) -> str:
    out = subprocess.run([sys.executable, "-m", "caffe_tucker", *map(str, args)], cwd=ROOT,
                         check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return out.stdout if capture else ""


def paper_ranks(model: str) -> dict:
    meta = json.loads((ROOT / "zoo_models" / model / "model.json").read_text())
    ranks = {r["layer"]: r["ranks"] for r in meta["paper"]["layers"]
             if None not in (r["ranks"] if isinstance(r["ranks"], list) else [r["ranks"]])}
    return ranks


def prepare(name: str, work: Path) -> Path:
    """Random weights and the paper-rank conversion of ``name``; returns the output directory."""
    model = "vgg16" if name == "vgg16_fc" else name
    proto = ROOT / "zoo_models" / model / "deploy.prototxt"
    weights = work / f"{model}.caffemodel"
    if not weights.exists():
        _cli("init", proto, "-o", weights)
    ranks = paper_ranks(model)
    extra = []
    if name == "vgg16_fc":
        ranks.update(VGG16_FC)
        extra = ["--with-fc"]
    ranks_file = work / f"{name}_ranks.json"
    ranks_file.write_text(json.dumps(ranks))
    out = work / f"{name}_out"
    _cli("convert", proto, "--weights", weights, "--ranks", ranks_file, "-o", out, "--force",
         "--no-plot", *extra)
    return out


def measure(out: Path, batches: str, iterations: int, repeats: int, threads) -> dict:
    args = ["bench", out, "--batch", batches, "--iterations", iterations, "--repeats", repeats,
            "--format", "json", "--runtime", "caffe"]
    if threads:
        args += ["--threads", threads]
    return json.loads(_cli(*args))


def _fmt_count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def report(name: str, out: Path, result: dict) -> None:
    record = json.loads((out / "report.json").read_text())
    t = record["total"]
    print(f"\n## {name}: weights {_fmt_count(t['weights_before'])} -> "
          f"{_fmt_count(t['weights_after'])} (x{t['weights_before'] / t['weights_after']:.2f}), "
          f"FLOPs {_fmt_count(t['flops_before'])} -> {_fmt_count(t['flops_after'])} "
          f"(x{t['flops_before'] / t['flops_after']:.2f})")
    for batch, r in result.items():
        env, tot = r["environment"], r["total"]
        print(f"batch {batch}: {tot['original_ms']:.1f} -> {tot['compressed_ms']:.1f} ms, "
              f"x{tot['speedup']:.2f} of FLOPs x{tot['theoretical']:.2f} "
              f"({100 * tot['quotient']:.0f}%); ceiling x{tot['ceiling']:.2f}, realized "
              f"{100 * tot['realized']:.0f}%   [Caffe {env.get('caffe_version')}, "
              f"{env.get('blas_library')} core {env.get('blas_corename')}, threads "
              f"{env.get('threads')}]")
        for row in r["layers"]:
            if row["method"]:
                parts = "+".join(f"{p:.2f}" for p in row["parts_ms"])
                print(f"    {row['name']:<10} {row['method']:<8} {row['original_ms']:8.2f} -> "
                      f"{row['compressed_ms']:8.2f} ms (={parts})  x{row['speedup']:.2f} of "
                      f"x{row['theoretical']:.2f} ({100 * row['quotient']:.0f}%)")
        untouched = sum(row["original_ms"] for row in r["layers"] if not row["method"])
        print(f"    untouched layers: {untouched:.1f} ms of {tot['original_ms']:.1f} "
              f"({100 * untouched / tot['original_ms']:.0f}% of the original's layer time)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["alexnet", "vgg16", "vgg16_fc"])
    p.add_argument("--batch", default="1,8")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--keep", help="work in this directory (kept) instead of a temporary one")
    args = p.parse_args(argv)
    if not os.environ.get("CAFFE_TUCKER_PYTHON"):
        p.error("set CAFFE_TUCKER_PYTHON (e.g. \"chroot /opt/caffe-root python3\")")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in args.models:
            print(f"{name}: init + convert ...", file=sys.stderr, flush=True)
            out = prepare(name, work)
            print(f"{name}: bench ...", file=sys.stderr, flush=True)
            results[name] = measure(out, args.batch, args.iterations, args.repeats, args.threads)
            report(name, out, results[name])
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
