"""The checks Caffe's ``Net::Init`` makes, made once after reading, with one-line messages.

Caffe refuses a net whose layer has the wrong number of bottoms or tops
(``ExactNumBottomBlobs`` and friends), whose bottom blob no earlier layer
produced ("Unknown bottom blob"), or whose top blob two layers produce
("Top blob ... produced by multiple sources", in-place layers excepted).
Two layers of one name make weights ambiguous (they are matched by name),
so they are refused too.  :func:`validate_net` runs these on a
phase-filtered net; :func:`check_finite` refuses NaN/Inf weights, and
:func:`check_allocation` refuses work that would need more memory than a
limit, before anything is allocated.
"""

from __future__ import annotations

import os

import numpy as np

from caffe_tucker.errors import CaffeTuckerError, ShapeError, WeightsMismatchError, where
from caffe_tucker.graph import Net

__all__ = ["validate_net", "check_finite", "check_allocation", "BLOB_COUNTS", "memory_limit"]

_ANY = None
# type -> ((min bottoms, max bottoms), (min tops, max tops)); None = no upper bound.
_ONE_TO_ONE = ((1, 1), (1, 1))
BLOB_COUNTS = {
    "Convolution": ((1, _ANY), (1, _ANY)), "Deconvolution": ((1, _ANY), (1, _ANY)),
    "InnerProduct": _ONE_TO_ONE, "Pooling": ((1, 1), (1, 2)), "LRN": _ONE_TO_ONE,
    "ReLU": _ONE_TO_ONE, "Sigmoid": _ONE_TO_ONE, "TanH": _ONE_TO_ONE, "AbsVal": _ONE_TO_ONE,
    "BNLL": _ONE_TO_ONE, "Power": _ONE_TO_ONE, "Exp": _ONE_TO_ONE, "Log": _ONE_TO_ONE,
    "ELU": _ONE_TO_ONE, "Threshold": _ONE_TO_ONE, "Dropout": _ONE_TO_ONE, "PReLU": _ONE_TO_ONE,
    "BatchNorm": _ONE_TO_ONE, "Softmax": _ONE_TO_ONE, "Flatten": _ONE_TO_ONE,
    "Reshape": _ONE_TO_ONE, "ArgMax": _ONE_TO_ONE, "Tile": _ONE_TO_ONE, "Reduction": _ONE_TO_ONE,
    "Embed": _ONE_TO_ONE, "MVN": _ONE_TO_ONE, "Scale": ((1, 2), (1, 1)), "Bias": ((1, 2), (1, 1)),
    "Split": ((1, 1), (1, _ANY)), "Slice": ((1, 1), (1, _ANY)), "Concat": ((1, _ANY), (1, 1)),
    "Eltwise": ((2, _ANY), (1, 1)), "Crop": ((2, 2), (1, 1)), "Silence": ((1, _ANY), (0, 0)),
    "Input": ((0, 0), (1, _ANY)), "Data": ((0, 0), (1, 2)), "ImageData": ((0, 0), (2, 2)),
    "WindowData": ((0, 0), (2, 2)), "MemoryData": ((0, 0), (2, 2)), "HDF5Data": ((0, 0), (1, _ANY)),
    "DummyData": ((0, 0), (1, _ANY)), "Accuracy": ((2, 3), (1, 2)),
    "SoftmaxWithLoss": ((2, 3), (1, 2)), "EuclideanLoss": ((2, 2), (1, 1)),
    "SigmoidCrossEntropyLoss": ((2, 2), (1, 1)), "HingeLoss": ((2, 2), (1, 1)),
    "InfogainLoss": ((2, 3), (1, 2)), "MultinomialLogisticLoss": ((2, 2), (1, 1)),
    "ContrastiveLoss": ((3, 3), (1, 1)),
    # Caffe-SSD fork
    "Permute": _ONE_TO_ONE, "Normalize": _ONE_TO_ONE, "PriorBox": ((2, 2), (1, 1)),
    "DetectionOutput": ((3, 4), (1, 1)),
}
_SAME_COUNT = {"Convolution", "Deconvolution"}


def _count_text(low: int, high: int | None, what: str) -> str:
    if high == low:
        return f"exactly {low} {what}{'s' if low != 1 else ''}"
    if high is None:
        return f"at least {low} {what}{'s' if low != 1 else ''}"
    return f"{low} to {high} {what}s"


def validate_net(net: Net) -> None:
    """Refuse what Caffe's ``Net::Init`` refuses (see the module docstring).

    Raises
    ------
    ShapeError
        Naming the file, line and layer, with a hint.
    """
    names: dict[str, int | None] = {}
    produced: set[str] = set()
    for layer in net.layers:
        loc = where(net.source, layer.line, layer.name)
        if layer.name in names:
            first = names[layer.name]
            raise ShapeError(f"{loc}a second layer of this name{f' (first at line {first})' if first else ''}; "
                             "hint: layer names must be unique (weights are matched by name)")
        names[layer.name] = layer.line
        counts = BLOB_COUNTS.get(layer.type)
        if counts is not None:
            for (low, high), have, what in ((counts[0], len(layer.bottoms), "bottom"),
                                            (counts[1], len(layer.tops), "top")):
                if have < low or (high is not None and have > high):
                    raise ShapeError(f"{loc}a {layer.type} layer takes "
                                     f"{_count_text(low, high, what)}, this one has {have}; hint: "
                                     f"check its '{what}' entries")
            if layer.type in _SAME_COUNT and len(layer.bottoms) != len(layer.tops):
                raise ShapeError(f"{loc}a {layer.type} layer needs as many tops as bottoms, this one "
                                 f"has {len(layer.bottoms)} bottoms and {len(layer.tops)} tops")
        for b in layer.bottoms:
            if b not in produced:
                raise ShapeError(f"{loc}bottom blob '{b}' is not produced by any earlier layer; "
                                 "hint: check the blob name and the layer order")
        for t in layer.tops:
            if t in produced and t not in layer.bottoms:
                raise ShapeError(f"{loc}top blob '{t}' is already produced by an earlier layer; "
                                 "hint: only a layer that reads a blob may write it again (in place)")
        if len(set(layer.tops)) != len(layer.tops):
            raise ShapeError(f"{loc}names the same top blob twice")
        produced.update(layer.tops)


def check_finite(net: Net) -> None:
    """Refuse weights holding NaN or Inf (a corrupt file, or training that diverged)."""
    for layer in net.layers:
        for i, blob in enumerate(layer.blobs):
            if blob.size and not np.isfinite(blob).all():
                nan, inf = int(np.isnan(blob).sum()), int(np.isinf(blob).sum())
                what = " and ".join(f"{n} {k}" for n, k in ((nan, "NaN"), (inf, "Inf")) if n)
                raise WeightsMismatchError(
                    f"{where(net.source, layer.line, layer.name)}blob {i} of the weights"
                    f"{' in ' + net.weights_source if net.weights_source else ''} contains {what} "
                    "values; hint: the caffemodel is corrupt or its training diverged")


def memory_limit() -> int:
    """Bytes one allocation may take: ``$CAFFE_TUCKER_MAX_MEMORY_GB``, else half the machine's memory."""
    env = os.environ.get("CAFFE_TUCKER_MAX_MEMORY_GB")
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            raise CaffeTuckerError(f"$CAFFE_TUCKER_MAX_MEMORY_GB={env!r}: not a number of GiB; "
                                   "hint: e.g. 8") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def check_allocation(nbytes: int, what: str, hint: str) -> None:
    """Refuse work that would allocate more than :func:`memory_limit`, with the figure and a hint."""
    limit = memory_limit()
    if nbytes > limit:
        raise CaffeTuckerError(f"{what} would need {nbytes / 2**30:,.1f} GiB of memory, more than the "
                               f"{limit / 2**30:,.1f} GiB allowed; hint: {hint} (the limit is "
                               "$CAFFE_TUCKER_MAX_MEMORY_GB, by default half of this machine's memory)")
