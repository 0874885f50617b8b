"""The ``.ctz`` container: a compressed model in one file (Choi, El-Khamy & Lee 2018).

A sparse, quantized model is stored as its net definition, a codebook and a stream of symbols per
quantized blob, and every other blob as it is, each compressed with a universal lossless code
(bzip2, LZMA or DEFLATE): the symbol ``0`` of a pruned weight is the zero pattern, so pruned
weights cost only what that symbol costs in the compressed stream.  :func:`caffemodel_net` decodes
it back to a plain net whose :func:`~caffe_tucker.io.emit.caffemodel_chunks` real Caffe loads.

Byte format, version 1
----------------------
All integers are little-endian.  ``L`` is the length of the whole file, ``H`` that of the header.

======  ===========  ==========================================================================
offset  size         field
======  ===========  ==========================================================================
0       8            magic ``89 43 54 5A 0D 0A 1A 0A`` (``b"\\x89CTZ\\r\\n\\x1a\\n"``: the high
                     byte and the line ends catch 7-bit and text-mode transfers, as PNG's do)
8       2            format version, uint16: ``1``
10      2            flags, uint16: ``0`` (none is defined in version 1)
12      4            ``H``, uint32: the header's length in bytes
16      8            ``L``, uint64: the file's length in bytes, trailer included
24      ``H``        header: JSON, UTF-8, keys sorted, no spaces (below)
24+H    L - 56 - H   payload: the sections, back to back, in the order the header lists them
L-32    32           SHA-256 of bytes ``[0, L-32)``
======  ===========  ==========================================================================

The header::

    {"codec": "bz2" | "lzma" | "zlib",
     "meta": {...},                                    # free JSON (the quantizer's options, ...)
     "net": SECTION + {"size": U},                     # the net's prototxt text, compressed
     "quantized": [{"layer": NAME, "blob": I,          # which blob of which layer
                    "shape": [d0, d1, ...],
                    "method": "dithered" | "uniform" | "kmeans" | ...,
                    "step": S, "dither_seed": null | SEED, "k": K,
                    "codebook": SECTION,               # K float32 LE, not compressed
                    "symbols": SECTION + {"size": U}}, # prod(shape) symbols, compressed
                   ...],
     "raw": SECTION + {"size": U,                      # the raw blobs' float32 LE values, one after
             "blobs": [{"layer": NAME, "blob": I,      # another in this order, compressed as one
                        "shape": [d0, ...]}, ...]}}

where ``SECTION`` is ``{"offset": O, "length": N, "crc32": C}``: the section's bytes are
``payload[O:O+N]`` (``O`` counted from the first byte after the header), ``C`` their CRC-32
(zlib's), and ``U`` the length of the section's bytes once decompressed.  The sections follow each
other without gaps in this order: the net, then per quantized blob its codebook and its symbols,
then the raw blobs.

- The net is :func:`~caffe_tucker.io.emit.prototxt_text` of the net without blobs (UTF-8).
- Symbols are one unsigned integer per weight in C order, of the smallest type that holds ``K``
  (:func:`~caffe_tucker.quantize.codebook.symbol_dtype`: uint8 for ``K < 256``, uint16 for
  ``K < 65536``, else uint32): ``0`` for a pruned weight, ``1 + k`` for codebook entry ``k``; a
  blob decodes by :func:`~caffe_tucker.quantize.codebook.decode` (``step`` and ``dither_seed``
  are what it needs; ``step`` is written as Python's shortest repr, which reads back exactly).
- Quantized blobs are in the net's layer order, then blob order; so are the raw blobs.
- Codecs, fixed so that the same model gives the same bytes with the same libraries: ``bz2`` is
  bzip2 at level 9; ``lzma`` is a raw LZMA2 stream (no .xz wrapper) with xz's preset 6
  (dictionary 8 MiB), read with the same filter; ``zlib`` is a zlib stream at level 9.

Reading checks, in this order: the magic, the version (a newer one is named as such), the length
(a truncated file says how many bytes were expected, a longer one how many follow its end), the
SHA-256 (on a mismatch, the first section whose CRC-32 differs is named, else the preamble, header
or trailer), the flags, the header's form and its codec, that the sections tile the payload and
that the sizes agree with the shapes (and fit in memory,
:func:`~caffe_tucker.analysis.validate.check_allocation`), each section's CRC-32, its
decompressed length, every symbol against its codebook, finite values, and the blobs against the
shapes the net needs (:func:`~caffe_tucker.analysis.shapes.fit_weights`).  Every failure is one
line: a :class:`ContainerError`, or for a net that does not parse or blobs that do not fit it,
the error reading a net and its weights gives; never a traceback.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from caffe_tucker.analysis.shapes import fit_weights, infer_shapes
from caffe_tucker.analysis.validate import check_allocation, check_finite
from caffe_tucker.errors import InputFileError, check_param, where
from caffe_tucker.graph import Net
from caffe_tucker.io.emit import prototxt_text
from caffe_tucker.io.fsutil import check_output, read_bytes, write_atomic
from caffe_tucker.io.read import NetText, read_prototxt
from caffe_tucker.quantize.codebook import QuantizedBlob, decode, symbol_dtype

__all__ = ["Packed", "ContainerError", "pack_bytes", "unpack_bytes", "write_container",
           "read_container", "caffemodel_net", "container_sizes", "CODECS", "MAGIC", "VERSION"]

MAGIC = b"\x89CTZ\r\n\x1a\n"
VERSION = 1
CODECS = ("bz2", "lzma", "zlib")

_PREAMBLE = struct.Struct("<8sHHIQ")   # magic, version, flags, H, L
_TRAILER = 32                           # SHA-256
_MIN_LENGTH = _PREAMBLE.size + _TRAILER
_LZMA_FILTERS = ({"id": lzma.FILTER_LZMA2, "preset": 6},)
_MAX_SEED = 2**32 - 1                   # numpy.random.RandomState's seeds
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_HINT_CORRUPT = "the file is damaged; copy it again, or pack the model again"


class ContainerError(InputFileError):
    """A ``.ctz`` file is not a container, of a newer version, truncated, corrupt, or holds
    values that cannot be decoded."""


@dataclass(frozen=True, eq=False)
class Packed:
    """A compressed model: what a ``.ctz`` container holds.

    Attributes
    ----------
    net : Net
        The net definition (deploy); its blobs, if any, are not stored.
    quantized : tuple of QuantizedBlob
        The quantized blobs (symbols, codebook, dither), at most one per (layer, blob index).
    raw : dict of (str, int) to float32 ndarray
        Every other blob of the net, by (layer name, blob index): biases, BatchNorm statistics,
        layers left unquantized; stored losslessly.
    codec : {"bz2", "lzma", "zlib"}
        The lossless code of the compressed sections.
    meta : dict
        Free JSON (finite numbers): the quantizer's options, the source files, ...
    """

    net: Net
    quantized: tuple[QuantizedBlob, ...] = ()
    raw: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)
    codec: str = "bz2"
    meta: Mapping = field(default_factory=dict)


# --- codecs -------------------------------------------------------------------------------------

def _compress(codec: str, data) -> bytes:
    if codec == "bz2":
        return bz2.compress(data, 9)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return zlib.compress(data, 9)


def _decompress(codec: str, data, size: int, source: str, what: str) -> bytes:
    """``data`` decompressed, which must be exactly ``size`` bytes (never more is produced)."""
    if codec == "bz2":
        d = bz2.BZ2Decompressor()
    elif codec == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    else:
        d = zlib.decompressobj()
    try:
        out = d.decompress(data, size + 1)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:
        raise ContainerError(f"{source}: {what} does not decompress with {codec} ({exc}); "
                             f"hint: {_HINT_CORRUPT}") from None
    extra = bool(getattr(d, "unused_data", b"")) or bool(getattr(d, "unconsumed_tail", b""))
    if len(out) != size or not d.eof or extra:
        got = f"{len(out):,}" if len(out) <= size else f"more than {size:,}"
        ended = "" if d.eof else ", and its stream does not end"
        raise ContainerError(f"{source}: {what} decompresses to {got} bytes, the header says "
                             f"{size:,}{ended}; hint: {_HINT_CORRUPT}")
    return out


# --- packing -------------------------------------------------------------------------------------

def _order(net: Net) -> dict[str, int]:
    return {layer.name: i for i, layer in enumerate(net.layers)}


def _check_packed(packed: Packed) -> tuple[list[QuantizedBlob], list[tuple[tuple, np.ndarray]]]:
    """Check what :func:`pack_bytes` is given (a caller's mistake is a ``ValueError``); return
    the quantized blobs and the raw ones in the net's order."""
    owner = "Packed"
    check_param("net", packed.net, isinstance(packed.net, Net), "a caffe_tucker Net", owner)
    check_param("codec", packed.codec, packed.codec in CODECS, f"one of {', '.join(CODECS)}", owner)
    check_param("meta", packed.meta, isinstance(packed.meta, Mapping), "a dict", owner)
    try:
        json.dumps(packed.meta, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        check_param("meta", packed.meta, False, f"JSON with finite numbers ({exc})", owner)
    order = _order(packed.net)
    seen: set = set()

    def key_ok(layer, blob, what):
        check_param(what, (layer, blob), isinstance(layer, str) and layer in order,
                    "a layer of the net", owner)
        check_param(what, (layer, blob), _is_int(blob) and blob >= 0,
                    "a blob index >= 0", owner)
        check_param(what, (layer, blob), (layer, blob) not in seen,
                    "given once (in quantized or raw, not both)", owner)
        seen.add((layer, int(blob)))

    quantized = []
    for q in packed.quantized:
        check_param("quantized", q, isinstance(q, QuantizedBlob), "QuantizedBlob records", owner)
        key_ok(q.layer, q.blob, "quantized")
        name = f"quantized[{q.layer!r}, {q.blob}]"
        shape = tuple(q.shape)
        check_param(f"{name}.shape", q.shape, all(_is_int(d) and d >= 0 for d in shape),
                    "a tuple of non-negative integers", owner)
        codebook = np.asarray(q.codebook)
        check_param(f"{name}.codebook", codebook.dtype, codebook.dtype.kind == "f"
                    and codebook.ndim == 1, "a 1-D float array", owner)
        # decode() reads the codebook as float32: so does the container, exactly.
        with np.errstate(over="ignore"):
            codebook = codebook.astype(np.float32)
        check_param(f"{name}.codebook", codebook, bool(np.isfinite(codebook).all()),
                    "finite in float32", owner)
        symbols = np.asarray(q.symbols)
        check_param(f"{name}.symbols", symbols.dtype, symbols.dtype.kind in "ui",
                    "an integer array", owner)
        check_param(f"{name}.symbols", symbols.size, symbols.size == math.prod(shape),
                    f"{math.prod(shape)} values (the shape's)", owner)
        if symbols.size:
            lo, hi = int(symbols.min()), int(symbols.max())
            check_param(f"{name}.symbols", hi, lo >= 0 and hi <= codebook.size,
                        f"in [0, {codebook.size}] (0: pruned, 1+k: codebook entry k)", owner)
        check_param(f"{name}.method", q.method, isinstance(q.method, str) and bool(q.method),
                    "a non-empty str", owner)
        check_param(f"{name}.step", q.step, _is_number(q.step) and 0 <= q.step <= _FLOAT32_MAX,
                    "a finite number >= 0", owner)
        check_param(f"{name}.dither_seed", q.dither_seed, q.dither_seed is None
                    or (_is_int(q.dither_seed) and 0 <= q.dither_seed <= _MAX_SEED),
                    f"None or an int in [0, {_MAX_SEED}]", owner)
        quantized.append(q)
    raw = []
    for key, array in packed.raw.items():
        check_param("raw", key, isinstance(key, tuple) and len(key) == 2,
                    "keyed by (layer name, blob index)", owner)
        key_ok(key[0], key[1], "raw")
        array = np.asarray(array)
        check_param(f"raw[{key[0]!r}, {key[1]}]", array.dtype, array.dtype == np.float32,
                    "a float32 array (stored as it is)", owner)
        raw.append(((key[0], int(key[1])), array))
    quantized.sort(key=lambda q: (order[q.layer], int(q.blob)))
    raw.sort(key=lambda item: (order[item[0][0]], item[0][1]))
    return quantized, raw


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(value))


def _layout(packed: Packed) -> tuple[dict, list[bytes]]:
    """The header (a dict) and the payload's sections, in file order."""
    quantized, raw = _check_packed(packed)
    _check_fits(packed.net, [(q.layer, int(q.blob), tuple(int(d) for d in q.shape))
                             for q in quantized]
                + [(layer, blob, a.shape) for (layer, blob), a in raw], None)
    codec = packed.codec
    sections: list[bytes] = []

    def section(data: bytes, size: int | None = None) -> dict:
        entry = {"offset": sum(len(s) for s in sections), "length": len(data),
                 "crc32": zlib.crc32(data)}
        if size is not None:
            entry["size"] = size
        sections.append(data)
        return entry

    net = prototxt_text(packed.net).encode("utf-8")
    header: dict = {"codec": codec, "meta": dict(packed.meta),
                    "net": section(_compress(codec, net), len(net))}
    entries = []
    for q in quantized:
        codebook = np.asarray(q.codebook, dtype="<f4")
        k = int(codebook.size)
        symbols = np.ascontiguousarray(np.asarray(q.symbols).reshape(-1),
                                       dtype=symbol_dtype(k).newbyteorder("<")).tobytes()
        entries.append({
            "layer": q.layer, "blob": int(q.blob), "shape": [int(d) for d in q.shape],
            "method": q.method, "step": float(q.step),
            "dither_seed": None if q.dither_seed is None else int(q.dither_seed), "k": k,
            "codebook": section(codebook.tobytes()),
            "symbols": section(_compress(codec, symbols), len(symbols))})
    header["quantized"] = entries
    values = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for _, a in raw)
    header["raw"] = {**section(_compress(codec, values), len(values)),
                     "blobs": [{"layer": layer, "blob": blob, "shape": list(a.shape)}
                               for (layer, blob), a in raw]}
    return header, sections


def _header_bytes(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def pack_bytes(packed: Packed) -> bytes:
    """The ``.ctz`` bytes of ``packed`` (the module docstring's format); the same ``packed``
    gives the same bytes.

    Raises
    ------
    ValueError
        ``packed`` is malformed: a blob given twice or of a layer the net lacks, symbols out
        of their codebook's range, a codec not in :data:`CODECS`, meta that is not JSON.
    WeightsMismatchError
        The blobs do not fit the net (a count or a shape differs from what the net needs).
    """
    header, sections = _layout(packed)
    head = _header_bytes(header)
    length = _PREAMBLE.size + len(head) + sum(len(s) for s in sections) + _TRAILER
    parts = [_PREAMBLE.pack(MAGIC, VERSION, 0, len(head), length), head, *sections]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return b"".join(parts + [digest.digest()])


def write_container(packed: Packed, path, force: bool = False, inputs: Sequence = ()):
    """Write ``packed`` to ``path`` atomically; an existing file is replaced only with
    ``force``, an input never (:func:`caffe_tucker.io.fsutil.write_atomic`).  Returns the path."""
    check_output(path, force=force, inputs=inputs)  # before the work, not after
    return write_atomic(path, pack_bytes(packed), force=force, inputs=inputs)


# --- reading -------------------------------------------------------------------------------------

def _preamble(data, source: str) -> tuple[int, int, int]:
    """Check the magic, version and length; return (flags, H, L)."""
    n = len(data)
    start = bytes(data[:len(MAGIC)])
    if n == 0 or start != MAGIC[:len(start)]:
        shown = "it is empty" if n == 0 else f"it starts with {start!r}"
        raise ContainerError(f"{source}: is not a .ctz container ({shown}); hint: give a file "
                             "written by 'pack' (a .caffemodel goes to 'pack --weights')")
    if n < _PREAMBLE.size:
        raise ContainerError(f"{source}: the .ctz container is truncated: at least "
                             f"{_MIN_LENGTH} bytes expected, {n:,} got; hint: the copy was "
                             "cut short; copy it again")
    _, version, flags, head, length = _PREAMBLE.unpack_from(data)
    if version > VERSION:
        raise ContainerError(f"{source}: is a .ctz container of format version {version}, "
                             f"newer than the version {VERSION} this caffe_tucker reads; hint: "
                             "upgrade caffe_tucker")
    if version < 1:
        raise ContainerError(f"{source}: is a .ctz container of format version {version}, "
                             f"which does not exist; hint: {_HINT_CORRUPT}")
    if n < length:
        raise ContainerError(f"{source}: the .ctz container is truncated: {length:,} bytes "
                             f"expected, {n:,} got; hint: the copy was cut short; copy it again")
    if n > length:
        raise ContainerError(f"{source}: {n - length:,} bytes follow the end of the .ctz "
                             f"container ({length:,} bytes expected, {n:,} got); hint: "
                             f"{_HINT_CORRUPT}")
    if length < _MIN_LENGTH + head:
        raise ContainerError(f"{source}: the .ctz container's header of {head:,} bytes does not "
                             f"fit in its {length:,} bytes; hint: {_HINT_CORRUPT}")
    return flags, head, length


def _sections_of(header) -> list[tuple[str, dict]]:
    """(name for messages, SECTION entry) of every section, in file order; read leniently (for
    naming a corrupt section; the header's form is checked by :func:`_check_header`)."""
    out = [("the net", header["net"])]
    for q in header["quantized"]:
        what = f"layer '{q['layer']}' blob {q['blob']}"
        out += [(f"the codebook of {what}", q["codebook"]),
                (f"the symbols of {what}", q["symbols"])]
    return out + [("the raw blobs", header["raw"])]


def _corrupt_section(data, head: int, length: int) -> str:
    """Which part of a file whose SHA-256 differs is damaged: the first section whose CRC-32
    differs, else the preamble, header or trailer."""
    start = _PREAMBLE.size + head
    try:
        header = json.loads(bytes(data[_PREAMBLE.size:start]).decode("utf-8"))
        for name, s in _sections_of(header):
            lo, hi = start + s["offset"], start + s["offset"] + s["length"]
            if (not start <= lo <= hi <= length - _TRAILER
                    or zlib.crc32(data[lo:hi]) != s["crc32"]):
                return name
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        pass  # a header too damaged to name its sections
    return "the preamble, the header or the trailer"


class _Form:
    """Checks of the header's form: each failure is one :class:`ContainerError` naming the
    field (``quantized[2].shape``)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, want: str):
        raise ContainerError(f"{self.source}: corrupt header: '{path}' must be {want}; hint: "
                             f"{_HINT_CORRUPT}")

    def get(self, obj, key, path, kind):
        if not isinstance(obj, dict) or key not in obj:
            self.fail(path, "present")
        value = obj[key]
        checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                  "str": lambda v: isinstance(v, str),
                  "list": lambda v: isinstance(v, list), "dict": lambda v: isinstance(v, dict),
                  "number": lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and math.isfinite(v) and 0 <= v <= _FLOAT32_MAX)}
        wants = {"int": "an integer >= 0", "str": "a string", "list": "a list",
                 "dict": "an object", "number": "a finite number >= 0"}
        if not checks[kind](value):
            self.fail(path, wants[kind])
        return value

    def shape(self, obj, path) -> tuple[int, ...]:
        dims = self.get(obj, "shape", f"{path}.shape", "list")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            self.fail(f"{path}.shape", "a list of integers >= 0")
        return tuple(dims)

    def section(self, obj, key, path, sized: bool) -> dict:
        entry = self.get(obj, key, path, "dict")
        out = {k: self.get(entry, k, f"{path}.{k}", "int") for k in ("offset", "length", "crc32")}
        if sized:
            out["size"] = self.get(entry, "size", f"{path}.size", "int")
        return out


def _check_header(header, source: str) -> dict:
    """The header in a checked form: every field present and of its type."""
    form = _Form(source)
    if not isinstance(header, dict):
        form.fail("header", "an object")
    out = {"codec": form.get(header, "codec", "codec", "str"),
           "meta": form.get(header, "meta", "meta", "dict"),
           "net": form.section(header, "net", "net", True)}
    if out["codec"] not in CODECS:
        raise ContainerError(f"{source}: unknown codec {out['codec']!r} (this caffe_tucker knows "
                             f"{', '.join(CODECS)}); hint: written by a newer caffe_tucker? "
                             "upgrade it")
    quantized = []
    for i, q in enumerate(form.get(header, "quantized", "quantized", "list")):
        path = f"quantized[{i}]"
        if not isinstance(q, dict):
            form.fail(path, "an object")
        quantized.append({
            "layer": form.get(q, "layer", f"{path}.layer", "str"),
            "blob": form.get(q, "blob", f"{path}.blob", "int"),
            "shape": form.shape(q, path),
            "method": form.get(q, "method", f"{path}.method", "str"),
            "step": float(form.get(q, "step", f"{path}.step", "number")),
            "dither_seed": (None if q.get("dither_seed") is None
                            else form.get(q, "dither_seed", f"{path}.dither_seed", "int")),
            "k": form.get(q, "k", f"{path}.k", "int"),
            "codebook": form.section(q, "codebook", f"{path}.codebook", False),
            "symbols": form.section(q, "symbols", f"{path}.symbols", True)})
        if quantized[-1]["dither_seed"] is not None and quantized[-1]["dither_seed"] > _MAX_SEED:
            form.fail(f"{path}.dither_seed", f"null or an integer in [0, {_MAX_SEED}]")
    out["quantized"] = quantized
    raw = form.section(header, "raw", "raw", True)
    blobs = form.get(header["raw"], "blobs", "raw.blobs", "list")
    raw["blobs"] = [{"layer": form.get(b, "layer", f"raw.blobs[{i}].layer", "str"),
                     "blob": form.get(b, "blob", f"raw.blobs[{i}].blob", "int"),
                     "shape": form.shape(b, f"raw.blobs[{i}]")} for i, b in enumerate(blobs)]
    out["raw"] = raw
    return out


def _check_sizes(header: dict, source: str, payload: int) -> None:
    """The sections tile the payload in order; the decompressed sizes agree with the shapes."""
    offset = 0
    for name, s in _sections_of(header):
        if s["offset"] != offset:
            raise ContainerError(f"{source}: corrupt header: {name} starts at payload byte "
                                 f"{s['offset']:,}, not {offset:,} (the sections follow each "
                                 f"other without gaps); hint: {_HINT_CORRUPT}")
        offset += s["length"]
    if offset != payload:
        raise ContainerError(f"{source}: corrupt header: its sections take {offset:,} bytes, the "
                             f"payload has {payload:,}; hint: {_HINT_CORRUPT}")
    for q in header["quantized"]:
        what = f"{source}: layer '{q['layer']}' blob {q['blob']}"
        if q["codebook"]["length"] != 4 * q["k"]:
            raise ContainerError(f"{what}: a codebook of {q['k']} entries takes {4 * q['k']:,} "
                                 f"bytes, the header says {q['codebook']['length']:,}; hint: "
                                 f"{_HINT_CORRUPT}")
        want = math.prod(q["shape"]) * symbol_dtype(q["k"]).itemsize
        if q["symbols"]["size"] != want:
            raise ContainerError(f"{what}: {list(q['shape'])} symbols take {want:,} bytes, the "
                                 f"header says {q['symbols']['size']:,}; hint: {_HINT_CORRUPT}")
    want = sum(4 * math.prod(b["shape"]) for b in header["raw"]["blobs"])
    if header["raw"]["size"] != want:
        raise ContainerError(f"{source}: the raw blobs' shapes hold {want:,} bytes of float32, "
                             f"the header says {header['raw']['size']:,}; hint: {_HINT_CORRUPT}")
    total = (header["net"]["size"] + header["raw"]["size"]  # decompressed, then decoded
             + sum(q["symbols"]["size"] + 4 * math.prod(q["shape"]) for q in header["quantized"]))
    check_allocation(total, f"{source}: unpacking the container",
                     "unpack it on a machine with more memory")


def _read_header(data, source: str) -> tuple[dict, memoryview]:
    """Every check before decompression; return the checked header and the payload."""
    data = memoryview(data).cast("B")
    flags, head, length = _preamble(data, source)
    if hashlib.sha256(data[:length - _TRAILER]).digest() != bytes(data[length - _TRAILER:]):
        raise ContainerError(f"{source}: checksum mismatch in "
                             f"{_corrupt_section(data, head, length)} (the file's SHA-256 differs "
                             f"from the one it records); hint: {_HINT_CORRUPT}")
    if flags:
        raise ContainerError(f"{source}: the .ctz container has flags {flags:#06x}, which "
                             f"format version {VERSION} does not define; hint: written by a newer "
                             "caffe_tucker? upgrade it")
    try:
        text = bytes(data[_PREAMBLE.size:_PREAMBLE.size + head]).decode("utf-8")
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ContainerError(f"{source}: corrupt header: not UTF-8 JSON ({exc}); hint: "
                             f"{_HINT_CORRUPT}") from None
    header = _check_header(header, source)
    payload = data[_PREAMBLE.size + head:length - _TRAILER]
    _check_sizes(header, source, len(payload))
    for name, s in _sections_of(header):
        if zlib.crc32(payload[s["offset"]:s["offset"] + s["length"]]) != s["crc32"]:
            raise ContainerError(f"{source}: checksum mismatch in {name} (its CRC-32 differs "
                                 f"from the one recorded); hint: {_HINT_CORRUPT}")
    return header, payload


def unpack_bytes(data, source: str = "<bytes>") -> Packed:
    """Read a ``.ctz`` container from its bytes (see the module docstring for every check).

    Parameters
    ----------
    data : bytes-like
        The whole file.
    source : str
        Its name, for messages.

    Raises
    ------
    ContainerError
        Not a container, a newer version, truncated, a checksum mismatch (naming the section),
        an unknown codec, a symbol out of its codebook's range, a value not finite.
    PrototxtError, WeightsMismatchError, ShapeError
        The net inside does not parse, or the blobs do not fit it.
    """
    source = str(source)
    header, payload = _read_header(data, source)
    codec = header["codec"]

    def section(s, what):
        chunk = payload[s["offset"]:s["offset"] + s["length"]]
        return chunk if "size" not in s else _decompress(codec, chunk, s["size"], source, what)

    text = bytes(section(header["net"], "the net"))
    bad = text.find(b"\x00")  # read_prototxt's own messages would point at --weights
    if bad < 0:
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = exc.start
    if bad >= 0:
        raise ContainerError(f"{source}: the net is not UTF-8 prototxt text (byte {bad}); "
                             f"hint: {_HINT_CORRUPT}")
    net = read_prototxt(NetText(text, f"{source}:deploy.prototxt"))
    quantized = []
    for q in header["quantized"]:
        blob = f"layer '{q['layer']}' blob {q['blob']}"
        codebook = np.frombuffer(section(q["codebook"], ""), dtype="<f4").astype(np.float32)
        if not np.isfinite(codebook).all():
            raise ContainerError(f"{source}: {blob}: the codebook holds values that are not "
                                 f"finite; hint: {_HINT_CORRUPT}")
        dtype = symbol_dtype(q["k"])
        symbols = np.frombuffer(section(q["symbols"], f"the symbols of {blob}"),
                                dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        top = int(symbols.max()) if symbols.size else 0
        if top > q["k"]:
            raise ContainerError(f"{source}: {blob}: symbol {top} is out of range of its "
                                 f"codebook of {q['k']} entries (symbols 0..{q['k']}); hint: "
                                 f"{_HINT_CORRUPT}")
        quantized.append(QuantizedBlob(
            layer=q["layer"], blob=q["blob"], shape=q["shape"],
            symbols=symbols.reshape(q["shape"]), codebook=codebook, method=q["method"],
            step=q["step"], dither_seed=q["dither_seed"]))
    values = np.frombuffer(section(header["raw"], "the raw blobs"), dtype="<f4")
    raw, start = {}, 0
    for b in header["raw"]["blobs"]:
        n = math.prod(b["shape"])
        array = values[start:start + n].astype(np.float32, copy=False).reshape(b["shape"])
        start += n
        if not np.isfinite(array).all():
            raise ContainerError(f"{source}: layer '{b['layer']}' raw blob {b['blob']} holds "
                                 f"values that are not finite; hint: {_HINT_CORRUPT}")
        if (b["layer"], b["blob"]) in raw:
            _twice(source, b["layer"], b["blob"])
        raw[(b["layer"], b["blob"])] = array
    keys = [(q.layer, q.blob) for q in quantized]
    for key in set(keys):
        if keys.count(key) > 1 or key in raw:
            _twice(source, *key)
    _check_fits(net, [(q.layer, q.blob, q.shape) for q in quantized]
                + [(layer, blob, a.shape) for (layer, blob), a in raw.items()], source)
    return Packed(net=net, quantized=tuple(quantized), raw=raw, codec=codec,
                  meta=header["meta"])


def _twice(source: str, layer: str, blob: int):
    raise ContainerError(f"{source}: layer '{layer}' blob {blob} is stored twice; hint: "
                         f"{_HINT_CORRUPT}")


def _check_fits(net: Net, blobs: Sequence[tuple[str, int, tuple]], source: str | None) -> None:
    """The stored blobs (layer, index, shape) name layers of the net, leave no index out, and
    fit the shapes the net needs (:func:`~caffe_tucker.analysis.shapes.fit_weights`, on
    placeholders that allocate nothing)."""
    by_layer: dict[str, dict[int, tuple]] = {}
    for layer, blob, shape in blobs:
        by_layer.setdefault(layer, {})[blob] = tuple(shape)
    names = {layer.name for layer in net.layers}
    for layer, stored in by_layer.items():
        loc = where(source, layer=layer)
        if layer not in names:
            _mismatch(f"{loc}blobs for a layer the net does not have", source)
        missing = sorted(set(range(len(stored))) - set(stored))
        if missing:
            _mismatch(f"{loc}blob {max(stored)} is stored but not blob {missing[0]}", source)
    placeholders = net.with_layers(
        layer.with_blobs(np.broadcast_to(np.float32(0), shape)
                         for _, shape in sorted(by_layer.get(layer.name, {}).items()))
        for layer in net.layers)
    placeholders = replace(placeholders, weights_source=source or "the packed blobs")
    fit_weights(placeholders, infer_shapes(placeholders), required=True)


def _mismatch(message: str, source: str | None):
    if source is None:
        raise ValueError(message + " (Packed)")
    raise ContainerError(f"{message}; hint: {_HINT_CORRUPT}")


def read_container(path) -> Packed:
    """Read the ``.ctz`` container ``path`` (:func:`unpack_bytes`; OS errors as one line)."""
    return unpack_bytes(read_bytes(path, ".ctz container"), str(path))


# --- decoding and sizes --------------------------------------------------------------------------

def caffemodel_net(packed: Packed) -> Net:
    """The net with every blob: quantized ones decoded by
    :func:`~caffe_tucker.quantize.codebook.decode` (bit for bit), raw ones as stored, fitted to
    the shapes the net needs; ``caffe_tucker.io.emit.caffemodel_chunks`` of it is a plain
    ``.caffemodel``.

    Raises
    ------
    WeightsMismatchError
        The blobs do not fit the net, or a decoded value is not finite.
    """
    blobs: dict[str, dict[int, np.ndarray]] = {}
    for q in packed.quantized:
        blobs.setdefault(q.layer, {})[int(q.blob)] = decode(q)
    for (layer, blob), array in packed.raw.items():
        blobs.setdefault(layer, {})[int(blob)] = np.asarray(array, dtype=np.float32)
    net = packed.net.with_layers(
        layer.with_blobs(b for _, b in sorted(blobs.get(layer.name, {}).items()))
        for layer in packed.net.layers)
    net = fit_weights(net, infer_shapes(net), required=True)
    check_finite(net)
    return net


def container_sizes(packed) -> dict:
    """Bytes per part of the container of ``packed`` (a :class:`Packed`, or the bytes of a
    container, read without decompressing), for reports.

    Returns
    -------
    dict
        ``{"total", "preamble", "header", "net", "raw", "trailer"}`` in bytes (they add up to
        ``total`` with the quantized blobs' codebooks and symbols), ``"raw_values"`` (float32
        values stored raw), and ``"quantized"``: one ``{"layer", "blob", "weights", "k",
        "codebook", "symbols", "bits_per_weight"}`` per quantized blob, in the net's order, with
        ``"nonzero"`` and ``"bits_per_nonzero"`` (codebook and symbols per non-pruned weight;
        None when all are pruned) where a :class:`Packed` is given.
    """
    if isinstance(packed, Packed):
        header, sections = _layout(packed)
        head = len(_header_bytes(header))
        nonzero = {(q.layer, int(q.blob)): q.nonzero for q in packed.quantized}
    else:
        header, _ = _read_header(packed, "<bytes>")
        head = _PREAMBLE.unpack_from(packed)[3]
        nonzero = None
    rows = []
    for q in header["quantized"]:
        n = math.prod(q["shape"])
        stored = q["codebook"]["length"] + q["symbols"]["length"]
        row = {"layer": q["layer"], "blob": q["blob"], "weights": n, "k": q["k"],
               "codebook": q["codebook"]["length"], "symbols": q["symbols"]["length"],
               "bits_per_weight": 8 * stored / n if n else None}
        if nonzero is not None:
            nz = nonzero[(q["layer"], q["blob"])]
            row.update(nonzero=nz, bits_per_nonzero=8 * stored / nz if nz else None)
        rows.append(row)
    sizes = {"preamble": _PREAMBLE.size, "header": head, "net": header["net"]["length"],
             "raw": header["raw"]["length"], "trailer": _TRAILER,
             "raw_values": sum(math.prod(b["shape"]) for b in header["raw"]["blobs"]),
             "quantized": rows}
    sizes["total"] = (sizes["preamble"] + head + sizes["net"] + sizes["raw"] + _TRAILER
                      + sum(r["codebook"] + r["symbols"] for r in rows))
    return sizes
