"""Benchmark: conversion time and peak memory per zoo architecture (random weights).

    python benchmarks/convert_bench.py [alexnet vgg_s googlenet vgg16] [--vbmf]
    python benchmarks/convert_bench.py alexnet --against OLD_SRC [--repeat 3]

For each model: random weights from `init` (seed 0), then `convert` with the
paper's ranks (random weights carry no low-rank signal, so VBMF would keep
nothing and there would be nothing to decompose), timed by stage: read,
rank selection, decomposition, rewrite + analysis, write.  With --vbmf the
rank-selection stage runs VBMF on every planned layer instead of taking the
paper's ranks (the time VBMF needs on these shapes; its ranks are 0).
Each model runs in its own process so that its peak RSS is its own.
With --against OLD_SRC (a source tree of another version, e.g. from
``git archive REV | tar -x -C OLD_SRC``) each model is converted alternately
by that version and this one, --repeat times each, and the medians of the
stage times are printed side by side with the ratio new/old.
Figures are printed; nothing is asserted.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("CONVERT_BENCH_SRC", ROOT))  # the version a child imports
sys.path.insert(0, str(SRC))


def child(name: str, workdir: str, vbmf: bool) -> None:
    from caffe_tucker.compress.convert import ConvertOptions, convert, write_outputs
    from caffe_tucker.zoo import zoo_model

    meta = zoo_model(name)
    proto = meta["deploy_path"]
    weights = Path(workdir) / f"{name}.caffemodel"
    ranks = {r["layer"]: r["ranks"] for r in meta["paper"]["layers"]
             if None not in (r["ranks"] if isinstance(r["ranks"], list) else [r["ranks"]])}
    options = ConvertOptions(ranks=None if vbmf else ranks)
    t0 = time.perf_counter()
    result = convert(proto, weights, options, progress=False)
    t1 = time.perf_counter()
    write_outputs(result, Path(workdir) / f"{name}_out", force=True)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"model": name, **{k: round(v, 2) for k, v in result.timings.items()},
                      "write": round(t2 - t1, 2), "total": round(t2 - t0, 2),
                      "layers": len(result.decompositions), "peak_mb": round(peak)}))


def _option(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def _run_child(name: str, tmp: str, vbmf: bool, src: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, tmp] +
                         (["--vbmf"] if vbmf else []), check=True, capture_output=True, text=True,
                         env={**os.environ, "CONVERT_BENCH_SRC": str(src),
                              "PYTHONPATH": str(src)}).stdout
    return json.loads(out.strip().splitlines()[-1])


def _median(rows, key):
    values = sorted(r[key] for r in rows)
    return values[len(values) // 2]


def main(argv):
    vbmf = "--vbmf" in argv
    against = _option(argv, "--against")
    repeat = int(_option(argv, "--repeat", 3 if against else 1))
    values = {_option(argv, "--against"), _option(argv, "--repeat")}
    names = [a for a in argv if not a.startswith("--") and a not in values] or \
        ["alexnet", "vgg_s", "googlenet", "vgg16"]
    stages = ("read", "ranks", "decompose", "rewrite", "write", "total")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in names:
            from caffe_tucker.zoo import zoo_model
            proto = zoo_model(name)["deploy_path"]
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "caffe_tucker", "init", proto, "-o",
                            str(Path(tmp) / f"{name}.caffemodel")], check=True, cwd=ROOT,
                           stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
            init_s = time.perf_counter() - t
            if against:
                runs = {"old": [], "new": []}
                for i in range(repeat):  # alternating, so that a busy spell hits both
                    for label, src in (("old", Path(against)), ("new", ROOT)):
                        runs[label].append(_run_child(name, tmp, vbmf, src))
                        print(f"  {name} {label} run {i + 1}: {runs[label][-1]['total']:.1f}s",
                              flush=True)
                old = {k: _median(runs["old"], k) for k in stages}
                new = {k: _median(runs["new"], k) for k in stages}
                print(f"{name}: medians of {repeat} alternating runs (old = {against})")
                for k in stages:
                    ratio = new[k] / old[k] if old[k] > 0 else float("nan")
                    print(f"  {k:10s} old {old[k]:7.2f}s  new {new[k]:7.2f}s  new/old {ratio:5.2f}")
                peak_old, peak_new = _median(runs["old"], "peak_mb"), _median(runs["new"], "peak_mb")
                print(f"  {'peak RSS':10s} old {peak_old:6d} MB new {peak_new:6d} MB  "
                      f"new/old {peak_new / peak_old:5.2f}", flush=True)
                rows.append({"model": name, "old": runs["old"], "new": runs["new"]})
                continue
            row = _run_child(name, tmp, vbmf, ROOT)
            row["init"] = round(init_s, 2)
            rows.append(row)
            print(f"{name:10s} read {row['read']:6.1f}s  ranks {row['ranks']:6.1f}s  "
                  f"decompose {row['decompose']:6.1f}s  rewrite {row['rewrite']:5.1f}s  "
                  f"write {row['write']:5.1f}s  = {row['total']:6.1f}s   peak {row['peak_mb']} MB  "
                  f"({row['layers']} layers; init of random weights {row['init']:.1f}s)", flush=True)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], "--vbmf" in sys.argv)
    else:
        main(sys.argv[1:])
