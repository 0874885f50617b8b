"""Bring old net definitions up to Caffe's current schema while reading.

Caffe itself upgrades what it reads (``upgrade_proto.cpp``) so that the rest
of the framework only ever sees one schema; this module does the same for
caffe_tucker.  The upgrades, in the order Caffe applies them:

* V0 nets (``layers { layer { type: "conv" ... } }``, before 2014) are
  refused with a hint: Caffe's ``upgrade_net_proto_text`` tool converts them.
* Data-transformation fields that used to live in ``data_param`` /
  ``image_data_param`` / ``window_data_param`` (``scale``, ``mean_file``,
  ``crop_size``, ``mirror``) move into ``transform_param``.
* V1 nets (``layers { type: CONVOLUTION ... }``) become ``layer`` entries
  with string types; ``blobs_lr`` / ``weight_decay`` / ``param`` names /
  ``blob_share_mode`` become ``param { lr_mult decay_mult name share_mode }``.
* Net-level ``input:`` with ``input_dim`` or ``input_shape`` becomes one
  ``Input`` layer named ``input`` producing every input blob.
* ``BatchNorm`` layers with three ``param`` entries lose them (Caffe 1.0
  fixes those multipliers itself).

Every function returns a new ``caffe.NetParameter``; inputs are not modified.
"""

from __future__ import annotations

from caffe_tucker.io.caffe_pb2 import BlobShape, LayerParameter, NetParameter, V1LayerParameter
from caffe_tucker.errors import PrototxtError

__all__ = ["upgrade_net", "V1_TYPE_NAMES"]

#: V1 ``LayerType`` enum name -> current type string.
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# Sub-parameter messages that V1 and current layers share under the same name.
_SHARED_PARAMS = [
    fd.name for fd in V1LayerParameter.DESCRIPTOR.fields
    if fd.name.endswith("_param") and fd.name in LayerParameter.DESCRIPTOR.fields_by_name
]

_DATA_PARAMS = {"Data": "data_param", "ImageData": "image_data_param",
                "WindowData": "window_data_param"}
_LEGACY_TRANSFORM = ("scale", "mean_file", "crop_size", "mirror")


def upgrade_net(net: NetParameter, source: str = "<net>") -> tuple[NetParameter, tuple[str, ...]]:
    """Return ``(upgraded copy, names of the upgrades applied)``.

    Raises
    ------
    PrototxtError
        For V0 nets, nets mixing ``layer`` and ``layers``, and malformed
        legacy ``input_dim`` lists.
    """
    out = NetParameter()
    out.CopyFrom(net)
    applied = []
    if out.layers:
        if any(v1.HasField("layer") for v1 in out.layers):
            raise PrototxtError(
                f"{source}: this is a V0 net (layers {{ layer {{ ... }} }}, Caffe before 2014), which "
                "caffe_tucker does not upgrade; hint: convert it with Caffe's "
                "'upgrade_net_proto_text' tool first")
        if out.layer:
            raise PrototxtError(
                f"{source}: the net mixes current 'layer' and legacy V1 'layers' entries; "
                "hint: write every layer in one format")
        converted = [_v1_to_current(v1) for v1 in out.layers]
        out.ClearField("layers")
        for spec in converted:
            out.layer.add().CopyFrom(spec)
        applied.append("V1 layers")
    if _upgrade_data_transform(out):
        applied.append("data transformation fields")
    if out.input:
        _upgrade_input(out, source)
        applied.append("net-level input")
    if _upgrade_batchnorm(out):
        applied.append("BatchNorm param")
    return out, tuple(applied)


def _v1_to_current(v1: V1LayerParameter) -> LayerParameter:
    spec = LayerParameter()
    spec.name = v1.name
    spec.type = V1_TYPE_NAMES[V1LayerParameter.LayerType.Name(v1.type)]
    spec.bottom.extend(v1.bottom)
    spec.top.extend(v1.top)
    for rule in v1.include:
        spec.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        spec.exclude.add().CopyFrom(rule)
    spec.loss_weight.extend(v1.loss_weight)
    for blob in v1.blobs:
        spec.blobs.add().CopyFrom(blob)
    n_params = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_params):
        p = spec.param.add()
        if i < len(v1.param):
            p.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            # V1 DimCheckMode and ParamSpec.DimCheckMode share names and values.
            p.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            p.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            p.decay_mult = v1.weight_decay[i]
    for name in _SHARED_PARAMS:
        if v1.HasField(name):
            getattr(spec, name).CopyFrom(getattr(v1, name))
    return spec


def _upgrade_data_transform(net: NetParameter) -> bool:
    changed = False
    for spec in net.layer:
        pname = _DATA_PARAMS.get(spec.type)
        if pname is None or not spec.HasField(pname):
            continue
        param = getattr(spec, pname)
        for fname in _LEGACY_TRANSFORM:
            if param.HasField(fname):
                setattr(spec.transform_param, fname, getattr(param, fname))
                param.ClearField(fname)
                changed = True
    return changed


def _upgrade_input(net: NetParameter, source: str) -> None:
    names = list(net.input)
    spec = LayerParameter(name="input", type="Input")
    spec.top.extend(names)
    if net.input_shape:
        if len(net.input_shape) not in (1, len(names)):
            raise PrototxtError(
                f"{source}: {len(names)} net-level inputs but {len(net.input_shape)} input_shape "
                "entries; hint: give one input_shape per input")
        for shape in net.input_shape:
            spec.input_param.shape.add().CopyFrom(shape)
    elif net.input_dim:
        dims = list(net.input_dim)
        if len(dims) != 4 * len(names):
            raise PrototxtError(
                f"{source}: {len(names)} net-level inputs need {4 * len(names)} input_dim values "
                f"(num, channels, height, width each), found {len(dims)}; hint: use input_shape "
                "or an Input layer for other ranks")
        for i in range(len(names)):
            spec.input_param.shape.add().CopyFrom(BlobShape(dim=dims[4 * i: 4 * i + 4]))
    else:
        raise PrototxtError(
            f"{source}: net-level input {names[0]!r} has no input_dim or input_shape; hint: give its "
            "shape, e.g. 'input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }'")
    rest = []
    for old in net.layer:
        copy = LayerParameter()
        copy.CopyFrom(old)
        rest.append(copy)
    for fname in ("layer", "input", "input_dim", "input_shape"):
        net.ClearField(fname)
    for s in [spec] + rest:
        net.layer.add().CopyFrom(s)


def _upgrade_batchnorm(net: NetParameter) -> bool:
    changed = False
    for spec in net.layer:
        if spec.type == "BatchNorm" and len(spec.param) == 3:
            spec.ClearField("param")
            changed = True
    return changed
