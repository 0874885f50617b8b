"""Fast reading and writing of the weight blobs of a ``.caffemodel``.

A ``.caffemodel`` is a binary ``caffe.NetParameter``.  Almost all of its bytes
are the packed ``float`` arrays of the layers' ``BlobProto`` messages, and
going through the protobuf runtime for those costs seconds per hundred
million values (every float becomes a Python object).  This module walks the
protobuf wire format itself and hands each packed array to numpy as a view of
the file's bytes, so a 550 MB VGG-16 model loads in about the time it takes
to read it.

Only what weight matching needs is decoded: each layer's name, type and
blobs (Caffe matches trained layers to net layers by name alone).  All three
generations of the schema are understood: current ``layer`` entries, V1
``layers`` entries and V0 layers nested inside V1 entries.

The wire format itself (varints, tags, the four wire types used here) is
described in the Protocol Buffers encoding guide; the field numbers are
those of Caffe's ``caffe.proto``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe_tucker.io.caffe_pb2 import V1LayerParameter
from caffe_tucker.errors import CaffemodelError
from caffe_tucker.io.upgrade import V1_TYPE_NAMES

__all__ = ["RawBlob", "RawLayer", "RawWeights", "decode_weights", "encode_varint", "encode_blob",
           "encode_blob_parts",
           "encode_field"]

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# NetParameter: field number -> wire type that Caffe writes.
_NET_FIELDS = {1: _LEN, 2: _LEN, 3: _LEN, 4: _VARINT, 5: _VARINT, 6: _LEN, 7: _VARINT,
               8: _LEN, 100: _LEN}


def _v1_type_name(value: int) -> str:
    """The current type string of a V1 ``LayerType`` number (labels old files' layers)."""
    try:
        return V1_TYPE_NAMES[V1LayerParameter.LayerType.Name(value)]
    except (ValueError, KeyError):
        return str(value)


@dataclass(frozen=True)
class RawBlob:
    """One ``BlobProto`` as stored: its data and whichever shape it records.

    ``shape`` is the ``BlobShape`` dims when the blob has them; otherwise
    ``legacy`` holds the four ``num/channels/height/width`` values.
    """

    data: np.ndarray  # 1-D float32
    shape: tuple[int, ...] | None
    legacy: tuple[int, int, int, int] | None


@dataclass(frozen=True)
class RawLayer:
    name: str
    type: str
    blobs: tuple[RawBlob, ...]


@dataclass(frozen=True)
class RawWeights:
    name: str
    layers: tuple[RawLayer, ...]
    generation: str  # "current", "v1" or "v0"


class _Truncated(Exception):
    pass


def _varint(buf, pos: int, end: int):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Truncated()
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf, start: int, end: int):
    """Yield ``(field, wire_type, a, b)`` for each field in ``buf[start:end]``.

    For varints ``a`` is the value; for the other wire types ``buf[a:b]`` is
    the payload.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wt == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield field, wt, value, pos
        elif wt == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Truncated()
            yield field, wt, pos, pos + n
            pos += n
        elif wt == _I32:
            if pos + 4 > end:
                raise _Truncated()
            yield field, wt, pos, pos + 4
            pos += 4
        elif wt == _I64:
            if pos + 8 > end:
                raise _Truncated()
            yield field, wt, pos, pos + 8
            pos += 8
        else:
            raise ValueError(f"unknown wire type {wt}")


def _floats(buf, chunks: list, dtype: str) -> np.ndarray:
    """Concatenate packed (LEN) or unpacked (fixed) float runs into one array."""
    size = np.dtype(dtype).itemsize
    arrays = []
    for a, b in chunks:
        if (b - a) % size:
            raise ValueError("packed float array of odd length")
        arrays.append(np.frombuffer(buf, dtype=dtype, count=(b - a) // size, offset=a))
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    out = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return out.astype(np.float32, copy=False)


def _decode_blob(buf, start: int, end: int) -> RawBlob:
    data_f, data_d = [], []
    shape = None
    legacy = [0, 0, 0, 0]
    has_legacy = False
    for field, wt, a, b in _fields(buf, start, end):
        if field == 5 and wt in (_LEN, _I32):
            data_f.append((a, b))
        elif field == 8 and wt in (_LEN, _I64):
            data_d.append((a, b))
        elif field == 7 and wt == _LEN:
            dims = []
            for f2, wt2, a2, b2 in _fields(buf, a, b):
                if f2 != 1:
                    continue
                if wt2 == _VARINT:
                    dims.append(a2)
                elif wt2 == _LEN:
                    p = a2
                    while p < b2:
                        v, p = _varint(buf, p, b2)
                        dims.append(v)
            shape = tuple(int(d) for d in dims)
        elif field in (1, 2, 3, 4) and wt == _VARINT:
            legacy[field - 1] = a
            has_legacy = True
    data = _floats(buf, data_f, "<f4") if data_f else _floats(buf, data_d, "<f8")
    return RawBlob(data=data, shape=shape, legacy=tuple(legacy) if has_legacy else None)


def _decode_layer(buf, start: int, end: int, generation: str) -> RawLayer:
    """Decode the name, type and blobs of one layer entry.

    Field numbers: ``LayerParameter`` name 1, type 2 (string), blobs 7;
    ``V1LayerParameter`` name 4, type 5 (enum), blobs 6, V0 ``layer`` 1;
    ``V0LayerParameter`` name 1, type 2 (string), blobs 50.
    """
    name, typ, blobs = "", "", []
    if generation == "current":
        name_f, type_f, blob_f = 1, 2, 7
    else:
        name_f, type_f, blob_f = 4, 5, 6
    for field, wt, a, b in _fields(buf, start, end):
        if field == name_f and wt == _LEN:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif field == type_f and wt == _LEN:
            typ = bytes(buf[a:b]).decode("utf-8", "replace")
        elif field == type_f and wt == _VARINT:
            typ = _v1_type_name(a)
        elif field == blob_f and wt == _LEN:
            blobs.append(_decode_blob(buf, a, b))
        elif generation == "v1" and field == 1 and wt == _LEN:
            # A V0 layer wrapped in a V1 entry: it carries name, type, blobs.
            inner = _decode_v0(buf, a, b)
            name = name or inner.name
            typ = typ or inner.type
            blobs.extend(inner.blobs)
    return RawLayer(name=name, type=typ, blobs=tuple(blobs))


def _decode_v0(buf, start: int, end: int) -> RawLayer:
    name, typ, blobs = "", "", []
    for field, wt, a, b in _fields(buf, start, end):
        if field == 1 and wt == _LEN:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif field == 2 and wt == _LEN:
            typ = bytes(buf[a:b]).decode("utf-8", "replace")
        elif field == 50 and wt == _LEN:
            blobs.append(_decode_blob(buf, a, b))
    return RawLayer(name=name, type=typ, blobs=tuple(blobs))


def decode_weights(data: bytes, source: str = "<bytes>") -> RawWeights:
    """Decode the layers and blobs of a serialized ``caffe.NetParameter``.

    Raises
    ------
    CaffemodelError
        If the bytes are truncated, are not protobuf at all, or are protobuf
        that is not a Caffe ``NetParameter`` (unexpected top-level fields, or
        no layers).
    """
    buf = memoryview(data)
    layers = []
    name = ""
    generations = set()
    try:
        for field, wt, a, b in _fields(buf, 0, len(buf)):
            expected = _NET_FIELDS.get(field)
            if expected is None or expected != wt:
                raise CaffemodelError(
                    f"{source}: not a Caffe model: unexpected field {field} (wire type {wt}) at the "
                    "top level of what should be a caffe.NetParameter; hint: give the binary "
                    ".caffemodel written by Caffe, not a prototxt, solverstate or other file")
            if field == 1:
                name = bytes(buf[a:b]).decode("utf-8", "replace")
            elif field == 100:
                layers.append(_decode_layer(buf, a, b, "current"))
                generations.add("current")
            elif field == 2:
                layer = _decode_layer(buf, a, b, "v1")
                layers.append(layer)
                generations.add("v1")
    except _Truncated:
        raise CaffemodelError(
            f"{source}: the .caffemodel is truncated ({len(buf)} bytes read, a field runs past the "
            "end); hint: the download or copy was cut short, fetch the file again") from None
    except ValueError as exc:
        raise CaffemodelError(
            f"{source}: not a Caffe model: the bytes are not valid protobuf ({exc}); hint: give "
            "the binary .caffemodel written by Caffe") from None
    if not layers:
        raise CaffemodelError(
            f"{source}: not a Caffe model: it holds no layers; hint: give the binary .caffemodel "
            "written by Caffe")
    generation = "current" if generations == {"current"} else "v1"
    return RawWeights(name=name, layers=tuple(layers), generation=generation)


# ---------------------------------------------------------------------------
# Writing


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_field(field: int, payload: bytes) -> list:
    """Chunks of a length-delimited field; a list so big payloads are not copied."""
    return [encode_varint((field << 3) | _LEN), encode_varint(len(payload)), payload]


def encode_blob_parts(array: np.ndarray) -> list:
    """A ``BlobProto`` with ``shape`` and packed float ``data`` as chunks: small headers and a
    read-only view of the array's own float32 buffer (no copy of the weights when the array is
    already contiguous little-endian float32, as decoded and decomposed blobs are)."""
    arr = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(encode_varint(int(d)) for d in arr.shape)
    shape_msg = b"".join(encode_field(1, dims)) if arr.shape else b""
    parts = encode_field(7, shape_msg)
    if arr.size:
        parts += encode_field(5, memoryview(arr).cast("B").toreadonly())
    return parts


def encode_blob(array: np.ndarray) -> bytes:
    """Serialize an array as a ``BlobProto`` with ``shape`` and packed float ``data``."""
    return b"".join(encode_blob_parts(array))
