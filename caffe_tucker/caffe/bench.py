"""Stage 7b, benchmark: original vs compressed net, timed layer by layer in real Caffe.

Times come from Caffe's CPU forward pass (:meth:`CaffeRuntime.time`).  The
two nets are timed in alternation, ``repeats`` times each, and every figure
is the median over those repetitions (each itself a median over
``iterations`` passes), so that a noisy, shared machine skews both alike.
The layers that replace a compressed layer are reported under its name with
their parts, like the paper's "10.53ms (=0.80+7.43+2.30)", next to the
theoretical FLOPs ratio.

Beside the FLOPs ratio the whole net gets its *ceiling*: the speed-up if every compressed layer
ran its FLOPs ratio faster while the rest of the pass kept its measured time
(:func:`speedup_ceiling`), and the fraction of that ceiling realized.  Every result also says
what it ran on: Caffe's version, the OpenBLAS library, its core type and the threads in force.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import numpy as np

from caffe_tucker.analysis.validate import check_allocation
from caffe_tucker.caffe.verify import NetPair, forward_bytes
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.report.plots import png_bytes, pyplot

__all__ = ["bench", "bench_png", "bench_runs", "speedup_ceiling"]


def _with_batch(net: Net, batch: int) -> Net:
    """The net with every Input layer's batch dimension set to ``batch``."""
    layers = []
    for layer in net.layers:
        if layer.type == "Input":
            shapes = [{"dim": [batch] + list(s.dim[1:])} for s in layer.spec.input_param.shape]
            spec = make_spec(layer.name, "Input", [], list(layer.tops), base=layer.spec,
                             input_param={"shape": shapes})
            layers.append(Layer(spec=spec, blobs=layer.blobs, line=layer.line))
        else:
            layers.append(layer)
    return net.with_layers(layers)


def speedup_ceiling(original_total_ms: float, compressed: Iterable[tuple[float, float]]) -> float:
    """The whole net's best speed-up when only the compressed layers get faster.

    ``T / (T - sum(t) + sum(t / r))`` over the compressed layers' original times ``t`` and
    FLOPs ratios ``r``: each compressed layer reaches its FLOPs ratio, everything else in the
    measured pass ``T`` (the untouched layers, Caffe's overhead) keeps its time.  The untouched
    time is taken as 0 when the layers' own times add up to more than ``T``.

    Parameters
    ----------
    original_total_ms : float
        The original net's measured forward pass (> 0).
    compressed : iterable of (float, float)
        ``(original_ms, flops_ratio)`` of each compressed layer; times >= 0, ratios > 0.

    Returns
    -------
    float
    """
    if not original_total_ms > 0:
        raise ValueError("The 'original_total_ms' parameter of speedup_ceiling must be a float "
                         f"> 0. Got {original_total_ms!r} instead.")
    pairs = [(float(t), float(r)) for t, r in compressed]
    for t, r in pairs:
        if not (t >= 0 and r > 0):
            raise ValueError("The 'compressed' parameter of speedup_ceiling must hold "
                             f"(ms >= 0, ratio > 0) pairs. Got {(t, r)!r} instead.")
    untouched = max(original_total_ms - sum(t for t, _ in pairs), 0.0)
    return original_total_ms / (untouched + sum(t / r for t, r in pairs))


def _environment(runtime, runs: list[dict], threads: int | None) -> dict:
    """What the timings ran on: Caffe's version and the BLAS of the time responses."""
    info = {}
    hello = getattr(runtime, "hello", None)
    if hello is not None:
        info = hello()
    version = info.get("caffe_version")
    blas = [r.get("blas") or {} for r in runs]
    in_force = {b.get("threads") for b in blas}
    last = blas[-1] if blas else {}
    return {"caffe_version": version, "blas_library": last.get("library"),
            "blas_corename": last.get("corename"), "blas_config": last.get("config"),
            "threads": in_force.pop() if len(in_force) == 1 else None,
            "threads_requested": threads,
            # the engine (caffe.runtimes): OpenCV's hello names itself, Caffe's does not
            "runtime": info.get("runtime", "caffe"),
            "runtime_version": info.get("version", version)}


def bench(runtime, pair: NetPair, batches=(1,), iterations: int = 20, repeats: int = 3,
          warmup: int = 3, threads: int | None = None, progress=None) -> dict:
    """Time both nets for each batch size; returns ``{"batches": {batch: result}}``.

    Each result is ``{"layers": [{"name", "method", "original_ms", "compressed_ms", "parts_ms",
    "speedup", "theoretical", "quotient"}], "total": {"original_ms", "compressed_ms",
    "speedup", "theoretical", "quotient", "ceiling", "realized"}, "environment":
    {"caffe_version", "blas_library", "blas_corename", "blas_config", "threads",
    "threads_requested", "batch", "iterations", "repeats"}}``: ``ceiling`` is
    :func:`speedup_ceiling` of the measured original times, ``realized`` the speed-up over it,
    ``threads`` the OpenBLAS threads in force (None when unknown or not the same in every run).
    ``threads`` (an int >= 1) is set in Caffe's OpenBLAS before timing; None leaves Caffe's
    default.  A batch whose blobs would need more memory than
    :func:`~caffe_tucker.analysis.validate.memory_limit` allows is refused before Caffe runs.
    ``progress`` (a :class:`~caffe_tucker.report.progress.Progress` of :func:`bench_runs`
    steps) advances once per timing run in Caffe.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads < 1):
        raise ValueError("The 'threads' parameter of bench must be an int >= 1 or None. "
                         f"Got {threads!r} instead.")
    largest = max(batches)
    check_allocation(max(forward_bytes(pair.original, largest),
                         forward_bytes(pair.compressed, largest)),
                     f"bench --batch {largest}", "use a smaller --batch")
    original, compressed = pair.original.net, pair.compressed.net
    compressed_rows = {r.name: r for r in pair.record.compressed}
    out = {}
    for batch in batches:
        o_net, c_net = _with_batch(original, batch), _with_batch(compressed, batch)
        runs_o, runs_c = [], []
        for repeat in range(repeats):
            for runs, net, what in ((runs_o, o_net, "original"), (runs_c, c_net, "compressed")):
                _note(progress, f"batch {batch}, {what}, run {repeat + 1}/{repeats}")
                runs.append(runtime.time(net, batch=batch, iterations=iterations, warmup=warmup,
                                         threads=threads))
                if progress is not None:
                    progress.update(1)

        def median_of(runs, name):
            return statistics.median(next(l["ms"] for l in r["layers"] if l["name"] == name)
                                     for r in runs)

        rows = []
        for layer in original.layers:
            if layer.type == "Input":
                continue
            o_ms = median_of(runs_o, layer.name)
            row = {"name": layer.name, "type": layer.type, "original_ms": o_ms}
            if layer.name in compressed_rows:
                r = compressed_rows[layer.name]
                parts = [median_of(runs_c, n) for n in r.new_layers]
                row.update(method=r.method, parts_ms=parts, compressed_ms=sum(parts),
                           theoretical=r.flops_ratio)
            else:
                row.update(method=None, parts_ms=None, compressed_ms=median_of(runs_c, layer.name),
                           theoretical=1.0)
            row["speedup"] = row["original_ms"] / row["compressed_ms"] if row["compressed_ms"] else None
            row["quotient"] = row["speedup"] / row["theoretical"] if row["speedup"] else None
            rows.append(row)
        o_total = statistics.median(r["forward_ms"] for r in runs_o)
        c_total = statistics.median(r["forward_ms"] for r in runs_c)
        theoretical = pair.record.total.flops_ratio
        ceiling = speedup_ceiling(o_total, [(r["original_ms"], r["theoretical"])
                                            for r in rows if r["method"]])
        speedup = o_total / c_total
        environment = _environment(runtime, runs_o + runs_c, threads)
        environment.update(batch=batch, iterations=iterations, repeats=repeats)
        environment["profile"] = _predict(pair, rows, environment)  # issue 13
        out[batch] = {"layers": rows, "total": {
            "original_ms": o_total, "compressed_ms": c_total, "speedup": speedup,
            "theoretical": theoretical, "quotient": speedup / theoretical,
            "ceiling": ceiling, "realized": speedup / ceiling},
            "environment": environment}
    return {"batches": out, "iterations": iterations, "repeats": repeats}


# -- issue 14: progress, one step per timing run in Caffe ---------------------------------------
def bench_runs(batches, repeats: int) -> int:
    """The timing runs :func:`bench` asks Caffe for: the steps of its ``progress``."""
    return 2 * len(batches) * repeats


def _note(progress, note: str) -> None:
    if progress is not None:
        progress.set_note(note)


# -- issue 13: predicted times from a cached cost profile (caffe/profile.py) ---------------------
def _predict(pair: NetPair, rows: list[dict], env: dict) -> str | None:
    """Add ``predicted_ms`` to the rows the cost profile of exactly this machine/runtime can
    price (None elsewhere); returns the profile's path, or None when there is none."""
    from caffe_tucker.caffe.profile import (MachineKey, conv_ops, cpu_model, load_profile,
                                            original_op, profile_path)
    from caffe_tucker.errors import CaffeTuckerError

    key = MachineKey(env.get("caffe_version"), env.get("blas_corename"), env.get("threads"),
                     cpu_model(), env["batch"])
    path = profile_path(key)
    try:
        profile = load_profile(path) if path.is_file() else None
    except CaffeTuckerError:
        profile = None
    if profile is None:
        return None
    net, shapes = pair.original.net, pair.original.shapes
    ranks = {r.name: r.ranks for r in pair.record.compressed}
    for row in rows:
        layer, info = net.layer(row["name"]), shapes.layers.get(row["name"])
        if info is None:
            continue
        ops = (conv_ops(layer, info, row["method"], ranks[row["name"]]) if row["method"]
               else original_op(layer, info))
        row["predicted_ms"] = profile.predict(ops)
    return str(path)


def bench_png(result: dict) -> bytes:
    """Bar chart per layer: original vs compressed time, one panel per batch size."""
    plt = pyplot()

    batches = list(result["batches"])
    fig, axes = plt.subplots(len(batches), 1, figsize=(10, 3.6 * len(batches)), squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        rows = [r for r in result["batches"][batch]["layers"] if r["method"] or r["original_ms"] > 0.05]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["original_ms"] for r in rows], 0.4, label="original")
        ax.bar(x + 0.2, [r["compressed_ms"] for r in rows], 0.4, label="compressed")
        ax.set_xticks(x, [r["name"] for r in rows], rotation=60, ha="right", fontsize=7)
        t = result["batches"][batch]["total"]
        ax.set_title(f"batch {batch}: whole net {t['original_ms']:.1f} ms -> {t['compressed_ms']:.1f} ms "
                     f"(x{t['speedup']:.2f}; FLOPs x{t['theoretical']:.2f})", fontsize=9)
        env = result["batches"][batch].get("environment") or {}
        engine = "OpenCV" if env.get("runtime") == "opencv" else "Caffe"
        ax.set_ylabel(f"ms ({engine} CPU)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
