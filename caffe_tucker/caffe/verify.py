"""Stage 7a, verify: the compressed net against the original, in real Caffe.

Two comparisons, both run by Caffe itself through :mod:`caffe_tucker.caffe.pycaffe`:

1. **Approximation**: the original and the compressed net on the same inputs
   (random, or images preprocessed as the zoo metadata says): per output
   blob the largest absolute and relative difference and, for classifiers,
   how often the top-1 class and the top-5 set agree.  This measures what
   compression cost; it is reported, not judged.
2. **Decomposition** (PASSED/FAILED): the compressed net must compute exactly
   what the original net computes with each compressed kernel replaced by
   the kernel its factors stand for (its Tucker/SVD reconstruction).  A
   difference beyond float tolerance here is a bug, not approximation.

Both nets and the :class:`~caffe_tucker.compress.record.CompressionRecord`
come from :func:`load_pair`: a ``convert`` output directory (its
``report.json``), or four files (the record is then told from the nets).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np
from PIL import Image

from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.record import CompressionRecord, read_record, record_from_nets
from caffe_tucker.errors import CaffeTuckerError, InputFileError
from caffe_tucker.graph import Net
from caffe_tucker.model import Model, load_model
from caffe_tucker.zoo import zoo_model

__all__ = ["BlobComparison", "VerifyResult", "NetPair", "load_pair", "verify",
           "reconstructed_original", "load_images", "compare_outputs", "net_outputs",
           "DECOMPOSITION_TOLERANCE"]

#: The decomposition check fails beyond this relative difference.
DECOMPOSITION_TOLERANCE = 1e-4


@dataclass(frozen=True, eq=False)
class NetPair:
    """An original net, its compressed version, and the record that links them."""

    original: Model
    compressed: Model
    record: CompressionRecord
    out_dir: Path | None = None

    @property
    def preprocess(self) -> dict | None:
        """The zoo model's preprocessing, when the record names a zoo preset."""
        preset = self.record.preset
        if preset in ("auto", "unknown") or not preset:
            return None
        return zoo_model(preset).get("preprocess")


def load_pair(paths) -> NetPair:
    """``[out_dir]`` or ``[orig.prototxt, orig.caffemodel, new.prototxt, new.caffemodel]``."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        out = paths[0]
        record = read_record(out)
        compressed = load_model(out / "deploy.prototxt", out / "weights.caffemodel")
        if record.source_prototxt is None or record.source_weights is None:
            raise InputFileError(f"{out / 'report.json'}: names no source net; hint: give the four "
                                 "files instead")
        original = load_model(record.source_prototxt, record.source_weights, deploy=True,
                              data_shapes=dict(compressed.shapes.inputs))
        return NetPair(original, compressed, record, out)
    if len(paths) == 4:
        compressed = load_model(paths[2], paths[3])
        original = load_model(paths[0], paths[1], deploy=True,
                              data_shapes=dict(compressed.shapes.inputs))
        return NetPair(original, compressed, record_from_nets(original, compressed))
    raise CaffeTuckerError(f"verify and bench take an output directory or four files (original "
                           f"prototxt and caffemodel, compressed prototxt and caffemodel), got "
                           f"{len(paths)}")


@dataclass(frozen=True)
class BlobComparison:
    blob: str
    shape: tuple
    max_abs: float
    max_rel: float          # max |a - b| / max |a|
    top1: float | None      # fraction of samples whose argmax agrees (classifier outputs)
    top5: float | None      # fraction whose reference top-1 is in the other's top-5

    def to_dict(self) -> dict:
        return {"blob": self.blob, "shape": list(self.shape), "max_abs": self.max_abs,
                "max_rel": self.max_rel, "top1_agreement": self.top1,
                "top5_agreement": self.top5}


@dataclass(frozen=True)
class VerifyResult:
    approximation: tuple[BlobComparison, ...]
    decomposition: tuple[BlobComparison, ...]
    compressed_layers: tuple[str, ...]
    inputs: dict
    passed: bool

    def to_dict(self) -> dict:
        return {"passed": self.passed, "tolerance": DECOMPOSITION_TOLERANCE,
                "compressed_layers": list(self.compressed_layers),
                "inputs": {k: list(v) for k, v in self.inputs.items()},
                "approximation": [c.to_dict() for c in self.approximation],
                "decomposition": [c.to_dict() for c in self.decomposition]}


def _is_classifier(a: np.ndarray) -> bool:
    flat = a.reshape(a.shape[0], -1)
    return a.ndim >= 2 and flat.shape[1] > 1 and prod(a.shape[2:]) == 1


def compare_outputs(reference: dict, other: dict) -> tuple[BlobComparison, ...]:
    """Compare blob by blob (same names); classifier outputs also get top-1/top-5 agreement."""
    out = []
    for name, a in reference.items():
        b = other[name].reshape(a.shape)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        max_abs = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        scale = float(np.max(np.abs(a64))) if a.size else 0.0
        top1 = top5 = None
        if _is_classifier(a):
            fa, fb = a64.reshape(a.shape[0], -1), b64.reshape(b.shape[0], -1)
            ref1 = fa.argmax(axis=1)
            top1 = float(np.mean(ref1 == fb.argmax(axis=1)))
            k = min(5, fb.shape[1])
            top5b = np.argsort(-fb, axis=1, kind="stable")[:, :k]
            top5 = float(np.mean([ref1[i] in top5b[i] for i in range(len(ref1))]))
        out.append(BlobComparison(blob=name, shape=tuple(a.shape), max_abs=max_abs,
                                  max_rel=max_abs / scale if scale > 0 else max_abs,
                                  top1=top1, top5=top5))
    return tuple(out)


def reconstructed_original(pair: NetPair) -> Net:
    """The original net with each compressed layer's kernel replaced by its reconstruction."""
    original, compressed = pair.original, pair.compressed.net
    rows = {r.name: r for r in pair.record.compressed}
    layers = []
    for layer in original.net.layers:
        r = rows.get(layer.name)
        if r is None:
            layers.append(layer)
            continue
        new = [compressed.layer(n) for n in r.new_layers]
        geometry = original.shapes.layers[layer.name].geometry
        group = geometry.group if geometry is not None else 1
        kernel = get_method(r.method).kernel_from_blobs([l.blobs for l in new], group)
        layers.append(layer.with_blobs((kernel.reshape(layer.blobs[0].shape).astype(np.float32),)
                                       + tuple(layer.blobs[1:])))
    return original.net.with_layers(layers)


def load_images(directory, shape: tuple, preprocess: dict | None, limit: int | None = None) -> np.ndarray:
    """Images of a directory as a Caffe input batch (N, C, H, W), preprocessed like the zoo model.

    Each image is resized so its shorter side is ``preprocess['resize']`` (or
    the crop size), center-cropped to the net's H×W, converted to BGR (Caffe's
    channel order; grayscale for one-channel nets), mean-subtracted and scaled.
    """
    paths = sorted(p for p in Path(directory).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm"))
    if not paths:
        raise InputFileError(f"{directory}: no images (.jpg, .png, .bmp, .ppm, .pgm) found")
    paths = paths[:limit] if limit else paths
    pre = preprocess or {}
    _, c, h, w = shape
    resize = pre.get("resize") or max(h, w)
    batch = []
    for p in paths:
        img = Image.open(p).convert("L" if c == 1 else "RGB")
        scale = resize / min(img.size)
        img = img.resize((max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))),
                         Image.BILINEAR)
        left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
        arr = np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.float32)
        arr = arr[None] if c == 1 else arr[:, :, ::-1].transpose(2, 0, 1)
        if pre.get("mean_bgr") and c == 3:
            arr = arr - np.asarray(pre["mean_bgr"], dtype=np.float32)[:, None, None]
        arr = arr * float(pre.get("scale") or 1.0)
        batch.append(arr)
    return np.stack(batch)


def verify(runtime, pair: NetPair, images=None, random: int = 2, seed: int = 0) -> VerifyResult:
    """Run both comparisons in Caffe; see the module docstring."""
    o_shapes, c_shapes = pair.original.shapes, pair.compressed.shapes
    if set(o_shapes.inputs) != set(c_shapes.inputs):
        raise CaffeTuckerError(f"the nets have different inputs: {sorted(o_shapes.inputs)} vs "
                               f"{sorted(c_shapes.inputs)}")
    for name, shape in o_shapes.inputs.items():
        if tuple(c_shapes.inputs[name]) != tuple(shape):
            raise CaffeTuckerError(f"input '{name}' is {list(shape)} in the original but "
                                   f"{list(c_shapes.inputs[name])} in the compressed net")
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in o_shapes.inputs.items():
        if images is not None and not inputs:
            inputs[name] = load_images(images, tuple(shape), pair.preprocess)
        else:
            inputs[name] = rng.standard_normal((random,) + tuple(shape[1:])).astype(np.float32)
    outputs = net_outputs(pair.original.net)
    ref = runtime.forward(pair.original.net, None, inputs, blobs=outputs)
    got = runtime.forward(pair.compressed.net, None, inputs, blobs=outputs)
    recon = runtime.forward(reconstructed_original(pair), None, inputs, blobs=outputs)
    approximation = compare_outputs(ref, got)
    decomposition = compare_outputs(recon, got)
    passed = all(c.max_rel <= DECOMPOSITION_TOLERANCE for c in decomposition)
    return VerifyResult(approximation=approximation, decomposition=decomposition,
                        compressed_layers=tuple(r.name for r in pair.record.compressed),
                        inputs={k: v.shape for k, v in inputs.items()}, passed=passed)


def net_outputs(net: Net) -> list[str]:
    """Blobs produced and never consumed (Caffe's net outputs)."""
    consumed, produced = set(), []
    for layer in net.layers:
        consumed.update(b for b in layer.bottoms if b not in layer.tops)
        produced.extend(t for t in layer.tops if t not in produced)
    return [b for b in produced if b not in consumed]
