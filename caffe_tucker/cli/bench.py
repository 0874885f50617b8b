"""``bench``: time the original and the compressed net in real Caffe."""

from __future__ import annotations

import sys
from pathlib import Path

from caffe_tucker.caffe.bench import bench, bench_png, bench_runs
from caffe_tucker.caffe.runtimes import RUNTIMES
from caffe_tucker.cli.args import (add_caffe_runtime, add_compared_nets, add_format, caffe_runtime,
                                   int_in, non_empty)
from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.io.fsutil import check_output, write_atomic
from caffe_tucker.report.progress import Progress
from caffe_tucker.report.tables import bench_columns, dumps_json, render


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="time the original and the compressed net in real Caffe")
    add_compared_nets(p, "as for verify")
    p.add_argument("--batch", default="1", metavar="B1,B2", help="batch sizes (default 1)")
    p.add_argument("--iterations", type=int_in(1), default=20, help="timed passes per repetition")
    p.add_argument("--repeats", type=int_in(1), default=3, help="alternating repetitions (medians)")
    p.add_argument("--threads", type=int_in(1), metavar="N",
                   help="threads while timing: OpenBLAS's in Caffe, OpenCV's own with --runtime "
                   "opencv (default: the runtime's own; the report states the threads in force "
                   "either way)")
    add_format(p)
    p.add_argument("--png", type=non_empty, metavar="FILE", help="bar chart per layer (default: bench.png in the output dir)")
    # --runtime: caffe and opencv time per layer (caffe.runtimes); onnxruntime times ONNX exports
    # whole (caffe_tucker.export)
    add_caffe_runtime(p, RUNTIMES + ("onnxruntime",),
                      help="which engine times the nets: auto (default: Caffe when --caffe-python "
                      "or $CAFFE_TUCKER_PYTHON names one, else OpenCV), caffe or opencv (per "
                      "layer), or onnxruntime (whole net, CPU)")
    return p


def _batch_sizes(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        check_param("batch", text, False, "positive integers separated by commas", "bench",
                    exc=CaffeTuckerError)
    return batches


def environment_line(env: dict, total: dict) -> str:
    """One line under the table: what the timings ran on, and the whole net's ceiling."""
    def known(v):
        return "?" if v is None else v

    blas = ("BLAS unknown" if env.get("blas_library") is None else
            f"OpenBLAS {env['blas_library']} (core {known(env.get('blas_corename'))})")
    engine = f"Caffe {known(env.get('caffe_version'))}, {blas}"
    if env.get("runtime") == "opencv":  # --runtime opencv: OpenCV's DNN module, its own kernels
        engine = f"OpenCV {known(env.get('runtime_version'))}"
    threads = known(env.get("threads"))
    asked = env.get("threads_requested")
    return (f"{engine}, {threads} thread(s)"
            f"{'' if asked is None else f' (--threads {asked})'}, batch {env['batch']}; "
            f"ceiling x{total['ceiling']:.2f} if every compressed layer reached its FLOPs ratio, "
            f"{total['realized']:.0%} of it realized")


# -- issue 13: the predicted column, from a cached cost profile (caffe/profile.py) ---------------
def _predicted_column(result: dict) -> list:
    from caffe_tucker.report.tables import Column

    if result["environment"].get("profile") is None:
        return []
    return [Column("predicted ms", "predicted_ms", lambda v: "" if v is None else f"{v:.2f}", ">")]


def _profile_line(env: dict) -> str:
    path = env.get("profile")
    return (f"predicted: the cost profile {path}" if path else
            "predicted: no profile for this machine and runtime; run `profile` on the net")


def run(args) -> int:
    # caffe.verify imports compress.decompose, hence tensorly and scipy (about 0.4 s): imported
    # on use so that --help and the other subcommands stay quick.
    from caffe_tucker.caffe.verify import load_pair

    batches = _batch_sizes(args.batch)
    pair = load_pair(args.paths)
    if args.runtime == "onnxruntime":
        return _run_onnxruntime(args, pair, batches)
    png = args.png or (Path(args.paths[0]) / "bench.png" if len(args.paths) == 1 else None)
    if png:
        check_output(png, force=True, inputs=args.paths)  # fail before the timing, not after
    # A bar on stderr when it is a terminal: one step per timing run in Caffe (issue 14).
    with caffe_runtime(args) as rt, Progress(bench_runs(batches, args.repeats), "bench") as bar:
        result = bench(rt, pair, batches, args.iterations, args.repeats, threads=args.threads,
                       progress=bar)
    if png:
        write_atomic(png, bench_png(result), force=True, inputs=args.paths)
    if args.format == "json":
        sys.stdout.write(dumps_json({str(b): r for b, r in result["batches"].items()}))
        return 0
    for batch, r in result["batches"].items():
        engine = "OpenCV" if r["environment"].get("runtime") == "opencv" else "Caffe"
        print(f"batch {batch} ({engine} CPU, medians of {args.repeats} alternating runs x {args.iterations} passes)")
        sys.stdout.write(render(bench_columns() + _predicted_column(r), r["layers"], args.format,
                                footer={"name": "whole net", **r["total"]}))
        if args.format != "csv":
            print(environment_line(r["environment"], r["total"]))
            print(_profile_line(r["environment"]))
    if png:
        print(f"wrote {png}")
    return 0


# -- bench --runtime onnxruntime ---------------------------------------------------------------

def _run_onnxruntime(args, pair, batches) -> int:
    """The whole nets timed in onnxruntime (no per-layer rows, no chart)."""
    from caffe_tucker.export.ort_bench import bench_onnxruntime

    if args.png:
        raise CaffeTuckerError("--png: bench --runtime onnxruntime times whole nets, there is no "
                               "per-layer chart; hint: leave out --png")
    result = bench_onnxruntime(pair, batches, args.iterations, args.repeats, threads=args.threads)
    if args.format == "json":
        sys.stdout.write(dumps_json({str(b): r for b, r in result["batches"].items()}))
        return 0
    for batch, r in result["batches"].items():
        t, env = r["total"], r["environment"]
        threads = env["threads"] or "default"
        ratio = (f" (FLOPs ratio x{t['theoretical']:.2f}, {t['quotient']:.0%} of it)"
                 if t["quotient"] is not None else "")
        print(f"batch {batch}, onnxruntime {env['runtime_version']} CPU, threads {threads}, "
              f"medians of {args.repeats} alternating runs x {args.iterations} passes: "
              f"original {t['original_ms']:.3f} ms, compressed {t['compressed_ms']:.3f} ms, "
              f"speed-up x{t['speedup']:.2f}{ratio}")
    return 0
