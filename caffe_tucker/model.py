"""The load boundary: every command gets its net through :func:`load_model`.

One sequence, in one place: read the prototxt (any schema generation,
upgraded while reading) and the caffemodel → keep the layers of one phase →
optionally turn a train_val into its deploy net → infer shapes (once) →
fit the weights to the shapes Caffe expects.  The result is a
:class:`Model`: the net and its shapes, computed once and passed along.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from caffe_tucker.analysis.shapes import ShapeInfo, fit_weights, infer_shapes
from caffe_tucker.analysis.validate import check_finite
from caffe_tucker.errors import ShapeError
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.read import read_net

__all__ = ["Model", "load_model", "is_train_val", "deploy_from_train_val", "DATA_TYPES"]

DATA_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "DummyData"})
_TRAINING_ONLY = frozenset({"SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss",
                            "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss",
                            "ContrastiveLoss", "Accuracy", "Silence"})


@dataclass(frozen=True, eq=False)
class Model:
    """A net ready for every stage: one phase, shapes inferred, weights fitted.

    Attributes
    ----------
    net : Net
        The phase-filtered net (its deploy form when a train_val was loaded with ``deploy=True``).
    shapes : ShapeInfo
        The shapes of ``net``.
    prototxt : Path
        The file the net was read from.
    weights : Path or None
        The caffemodel, if any.
    from_train_val : bool
        Whether ``net`` is the deploy form of a train_val file.
    """

    net: Net
    shapes: ShapeInfo
    prototxt: Path
    weights: Path | None = None
    from_train_val: bool = False


def is_train_val(net: Net) -> bool:
    """Whether a (phase-filtered) net reads data layers rather than Input blobs."""
    return any(l.type in DATA_TYPES for l in net.layers) and not any(
        l.type == "Input" for l in net.layers)


def deploy_from_train_val(net: Net, shapes: ShapeInfo) -> Net:
    """The deploy net of a phase-filtered train_val: data layers become ``Input`` layers of
    their inferred shape (first top only), and the label blobs, losses and accuracies go."""
    layers = []
    dropped: set[str] = set()
    for layer in net.layers:
        if layer.type in DATA_TYPES:
            top = layer.tops[0]
            spec = make_spec(layer.name, "Input", [], [top],
                             input_param={"shape": [{"dim": list(shapes.blobs[top])}]})
            layers.append(Layer(spec=spec, line=layer.line))
            dropped.update(layer.tops[1:])
        elif layer.type in _TRAINING_ONLY or any(b in dropped for b in layer.bottoms):
            dropped.update(t for t in layer.tops if t not in layer.bottoms)
        else:
            layers.append(layer)
    return net.with_layers(layers)


def load_model(prototxt, weights=None, *, phase: str = "TEST",
               input_shapes: Mapping | None = None, data_shapes: Mapping | None = None,
               deploy: bool = False, strict: bool = False) -> Model:
    """Read, filter, (deploy,) infer shapes and fit weights: see the module docstring.

    Parameters
    ----------
    prototxt : path
        The net definition (deploy or train_val; current, V1 or legacy input format).
    weights : path, optional
        Its ``.caffemodel``; blobs are matched by layer name and checked against the shapes.
    phase : {"TEST", "TRAIN"}
        Which phase's layers to keep.
    input_shapes : mapping, optional
        Shapes for data inputs the net does not declare (see
        :func:`caffe_tucker.analysis.shapes.infer_shapes`).
    data_shapes : mapping, optional
        Shapes for the data layers of a train_val, used only when the net is one (``verify``
        gives the compressed deploy's input shapes to an original train_val).
    deploy : bool
        Turn a train_val into its deploy net (Input layers instead of data layers, no losses).
    strict : bool
        Refuse a net whose shapes cannot all be inferred (an unknown layer type), instead of
        recording the problem in ``shapes.problems``.
    """
    net = read_net(prototxt, weights).for_state(phase)
    if data_shapes and is_train_val(net):
        input_shapes = {**data_shapes, **(input_shapes or {})}
    shapes = infer_shapes(net, input_shapes)
    if strict and shapes.problems:
        raise ShapeError(shapes.problems[0])
    if weights is not None:
        net = fit_weights(net, shapes, required=True)
        check_finite(net)
    from_train_val = deploy and is_train_val(net)
    if from_train_val:
        net = deploy_from_train_val(net, shapes)
        shapes = infer_shapes(net)
    return Model(net=net, shapes=shapes, prototxt=Path(prototxt),
                 weights=Path(weights) if weights is not None else None,
                 from_train_val=from_train_val)
