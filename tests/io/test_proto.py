"""The generated schema module is in step with proto/caffe.proto, and the schema is Caffe's."""

import hashlib
import re

from google.protobuf import text_format

from caffe_tucker.io import caffe_pb2
from conftest import ROOT

SCHEMA = ROOT / "proto" / "caffe.proto"
GENERATED = ROOT / "caffe_tucker" / "io" / "caffe_pb2.py"


def test_generated_module_is_not_stale():
    stamp = GENERATED.read_text().splitlines()[0]
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert f"sha256={digest}" in stamp, (
        "caffe_tucker/io/caffe_pb2.py is stale: regenerate it with proto/generate.py (see its docstring)")


def _schema_fields():
    """(message path, field name, number) for every field declared in caffe.proto."""
    fields = set()
    stack = []
    text = re.sub(r"//[^\n]*", "", SCHEMA.read_text())
    for token in re.finditer(r"(message|enum)\s+(\w+)\s*\{|\}|"
                             r"(?:optional|repeated|required)\s+[\w.]+\s+(\w+)\s*=\s*(\d+)|"
                             r"(\w+)\s*=\s*(-?\d+)\s*;", text):
        if token.group(1):
            stack.append((token.group(1), token.group(2)))
        elif token.group(0) == "}":
            stack.pop()
        elif token.group(3):
            path = ".".join(name for _, name in stack)
            fields.add((path, token.group(3), int(token.group(4))))
    return fields


def _descriptor_fields():
    fields = set()

    def walk(desc, prefix):
        path = f"{prefix}{desc.name}"
        for f in desc.fields:
            fields.add((path, f.name, f.number))
        for nested in desc.nested_types:
            walk(nested, path + ".")

    for desc in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(desc, "")
    return fields


def test_generated_module_has_every_schema_field():
    declared = _schema_fields()
    assert len(declared) > 400
    assert declared == _descriptor_fields()


def test_schema_field_numbers_are_caffes():
    # A few well-known facts of the Caffe format (wire compatibility).
    L = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert (L["name"].number, L["type"].number, L["blobs"].number) == (1, 2, 7)
    assert L["convolution_param"].number == 106
    assert L["inner_product_param"].number == 117
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2
    assert caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number == 5
    assert caffe_pb2.V1LayerParameter.LayerType.Value("CONVOLUTION") == 4
    assert caffe_pb2.V1LayerParameter.LayerType.Value("INNER_PRODUCT") == 14
    assert caffe_pb2.PoolingParameter().stride == 1
    assert caffe_pb2.LRNParameter().local_size == 5


def test_schema_reads_solver_text():
    solver = text_format.Parse(
        'net: "train_val.prototxt" base_lr: 0.001 lr_policy: "step" gamma: 0.1 stepsize: 50000 '
        'momentum: 0.9 weight_decay: 0.0005 solver_mode: GPU type: "SGD"',
        caffe_pb2.SolverParameter())
    assert solver.stepsize == 50000
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
