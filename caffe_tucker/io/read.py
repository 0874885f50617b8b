"""Stage 1, read: prototxt + caffemodel -> :class:`caffe_tucker.graph.Net`.

Text nets of any schema generation are parsed and upgraded to the current
format (:mod:`caffe_tucker.io.upgrade`), so no later stage sees two schemas.
Weights are matched to layers by name, as Caffe's ``CopyTrainedLayersFrom``
does; their shapes are checked against the net once shapes are known
(:func:`caffe_tucker.analysis.shapes.fit_weights`).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from caffe_tucker.io.caffe_pb2 import NetParameter, SolverParameter
from caffe_tucker.errors import CaffemodelError, InputFileError, PrototxtError
from caffe_tucker.io.fsutil import read_bytes
from caffe_tucker.graph import Layer, Net
from caffe_tucker.io.upgrade import upgrade_net
from caffe_tucker.io.wire import RawWeights, decode_weights

__all__ = ["read_prototxt", "read_caffemodel", "read_net", "attach_weights", "parse_net_text",
           "read_solver"]


def _decode_text(data: bytes, path) -> str:
    if b"\x00" in data[:4096]:
        raise InputFileError(
            f"{path}: looks like a binary file, not a prototxt; hint: a .caffemodel goes to "
            "--weights, the text net definition is the positional argument")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: is not UTF-8 text; hint: give the .prototxt text file") from None


_FIELD_RE = re.compile(r'has no field named "([^"]+)"')
_ENUM_RE = re.compile(r'Enum type "([^"]+)" has no value named (\w+)')
_MSG_RE = re.compile(r'Message type "([^"]+)"')


def _parse_error(exc: text_format.ParseError, path) -> PrototxtError:
    text = str(exc)
    line, col = exc.GetLine(), exc.GetColumn()
    msg = re.sub(r"^\d+:\d+ : ", "", text).rstrip(".")
    loc = f"{path}:{line}:{col}" if line else str(path)
    field = _FIELD_RE.search(msg)
    if field:
        owner = _MSG_RE.search(msg)
        owner_name = owner.group(1) if owner else "the message"
        return PrototxtError(
            f"{loc}: unknown field '{field.group(1)}' in {owner_name}; hint: BVLC Caffe 1.0 has no "
            "such field, so this file probably comes from a Caffe fork (its custom layers must be "
            "removed or replaced by standard ones)")
    enum = _ENUM_RE.search(msg)
    if enum:
        return PrototxtError(
            f"{loc}: unknown value '{enum.group(2)}' for {enum.group(1)}; hint: BVLC Caffe 1.0 has "
            "no such value, so this file probably comes from a Caffe fork")
    return PrototxtError(f"{loc}: {msg}; hint: check the prototxt syntax at that position")


def _top_level_blocks(text: str, keys=("layer", "layers", "input")) -> dict[str, list[int]]:
    """Line numbers of the top-level ``layer {`` / ``layers {`` blocks and ``input:`` keys."""
    found: dict[str, list[int]] = {k: [] for k in keys}
    depth = 0
    line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\":
                    j += 1
                if j < n and text[j] == "\n":
                    line += 1
                j += 1
            i = j + 1
        elif c in "{<":
            depth += 1
            i += 1
        elif c in "}>":
            depth -= 1
            i += 1
        elif depth == 0 and (c.isalpha() or c == "_"):
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word in found:
                found[word].append(line)
            i = j
        else:
            i += 1
    return found


def parse_net_text(text: str, path="<text>") -> tuple[NetParameter, dict[str, list[int]]]:
    """Parse prototxt text into a (not yet upgraded) ``NetParameter`` plus block line numbers."""
    net = NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        raise _parse_error(exc, path) from None
    return net, _top_level_blocks(text)


def read_prototxt(path) -> Net:
    """Read a net definition (deploy or train_val, any schema generation).

    Returns a :class:`Net` in the current schema, with every layer's source
    line recorded for messages.
    """
    text = _decode_text(read_bytes(path, "prototxt"), path)
    raw, blocks = parse_net_text(text, path)
    if not raw.layer and not raw.layers:
        raise PrototxtError(f"{path}: defines no layers; hint: is this a net definition (a solver "
                            "or a label file looks similar)?")
    upgraded, applied = upgrade_net(raw, str(path))
    lines = list(blocks["layer"] or blocks["layers"])
    if "net-level input" in applied:
        lines.insert(0, blocks["input"][0] if blocks["input"] else None)
    layers = []
    for i, spec in enumerate(upgraded.layer):
        blobs = tuple(_blob_array(b) for b in spec.blobs)
        spec.ClearField("blobs")
        layers.append(Layer(spec=spec, blobs=blobs, line=lines[i] if i < len(lines) else None))
    header = NetParameter()
    header.CopyFrom(upgraded)
    header.ClearField("layer")
    return Net(layers=tuple(layers), header=header, source=str(path), upgrades=applied)


def _blob_array(blob) -> np.ndarray:
    data = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    return data.reshape(shape) if int(np.prod(shape)) == data.size else data


def read_caffemodel(path) -> RawWeights:
    """Read the layers and blobs of a binary ``.caffemodel`` (current, V1 or V0)."""
    data = read_bytes(path, ".caffemodel")
    if path is not None and str(path).endswith((".prototxt", ".pbtxt")):
        raise InputFileError(f"{path}: is a text prototxt, not a binary .caffemodel; hint: pass the "
                             "weights file to --weights")
    return decode_weights(data, str(path))


def attach_weights(net: Net, weights: RawWeights, source: str | None = None) -> Net:
    """Give every net layer the blobs of the caffemodel layer with its name.

    Caffe's rule: layers are matched by name; caffemodel layers the net does
    not have are ignored; net layers the caffemodel does not have keep no
    blobs.  Blob shapes are taken as stored (``shape`` if present, else the
    legacy four dims) and checked later against the net.
    """
    by_name = {}
    for raw in weights.layers:
        if raw.blobs:
            by_name[raw.name] = raw
    layers = []
    for layer in net.layers:
        raw = by_name.get(layer.name)
        if raw is None:
            layers.append(layer)
            continue
        arrays = []
        for blob in raw.blobs:
            shape = blob.shape if blob.shape is not None else (blob.legacy or (blob.data.size,))
            if int(np.prod(shape)) != blob.data.size:
                raise CaffemodelError(
                    f"{source or weights.name}: layer '{raw.name}': a blob of shape "
                    f"{list(shape)} holds {blob.data.size} values; hint: the file is corrupt")
            arrays.append(blob.data.reshape(shape))
        layers.append(layer.with_blobs(arrays))
    return replace(net, layers=tuple(layers), weights_source=source)


def read_net(prototxt, weights=None) -> Net:
    """Read a net definition and, optionally, its ``.caffemodel`` (attached by layer name)."""
    net = read_prototxt(prototxt)
    if weights is not None:
        net = attach_weights(net, read_caffemodel(weights), str(weights))
    return net


def read_solver(path) -> SolverParameter:
    """Read a ``solver.prototxt``."""
    text = _decode_text(read_bytes(path, "solver prototxt"), path)
    solver = SolverParameter()
    try:
        text_format.Parse(text, solver)
    except text_format.ParseError as exc:
        raise _parse_error(exc, path) from None
    return solver


def default_weights_path(prototxt) -> Path | None:
    """``model.caffemodel`` beside ``model.prototxt``, or the weights a zoo ``model.json`` beside
    it names (``zoo_models/digits/deploy.prototxt`` -> ``digits.caffemodel``), if it exists."""
    p = Path(prototxt)
    candidate = p.with_suffix(".caffemodel")
    if candidate.exists():
        return candidate
    meta = p.parent / "model.json"
    if meta.is_file():
        try:
            name = json.loads(meta.read_text(encoding="utf-8"))["weights"]["filename"]
        except (ValueError, KeyError, TypeError):
            return None
        if (p.parent / name).is_file():
            return p.parent / name
    return None
