"""Sparsity-constrained training in real Caffe: regularize -> prune -> fine-tune with masks.

:func:`sparsify` drives a :class:`caffe_tucker.caffe.pycaffe.TrainingSession` (pycaffe in its own
interpreter) iteration by iteration:

1. **regularize** (``regularize_iterations``): each iteration the tool computes the partial-L2
   penalties of :mod:`.regularizer` on the current weights, sends their gradients to be added to
   Caffe's before the solver's update, and steps the learnt coefficients.  The ``spatial``
   method (the baseline) trains the same number of iterations without penalties.
2. **prune**: each sparsified layer keeps its ``1 - spatial`` largest weights (:mod:`.prune`).
3. **fine-tune** (``finetune_iterations``): the masks hold the pruned weights at exactly zero;
   the joint method keeps the Winograd-domain penalty on.
4. **deploy**: the Winograd-domain filters ``G g G^T`` of every stride-1 3x3 convolution are
   pruned to the ``winograd`` ratio and written as the three-layer stock-Caffe form
   (:mod:`.winograd_form`); the spatial model is the sparse caffemodel itself.

Every measure is taken in Caffe on the test set: the original model, after regularizing, after
pruning, after fine-tuning (the sparse spatial model) and the Winograd-pruned form.

Checkpoints (weights, solver state, coefficients, masks, the log so far) go to a work directory
every ``checkpoint_every`` iterations; :func:`sparsify` with ``resume=True`` continues from the
last one.  The minibatch of each iteration is a function of the seed and the iteration, so a
resumed run trains on the same batches (layers with their own randomness, e.g. Dropout, are the
exception: Caffe does not save its random state).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from caffe_tucker.analysis.shapes import fit_weights, infer_shapes
from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.graph import Net
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.io.fsutil import write_atomic
from caffe_tucker.io.read import attach_weights
from caffe_tucker.io.wire import decode_weights
from caffe_tucker.model import Model
from caffe_tucker.sparsity.data import EvalSet, TrainSet, accuracy, psnr
from caffe_tucker.sparsity.prune import apply_mask, magnitude_mask
from caffe_tucker.sparsity.regularizer import (Coefficients, PenaltyOptions, initial_coefficients,
                                               penalties, penalty_step)
from caffe_tucker.sparsity.train_net import build_solver, build_train_net
from caffe_tucker.sparsity.winograd import to_winograd, winograd_reason, winograd_tile
from caffe_tucker.sparsity.winograd_form import winograd_net

__all__ = ["SparsifyOptions", "TrainRow", "Measure", "SparsifyRun", "sparsify", "METHODS",
           "sparsified_layers", "winograd_weights", "evaluate", "check_data", "prepare_train_net", "check_forward_memory",
           "STATE_FILE"]

METHODS = ("joint", "spatial")
PHASES = ("regularize", "finetune")
STATE_FILE = "state.json"
SPARSE_TYPES = ("Convolution", "InnerProduct")


@dataclass(frozen=True)
class SparsifyOptions:
    """Everything that decides a run (two runs with equal options give the same bytes).

    The penalty targets are ``spatial`` and ``winograd``; ``penalty`` carries the coefficients'
    settings (its own targets are replaced by these).
    """

    method: str = "joint"
    spatial: float = 0.7
    winograd: float = 0.6
    tile: int = 2
    regularize_iterations: int = 1000
    finetune_iterations: int = 1000
    batch: int = 64
    lr: float = 1e-3
    finetune_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    solver_type: str = "SGD"
    clip_gradients: float | None = None
    seed: int = 0
    layers: tuple | None = None
    eval_every: int = 0
    checkpoint_every: int = 100
    penalty: PenaltyOptions = field(default_factory=PenaltyOptions)

    def __post_init__(self):
        owner = "sparsify"
        check_param("method", self.method, self.method in METHODS,
                    f"one of {set(METHODS)}", owner)
        for name in ("spatial", "winograd"):
            v = getattr(self, name)
            check_param(name, v, isinstance(v, (int, float)) and not isinstance(v, bool)
                        and 0.0 <= v < 1.0, "a float in [0, 1)", owner)
        check_param("tile", self.tile, self.tile in (2, 4), "one of {2, 4}", owner)
        for name in ("regularize_iterations", "finetune_iterations", "eval_every"):
            v = getattr(self, name)
            check_param(name, v, isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                        "an int >= 0", owner)
        for name in ("batch", "checkpoint_every"):
            v = getattr(self, name)
            check_param(name, v, isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                        "an int >= 1", owner)
        for name in ("lr", "finetune_lr"):
            v = getattr(self, name)
            check_param(name, v, v is None and name == "finetune_lr" or (
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and v > 0), "a float > 0", owner)
        object.__setattr__(self, "penalty", replace(self.penalty, spatial=self.spatial,
                                                    winograd=self.winograd))

    @property
    def total_iterations(self) -> int:
        return self.regularize_iterations + self.finetune_iterations

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d


@dataclass(frozen=True)
class TrainRow:
    """One line of ``training.csv``."""

    iteration: int                    # 1-based, over both phases
    phase: str
    loss: float
    coefficient_spatial: float | None
    coefficient_winograd: float | None
    small_energy_spatial: float       # share of |w|^2 in each layer's r_S smallest (all layers)
    small_energy_winograd: float      # share of |U|^2 in the r_W smallest (Winograd layers)
    spatial_zeros: float              # exact zeros among the sparsified weights
    metric: float | None = None       # the test measure, where it was taken

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Measure:
    """The test measure of one model (in Caffe)."""

    stage: str                        # original, regularized, pruned, sparse, winograd
    metric: str                       # accuracy or psnr
    value: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SparsifyRun:
    """What :func:`sparsify` produced."""

    options: SparsifyOptions
    deploy: Net                       # the deploy net with the sparse spatial weights
    winograd: Net                     # the Winograd-pruned three-layer form, with weights
    winograd_filters: dict = field(repr=False)   # layer -> pruned U (T, C, a, a)
    layers: tuple = ()                # sparsified layer names
    winograd_layers: tuple = ()       # the stride-1 3x3 convolutions among them
    skipped: dict = field(default_factory=dict)  # layer -> why it is spatial only
    rows: tuple = ()                  # TrainRow per iteration
    measures: tuple = ()              # Measure per stage
    form_error: float = 0.0           # max |form - spatial| / max |spatial|, unpruned U, in Caffe
    coefficients: Coefficients | None = None


def sparsified_layers(net: Net, names=None) -> list[str]:
    """The layers to sparsify: ``names``, or every Convolution and InnerProduct with weights."""
    have = [layer.name for layer in net.layers if layer.type in SPARSE_TYPES and layer.blobs]
    if names is None:
        return have
    unknown = [n for n in names if n not in have]
    if unknown:
        raise CaffeTuckerError(f"{net.source or 'the net'}: layer(s) {', '.join(map(repr, unknown))} "
                               f"cannot be sparsified; hint: choose among {have}")
    return [n for n in have if n in names]


def winograd_weights(net: Net, layers, ratio: float, tile) -> dict:
    """``G g G^T`` of each listed layer's weights, pruned to ``ratio`` (float32)."""
    out = {}
    for name in layers:
        u = to_winograd(net.layer(name).blobs[0], tile)
        out[name] = apply_mask(u, magnitude_mask(u, ratio)).astype(np.float32) if ratio else \
            u.astype(np.float32)
    return out


def _score(metric: str, outputs, target, shave: int) -> tuple[float, int]:
    if metric == "accuracy":
        return accuracy(outputs, target) * len(target), len(target)
    return psnr(outputs, target, shave), 1


def evaluate(runtime, prototxt: str, caffemodel: bytes, test: EvalSet, output: str | None = None,
             net: Net | None = None) -> float:
    """The test measure of a net in Caffe: accuracy (share) or mean PSNR (dB).

    With ``net`` (the same net as a graph) the memory Caffe's blobs will take on the largest
    test item is checked first (:func:`check_forward_memory`).  The worker drops the net when
    done, so its blobs do not stay in memory beside a training session.
    """
    if net is not None:
        check_forward_memory(net, test)
    total = count = 0.0
    try:
        for inputs, target in test.items:
            got = runtime.forward(prototxt, caffemodel, inputs=inputs,
                                  blobs=[output] if output else None)
            out = got[output] if output else next(iter(got.values()))
            s, n = _score(test.metric, out, target, test.shave)
            total += s
            count += n
    finally:
        release = getattr(runtime, "release", None)
        if release is not None:
            release()
    return total / count


def check_forward_memory(net: Net, test: EvalSet) -> None:
    """Refuse to run ``net`` on test items whose blobs would not fit in memory (one line, the
    figure, a hint) rather than have the operating system kill Caffe."""
    from caffe_tucker.analysis.validate import check_allocation

    worst = 0
    for inputs, _ in test.items:
        shapes = infer_shapes(net, {k: tuple(v.shape) for k, v in inputs.items()})
        worst = max(worst, 4 * sum(int(np.prod(s)) for s in shapes.blobs.values() if s))
    check_allocation(worst, f"running {net.name or 'the net'} on the largest test item in Caffe",
                     "test on smaller images, or raise the limit if the machine has the memory")


def prepare_train_net(model: Model, train: TrainSet, test: EvalSet, options: SparsifyOptions,
                      train_net: Net | None = None) -> Net:
    """The train net (``train_net``, or one built from the deploy net) after :func:`check_data`."""
    if train_net is None:
        train_net = build_train_net(model.net, train.sample_shapes(), options.batch,
                                    classifier=test.metric == "accuracy")
    check_data(model.net, train_net, train, test)
    return train_net


def check_data(deploy: Net, train_net: Net, train: TrainSet, test: EvalSet) -> None:
    """Refuse data that does not fit the net, before Caffe is asked to run anything.

    The train net (with the deploy net's weights) must take the training samples, and the deploy
    net each test item, with every weight blob fitting; also, a classifier needs class labels.
    """
    from caffe_tucker.errors import ShapeError, WeightsMismatchError

    def fits(net: Net, shapes, what: str):
        try:
            fit_weights(net, infer_shapes(net, shapes), required=False)
        except (ShapeError, WeightsMismatchError) as exc:
            given = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in (shapes or {}).items())
            raise CaffeTuckerError(f"{what} does not fit the net ({given}): {exc}") from None

    feeds = sorted(t for layer in train_net.layers if layer.type == "Input" for t in layer.tops)
    if feeds != sorted(train.arrays):
        raise CaffeTuckerError(
            f"the training data ({train.source}) has arrays {sorted(train.arrays)}, but the train "
            f"net's Input blobs are {feeds or 'none'}; hint: one array per Input blob (a train "
            "net that reads Data layers cannot be fed by sparsify)")
    weights = {layer.name: layer.blobs for layer in deploy.layers if layer.blobs}
    tn = train_net.with_layers(layer.with_blobs(weights.get(layer.name, layer.blobs))
                               for layer in train_net.layers)
    fits(tn, None, f"the training data ({train.source})")
    for inputs, _ in test.items[:1] + test.items[-1:]:
        fits(deploy, {k: tuple(v.shape) for k, v in inputs.items()},
             f"the test data ({test.source})")


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def _energy(weights: Mapping, winograd_layers, terms, tile) -> tuple:
    """Shares of each domain's energy in its small set (``terms``: :func:`penalties` of
    ``weights``), and the share of exact zeros."""
    r_s, r_w, _, _ = terms
    e_s = sum(0.5 * float(np.sum(np.square(w, dtype=np.float64))) for w in weights.values())
    e_w = sum(0.5 * float(np.sum(np.square(to_winograd(weights[n], tile))))
              for n in winograd_layers)
    zeros = sum(int(np.size(w) - np.count_nonzero(w)) for w in weights.values())
    size = sum(int(np.size(w)) for w in weights.values())
    return (r_s / e_s if e_s else 0.0, r_w / e_w if e_w else 0.0, zeros / size if size else 0.0)


class _Work:
    """The checkpoint directory: ``state.json`` names the files of the last checkpoint."""

    def __init__(self, path: Path | None):
        self.path = path

    def load(self, key: str) -> dict | None:
        if self.path is None or not (self.path / STATE_FILE).is_file():
            return None
        try:
            state = json.loads((self.path / STATE_FILE).read_text())
        except (OSError, ValueError):
            raise CaffeTuckerError(f"{self.path / STATE_FILE}: unreadable checkpoint; hint: "
                                   "delete the directory and run without --resume") from None
        if state.get("key") != key:
            raise CaffeTuckerError(f"{self.path}: the checkpoint was made from other inputs or "
                                   "options; hint: use the same ones, or run without --resume")
        return state

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def save(self, state: dict, files: Mapping[str, bytes]) -> None:
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        old = set(p.name for p in self.path.iterdir())
        for name, data in files.items():
            write_atomic(self.path / name, [data], force=True)
        write_atomic(self.path / STATE_FILE, json.dumps(state, sort_keys=True), force=True)
        for name in old - set(files) - {STATE_FILE}:
            (self.path / name).unlink(missing_ok=True)

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def _net_with(deploy: Net, caffemodel: bytes) -> Net:
    net = attach_weights(deploy, decode_weights(caffemodel, "<trained>"), "<trained>")
    return fit_weights(net, infer_shapes(net))


def _masked(net: Net, masks: Mapping[str, np.ndarray]) -> Net:
    return net.with_layers(
        layer.with_blobs([apply_mask(layer.blobs[0], masks[layer.name]), *layer.blobs[1:]])
        if layer.name in masks else layer for layer in net.layers)


def sparsify(model: Model, train: TrainSet, test: EvalSet, options: SparsifyOptions, runtime, *,
             train_net: Net | None = None, work_dir: Path | None = None, resume: bool = False,
             on_iteration: Callable[[TrainRow], None] | None = None,
             on_stage: Callable[[str], None] | None = None) -> SparsifyRun:
    """Train ``model`` sparse in both domains in Caffe; see the module docstring.

    Parameters
    ----------
    model : Model
        The deploy net with its weights (:func:`caffe_tucker.model.load_model`).
    train : TrainSet
        Training samples, one array per input of the train net and ``label``.
    test : EvalSet
        Test items and their measure.
    options : SparsifyOptions
    runtime : CaffeRuntime
        The pycaffe worker (``open_training``, ``forward``).
    train_net : Net, optional
        The train net (``Input`` layers, a loss); built from the deploy net when None.
    work_dir : Path, optional
        Where checkpoints go; None keeps none.
    resume : bool
        Continue from the checkpoint in ``work_dir``.
    on_iteration, on_stage : callables, optional
        Told of each logged iteration and each stage started (progress display).
    """
    deploy = model.net
    tell = on_stage or (lambda stage: None)
    layers = sparsified_layers(deploy, options.layers)
    if not layers:
        raise CaffeTuckerError(f"{model.prototxt}: no Convolution or InnerProduct layer with "
                               "weights to sparsify")
    skipped = {}
    wl = []
    for name in layers:
        reason = winograd_reason(deploy.layer(name))
        if reason is None:
            wl.append(name)
        else:
            skipped[name] = reason
    tile = winograd_tile(options.tile)
    train_net = prepare_train_net(model, train, test, options, train_net)
    if wl:  # the Winograd form is measured at the end: refuse now if it cannot fit, not then
        check_forward_memory(winograd_net(deploy, infer_shapes(deploy),
                                          winograd_weights(deploy, wl, 0.0, tile), tile), test)
    train_text = prototxt_text(train_net)
    deploy_text = prototxt_text(deploy)
    start_model = b"".join(caffemodel_chunks(deploy))
    key = _digest(json.dumps(options.to_dict(), sort_keys=True), train_text, deploy_text,
                  start_model, *(a.tobytes() for a in train.arrays.values()))
    work = _Work(work_dir)
    state = work.load(key) if resume else None
    if not resume:
        work.remove()

    def measure(net: Net) -> float:
        return evaluate(runtime, prototxt_text(net), b"".join(caffemodel_chunks(net)), test,
                        net=net)

    if state is None:
        state = {"key": key, "phase": PHASES[0], "iteration": 0, "rows": [], "measures": [],
                 "coefficients": None}
        tell("measure original")
        state["measures"].append(Measure("original", test.metric, measure(deploy)).to_dict())
    rows = [TrainRow(**r) for r in state["rows"]]
    measures = [Measure(**m) for m in state["measures"]]
    net = deploy
    masks: dict = {}
    if state["iteration"] > 0 or state["phase"] != PHASES[0]:
        net = _net_with(deploy, work.read("weights.caffemodel"))
    if state["phase"] == PHASES[1] and (work_dir / "masks.npz").is_file():
        with np.load(work_dir / "masks.npz") as z:
            masks = {k: z[k].astype(bool) for k in z.files}
    weights = {n: np.asarray(net.layer(n).blobs[0], dtype=np.float32) for n in layers}
    coeffs = (Coefficients.from_dict(state["coefficients"]) if state["coefficients"] else
              initial_coefficients(weights, wl, options.penalty, tile))
    joint = options.method == "joint"

    for phase in PHASES:
        n_iter = (options.regularize_iterations if phase == "regularize"
                  else options.finetune_iterations)
        offset = 0 if phase == "regularize" else options.regularize_iterations
        if PHASES.index(phase) < PHASES.index(state["phase"]):
            continue
        if phase == "finetune" and state["phase"] == "regularize":
            # end of phase 1: measure, prune, measure
            tell("measure regularized")
            measures.append(Measure("regularized", test.metric, measure(net)))
            masks = {n: magnitude_mask(net.layer(n).blobs[0], options.spatial) for n in layers}
            net = _masked(net, masks)
            weights = {n: np.asarray(net.layer(n).blobs[0], dtype=np.float32) for n in layers}
            tell("measure pruned")
            measures.append(Measure("pruned", test.metric, measure(net)))
            state.update(phase="finetune", iteration=0)
            _checkpoint(work, state, rows, measures, coeffs, net, None, masks)
        pen = options.penalty if phase == "regularize" else replace(options.penalty, spatial=0.0)
        lr = options.lr if phase == "regularize" else (options.finetune_lr or options.lr)
        solver = build_solver(lr, solver_type=options.solver_type, momentum=options.momentum,
                              weight_decay=options.weight_decay, seed=options.seed,
                              clip_gradients=options.clip_gradients)
        start = state["iteration"]
        if start >= n_iter:
            continue
        tell(phase)
        session = runtime.open_training(solver, train_text, b"".join(caffemodel_chunks(net)),
                                        seed=options.seed)
        try:
            if start > 0:
                session.restore(work.read("weights.caffemodel"), work.read("solver.solverstate"))
            terms = penalties(weights, wl, options.penalty, tile)  # once per weights: step and log
            for i in range(start, n_iter):
                it = offset + i
                step = penalty_step(weights, wl, pen, coeffs, tile, terms) if joint else None
                batch = train.batch(it, options.batch, options.seed)
                res = session.step(batch, add_diffs=step.gradients if step else None,
                                   masks=masks or None, fetch=layers)
                weights = {n: res.weights[n] for n in layers}
                if step is not None:
                    coeffs = step.next_coefficients
                terms = penalties(weights, wl, options.penalty, tile)
                e_s, e_w, zeros = _energy(weights, wl, terms, tile)
                metric = None
                done = i + 1
                if options.eval_every and (done % options.eval_every == 0 or done == n_iter):
                    metric = evaluate(runtime, deploy_text, session.caffemodel(), test)
                row = TrainRow(it + 1, phase, float(res.loss),
                               coeffs.spatial if joint and phase == "regularize" else None,
                               coeffs.winograd if joint else None, e_s, e_w, zeros, metric)
                rows.append(row)
                if done % options.checkpoint_every == 0 or done == n_iter:
                    model_bytes, solverstate = session.snapshot()
                    state["iteration"] = done
                    _checkpoint(work, state, rows, measures, coeffs, None, model_bytes,
                                masks if phase == "finetune" else None, solverstate)
                if on_iteration:
                    on_iteration(row)
            net = _net_with(deploy, session.caffemodel())
        finally:
            session.close()
        state["iteration"] = n_iter
    net = _masked(net, masks)  # exact zeros, whatever the solver did in the last step
    tell("measure sparse")
    measures.append(Measure("sparse", test.metric, measure(net)))

    # deployment in the Winograd domain
    shapes = infer_shapes(net)
    exact = winograd_net(net, shapes, winograd_weights(net, wl, 0.0, tile), tile) if wl else net
    filters = winograd_weights(net, wl, options.winograd, tile)
    form = winograd_net(net, shapes, filters, tile) if wl else net
    tell("check the Winograd form")
    form_error = _form_error(runtime, net, exact, test)
    tell("measure winograd")
    measures.append(Measure("winograd", test.metric, measure(form)))
    work.remove()
    return SparsifyRun(options, net, form, filters, tuple(layers), tuple(wl), skipped,
                       tuple(rows), tuple(measures), form_error, coeffs if joint else None)


def _checkpoint(work: _Work, state: dict, rows, measures, coeffs, net, model_bytes, masks,
                solverstate: bytes | None = None) -> None:
    if work.path is None:
        return
    state = dict(state, rows=[r.to_dict() for r in rows],
                 measures=[m.to_dict() for m in measures], coefficients=coeffs.to_dict())
    files = {"weights.caffemodel": model_bytes if model_bytes is not None
             else b"".join(caffemodel_chunks(net))}
    if solverstate is not None:
        files["solver.solverstate"] = solverstate
    if masks:
        import io
        buf = io.BytesIO()
        np.savez(buf, **{k: v.astype(np.uint8) for k, v in masks.items()})
        files["masks.npz"] = buf.getvalue()
    work.save(state, files)


def _form_error(runtime, spatial: Net, form: Net, test: EvalSet) -> float:
    """Max |form - spatial| / max |spatial| on the smallest test item, both run in Caffe."""
    inputs, _ = min(test.items, key=lambda item: sum(v.size for v in item[0].values()))
    try:
        a = runtime.forward(prototxt_text(spatial), b"".join(caffemodel_chunks(spatial)),
                            inputs=inputs)
        b = runtime.forward(prototxt_text(form), b"".join(caffemodel_chunks(form)), inputs=inputs)
    finally:
        runtime.release()
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        scale = float(np.max(np.abs(x))) or 1.0
        worst = max(worst, float(np.max(np.abs(np.asarray(y, np.float64) - x))) / scale)
    return worst
