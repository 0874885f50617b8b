"""One-shot whole-network compression: load → plan → select ranks → decompose → rewrite.

:func:`convert` runs the paper's method on a net and returns every product
in a :class:`ConvertResult`, whose :class:`~caffe_tucker.compress.record.CompressionRecord`
says what was done; :func:`write_outputs` writes them into an output directory
(as a whole: see :func:`caffe_tucker.io.fsutil.write_directory`).  Nothing here
formats text for the terminal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from caffe_tucker.analysis.cost import analyze
from caffe_tucker.analysis.shapes import ShapeInfo, infer_shapes
from caffe_tucker.compress.blas import blas_limits, blas_threads
from caffe_tucker.compress.decompose import Decomposition, decompose_layer
from caffe_tucker.compress.methods import DecompositionFailed, get_method
from caffe_tucker.compress.finetune_files import (IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES,
                                                  build_solver, build_train_val, check_train_val,
                                                  data_batch_size, solver_text)
from caffe_tucker.compress.plan import detect_preset, make_plan
from caffe_tucker.compress.ranks import (RankChoice, check_manual_ranks, select_ranks,
                                         split_ranks_entries)
from caffe_tucker.compress.record import CompressionRecord, LayerRecord, Totals
from caffe_tucker.compress.rewrite import replacement_for, rewrite_net
from caffe_tucker.errors import CaffeTuckerError, where
from caffe_tucker.graph import Net
from caffe_tucker.io.caffe_pb2 import SolverParameter
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.io.fsutil import write_directory
from caffe_tucker.io.read import read_prototxt, weights_for
from caffe_tucker.model import Model, load_model
from caffe_tucker.report.markdown import convert_markdown
from caffe_tucker.report.plots import ranks_png
from caffe_tucker.report.progress import Progress
from caffe_tucker.report.tables import dumps_json
from caffe_tucker.zoo import zoo_model

__all__ = ["ConvertOptions", "ConvertResult", "convert", "write_outputs",
           "choose_ranks", "OUTPUT_FILES"]

OUTPUT_FILES = ("deploy.prototxt", "weights.caffemodel", "train_val.prototxt", "solver.prototxt",
                "ranks.json", "report.json", "report.md", "ranks.png")


@dataclass(frozen=True)
class ConvertOptions:
    """Options of :func:`convert` (the command line's flags)."""

    preset: str | None = None          # None: detect a zoo net, else "auto"
    layers: tuple[str, ...] | None = None
    methods: dict | None = None        # layer -> method name, overriding the preset
    ranks: dict | None = None          # fixed ranks, as in ranks.json
    ranks_source: str = "ranks file"
    rank_method: str = "vbmf"
    weaken: float = 1.0
    vbmf_solver: str = "reference"     # evbmf's solver: "reference" (the port's ranks) or "global"
    input_shapes: dict | None = None
    train_val: str | None = None
    train_source: str | None = None
    val_source: str | None = None
    batch_size: int | None = None
    train_images: int = IMAGENET_TRAIN_IMAGES
    val_images: int = IMAGENET_VAL_IMAGES
    epochs: float = 15
    spectra: bool = True               # singular values for the report's plot
    method: str | None = None          # every planned layer it applies to (a bare --method)
    blocks: int = 4                    # block terms per layer for automatic btd ranks (--blocks)
    with_fc: bool = False              # also the fc layers the preset leaves alone (--with-fc)
    # -- issue 13: the rank policy (compress/policy.py) and the cost profile it reads
    rank_policy: str = "vbmf"          # "vbmf": VBMF's choice as is; "latency": cost-model choice
    profile: str | None = None         # a profile JSON; None: the newest cached of this CPU

    def method_options(self) -> dict:
        """The options methods read when they choose their ranks (``Method.auto_ranks``)."""
        return {"blocks": self.blocks}


@dataclass(frozen=True, eq=False)
class ConvertResult:
    """Every product of :func:`convert`."""

    original: Model
    compressed: Net
    compressed_shapes: ShapeInfo
    preset: str
    choices: dict[str, RankChoice]
    decompositions: dict[str, Decomposition]
    train_val: Net
    solver: SolverParameter
    record: CompressionRecord
    timings: dict = field(default_factory=dict)

    @property
    def ranks(self) -> dict:
        return self.record.ranks_json()


def _zoo_meta(preset: str) -> dict | None:
    return None if preset == "auto" else zoo_model(preset)


def _prepare(prototxt, weights, options: ConvertOptions):
    """Load the net; resolve the preset and the plan."""
    weights = weights_for(prototxt, weights, " (or make random ones with 'init')")
    if options.train_val is not None and (options.train_source or options.val_source):
        raise CaffeTuckerError(f"--train-val {options.train_val} and --train-source/--val-source "
                               "do not go together: the fine-tuning net is your train_val, which "
                               "reads the sources its data layers name; hint: set them there, "
                               "or leave out --train-val to have a train_val built")
    # A layer of unknown type (another fork's) passes through: its outputs, and what is computed
    # from them, have unknown shapes, and only layers of known shapes are planned.
    model = load_model(prototxt, weights, input_shapes=options.input_shapes, deploy=True)
    if model.from_train_val and options.train_val is None:
        # A train_val (e.g. train_test.prototxt) given as the net: compress its TEST-phase
        # deploy, and rewrite the file itself as the fine-tuning net.
        if options.train_source or options.val_source:
            raise CaffeTuckerError(f"{prototxt}: a train_val net, which becomes the fine-tuning "
                                   "net with the sources its data layers name, so "
                                   "--train-source/--val-source do not apply; hint: set the "
                                   "sources in it, or convert its deploy net instead")
        options = replace(options, train_val=str(prototxt))
    net, shapes = model.net, model.shapes
    preset = options.preset or detect_preset(net)
    plan = make_plan(net, shapes, preset, options.layers, options.methods, options.method,
                     with_fc=options.with_fc)
    fixed = None
    if options.ranks is not None:
        file_methods, values = split_ranks_entries(options.ranks, options.ranks_source)
        methods = {}
        for name in values:
            if name not in shapes.layers:
                raise CaffeTuckerError(f"{options.ranks_source}: layer '{name}' is not in the net "
                                       f"{net.source}; hint: check the layer names with 'info'")
            if options.layers is not None and name not in options.layers:
                continue
            # --method LAYER=METHOD, then the file's own method, then the plan (bare --method).
            chosen = (options.methods or {}).get(name) or file_methods.get(name)
            try:
                only = {name: chosen} if chosen else None
                methods[name] = (plan[name] if name in plan and chosen in (None, plan[name]) else
                                 make_plan(net, shapes, "auto", [name], only, options.method)[name])
            except CaffeTuckerError as exc:
                raise CaffeTuckerError(f"{options.ranks_source}: {exc}") from None
        fixed = check_manual_ranks(net, shapes, methods,
                                   {k: v for k, v in values.items() if k in methods},
                                   options.ranks_source)
        plan = {l.name: methods[l.name] for l in net.layers if l.name in methods}
    for name in plan:
        if not net.layer(name).blobs:
            raise CaffeTuckerError(f"{net.source}: layer '{name}' has no weights in {weights}; hint: "
                                   "is the caffemodel for this net?")
    return model, preset, plan, fixed, options, _user_train_val(options, net, plan)


def _user_train_val(options: ConvertOptions, net: Net, plan) -> tuple | None:
    """The user's train_val (``--train-val``, or the train_val given as the net) checked against
    the deploy, with the batch sizes of its TRAIN and TEST data layers; None when there is none.

    Raises
    ------
    CaffeTuckerError
        When a layer to compress differs from the deploy's (:func:`check_train_val`), or
        ``--batch-size`` contradicts the TRAIN data layer's batch size.
    """
    if options.train_val is None:
        return None
    tv = read_prototxt(options.train_val)
    check_train_val(tv, net, plan)
    train, test = data_batch_size(tv.for_state("TRAIN")), data_batch_size(tv.for_state("TEST"))
    if train is not None and options.batch_size is not None and options.batch_size != train[1]:
        raise CaffeTuckerError(f"{where(tv.source, train[0].line, train[0].name)}reads batches of "
                               f"{train[1]}, but --batch-size is {options.batch_size}; hint: the "
                               "train_val's batch sizes make the solver's epochs: leave out "
                               "--batch-size, or change batch_size in the train_val")
    return tv, train[1] if train else None, test[1] if test else None


def choose_ranks(prototxt, weights=None, options: ConvertOptions = ConvertOptions(),
                 progress: bool = True):
    """Stages load → plan → select ranks; returns ``(model, preset, choices)``."""
    model, preset, plan, fixed, options, _ = _prepare(prototxt, weights, options)
    with Progress(len(plan), "ranks") as bar:
        choices = select_ranks(model.net, model.shapes, plan, options.rank_method, options.weaken,
                               fixed, progress=bar if progress else None,
                               method_options=options.method_options(),
                               vbmf_solver=options.vbmf_solver)
    return model, preset, choices


def convert(prototxt, weights=None, options: ConvertOptions = ConvertOptions(),
            progress: bool = True) -> ConvertResult:
    """Compress a net as Kim et al. do; see the module and README for the method.

    Parameters
    ----------
    prototxt : path
        The deploy net (or a train_val, compressed in its TEST-phase deploy form).
    weights : path, optional
        Its ``.caffemodel``; by default ``<prototxt stem>.caffemodel`` beside it.
    options : ConvertOptions
    """
    timings = {}
    threads = blas_threads()  # checked before the (slow) reading
    t0 = time.perf_counter()
    model, preset, plan, fixed, options, user_train_val = _prepare(prototxt, weights, options)
    net, shapes = model.net, model.shapes
    timings["read"] = time.perf_counter() - t0

    with blas_limits(threads):  # the LAPACK-heavy stages: $CAFFE_TUCKER_BLAS_THREADS, default 1
        t0 = time.perf_counter()
        with Progress(len(plan), "select ranks") as bar:
            choices = select_ranks(net, shapes, plan, options.rank_method, options.weaken, fixed,
                                   progress=bar if progress else None, spectra=options.spectra,
                                   method_options=options.method_options(),
                                   vbmf_solver=options.vbmf_solver)
            # -- issue 13: the rank policy, part of the rank-selection stage
            decisions = {}
            if options.rank_policy != "vbmf":
                from caffe_tucker.compress.policy import apply_rank_policy
                choices, decisions = apply_rank_policy(net, shapes, choices, options.rank_policy,
                                                       options.profile)
        timings["ranks"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        todo = [c for c in choices.values() if c.skipped_reason is None]
        decompositions = {}
        with Progress(len(todo), "decompose") as bar:
            for c in todo:
                try:
                    decompositions[c.layer] = decompose_layer(net.layer(c.layer),
                                                              shapes.layers[c.layer], c)
                except DecompositionFailed as exc:  # e.g. CP-ALS diverged: never emitted
                    choices[c.layer] = replace(c, skipped_reason=str(exc))
                if progress:
                    bar.update(1, c.layer)
        timings["decompose"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    replacements = {name: replacement_for(net.layer(name), shapes.layers[name], d.method, d.ranks,
                                          d.blobs)
                    for name, d in decompositions.items()}
    compressed = rewrite_net(net, replacements)
    compressed_shapes = infer_shapes(compressed)
    meta = _zoo_meta(preset)
    batch = options.batch_size or (meta or {}).get("finetune", {}).get("batch_size") or 32
    val_batch = None
    if user_train_val is not None:
        # the user's train_val: its own data layers' batch sizes make the solver's epochs
        tv, train_batch, val_batch = user_train_val
        batch = train_batch or batch
        train_val = rewrite_net(tv, {n: r.without_blobs() for n, r in replacements.items()})
    else:
        train_val = build_train_val(compressed, batch, (meta or {}).get("preprocess"),
                                    options.train_source, options.val_source)
    solver = build_solver(batch, options.train_images, options.val_images, options.epochs,
                          val_batch_size=val_batch)
    record = _build_record(model, preset, choices, decompositions, compressed, compressed_shapes,
                           options, decisions)
    timings["rewrite"] = time.perf_counter() - t0
    return ConvertResult(original=model, compressed=compressed,
                         compressed_shapes=compressed_shapes, preset=preset, choices=choices,
                         decompositions=decompositions, train_val=train_val, solver=solver,
                         record=record, timings=timings)


def _build_record(model: Model, preset: str, choices, decompositions, compressed: Net,
                  compressed_shapes: ShapeInfo, options: ConvertOptions,
                  decisions=None) -> CompressionRecord:
    before = analyze(model.net, model.shapes)
    after = analyze(compressed, compressed_shapes)
    rows = []
    for name, c in choices.items():
        b = before.row(name)
        common = dict(name=name, method=c.method, ranks=tuple(c.ranks),
                      group_ranks=tuple(tuple(r) for r in c.group_ranks), full_ranks=tuple(c.full),
                      rank_source=c.source, in_channels=b.in_channels,
                      out_channels=b.out_channels, kernel=b.kernel, group=b.group,
                      weights_before=b.weights, flops_before=b.flops)
        if decisions and name in decisions:  # issue 13
            common["policy"] = decisions[name]
        if c.skipped_reason is None:
            d = decompositions[name]
            rows_after = [after.row(n) for n in get_method(d.method).new_layer_names(name)]
            rows.append(LayerRecord(
                **common, new_layers=tuple(r.name for r in rows_after),
                weights_parts=tuple(r.weights for r in rows_after),
                flops_parts=tuple(r.flops for r in rows_after),
                weights_after=sum(r.weights for r in rows_after),
                flops_after=sum(r.flops for r in rows_after), rel_error=d.rel_error))
        else:
            rows.append(LayerRecord(**common, weights_after=b.weights, flops_after=b.flops,
                                    skipped_reason=c.skipped_reason))
    rank_method = (f"fixed ({options.ranks_source})" if options.ranks is not None
                   else options.rank_method)
    return CompressionRecord(model=model.net.name, preset=preset, rank_method=rank_method,
                             weaken=options.weaken,
                             vbmf_solver=options.vbmf_solver if rank_method == "vbmf" else None,
                             layers=tuple(rows),
                             total=Totals.of(before, after), source_prototxt=model.prototxt,
                             source_weights=model.weights, rank_policy=options.rank_policy)


def _deploy_note(result: ConvertResult) -> str:
    return (f"Compressed by caffe_tucker (Tucker decomposition, Kim et al. ICLR 2016) from "
            f"{result.original.prototxt}; preset {result.preset}, ranks {result.record.rank_method}.")


def output_files(result: ConvertResult, out_dir, plot: bool = True) -> dict:
    """The output directory's files, name -> contents (str, bytes or a list of byte chunks)."""
    note = _deploy_note(result)
    placeholder = any("PLACEHOLDER" in l.spec.data_param.source for l in result.train_val.layers)
    files = {
        "deploy.prototxt": prototxt_text(result.compressed, note),
        "weights.caffemodel": caffemodel_chunks(result.compressed),
        "train_val.prototxt": prototxt_text(
            result.train_val,
            note + "\nFine-tuning net: set the Data layers' sources to your LMDBs" if placeholder
            else note),
        "solver.prototxt": solver_text(
            result.solver, "The paper's fine-tuning schedule (Sec. 3.3): base_lr 1e-3, /10 every 5 "
            "epochs.\nRun Caffe from this directory: caffe train --solver solver.prototxt "
            "--weights weights.caffemodel"),
        "ranks.json": dumps_json(result.ranks),
        "report.json": dumps_json(result.record.to_json(out_dir)),
        "report.md": convert_markdown(result.record),
    }
    if plot:
        files["ranks.png"] = ranks_png(result.choices)
    return files


def write_outputs(result: ConvertResult, out_dir, force: bool = False, plot: bool = True,
                  inputs=()) -> list[Path]:
    """Write every product of :func:`convert` into ``out_dir``, as a whole.

    The directory is built beside its destination and moved into place at the
    end, so an interrupted run never leaves a directory that looks complete;
    an existing directory is only replaced with ``force``, and never one that
    holds an input.
    """
    return write_directory(out_dir, output_files(result, out_dir, plot), force=force,
                           inputs=inputs)
