"""Stage 6, emit: a :class:`caffe_tucker.graph.Net` -> prototxt text and ``.caffemodel`` bytes.

Output is always Caffe's current schema (``layer`` entries, ``Input``
layers), deterministic (same net, same bytes) and written atomically; an
existing file is only replaced with ``force``.
"""

from __future__ import annotations

from typing import Sequence

from google.protobuf import text_format

from caffe_tucker.io.caffe_pb2 import NetParameter
from caffe_tucker.io.fsutil import write_atomic
from caffe_tucker.graph import Net
from caffe_tucker.io.wire import encode_blob_parts, encode_field, encode_varint

__all__ = ["prototxt_text", "caffemodel_chunks", "write_prototxt", "write_caffemodel"]


def prototxt_text(net: Net, header_comment: str | None = None) -> str:
    """The net definition (no weights) as prototxt text in the current schema."""
    text = text_format.MessageToString(net.to_proto(with_blobs=False), as_utf8=True)
    if header_comment:
        text = "".join(f"# {line}\n" for line in header_comment.splitlines()) + text
    return text


def caffemodel_chunks(net: Net) -> list:
    """The binary ``NetParameter`` of ``net`` with blobs, as a list of byte chunks.

    Each layer is its ``LayerParameter`` (serialized deterministically by
    protobuf) followed by its blobs encoded directly from the numpy arrays:
    the weights are read-only views of the arrays' buffers, never copied
    (writing VGG-16 holds no second copy of its 553 MB; issue 13).
    """
    chunks: list = []
    if net.header.name:
        chunks += encode_field(1, net.header.name.encode("utf-8"))
    head = NetParameter()
    head.CopyFrom(net.header)
    head.ClearField("name")
    chunks.append(head.SerializeToString(deterministic=True))
    for layer in net.layers:
        spec = layer.spec.SerializeToString(deterministic=True)
        blobs = []
        for blob in layer.blobs:
            parts = encode_blob_parts(blob)
            # field 7 (blobs) of LayerParameter, length-delimited
            blobs += [encode_varint((7 << 3) | 2), encode_varint(sum(len(c) for c in parts))] + parts
        size = len(spec) + sum(len(b) for b in blobs)
        chunks += [encode_varint((100 << 3) | 2), encode_varint(size), spec] + blobs
    return chunks


def write_prototxt(net: Net, path, force: bool = False, inputs: Sequence = (),
                   header_comment: str | None = None):
    """Write the net definition to ``path`` (atomic; refuses to overwrite without ``force``)."""
    return write_atomic(path, prototxt_text(net, header_comment), force=force, inputs=inputs)


def write_caffemodel(net: Net, path, force: bool = False, inputs: Sequence = ()):
    """Write the net with its weights as a binary ``.caffemodel``."""
    return write_atomic(path, caffemodel_chunks(net), force=force, inputs=inputs)
