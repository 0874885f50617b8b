"""``bench --runtime onnxruntime``: what compression buys in a modern CPU engine.

Both nets of a :class:`~caffe_tucker.caffe.verify.NetPair` are exported to ONNX
(:mod:`caffe_tucker.export.onnx`) at each batch size and timed whole in onnxruntime (CPU, all
graph optimizations), alternating original and compressed ``repeats`` times; the medians are
reported next to the FLOPs ratio of the compression record.  Per-layer times are Caffe's
business (onnxruntime fuses layers), so only the whole net is timed here.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import numpy as np

from caffe_tucker.errors import CaffeTuckerError

__all__ = ["bench_onnxruntime", "import_onnxruntime"]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise CaffeTuckerError(f"bench --runtime onnxruntime needs the onnxruntime package, which "
                               f"is not installed ({exc}); hint: pip install 'caffe-tucker[onnx]' "
                               "(or: pip install onnx onnxruntime)") from None
    return onnxruntime


def _session(ort, model, batch: int, threads: int | None):
    from caffe_tucker.analysis.shapes import infer_shapes
    from caffe_tucker.caffe.bench import _with_batch
    from caffe_tucker.export.onnx import to_onnx

    net = _with_batch(model.net, batch)
    data = to_onnx(replace(model, net=net, shapes=infer_shapes(net)))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([batch] + list(i.shape[1:])).astype(np.float32)
             for i in session.get_inputs()}
    return session, feeds


def _time(session, feeds, iterations: int, warmup: int) -> float:
    """Milliseconds per forward pass, the mean of ``iterations`` after ``warmup`` passes."""
    for _ in range(warmup):
        session.run(None, feeds)
    start = time.perf_counter()
    for _ in range(iterations):
        session.run(None, feeds)
    return (time.perf_counter() - start) * 1000.0 / iterations


def bench_onnxruntime(pair, batches=(1,), iterations: int = 20, repeats: int = 3,
                      warmup: int = 3, threads: int | None = None) -> dict:
    """``{"batches": {batch: {"total": {"original_ms", "compressed_ms", "speedup",
    "theoretical", "quotient"}, "environment": {"runtime", "runtime_version", "provider",
    "threads", "threads_requested", "batch", "iterations", "repeats"}}}}``."""
    ort = import_onnxruntime()
    total = pair.record.total
    theoretical = total.flops_before / total.flops_after if total.flops_after else None
    out = {}
    for batch in batches:
        orig, orig_feeds = _session(ort, pair.original, batch, threads)
        comp, comp_feeds = _session(ort, pair.compressed, batch, threads)
        runs_o, runs_c = [], []
        for _ in range(repeats):
            runs_o.append(_time(orig, orig_feeds, iterations, warmup))
            runs_c.append(_time(comp, comp_feeds, iterations, warmup))
        o, c = statistics.median(runs_o), statistics.median(runs_c)
        speedup = o / c if c > 0 else None
        out[batch] = {
            "total": {"original_ms": o, "compressed_ms": c, "speedup": speedup,
                      "theoretical": theoretical,
                      "quotient": speedup / theoretical if speedup and theoretical else None},
            "environment": {"runtime": "onnxruntime", "runtime_version": ort.__version__,
                            "provider": "CPUExecutionProvider",
                            "threads": orig.get_session_options().intra_op_num_threads or None,
                            "threads_requested": threads, "batch": batch,
                            "iterations": iterations, "repeats": repeats},
        }
    return {"batches": out}
