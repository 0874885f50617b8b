"""The part of a net a runtime can run: nets from Caffe forks in BVLC Caffe.

A net written for a Caffe fork (Caffe-SSD's Permute, PriorBox, Normalize,
DetectionOutput, say) cannot be loaded by BVLC Caffe 1.0 as a whole.  Its
backbone usually can: :func:`runnable_subnet` keeps, in net order, every layer
whose type the runtime knows and whose bottoms the kept layers produce, and
drops the rest (a layer of an unknown type, and everything computed from its
tops).  A layer of unknown type that works in place also makes its blob
unavailable, so no kept layer reads a value the real net would not give it.

The blobs to compare are the kept part's outputs: those it produces and no
kept layer reads, and those the dropped part reads from it (where the fork's
layers take over), less the net's inputs.  Comparing them checks everything the kept part computes.

:data:`BVLC_LAYER_TYPES` is the one list of layer types BVLC Caffe knows (the
registry of the Caffe the tool runs, ``caffe.layer_type_list()``: Caffe 1.0's
layers plus Clip and Swish of its final master).
"""

from __future__ import annotations

from dataclasses import dataclass

from caffe_tucker.graph import Net

__all__ = ["BVLC_LAYER_TYPES", "FORK_LAYER_TYPES", "Subnet", "runnable_subnet", "describe_cut"]

#: Layer types BVLC Caffe (1.0, final master) registers: what its runtime can load.
BVLC_LAYER_TYPES = frozenset({
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Concat",
    "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData",
    "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data",
    "HDF5Output", "HingeLoss", "Im2col", "ImageData", "InfogainLoss", "InnerProduct", "Input",
    "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData", "MultinomialLogisticLoss", "PReLU",
    "Parameter", "Pooling", "Power", "Python", "RNN", "ReLU", "Reduction", "Reshape", "SPP",
    "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold", "Tile", "WindowData",
})

#: Layer types of known Caffe forks, for messages (which fork a layer comes from).
FORK_LAYER_TYPES = {
    **{t: "Caffe-SSD" for t in ("Permute", "PriorBox", "DetectionOutput", "Normalize",
                                "MultiBoxLoss", "AnnotatedData", "DetectionEvaluate",
                                "VideoData")},
    **{t: "other forks" for t in ("ReLU6", "Upsample", "Interp", "ShuffleChannel")},
}


@dataclass(frozen=True)
class Subnet:
    """The runnable part of a net (:func:`runnable_subnet`).

    ``net`` holds the kept layers, ``outputs`` the blobs to compare (in the
    order they are produced), ``dropped`` the names of the layers left out and
    ``unknown`` the (name, type) of those left out because the runtime does not
    know their type (the others depend on them).
    """

    net: Net
    outputs: tuple[str, ...]
    dropped: tuple[str, ...]
    unknown: tuple[tuple[str, str], ...]

    @property
    def whole(self) -> bool:
        """Whether the whole net runs (nothing was dropped)."""
        return not self.dropped


def runnable_subnet(net: Net, known=BVLC_LAYER_TYPES) -> Subnet:
    """The largest part of ``net`` a runtime knowing the layer types ``known`` can run."""
    available: set[str] = set()
    kept, dropped, unknown = [], [], []
    read_by_dropped: set[str] = set()
    for layer in net.layers:
        if layer.type in known and all(b in available for b in layer.bottoms):
            kept.append(layer)
            available.update(layer.tops)
            continue
        dropped.append(layer.name)
        if layer.type not in known:
            unknown.append((layer.name, layer.type))
        read_by_dropped.update(b for b in layer.bottoms if b in available)
        available.difference_update(layer.tops)     # an in-place layer changes its blob
    consumed = {b for layer in kept for b in layer.bottoms if b not in layer.tops}
    produced: list[str] = []
    for layer in kept:
        produced.extend(t for t in layer.tops if t not in produced)
    fed = {t for layer in kept if not layer.bottoms for t in layer.tops}  # inputs: nothing to compare
    outputs = tuple(b for b in produced if (b not in consumed or b in read_by_dropped)
                    and b not in fed)
    return Subnet(net=net.with_layers(kept), outputs=outputs, dropped=tuple(dropped),
                  unknown=tuple(unknown))


def describe_cut(sub: Subnet, total: int, runtime: str = "BVLC Caffe",
                 compressed=()) -> str:
    """One line saying which part of a net ran and which did not, and why."""
    kept = [l.name for l in sub.net.layers if l.type not in ("Input",)]
    span = f"{kept[0]}..{kept[-1]}" if kept else "none"
    counts: dict[str, int] = {}
    for _, t in sub.unknown:
        counts[t] = counts.get(t, 0) + 1
    forks = sorted({FORK_LAYER_TYPES.get(t, "an unknown fork") for t in counts})
    kinds = ", ".join(f"{t}" + (f" x{n}" if n > 1 else "") for t, n in counts.items())
    rest = len(sub.dropped) - len(sub.unknown)
    line = (f"verified layers {span} ({len(sub.net.layers)} of {total}); not run in {runtime}: "
            f"{kinds} ({', '.join(forks)})")
    if rest:
        line += f" and the {rest} layer{'s' if rest != 1 else ''} computed from them"
    missed = [n for n in compressed if n in sub.dropped]
    if missed:
        line += f"; compressed layers not verified: {', '.join(missed)}"
    return line
