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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from caffe_tucker.compress.decompose import kernel_from_new_layers
from caffe_tucker.errors import CaffeTuckerError, InputFileError
from caffe_tucker.graph import Net
from caffe_tucker.io.read import read_net
from caffe_tucker.compress.rewrite import new_layer_names
from caffe_tucker.analysis.shapes import fit_weights, infer_shapes
from caffe_tucker.compress.finetune_files import deploy_from_train_val, is_train_val

__all__ = ["BlobComparison", "VerifyResult", "verify", "reconstructed_original", "load_images",
           "compare_outputs", "resolve_verify_args"]

#: The decomposition check fails beyond this relative difference.
DECOMPOSITION_TOLERANCE = 1e-4


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


def reconstructed_original(original: Net, compressed: Net, report: dict) -> Net:
    """The original net with each compressed layer's kernel replaced by its reconstruction."""
    methods = {r["name"]: r["method"] for r in report["layers"] if r.get("skipped_reason") is None}
    orig_shapes = infer_shapes(original)
    layers = []
    for layer in original.layers:
        method = methods.get(layer.name)
        if method is None:
            layers.append(layer)
            continue
        new = [compressed.layer(n) for n in new_layer_names(layer.name, method)]
        group = orig_shapes.layers[layer.name].geometry.group if layer.type == "Convolution" else 1
        kernel = kernel_from_new_layers(method, [l.blobs for l in new], group)
        layers.append(layer.with_blobs((kernel.reshape(layer.blobs[0].shape).astype(np.float32),)
                                       + tuple(layer.blobs[1:])))
    return original.with_layers(layers)


def load_images(directory, shape: tuple, preprocess: dict | None, limit: int | None = None) -> np.ndarray:
    """Images of a directory as a Caffe input batch (N, C, H, W), preprocessed like the zoo model.

    Each image is resized so its shorter side is ``preprocess['resize']`` (or
    the crop size), center-cropped to the net's H×W, converted to BGR (Caffe's
    channel order; grayscale for one-channel nets), mean-subtracted and scaled.
    """
    from PIL import Image

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


def resolve_verify_args(paths: list[str]) -> tuple:
    """``[out_dir]`` or ``[orig.prototxt, orig.caffemodel, new.prototxt, new.caffemodel]``
    -> (orig_proto, orig_weights, new_proto, new_weights, report or None, preset)."""
    if len(paths) == 1:
        out = Path(paths[0])
        report_path = out / "report.json"
        if not report_path.is_file():
            raise InputFileError(f"{out}: not a convert output directory (no report.json); hint: "
                                 "give the four files instead")
        report = json.loads(report_path.read_text())
        src = report["source"]
        return (src["prototxt"], src["weights"], out / "deploy.prototxt",
                out / "weights.caffemodel", report, report.get("preset"))
    if len(paths) == 4:
        return (*paths, None, None)
    raise CaffeTuckerError(f"verify takes an output directory or four files (original prototxt and "
                           f"caffemodel, compressed prototxt and caffemodel), got {len(paths)}")


def _report_from_nets(original: Net, compressed: Net) -> dict:
    """For four-file verify: which layers were compressed, told by the new layers' names."""
    names = {l.name for l in compressed.layers}
    rows = []
    for layer in original.layers:
        if layer.name in names or f"{layer.name}_tk2" not in names:
            continue
        if f"{layer.name}_tk3" in names:
            method = "tucker2"
        else:
            method = "svd" if layer.type == "InnerProduct" else "tucker1"
        rows.append({"name": layer.name, "method": method, "skipped_reason": None})
    return {"layers": rows}


def verify(runtime, orig_proto, orig_weights, new_proto, new_weights, report: dict | None = None,
           images=None, random: int = 2, seed: int = 0, preprocess: dict | None = None) -> VerifyResult:
    """Run both comparisons in Caffe; see the module docstring."""
    original = read_net(orig_proto, orig_weights).for_state("TEST")
    compressed = read_net(new_proto, new_weights).for_state("TEST")
    c_shapes = infer_shapes(compressed)
    if is_train_val(original):  # convert was given a train_val: compare its deploy
        original = deploy_from_train_val(original, infer_shapes(original, dict(c_shapes.inputs)))
    o_shapes = infer_shapes(original)
    original, compressed = fit_weights(original, o_shapes), fit_weights(compressed, c_shapes)
    if set(o_shapes.inputs) != set(c_shapes.inputs):
        raise CaffeTuckerError(f"the nets have different inputs: {sorted(o_shapes.inputs)} vs "
                               f"{sorted(c_shapes.inputs)}")
    for name, shape in o_shapes.inputs.items():
        if tuple(c_shapes.inputs[name]) != tuple(shape):
            raise CaffeTuckerError(f"input '{name}' is {list(shape)} in the original but "
                                   f"{list(c_shapes.inputs[name])} in the compressed net")
    report = report or _report_from_nets(original, compressed)
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in o_shapes.inputs.items():
        if images is not None and not inputs:
            inputs[name] = load_images(images, tuple(shape), preprocess)
        else:
            inputs[name] = rng.standard_normal((random,) + tuple(shape[1:])).astype(np.float32)
    outputs = _net_outputs(original)
    ref = runtime.forward(original, None, inputs, blobs=outputs)
    got = runtime.forward(compressed, None, inputs, blobs=outputs)
    recon = runtime.forward(reconstructed_original(original, compressed, report), None, inputs,
                            blobs=outputs)
    approximation = compare_outputs(ref, got)
    decomposition = compare_outputs(recon, got)
    passed = all(c.max_rel <= DECOMPOSITION_TOLERANCE for c in decomposition)
    compressed_layers = tuple(r["name"] for r in report["layers"] if r.get("skipped_reason") is None)
    return VerifyResult(approximation=approximation, decomposition=decomposition,
                        compressed_layers=compressed_layers,
                        inputs={k: v.shape for k, v in inputs.items()}, passed=passed)


def _net_outputs(net: Net) -> list[str]:
    """Blobs produced and never consumed (Caffe's net outputs)."""
    consumed, produced = set(), []
    for layer in net.layers:
        consumed.update(b for b in layer.bottoms if b not in layer.tops)
        produced.extend(t for t in layer.tops if t not in produced)
    return [b for b in produced if b not in consumed]
