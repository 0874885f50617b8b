"""The train net and solver ``sparsify`` runs in Caffe, built from the deploy net when not given.

Built train net: the deploy net's ``Input`` layers take the batch and the training samples'
shape; an ``Input`` layer ``label`` is added; a classifier (labels: one integer per sample) ends
in ``SoftmaxWithLoss`` on the input of its final ``Softmax`` (which is dropped); an image-to-image
net (labels shaped like its output) ends in ``EuclideanLoss`` on its output.
"""

from __future__ import annotations

from typing import Mapping

from google.protobuf import text_format

from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.caffe_pb2 import SolverParameter

__all__ = ["build_train_net", "build_solver", "LOSS_TYPES"]

LOSS_TYPES = ("SoftmaxWithLoss", "EuclideanLoss")


def _outputs(net: Net) -> list[str]:
    consumed = {b for layer in net.layers for b in layer.bottoms}
    produced = []
    for layer in net.layers:
        for t in layer.tops:
            if t not in produced:
                produced.append(t)
    return [t for t in produced if t not in consumed]


def build_train_net(deploy: Net, sample_shapes: Mapping[str, tuple], batch: int,
                    classifier: bool, label: str = "label") -> Net:
    """The train net for ``deploy``: see the module docstring.

    Parameters
    ----------
    deploy : Net
        The deploy net (``Input`` layers, no loss).
    sample_shapes : mapping of blob to shape
        One sample's shape for every array of the training data (inputs and ``label``).
    batch : int
        The minibatch.
    classifier : bool
        SoftmaxWithLoss on integer labels (else EuclideanLoss).
    """
    inputs = [layer for layer in deploy.layers if layer.type == "Input"]
    names = [t for layer in inputs for t in layer.tops]
    missing = [n for n in names if n not in sample_shapes]
    if missing or label not in sample_shapes:
        raise CaffeTuckerError(
            f"the training data must hold one array per input of the net {names} and "
            f"'{label}'; it has {sorted(sample_shapes)}")
    layers = []
    for layer in deploy.layers:
        if layer.type == "Input":
            shapes = [{"dim": [batch, *sample_shapes[t]]} for t in layer.tops]
            layers.append(Layer(spec=make_spec(layer.name, "Input", [], list(layer.tops),
                                               input_param={"shape": shapes})))
        else:
            layers.append(layer)
    label_dims = [batch, *sample_shapes[label]]
    layers.insert(len(inputs), Layer(spec=make_spec(label, "Input", [], [label],
                                                    input_param={"shape": [{"dim": label_dims}]})))
    net = deploy.with_layers(layers)
    outputs = _outputs(net)
    outputs = [o for o in outputs if o != label]
    if len(outputs) != 1:
        raise CaffeTuckerError(f"{deploy.source or 'the net'}: a train net can be built for a net "
                               f"with one output; this one has {outputs}; give --train-val")
    out = outputs[0]
    if classifier:
        last = next(layer for layer in reversed(net.layers) if out in layer.tops)
        if last.type == "Softmax":
            net = net.with_layers(layer for layer in net.layers if layer is not last)
            out = last.bottoms[0]
        loss = make_spec("loss", "SoftmaxWithLoss", [out, label], ["loss"])
    else:
        loss = make_spec("loss", "EuclideanLoss", [out, label], ["loss"])
    return net.with_layers(net.layers + (Layer(spec=loss),))


def build_solver(lr: float, *, solver_type: str = "SGD", momentum: float = 0.9,
                 weight_decay: float = 0.0, seed: int = 0, clip_gradients: float | None = None,
                 max_iter: int = 100_000_000) -> str:
    """SolverParameter text for one phase: a fixed learning rate (each phase has its own)."""
    p = SolverParameter()
    p.type = solver_type
    p.base_lr = lr
    p.lr_policy = "fixed"
    if solver_type in ("SGD", "Nesterov", "Adam"):
        p.momentum = momentum
    p.weight_decay = weight_decay
    p.max_iter = max_iter
    p.display = 0
    p.random_seed = seed
    if clip_gradients is not None:
        p.clip_gradients = clip_gradients
    return text_format.MessageToString(p)
