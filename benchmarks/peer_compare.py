"""Benchmark: this tool's Tucker-2 against the peer pipeline of PyTorch compression tools.

    python benchmarks/peer_compare.py [--models alexnet vgg16 googlenet [vgg_s]]
        [--layers NAME ...] [--mode paper|vbmf|both] [--repeat 3] [--threads N]
        [--peer-dtype float32|float64] [--trained] [--json FILE]

The *peer pipeline* is what the tensorly-based PyTorch tools (e.g. the
pytorch-tensor-decompositions project) do for one Tucker-2 layer: EVBMF from
their ``VBMF.py`` (a full ``numpy.linalg.svd`` with singular vectors, then
scipy's bounded Brent search for the noise variance, with tau-bar
approximated by 2.5129·sqrt(alpha)) on the mode-0 unfolding (T × S·kh·kw) and
the mode-1 unfolding (S × T·kh·kw) of the kernel, then
``tensorly.decomposition.partial_tucker(kernel, modes=[0, 1], rank=[R4, R3])``
with its defaults (``init='svd'``, at most 100 sweeps, tol 1e-4).  The EVBMF
below is this file's own transcription of that function; it is given the
kernel in float32, as those tools hand it a float32 weight tensor
(``--peer-dtype float64`` to give it float64 instead).  A matrix with more
rows than columns, which the port does not accept, is passed transposed.

The tool's side is the tool's own code for one layer:
``get_method("tucker2").factorize(kernel, (R3, R4))`` on each group's kernel
(``Method.kernel_groups``), under the BLAS thread limit ``convert`` sets
(``blas_limits``), and ``evbmf(matrix).rank`` on ``Method.unfoldings(kernel)``
for its ranks; the layer's ranks are the largest over its groups, as in
``convert``.  The peer side gets the same per-group kernels and takes the
largest of its groups' ranks too (the PyTorch tools know no groups).

For each zoo model (random weights from ``caffe_tucker init``, its default
seed; ``--trained`` uses weights shipped in the zoo folder where there are
some, i.e. for ``digits``) and each Tucker-2 layer of the model's
``compress`` map:

* mode ``paper``: both pipelines decompose at the paper's ranks (layers
  without paper ranks are skipped);
* mode ``vbmf``: each pipeline chooses its ranks by its own EVBMF, then
  decomposes.  Random weights carry no low-rank signal, so VBMF usually
  finds rank 0; then there is nothing to decompose and only the
  rank-selection time is reported;
* the whole tool end to end, ``convert`` of the same layers at the same
  ranks (including reading the caffemodel, the spectra for the report and
  the rewrite of the net).  The peer pipeline has no end to end; its line
  is the sum of its per-layer times.

Figures per layer: time (rank selection and decomposition), relative
reconstruction error ‖W − Ŵ‖/‖W‖ (Ŵ computed here from each side's factors,
in float64, the same way for both; over all groups), and peak RSS
(``ru_maxrss``).  Every measurement runs in its own process, which reads the
kernels from ``.npy`` files extracted beforehand, so the peak RSS is that
measurement's own; ``work MB`` is the peak minus the RSS reached after the
imports and the loading of the kernels.  Tool and peer alternate (their
order swapped on every other repeat) so that a busy spell of the machine
hits both; the printed figures are medians over ``--repeat`` runs.
``--threads N`` sets ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``CAFFE_TUCKER_BLAS_THREADS`` to N for both sides;
without it the environment is left as it is, and the BLAS threads each side
actually ran with are printed.  Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ("alexnet", "vgg16", "googlenet")
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "CAFFE_TUCKER_BLAS_THREADS")
SEED = 0


# ------------------------------------------------------------------------------------------------
# The peer pipeline
# ------------------------------------------------------------------------------------------------

class PeerRefused(RuntimeError):
    """The peer's full SVD would allocate more than ``--peer-svd-limit-gb``; it is not run."""


def check_port_memory(shape, dtype, thin=False, limit_gb=8.0) -> None:
    """Raise :class:`PeerRefused` if the port's SVD of a matrix of ``shape`` would need more
    than ``limit_gb`` GiB for its singular vectors."""
    import numpy as np

    L, M = sorted(shape)
    need = (L * L + (L * M if thin else M * M)) * np.dtype(dtype).itemsize / 2 ** 30
    if need > limit_gb:
        raise PeerRefused(f"the port's numpy.linalg.svd of a {L}x{M} unfolding with "
                          f"full_matrices={not thin} would allocate {need:.1f} GiB for U and V, "
                          f"over --peer-svd-limit-gb {limit_gb:g}; not run")


def peer_evbmf_rank(Y, thin=False, limit_gb=8.0):
    """The rank the public Python EVBMF port (``EVBMF`` of ``VBMF.py``) finds for ``Y``.

    Steps as in the port, for ``Y`` of shape (L, M) with L <= M (a taller
    matrix is transposed first):

    1. ``U, s, V = numpy.linalg.svd(Y)`` -- with the singular vectors and
       ``full_matrices`` left at its default (True), as the port calls it;
    2. ``tau = 2.5129 sqrt(alpha)`` with ``alpha = L / M``, and
       ``x_bar = (1 + tau)(1 + alpha / tau)``;
    3. the noise variance minimizes the port's objective over
       ``[max(s[h]^2 / (M x_bar), mean(s[h:]^2) / M), sum(s^2) / (L M)]``,
       ``h = min(ceil(L / (1 + alpha)) - 1, L)``, by
       ``scipy.optimize.minimize_scalar(method='Bounded')`` with its defaults;
    4. the rank is the number of singular values strictly above
       ``sqrt(M sigma2 (1 + tau)(1 + alpha / tau))``, and the port goes on
       to the shrunk singular values of the retained components.

    The port's posterior bookkeeping (a few arrays of length L) is left out.
    ``full_matrices=True`` makes ``V`` an M x M matrix: for the mode-1
    unfolding of AlexNet's fc6 seen as a 6 x 6 convolution (256 x 147456)
    that is 81 GiB in float32, so a call whose SVD outputs would exceed
    ``limit_gb`` is refused (:class:`PeerRefused`) rather than run into the
    machine's memory.

    Parameters
    ----------
    Y : ndarray, shape (L, M)
        The unfolding, in the dtype the caller hands over (float32 for a
        PyTorch weight).
    thin : bool
        Call ``svd(Y, full_matrices=False)`` instead (not what the port
        does; ``--peer-thin-svd``).
    limit_gb : float
        The most the SVD's outputs ``U``, ``V`` may take, in GiB.

    Returns
    -------
    int
    """
    import numpy as np
    from scipy.optimize import minimize_scalar

    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    check_port_memory(Y.shape, Y.dtype, thin, limit_gb)
    L, M = Y.shape
    alpha = L / M
    tau_bar = 2.5129 * np.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    U, s, Vt = np.linalg.svd(Y, full_matrices=not thin)
    U, s, V = U[:, :L], s[:L], Vt[:L].T

    def tau_of(x):
        return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))

    def objective(sigma2):
        x = s ** 2 / (M * sigma2)
        above, below = x[x > x_bar], x[x <= x_bar]
        t = tau_of(above)
        return (np.sum(below - np.log(below)) + np.sum(above - t)
                + np.sum(np.log((t + 1) / above)) + alpha * np.sum(np.log(t / alpha + 1)))

    h = int(min(np.ceil(L / (1 + alpha)) - 1, L)) - 1
    upper = np.sum(s ** 2) / (L * M)
    lower = max(s[h + 1] ** 2 / (M * x_bar), np.mean(s[h + 1:] ** 2) / M)
    sigma2 = minimize_scalar(objective, bounds=[lower, upper], method="Bounded").x
    threshold = np.sqrt(M * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    rank = int(np.sum(s > threshold))
    head = s[:rank]
    ratio = (L + M) * sigma2 / head ** 2
    shrunk = head / 2 * (1 - ratio + np.sqrt((1 - ratio) ** 2
                                             - 4 * L * M * sigma2 ** 2 / head ** 4))
    del U, V, shrunk  # what the port returns besides the rank
    return rank


def peer_partial_tucker(kernel, r4, r3):
    """``partial_tucker(kernel, modes=[0, 1], rank=[R4, R3])`` with tensorly's defaults.

    Returns ``(core (R4, R3, kh, kw), U4 (T, R4), U3 (S, R3), sweeps)`` whatever
    the installed tensorly's conventions: ``rank=`` or (before 0.7) ``ranks=``,
    and a ``(core, factors), errors`` or a ``core, factors`` result (``sweeps``,
    the number of HOOI sweeps it made, is None for the latter).
    """
    import inspect

    from tensorly.decomposition import partial_tucker

    key = "rank" if "rank" in inspect.signature(partial_tucker).parameters else "ranks"
    out = partial_tucker(kernel, modes=[0, 1], **{key: [r4, r3]})
    if isinstance(out[0], (tuple, list)):
        (core, factors), sweeps = out[0], len(out[1])
    else:
        (core, factors), sweeps = out, None
    return core, factors[0], factors[1], sweeps


# ------------------------------------------------------------------------------------------------
# Child processes: one measurement each
# ------------------------------------------------------------------------------------------------

def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _blas_threads() -> list:
    """The BLAS libraries loaded in this process and their current thread counts."""
    from threadpoolctl import threadpool_info

    return sorted({(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()
                   if i.get("user_api") == "blas"})


def _rel_error(kernels, factor_sets) -> float:
    """‖W − Ŵ‖/‖W‖ over all groups, Ŵ = core ×0 U4 ×1 U3 in float64."""
    import numpy as np

    err2 = norm2 = 0.0
    for w, (core, u4, u3) in zip(kernels, factor_sets):
        w = w.astype(np.float64)
        w_hat = np.einsum("abij,ta,sb->tsij", np.asarray(core, np.float64),
                          np.asarray(u4, np.float64), np.asarray(u3, np.float64), optimize=True)
        err2 += float(np.sum((w - w_hat) ** 2))
        norm2 += float(np.sum(w ** 2))
    return float(np.sqrt(err2 / norm2)) if norm2 > 0 else 0.0


def child_layer(spec: dict) -> dict:
    """One side, one layer, one mode: time the rank selection and the decomposition.

    ``spec``: ``side`` ("tool" or "peer"), ``mode`` ("paper" or "vbmf"),
    ``files`` (one ``.npy`` kernel per group), ``ranks`` ([R3, R4], paper mode),
    ``peer_dtype``, ``peer_thin_svd``, ``peer_svd_limit_gb``.
    """
    import contextlib

    import numpy as np

    np.random.seed(SEED)
    tool = spec["side"] == "tool"
    if tool:
        from caffe_tucker.compress.blas import blas_limits
        from caffe_tucker.compress.methods import get_method
        from caffe_tucker.compress.vbmf import evbmf

        method = get_method("tucker2")
        limits = blas_limits
    else:
        import tensorly as tl

        tl.set_backend("numpy")
        limits = contextlib.nullcontext
    kernels = [np.load(f) for f in spec["files"]]
    if not tool:
        kernels = [k.astype(spec["peer_dtype"], copy=False) for k in kernels]
    if spec["mode"] == "vbmf" and not tool:  # refuse before any work, not halfway
        port = {"thin": spec["peer_thin_svd"], "limit_gb": spec["peer_svd_limit_gb"]}
        for k in kernels:
            for mode in (0, 1):
                check_port_memory((k.shape[mode], k.size // k.shape[mode]), k.dtype, **port)
    base = _peak_mb()

    with limits():
        threads = _blas_threads()
        t0 = time.perf_counter()
        if spec["mode"] == "vbmf":
            found = []
            for k in kernels:
                if tool:
                    mats = method.unfoldings(k.astype(np.float64, copy=False))
                    found.append((evbmf(mats["input"]).rank, evbmf(mats["output"]).rank))
                else:
                    r4 = peer_evbmf_rank(tl.base.unfold(k, 0), **port)
                    r3 = peer_evbmf_rank(tl.base.unfold(k, 1), **port)
                    found.append((r3, r4))
            r3, r4 = (max(f[i] for f in found) for i in (0, 1))
            if tool:  # as convert: at most the full ranks
                r3, r4 = min(r3, kernels[0].shape[1]), min(r4, kernels[0].shape[0])
        else:
            r3, r4 = spec["ranks"]
        t1 = time.perf_counter()
        factor_sets, sweeps = [], []
        if min(r3, r4) > 0:
            for k in kernels:
                if tool:
                    u3, core, u4 = method.factorize(k, (r3, r4))
                else:
                    core, u4, u3, n = peer_partial_tucker(k, r4, r3)
                    sweeps.append(n)
                factor_sets.append((core, u4, u3))
        t2 = time.perf_counter()
    peak = _peak_mb()
    return {"ranks": [int(r3), int(r4)], "select_s": t1 - t0 if spec["mode"] == "vbmf" else 0.0,
            "decompose_s": t2 - t1, "total_s": t2 - t0,
            "decomposed": bool(factor_sets),
            "error": _rel_error(kernels, factor_sets) if factor_sets else None,
            "peak_mb": peak, "work_mb": peak - base, "base_mb": base,
            "blas_threads": [list(t) for t in threads],
            "peer_sweeps": sweeps or None}


def child_convert(spec: dict) -> dict:
    """The tool end to end: ``convert`` of the given layers (fixed ranks, or VBMF)."""
    from caffe_tucker.compress.convert import ConvertOptions, convert

    base = _peak_mb()
    layers = tuple(spec["layers"])
    options = (ConvertOptions(ranks=spec["ranks"]) if spec["mode"] == "paper" else
               ConvertOptions(layers=layers))
    t0 = time.perf_counter()
    result = convert(spec["proto"], spec["weights"], options, progress=False)
    total = time.perf_counter() - t0
    peak = _peak_mb()
    return {"total_s": total, "timings": dict(result.timings),
            "decomposed": sorted(result.decompositions),
            "ranks": {k: list(c.ranks) for k, c in result.choices.items()},
            "errors": {k: d.rel_error for k, d in result.decompositions.items()},
            "peak_mb": peak, "work_mb": peak - base, "base_mb": base}


def child_extract(spec: dict) -> dict:
    """Write each group's kernel of the given layers as ``.npy`` (the arrays both sides get)."""
    import numpy as np

    from caffe_tucker.compress.methods import get_method
    from caffe_tucker.model import load_model

    model = load_model(spec["proto"], spec["weights"], deploy=True, strict=True)
    method = get_method("tucker2")
    out = {}
    for name in spec["layers"]:
        layer, info = model.net.layer(name), model.shapes.layers[name]
        files = []
        for g, kernel in enumerate(method.kernel_groups(layer, info)):
            path = Path(spec["dir"]) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}_g{g}.npy"
            np.save(path, np.ascontiguousarray(kernel))
            files.append(str(path))
        out[name] = {"files": files, "shape": list(np.load(files[0], mmap_mode="r").shape),
                     "groups": len(files), "dtype": str(np.load(files[0], mmap_mode="r").dtype)}
    return out


CHILDREN = {"layer": child_layer, "convert": child_convert, "extract": child_extract}


def _run_child(kind: str, spec: dict, env: dict) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is its JSON."""
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"failed": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# The parent: weights, plan, alternating runs, medians, tables
# ------------------------------------------------------------------------------------------------

def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def _fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


def model_plan(name: str, wanted) -> tuple[dict, list, dict]:
    """(zoo metadata, the model's Tucker-2 layers to compare, paper ranks {layer: [R3, R4]})."""
    from caffe_tucker.zoo import zoo_model

    meta = zoo_model(name)
    layers = [k for k, v in (meta.get("compress") or {}).items() if v == "tucker2"]
    if wanted:
        layers = [k for k in layers if k in wanted]
    paper = {}
    for row in (meta.get("paper") or {}).get("layers", []):
        ranks = row.get("ranks")
        if row.get("method") == "tucker2" and isinstance(ranks, list) and None not in ranks:
            paper[row["layer"]] = [int(r) for r in ranks]
    return meta, layers, paper


def weights_for_model(meta: dict, tmp: Path, trained: bool, env: dict) -> tuple[Path, str]:
    """The caffemodel to use and what it is: shipped (``--trained``, where present) or random."""
    shipped = Path(meta["dir"]) / ((meta.get("weights") or {}).get("filename") or "-")
    if trained and shipped.is_file():
        return shipped, f"trained weights {shipped.name}"
    path = tmp / f"{meta['name']}.caffemodel"
    subprocess.run([sys.executable, "-m", "caffe_tucker", "init", meta["deploy_path"], "-o",
                    str(path)], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return path, "random weights (caffe_tucker init, default seed)"


def _summary(runs: list) -> dict:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return {"failed": runs[0]["failed"] if runs else "not run"}
    out = {k: _median([r[k] for r in ok]) for k in
           ("select_s", "decompose_s", "total_s", "peak_mb", "work_mb")}
    out.update(ranks=ok[0]["ranks"], decomposed=ok[0]["decomposed"], error=ok[0]["error"],
               blas_threads=ok[0]["blas_threads"], runs=len(ok))
    return out


def compare_model(name: str, args, env: dict, tmp: Path) -> dict:
    meta, layers, paper = model_plan(name, args.layers)
    modes = ["paper", "vbmf"] if args.mode == "both" else [args.mode]
    record = {"model": name, "layers": {}, "modes": {}, "end_to_end": {}}
    if not layers:
        _log(f"{name}: no Tucker-2 layer selected")
        return record
    mdir = tmp / name
    mdir.mkdir()
    t = time.perf_counter()
    weights, weights_note = weights_for_model(meta, tmp, args.trained, env)
    record["weights"] = weights_note
    _log(f"{name}: {weights_note} ready in {time.perf_counter() - t:.1f}s; extracting "
         f"{len(layers)} layer kernels")
    kernels = _run_child("extract", {"proto": meta["deploy_path"], "weights": str(weights),
                                     "layers": layers, "dir": str(mdir)}, env)
    if "failed" in kernels:
        raise SystemExit(f"{name}: reading the kernels failed: {kernels['failed']}")
    record["layers"] = {k: {key: v[key] for key in ("shape", "groups", "dtype")}
                        for k, v in kernels.items()}
    for mode in modes:
        todo = [k for k in layers if mode != "paper" or k in paper]
        skipped = [k for k in layers if k not in todo]
        runs = {k: {"tool": [], "peer": []} for k in todo}
        e2e = []
        for i in range(args.repeat):
            order = ("tool", "peer") if i % 2 == 0 else ("peer", "tool")
            for layer in todo:
                for side in order:
                    spec = {"side": side, "mode": mode, "files": kernels[layer]["files"],
                            "ranks": paper.get(layer), "peer_dtype": args.peer_dtype,
                            "peer_thin_svd": args.peer_thin_svd,
                            "peer_svd_limit_gb": args.peer_svd_limit_gb}
                    r = _run_child("layer", spec, env)
                    runs[layer][side].append(r)
                    _log(f"  {name} {mode} {layer} {side} run {i + 1}/{args.repeat}: " +
                         (r["failed"] if "failed" in r else
                          f"{r['total_s']:.2f}s ranks {r['ranks']}"))
            if todo:
                spec = {"proto": meta["deploy_path"], "weights": str(weights), "mode": mode,
                        "layers": todo, "ranks": {k: paper[k] for k in todo if k in paper}}
                e2e.append(_run_child("convert", spec, env))
                _log(f"  {name} {mode} tool end to end run {i + 1}/{args.repeat}: " +
                     (e2e[-1]["failed"] if "failed" in e2e[-1] else f"{e2e[-1]['total_s']:.2f}s"))
        ok = [r for r in e2e if "failed" not in r]
        record["modes"][mode] = {
            "skipped": {k: "no paper ranks for both R3 and R4" for k in skipped},
            "layers": {k: {side: {"summary": _summary(v), "runs": v} for side, v in sides.items()}
                       for k, sides in runs.items()}}
        record["end_to_end"][mode] = {
            "runs": e2e,
            "summary": ({"total_s": _median([r["total_s"] for r in ok]),
                         "timings": {k: _median([r["timings"][k] for r in ok])
                                     for k in ok[0]["timings"]},
                         "peak_mb": _median([r["peak_mb"] for r in ok]),
                         "work_mb": _median([r["work_mb"] for r in ok]),
                         "decomposed": ok[0]["decomposed"]} if ok else
                        {"failed": e2e[0]["failed"] if e2e else "not run"})}
    return record


def print_model(record: dict, repeat: int) -> None:
    name = record["model"]
    print(f"\n{name} -- {record.get('weights', '')}; medians of {repeat} alternating run(s)")
    for mode, data in record["modes"].items():
        head = ("fixed ranks (the paper's)" if mode == "paper" else
                "ranks by each side's own EVBMF")
        print(f"\n  mode {mode}: {head}")
        for layer, why in data["skipped"].items():
            print(f"  {layer}: skipped, {why}")
        if not data["layers"]:
            continue
        cols = (f"  {'layer':18s} {'kernel (group)':18s} {'ranks tool':>11s} {'ranks peer':>11s}"
                + (f" {'sel tool':>8s} {'sel peer':>8s}" if mode == "vbmf" else "")
                + f" {'tool s':>8s} {'peer s':>8s} {'t/p':>6s} {'err tool':>9s} {'err peer':>9s}"
                f" {'e t/p':>7s} {'peak tool':>9s} {'peak peer':>9s} {'t/p':>5s}"
                f" {'work tool':>9s} {'work peer':>9s}")
        print(cols)
        tot = {"tool": 0.0, "peer": 0.0, "sel_tool": 0.0, "sel_peer": 0.0}
        peaks = {"tool": [], "peer": []}
        undecomposed, failures = [], []
        for layer, sides in data["layers"].items():
            t, p = sides["tool"]["summary"], sides["peer"]["summary"]
            info = record["layers"][layer]
            shape = "x".join(map(str, info["shape"])) + (f" ({info['groups']})"
                                                         if info["groups"] > 1 else "")
            if "failed" in t or "failed" in p:
                for side, r in (("tool", t), ("peer", p)):
                    if "failed" in r:
                        failures.append(f"{layer} {side}: {r['failed']}")
                fields = ("ranks", "select_s", "total_s", "error", "peak_mb", "work_mb")
                t = {k: None for k in fields} if "failed" in t else t
                p = {k: None for k in fields} if "failed" in p else p
            else:
                tot["tool"] += t["total_s"]
                tot["peer"] += p["total_s"]
                tot["sel_tool"] += t["select_s"]
                tot["sel_peer"] += p["select_s"]
                peaks["tool"].append(t["peak_mb"])
                peaks["peer"].append(p["peak_mb"])
                if not (t["decomposed"] and p["decomposed"]):
                    undecomposed.append(layer)
            rt, rp = (",".join(map(str, r["ranks"])) if r["ranks"] else "-" for r in (t, p))
            print(f"  {layer:18s} {shape:18s} {rt:>11s} {rp:>11s}"
                  + (f" {_fmt(t['select_s'], '.2f', 8)} {_fmt(p['select_s'], '.2f', 8)}"
                     if mode == "vbmf" else "")
                  + f" {_fmt(t['total_s'], '.2f', 8)} {_fmt(p['total_s'], '.2f', 8)}"
                  f" {_fmt(_ratio(t['total_s'], p['total_s']), '.2f', 6)}"
                  f" {_fmt(t['error'], '.5f', 9)} {_fmt(p['error'], '.5f', 9)}"
                  f" {_fmt(_ratio(t['error'], p['error']), '.4f', 7)}"
                  f" {_fmt(t['peak_mb'], '.0f', 9)} {_fmt(p['peak_mb'], '.0f', 9)}"
                  f" {_fmt(_ratio(t['peak_mb'], p['peak_mb']), '.2f', 5)}"
                  f" {_fmt(t['work_mb'], '.0f', 9)} {_fmt(p['work_mb'], '.0f', 9)}")
        if data["layers"]:
            pt, pp = max(peaks["tool"], default=None), max(peaks["peer"], default=None)
            print(f"  {'total (sum; peak max)*':37s} {'':11s} {'':11s}"
                  + (f" {tot['sel_tool']:8.2f} {tot['sel_peer']:8.2f}" if mode == "vbmf" else "")
                  + f" {tot['tool']:8.2f} {tot['peer']:8.2f}"
                  f" {_fmt(_ratio(tot['tool'], tot['peer']), '.2f', 6)}"
                  f" {'':9s} {'':9s} {'':7s} {_fmt(pt, '.0f', 9)} {_fmt(pp, '.0f', 9)}"
                  f" {_fmt(_ratio(pt, pp), '.2f', 5)}")
        print("  * over the layers both sides completed")
        for line in failures:
            print(f"  failed: {line}")
        if undecomposed:
            print(f"  rank 0 on some side (nothing to decompose, error '-', time = rank selection "
                  f"only): {', '.join(undecomposed)}")
        e2e = record["end_to_end"].get(mode, {}).get("summary", {})
        if "failed" in e2e:
            print(f"  tool end to end: failed: {e2e['failed']}")
        elif e2e:
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in e2e["timings"].items())
            print(f"  tool end to end (convert of the {len(data['layers'])} layer(s) above, "
                  f"{len(e2e['decomposed'])} decomposed): {e2e['total_s']:.2f}s ({stages}), "
                  f"peak {e2e['peak_mb']:.0f} MB")
            print(f"  peer: no end-to-end pipeline; the sum of its per-layer times is "
                  f"{tot['peer']:.2f}s (layers both sides completed; no reading or writing of a "
                  f"model), largest per-layer peak "
                  f"{_fmt(max(peaks['peer'], default=None), '.0f', 0)} MB; tool end to end / peer "
                  f"sum {_fmt(_ratio(e2e['total_s'], tot['peer']), '.2f', 0)}, peak ratio "
                  f"{_fmt(_ratio(e2e['peak_mb'], max(peaks['peer'], default=None)), '.2f', 0)}")


def _versions() -> dict:
    import numpy
    import scipy
    import tensorly

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "scipy": scipy.__version__, "tensorly": tensorly.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Nothing is asserted; compare ratios within one run.")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="zoo models (default: %(default)s; vgg_s and digits also work)")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="only these layers (of any of the models)")
    parser.add_argument("--mode", choices=("paper", "vbmf", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS/OpenMP threads for both sides (default: the environment's)")
    parser.add_argument("--peer-dtype", choices=("float32", "float64"), default="float32",
                        help="the dtype the peer pipeline gets the kernel in (default float32, "
                             "as a PyTorch weight)")
    parser.add_argument("--peer-thin-svd", action="store_true",
                        help="give the peer's EVBMF numpy.linalg.svd(full_matrices=False), "
                             "unlike the port (which computes the full V)")
    parser.add_argument("--peer-svd-limit-gb", type=float, default=8.0,
                        help="refuse a peer EVBMF whose SVD outputs would exceed this many GiB "
                             "(default %(default)s)")
    parser.add_argument("--trained", action="store_true",
                        help="use the weights shipped in the zoo folder where present (digits)")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if args.threads is not None:
        env.update({k: str(args.threads) for k in THREAD_VARIABLES})
    threads = {k: env.get(k, "(unset)") for k in THREAD_VARIABLES}
    print("threads: " + ", ".join(f"{k}={v}" for k, v in threads.items())
          + ("" if args.threads is not None else "  (from the environment)"))
    versions = _versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out = {"args": vars(args), "threads_env": threads, "versions": versions, "models": []}
    with tempfile.TemporaryDirectory(prefix="peer_compare_") as tmp:
        for name in args.models:
            record = compare_model(name, args, env, Path(tmp))
            out["models"].append(record)
            print_model(record, args.repeat)
            sys.stdout.flush()
    used = {side: sorted({tuple(map(tuple, s[side]["summary"].get("blas_threads", [])))
                          for m in out["models"] for d in m["modes"].values()
                          for s in d["layers"].values()}) for side in ("tool", "peer")}
    print("\nBLAS threads in effect (library, threads): "
          + "; ".join(f"{side} {[list(map(list, u)) for u in v]}" for side, v in used.items()))
    if used["tool"] != used["peer"]:
        print("note: the two sides ran with different BLAS thread counts; set --threads N to "
              "make them equal")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float), encoding="utf-8")
        print(f"figures written to {args.json}")
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        main()
