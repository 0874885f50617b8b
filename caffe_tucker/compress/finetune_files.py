"""Stage 6, emit (fine-tuning files): the train_val net and the paper's solver.

The paper fine-tunes the whole compressed network once, with base learning
rate 1e-3 divided by 10 every 5 epochs (Sec. 3.3), batch 128/128/64/32 for
AlexNet/VGG-S/GoogLeNet/VGG-16.  This module writes:

* a train_val net: the user's own train_val (``--train-val``) rewritten like
  the deploy, or one built from the deploy: two ``Data`` layers (TRAIN and
  TEST phases, LMDB, the zoo model's crop/mean/mirror), the deploy's layers
  without its final Softmax, a ``SoftmaxWithLoss`` and top-1/top-5
  ``Accuracy`` layers (TEST);
* a solver with the paper's schedule expressed in iterations.

A user's train_val must be the training net of the deploy being compressed
(:func:`check_train_val`), and its data layers' batch sizes
(:func:`data_batch_size`) are the solver's: the TRAIN one makes the
iterations of an epoch, the TEST one ``test_iter``.
"""

from __future__ import annotations

import math

from google.protobuf import text_format

from caffe_tucker.analysis.shapes import conv_geometry
from caffe_tucker.errors import CaffeTuckerError, check_param, where
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.caffe_pb2 import SolverParameter

__all__ = ["PLACEHOLDER_TRAIN", "PLACEHOLDER_VAL", "build_train_val", "build_solver", "solver_text",
           "check_train_val", "data_batch_size"]

PLACEHOLDER_TRAIN = "PLACEHOLDER/path/to/train_lmdb"
PLACEHOLDER_VAL = "PLACEHOLDER/path/to/val_lmdb"
IMAGENET_TRAIN_IMAGES = 1281167
IMAGENET_VAL_IMAGES = 50000


def _input_layer(net: Net) -> Layer:
    for layer in net.layers:
        if layer.type == "Input":
            return layer
    raise CaffeTuckerError(f"{net.source}: the deploy net has no Input layer to turn into Data "
                           "layers; hint: pass your own --train-val")


def build_train_val(deploy: Net, batch_size: int, preprocess: dict | None = None,
                    train_source: str | None = None, val_source: str | None = None,
                    val_batch_size: int | None = None) -> Net:
    """A train_val net built from a (compressed or not) deploy net.

    ``preprocess`` may hold ``crop_size``, ``mean_bgr`` (per-channel means),
    ``scale`` and ``mirror``, as in the zoo metadata.
    """
    check_param("batch_size", batch_size, isinstance(batch_size, int) and batch_size > 0,
                "an int > 0", "convert", exc=CaffeTuckerError)
    inp = _input_layer(deploy)
    if len(inp.tops) != 1:
        raise CaffeTuckerError(f"{deploy.source}: the deploy net has {len(inp.tops)} inputs; a "
                               "train_val can only be built for one image input; hint: pass --train-val")
    data = inp.tops[0]
    pre = preprocess or {}
    layers = list(deploy.layers)
    logits = layers[-1].tops[0]
    if layers[-1].type == "Softmax":
        logits = layers[-1].bottoms[0]
        layers = layers[:-1]
    body = [l for l in layers if l is not inp]

    def data_layer(phase: str, source: str | None, batch: int, mirror: bool) -> Layer:
        transform = {}
        if pre.get("crop_size"):
            transform["crop_size"] = int(pre["crop_size"])
        if pre.get("mean_bgr"):
            transform["mean_value"] = [float(v) for v in pre["mean_bgr"]]
        if pre.get("scale") not in (None, 1, 1.0):
            transform["scale"] = float(pre["scale"])
        if mirror:
            transform["mirror"] = True
        spec = make_spec(f"data_{phase.lower()}", "Data", [], [data, "label"],
                         include=[{"phase": 0 if phase == "TRAIN" else 1}],
                         transform_param=transform,
                         data_param={"source": source or (PLACEHOLDER_TRAIN if phase == "TRAIN"
                                                          else PLACEHOLDER_VAL),
                                     "batch_size": batch, "backend": 1})
        return Layer(spec=spec)

    train = data_layer("TRAIN", train_source, batch_size, bool(pre.get("mirror", False)))
    test = data_layer("TEST", val_source, val_batch_size or batch_size, False)
    loss = Layer(spec=make_spec("loss", "SoftmaxWithLoss", [logits, "label"], ["loss"]))
    top1 = Layer(spec=make_spec("accuracy_top1", "Accuracy", [logits, "label"], ["accuracy_top1"],
                                include=[{"phase": 1}]))
    top5 = Layer(spec=make_spec("accuracy_top5", "Accuracy", [logits, "label"], ["accuracy_top5"],
                                include=[{"phase": 1}], accuracy_param={"top_k": 5}))
    return deploy.with_layers([train, test] + body + [loss, top1, top5])


def data_batch_size(net: Net) -> tuple[Layer, int] | None:
    """The first layer of a phase-filtered net that feeds it data, and its batch size.

    Data, ImageData, HDF5Data, WindowData and MemoryData layers say it in their
    parameters, DummyData and Input layers in the first axis of their first
    shape.  None when the net has no such layer, or it sets no batch size.
    """
    params = {"Data": "data_param", "ImageData": "image_data_param",
              "HDF5Data": "hdf5_data_param", "WindowData": "window_data_param",
              "MemoryData": "memory_data_param"}
    for layer in net.layers:
        spec = layer.spec
        if layer.type in params:
            batch = getattr(spec, params[layer.type]).batch_size
        elif layer.type == "DummyData":
            p = spec.dummy_data_param
            batch = (p.shape[0].dim[0] if p.shape and p.shape[0].dim
                     else (p.num[0] if p.num else 0))
        elif layer.type == "Input":
            p = spec.input_param
            batch = p.shape[0].dim[0] if p.shape and p.shape[0].dim else 0
        else:
            continue
        return (layer, int(batch)) if batch > 0 else None
    return None


def _geometry(layer: Layer, net: Net) -> dict:
    """What must agree between a compressed layer and its train_val copy: the type, and the
    num_output, kernel, stride, pad, dilation and group of a convolution (num_output and axis
    of an InnerProduct)."""
    def fail(message):
        raise CaffeTuckerError(f"{where(net.source, layer.line, layer.name)}{message}")

    out = {"type": layer.type}
    if layer.type in ("Convolution", "Deconvolution"):
        g = conv_geometry(layer, None, fail)
        out.update(num_output=g.num_output, kernel=list(g.kernel), stride=list(g.stride),
                   pad=list(g.pad), dilation=list(g.dilation), group=g.group)
    elif layer.type == "InnerProduct":
        p = layer.spec.inner_product_param
        out.update(num_output=p.num_output, axis=p.axis)
    return out


def check_train_val(train_val: Net, deploy: Net, layers) -> None:
    """Refuse a train_val that is not the training net of ``deploy``: each of ``layers`` (those
    to compress) must be in its TRAIN and its TEST phase with the deploy's type and geometry.

    Raises
    ------
    CaffeTuckerError
        One line naming the layer, the phase and the difference.
    """
    hint = f"hint: --train-val must be the training net of {deploy.source}"
    for phase in ("TRAIN", "TEST"):
        net = train_val.for_state(phase)
        present = {l.name: l for l in net.layers}
        for name in layers:
            if name not in present:
                raise CaffeTuckerError(f"{train_val.source}: layer '{name}', which is to be "
                                       f"compressed, is not in its {phase} phase; {hint}")
            want, got = _geometry(deploy.layer(name), deploy), _geometry(present[name], net)
            diff = [f"{k} {got.get(k)} (deploy: {v})" for k, v in want.items() if got.get(k) != v]
            if diff:
                raise CaffeTuckerError(f"{where(train_val.source, present[name].line, name)}"
                                       f"differs from the deploy in the {phase} phase: "
                                       f"{', '.join(diff)}; {hint}")


def build_solver(batch_size: int, train_images: int = IMAGENET_TRAIN_IMAGES,
                 val_images: int = IMAGENET_VAL_IMAGES, epochs: float = 15,
                 val_batch_size: int | None = None, net: str = "train_val.prototxt",
                 snapshot_prefix: str = "snapshots/finetune", step_epochs: float = 5,
                 base_lr: float = 0.001) -> SolverParameter:
    """The paper's schedule: lr 1e-3, ÷10 every ``step_epochs`` epochs, ``epochs`` epochs in all.

    An epoch is ``train_images / batch_size`` iterations (rounded up); a test
    covers ``val_images`` in batches of ``val_batch_size`` (default ``batch_size``).
    """
    for name, value in (("batch_size", batch_size), ("train_images", train_images),
                        ("val_images", val_images)):
        check_param(name, value, isinstance(value, int) and value > 0, "an int > 0", "convert",
                    exc=CaffeTuckerError)
    check_param("epochs", epochs, epochs > 0, "a number > 0", "convert", exc=CaffeTuckerError)
    per_epoch = math.ceil(train_images / batch_size)
    val_batch = val_batch_size or batch_size
    solver = SolverParameter()
    solver.net = net
    solver.test_iter.append(math.ceil(val_images / val_batch))
    solver.test_interval = per_epoch
    solver.test_initialization = True
    solver.base_lr = base_lr
    solver.lr_policy = "step"
    solver.gamma = 0.1
    solver.stepsize = max(1, round(step_epochs * per_epoch))
    solver.max_iter = max(1, round(epochs * per_epoch))
    solver.momentum = 0.9
    solver.weight_decay = 0.0005
    solver.display = max(1, min(100, per_epoch // 10))
    solver.average_loss = solver.display
    solver.snapshot = per_epoch
    solver.snapshot_prefix = snapshot_prefix
    solver.solver_mode = SolverParameter.CPU
    return solver


def solver_text(solver: SolverParameter, comment: str = "") -> str:
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + text_format.MessageToString(solver, as_utf8=True)
