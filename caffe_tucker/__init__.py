"""caffe_tucker: compress trained Caffe CNNs and hand them back to Caffe.

The pipeline, one package per stage:

``io`` (read, upgrade, emit) -> ``model.load_model`` -> ``analysis`` (shapes, cost) ->
``compress`` (plan, ranks, methods, decompose, rewrite, record, convert) ->
``caffe`` (verify / bench / finetune in real Caffe) ; ``sparsity`` (joint spatial/Winograd
sparsity, trained in real Caffe) -> ``quantize`` (universal quantization, the .ctz container) ; ``report`` renders, ``cli`` parses.

The public API is what this module exports; everything else may change.
"""

from caffe_tucker.analysis.cost import Analysis, LayerCost, analyze
from caffe_tucker.analysis.shapes import ShapeInfo, fit_weights, infer_shapes
from caffe_tucker.compress.convert import ConvertOptions, ConvertResult, convert, write_outputs
from caffe_tucker.compress.methods import Method, get_method, method_names, register
from caffe_tucker.compress.record import CompressionRecord, LayerRecord, read_record
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.graph import Layer, Net
from caffe_tucker.io.emit import write_caffemodel, write_prototxt
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.io.read import read_caffemodel, read_net, read_prototxt
from caffe_tucker.model import Model, load_model
from caffe_tucker.quantize.container import Packed, caffemodel_net, read_container, write_container
from caffe_tucker.quantize.pipeline import QuantizeOptions, QuantizeResult, quantize_model
from caffe_tucker.sparsity.record import SparsityRecord, sparsity_record
from caffe_tucker.sparsity.schedule import SparsifyOptions, SparsifyRun, sparsify

__version__ = "0.2.0"

__all__ = [
    "Analysis", "CaffeTuckerError", "CompressionRecord", "ConvertOptions", "ConvertResult",
    "Layer", "LayerCost", "LayerRecord", "Method", "Model", "Net", "ShapeInfo", "analyze",
    "convert", "fit_weights", "get_method", "infer_shapes", "init_weights", "load", "load_model",
    "method_names", "read_caffemodel", "read_net", "read_prototxt", "read_record", "register",
    "SparsifyOptions", "SparsifyRun", "SparsityRecord", "sparsify", "sparsity_record",
    "Packed", "QuantizeOptions", "QuantizeResult", "caffemodel_net", "quantize_model",
    "read_container", "write_container",
    "write_caffemodel", "write_outputs", "write_prototxt", "__version__",
]


def load(prototxt, weights=None, phase="TEST", input_shapes=None):
    """``(net, shapes)`` of :func:`load_model` (read, filter the phase, fit the blobs)."""
    model = load_model(prototxt, weights, phase=phase, input_shapes=input_shapes)
    return model.net, model.shapes
