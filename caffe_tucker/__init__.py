"""caffe_tucker: compress trained Caffe CNNs with VBMF-ranked Tucker decompositions.

The pipeline of Kim et al. (ICLR 2016), one module per stage:

read (:mod:`.read`) -> analyze (:mod:`.shapes`, :mod:`.analyze`) -> select ranks ->
decompose -> rewrite graph -> emit (:mod:`.emit`) -> verify / benchmark / fine-tune.

The public API is what this module exports; everything else may change.
"""

from caffe_tucker.analysis.cost import Analysis, LayerCost, analyze
from caffe_tucker.io.emit import write_caffemodel, write_prototxt
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.graph import Layer, Net
from caffe_tucker.io.read import read_caffemodel, read_net, read_prototxt
from caffe_tucker.analysis.shapes import ShapeInfo, fit_weights, infer_shapes

__version__ = "0.1.0"

__all__ = [
    "Analysis", "CaffeTuckerError", "Layer", "LayerCost", "Net", "ShapeInfo", "analyze",
    "fit_weights", "infer_shapes", "init_weights", "load", "read_caffemodel", "read_net",
    "read_prototxt", "write_caffemodel", "write_prototxt", "__version__",
]


def load(prototxt, weights=None, phase="TEST", input_shapes=None):
    """Read a net (and weights), filter it for ``phase`` and check the weights' shapes.

    Returns ``(net, shapes)``: the filtered :class:`Net` with blobs fitted to
    the shapes Caffe expects, and its :class:`ShapeInfo`.
    """
    net = read_net(prototxt, weights).for_state(phase)
    shapes = infer_shapes(net, input_shapes)
    return fit_weights(net, shapes), shapes
