"""Stage 1, read: prototxt + caffemodel -> :class:`caffe_tucker.graph.Net`.

Text nets of any schema generation are parsed and upgraded to the current
format (:mod:`caffe_tucker.io.upgrade`), so no later stage sees two schemas.
Weights are matched to layers by name, as Caffe's ``CopyTrainedLayersFrom``
does; their shapes are checked against the net once shapes are known
(:func:`caffe_tucker.analysis.shapes.fit_weights`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from google.protobuf import text_format

from caffe_tucker.io.caffe_pb2 import NetParameter, SolverParameter
from caffe_tucker.errors import CaffemodelError, InputFileError, PrototxtError
from caffe_tucker.io.fsutil import input_size, read_bytes
from caffe_tucker.graph import Layer, Net
from caffe_tucker.io.upgrade import upgrade_net
from caffe_tucker.io.wire import RawWeights, decode_weights

__all__ = ["read_prototxt", "read_caffemodel", "read_net", "attach_weights", "parse_net_text",
           "read_solver", "read_ranks_file", "NetText", "read_net_text", "MAX_PROTOTXT_MB",
           "MAX_PROTOTXT_ENV", "max_prototxt_bytes", "default_weights_path", "weights_for"]

#: The largest prototxt read, in MiB.  Text-format parsing takes about a second per MiB, so a
#: file of hundreds of MiB (repeated fields, or a caffemodel dumped as text) would parse for
#: minutes; real net definitions are well under 1 MiB.  ``$CAFFE_TUCKER_MAX_PROTOTXT_MB``
#: (a positive number) overrides it.
MAX_PROTOTXT_MB = 64
MAX_PROTOTXT_ENV = "CAFFE_TUCKER_MAX_PROTOTXT_MB"

_PROTOTXT_HINT = ("a .caffemodel goes to --weights, the text net definition is the positional "
                  "argument")


def _max_prototxt_mb() -> float:
    text = os.environ.get(MAX_PROTOTXT_ENV, "").strip()
    if not text:
        return MAX_PROTOTXT_MB
    try:
        mb = float(text)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise InputFileError(f"{MAX_PROTOTXT_ENV}={text!r}: must be a positive number of MiB; "
                             f"hint: unset it for the default of {MAX_PROTOTXT_MB}")
    return mb


def max_prototxt_bytes() -> int:
    """The size limit of a prototxt in bytes: :data:`MAX_PROTOTXT_MB`, or the environment's."""
    return int(_max_prototxt_mb() * (1 << 20))


def _check_prototxt_size(size: int, source, exact: bool = True) -> None:
    mb = _max_prototxt_mb()
    if size > int(mb * (1 << 20)):
        shown = f" ({size:,} bytes)" if exact else ""
        raise InputFileError(
            f"{source}: larger than the {mb:g} MiB a prototxt may have{shown}; hint: a net "
            "definition is text of well under 1 MiB, so check the file (a caffemodel goes to "
            f"--weights); to read it anyway, set {MAX_PROTOTXT_ENV} to a larger number of MiB")


def _decode_text(data: bytes, path, what: str = "prototxt", hint: str = _PROTOTXT_HINT) -> str:
    if b"\x00" in data[:4096]:
        raise InputFileError(f"{path}: looks like a binary file, not a {what}; hint: {hint}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path}: is not UTF-8 text (byte {exc.start}), not a {what}; "
                             f"hint: {hint}") from None


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
            f"{loc}: unknown field '{field.group(1)}' in {owner_name}; hint: neither BVLC Caffe 1.0 "
            "nor the Caffe-SSD fork has such a field, so this file probably comes from another "
            "Caffe fork (its custom layers must be removed or replaced by standard ones)")
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


@dataclass(frozen=True)
class NetText:
    """A net definition held in memory (read from standard input, say) with the name messages
    give it.  It goes wherever a prototxt path goes (:func:`read_prototxt`, :func:`read_net`,
    :func:`caffe_tucker.model.load_model`); as a path (``os.fspath``) it is its name, a label
    that names no file."""

    data: bytes
    name: str = "<text>"

    def __str__(self) -> str:
        return self.name

    def __fspath__(self) -> str:
        return self.name


def read_net_text(stream: BinaryIO, name: str = "<stdin>") -> NetText:
    """Read a whole net definition from a binary stream (``sys.stdin.buffer``), refusing one
    above :func:`max_prototxt_bytes` without reading more than one byte past the limit."""
    limit = max_prototxt_bytes()
    data = stream.read(limit + 1)
    _check_prototxt_size(len(data), name, exact=False)
    return NetText(data, name)


def read_prototxt(path) -> Net:
    """Read a net definition (deploy or train_val, any schema generation).

    ``path`` is a file, or a :class:`NetText`.  A file larger than :func:`max_prototxt_bytes`
    is refused from its size, before it is read.  Returns a :class:`Net` in the current schema,
    with every layer's source line recorded for messages.
    """
    if isinstance(path, NetText):
        data = path.data
        _check_prototxt_size(len(data), path)
    else:
        size = input_size(path, "prototxt")
        if size is not None:
            _check_prototxt_size(size, path)
        # A pipe (``<(...)``) or a device has no size to check before: read one byte past the
        # limit at most.
        data = read_bytes(path, "prototxt", limit=max_prototxt_bytes() + 1)
        if size is None:
            _check_prototxt_size(len(data), path, exact=False)
    text = _decode_text(data, path)
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
    return data.reshape(shape) if math.prod(shape) == data.size else data


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
            # math.prod, exact: numpy's int64 product of dims a corrupt file claims can wrap
            # around to the data's size.
            if math.prod(shape) != blob.data.size:
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
    text = _decode_text(read_bytes(path, "solver prototxt"), path, "solver prototxt")
    solver = SolverParameter()
    try:
        text_format.Parse(text, solver)
    except text_format.ParseError as exc:
        raise _parse_error(exc, path) from None
    return solver


def read_ranks_file(path) -> dict:
    """Read a ranks file (the ``ranks.json`` convert writes): ``{"layer": R or [R3, R4] or
    {"method": NAME, "ranks": ...}, ...}``.

    Only the form is checked here; the ranks themselves are checked against the net when it is
    known (:func:`caffe_tucker.compress.ranks.check_manual_ranks`).
    """
    hint = 'give the ranks.json convert writes, e.g. {"conv2": [25, 59], "fc7": 301}'
    text = _decode_text(read_bytes(path, "ranks file"), path, "ranks file (JSON)", hint)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); "
                             f"hint: {hint}") from None
    except RecursionError:
        raise InputFileError(f"{path}: JSON nested too deeply for a ranks file; hint: {hint}") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: a ranks file is a JSON object mapping layer names to ranks; "
                             f"hint: {hint}")
    return data


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


def weights_for(prototxt, weights=None, hint: str = "") -> Path:
    """``weights``, or the default weights beside ``prototxt`` (:func:`default_weights_path`).

    A missing or malformed net is named before missing weights; no weights anywhere is one line
    ending in ``hint: pass --weights W.caffemodel`` followed by ``hint``.
    """
    if weights is not None:
        return Path(weights)
    read_prototxt(prototxt)
    found = default_weights_path(prototxt)
    if found is None:
        raise InputFileError(f"{prototxt}: no weights given and no "
                             f"{Path(prototxt).with_suffix('.caffemodel').name} beside it; hint: "
                             f"pass --weights W.caffemodel{hint}")
    return found
