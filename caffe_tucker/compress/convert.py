"""One-shot whole-network compression: read → analyze → select ranks → decompose → rewrite.

:func:`convert` runs the paper's method on a net and returns every product
in a :class:`ConvertResult`; :func:`write_outputs` writes them into an
output directory.  Nothing here formats text for the terminal.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from caffe_tucker.analysis.cost import Analysis, analyze
from caffe_tucker.io.caffe_pb2 import SolverParameter
from caffe_tucker.compress.decompose import Decomposition, decompose_layer
from caffe_tucker.errors import CaffeTuckerError, InputFileError, OutputExistsError
from caffe_tucker.graph import Net
from caffe_tucker.compress.plan import detect_preset, make_plan
from caffe_tucker.report.progress import Progress
from caffe_tucker.compress.ranks import RankChoice, check_manual_ranks, select_ranks
from caffe_tucker.io.read import default_weights_path, read_net, read_prototxt
from caffe_tucker.compress.rewrite import new_layer_names, replacement_for, rewrite_net
from caffe_tucker.analysis.shapes import ShapeInfo, fit_weights, infer_shapes
from caffe_tucker.compress.finetune_files import (IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES, build_solver, build_train_val,
                       deploy_from_train_val, is_train_val)

__all__ = ["ConvertOptions", "ConvertResult", "convert", "write_outputs", "load_ranks_file",
           "ranks_json", "choose_ranks", "check_out_dir", "OUTPUT_FILES"]

OUTPUT_FILES = ("deploy.prototxt", "weights.caffemodel", "train_val.prototxt", "solver.prototxt",
                "ranks.json", "report.json", "report.md", "ranks.png")


@dataclass(frozen=True)
class ConvertOptions:
    """Options of :func:`convert` (the command line's flags)."""

    preset: str | None = None          # None: detect a zoo net, else "auto"
    layers: tuple[str, ...] | None = None
    ranks: dict | None = None          # fixed ranks, as in ranks.json
    ranks_source: str = "ranks file"
    rank_method: str = "vbmf"
    weaken: float = 1.0
    input_shapes: dict | None = None
    train_val: str | None = None
    train_source: str | None = None
    val_source: str | None = None
    batch_size: int | None = None
    train_images: int = IMAGENET_TRAIN_IMAGES
    val_images: int = IMAGENET_VAL_IMAGES
    epochs: float = 15
    spectra: bool = True               # singular values for the report's plot


@dataclass(frozen=True, eq=False)
class ConvertResult:
    original: Net
    shapes: ShapeInfo
    compressed: Net
    compressed_shapes: ShapeInfo
    preset: str
    choices: dict[str, RankChoice]
    decompositions: dict[str, Decomposition]
    train_val: Net
    solver: SolverParameter
    report: dict
    timings: dict = field(default_factory=dict)

    @property
    def ranks(self) -> dict:
        return ranks_json(self.choices)


def load_ranks_file(path) -> dict:
    """Read a ranks.json: ``{"layer": R or [R3, R4], ...}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such ranks file") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{p}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{p}: a ranks file is a JSON object mapping layer names to ranks, "
                             'e.g. {"conv2": [25, 59], "fc7": 301}')
    return data


def ranks_json(choices: dict[str, RankChoice]) -> dict:
    """What ``ranks.json`` holds: the ranks of every layer that is compressed."""
    out = {}
    for name, c in choices.items():
        if c.skipped_reason is None:
            out[name] = list(c.ranks) if c.method == "tucker2" else c.ranks[0]
    return out


def _zoo_meta(preset: str) -> dict | None:
    if preset == "auto":
        return None
    from caffe_tucker.zoo import zoo_model

    return zoo_model(preset)


def _prepare(prototxt, weights, options: ConvertOptions):
    """Read and analyze the net; resolve the preset and the plan."""
    if not Path(prototxt).is_file():
        read_prototxt(prototxt)  # raises the one-line "no such prototxt" error
    if weights is None:
        weights = default_weights_path(prototxt)
        if weights is None:
            raise InputFileError(
                f"{prototxt}: no weights given and no {Path(prototxt).with_suffix('.caffemodel').name} "
                "beside it; hint: pass --weights W.caffemodel (or make random ones with 'init')")
    net = read_net(prototxt, weights).for_state("TEST")
    shapes = infer_shapes(net, options.input_shapes)
    if shapes.problems:
        raise CaffeTuckerError(shapes.problems[0])
    net = fit_weights(net, shapes)
    if is_train_val(net):
        # A train_val (e.g. train_test.prototxt) given as the net: compress its TEST-phase
        # deploy, and rewrite the file itself as the fine-tuning net.
        net = deploy_from_train_val(net, shapes)
        shapes = infer_shapes(net)
        if options.train_val is None:
            options = replace(options, train_val=str(prototxt))
    preset = options.preset or detect_preset(net)
    plan = make_plan(net, shapes, preset, options.layers)
    fixed = None
    if options.ranks is not None:
        methods = {}
        for name in options.ranks:
            if name not in shapes.layers:
                raise CaffeTuckerError(f"{options.ranks_source}: layer '{name}' is not in the net "
                                       f"{net.source}; hint: check the layer names with 'info'")
            if options.layers is not None and name not in options.layers:
                continue
            try:
                methods[name] = plan.get(name) or make_plan(net, shapes, "auto", [name])[name]
            except CaffeTuckerError as exc:
                raise CaffeTuckerError(f"{options.ranks_source}: {exc}") from None
        fixed = check_manual_ranks(net, shapes, methods,
                                   {k: v for k, v in options.ranks.items() if k in methods},
                                   options.ranks_source)
        plan = {l.name: methods[l.name] for l in net.layers if l.name in methods}
    for name in plan:
        if not net.layer(name).blobs:
            raise CaffeTuckerError(f"{net.source}: layer '{name}' has no weights in {weights}; hint: "
                                   "is the caffemodel for this net?")
    return net, shapes, preset, plan, fixed, weights, options


def choose_ranks(prototxt, weights=None, options: ConvertOptions = ConvertOptions(),
                 progress: bool = True):
    """Stages read → analyze → select ranks; returns ``(net, shapes, preset, choices)``."""
    net, shapes, preset, plan, fixed, _, options = _prepare(prototxt, weights, options)
    with Progress(len(plan), "ranks") as bar:
        choices = select_ranks(net, shapes, plan, options.rank_method, options.weaken, fixed,
                               progress=bar if progress else None)
    return net, shapes, preset, choices


def convert(prototxt, weights=None, options: ConvertOptions = ConvertOptions(),
            progress: bool = True) -> ConvertResult:
    """Compress a net as Kim et al. do; see the module and README for the method.

    Parameters
    ----------
    prototxt : path
        The deploy net.
    weights : path, optional
        Its ``.caffemodel``; by default ``<prototxt stem>.caffemodel`` beside it.
    options : ConvertOptions
    """
    timings = {}
    t0 = time.perf_counter()
    net, shapes, preset, plan, fixed, weights, options = _prepare(prototxt, weights, options)
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with Progress(len(plan), "select ranks") as bar:
        choices = select_ranks(net, shapes, plan, options.rank_method, options.weaken, fixed,
                               progress=bar if progress else None, spectra=options.spectra)
    timings["ranks"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    todo = [c for c in choices.values() if c.skipped_reason is None]
    decompositions = {}
    with Progress(len(todo), "decompose") as bar:
        for c in todo:
            decompositions[c.layer] = decompose_layer(net, shapes, c)
            if progress:
                bar.update(1, c.layer)
    timings["decompose"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    replacements = {name: replacement_for(net, shapes, name, d.method, d.ranks, d.blobs)
                    for name, d in decompositions.items()}
    compressed = rewrite_net(net, replacements)
    compressed_shapes = infer_shapes(compressed)
    meta = _zoo_meta(preset)
    batch = options.batch_size or (meta or {}).get("finetune", {}).get("batch_size") or 32
    if options.train_val:
        tv = read_prototxt(options.train_val)
        structural = {n: replacement_for(net, shapes, n, r.method, r.ranks) for n, r in
                      replacements.items()}
        train_val = rewrite_net(tv, structural)
    else:
        train_val = build_train_val(compressed, batch, (meta or {}).get("preprocess"),
                                    options.train_source, options.val_source)
    solver = build_solver(batch, options.train_images, options.val_images, options.epochs)
    before = analyze(net, shapes)
    after = analyze(compressed, compressed_shapes)
    report = _build_report(net, preset, choices, decompositions, before, after, options, weights)
    timings["rewrite"] = time.perf_counter() - t0
    return ConvertResult(original=net, shapes=shapes, compressed=compressed,
                         compressed_shapes=compressed_shapes, preset=preset, choices=choices,
                         decompositions=decompositions, train_val=train_val, solver=solver,
                         report=report, timings=timings)


def _build_report(net: Net, preset: str, choices, decompositions, before: Analysis,
                  after: Analysis, options: ConvertOptions, weights) -> dict:
    rows = []
    for name, c in choices.items():
        b = before.row(name)
        entry = {"name": name, "method": c.method, "ranks": list(c.ranks),
                 "group_ranks": [list(r) for r in c.group_ranks], "full_ranks": list(c.full),
                 "rank_source": c.source, "in_channels": b.in_channels, "out_channels": b.out_channels,
                 "kernel": list(b.kernel) if b.kernel else None, "group": b.group,
                 "weights_before": b.weights, "flops_before": b.flops}
        if c.skipped_reason is None:
            parts = [after.row(n) for n in new_layer_names(name, c.method)]
            entry.update({
                "new_layers": [p.name for p in parts],
                "weights_parts": [p.weights for p in parts], "flops_parts": [p.flops for p in parts],
                "weights_after": sum(p.weights for p in parts),
                "flops_after": sum(p.flops for p in parts),
                "rel_error": round(decompositions[name].rel_error, 6),
                "skipped_reason": None})
        else:
            entry.update({"new_layers": [], "weights_parts": [], "flops_parts": [],
                          "weights_after": b.weights, "flops_after": b.flops, "rel_error": None,
                          "skipped_reason": c.skipped_reason})
        rows.append(entry)
    return {
        "model": net.name,
        "source": {"prototxt": str(net.source), "weights": str(weights)},
        "preset": preset,
        "rank_method": (f"fixed ({options.ranks_source})" if options.ranks is not None
                        else options.rank_method),
        "weaken": options.weaken,
        "layers": rows,
        "total": {"weights_before": before.total_weights, "weights_after": after.total_weights,
                  "flops_before": before.total_flops, "flops_after": after.total_flops,
                  "bias_flops_before": before.total_bias_flops,
                  "bias_flops_after": after.total_bias_flops},
    }


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out}: directory exists and is not empty; hint: pass --force to "
                                "replace its files")


def write_outputs(result: ConvertResult, out_dir, force: bool = False, plot: bool = True,
                  inputs=()) -> list[Path]:
    """Write every product of :func:`convert` into ``out_dir`` (atomically, file by file)."""
    from caffe_tucker.io.emit import write_caffemodel, write_prototxt
    from caffe_tucker.io.fsutil import write_atomic
    from caffe_tucker.report.tables import convert_markdown, dumps_json
    from caffe_tucker.compress.finetune_files import solver_text

    out = Path(out_dir)
    check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    protect = [p for p in inputs if p]
    src = result.report["source"]["prototxt"]
    note = (f"Compressed by caffe_tucker (Tucker decomposition, Kim et al. ICLR 2016) from {src}; "
            f"preset {result.preset}, ranks {result.report['rank_method']}.")
    written = [
        write_prototxt(result.compressed, out / "deploy.prototxt", True, protect, note),
        write_caffemodel(result.compressed, out / "weights.caffemodel", True, protect),
        write_prototxt(result.train_val, out / "train_val.prototxt", True, protect,
                       note + "\nFine-tuning net: set the Data layers' sources to your LMDBs"
                       if any("PLACEHOLDER" in l.spec.data_param.source for l in result.train_val.layers)
                       else note),
        write_atomic(out / "solver.prototxt", solver_text(
            result.solver, "The paper's fine-tuning schedule (Sec. 3.3): base_lr 1e-3, /10 every 5 "
            "epochs.\nRun Caffe from this directory: caffe train --solver solver.prototxt "
            "--weights weights.caffemodel"), True, protect),
        write_atomic(out / "ranks.json", dumps_json(result.ranks), True, protect),
        write_atomic(out / "report.json", dumps_json(result.report), True, protect),
        write_atomic(out / "report.md", convert_markdown(result.report), True, protect),
    ]
    if plot:
        from caffe_tucker.report.plots import ranks_png

        written.append(write_atomic(out / "ranks.png", ranks_png(result.choices), True, protect))
    return written
