"""Stage 7a, verify: the compressed net against the original, in real Caffe.

Two checks, both run by Caffe itself through :mod:`caffe_tucker.caffe.pycaffe`:

1. **Approximation** (measured): the original and the compressed net on the
   same inputs (random, or images preprocessed as the zoo metadata says): per
   output blob the largest absolute and relative difference and, for
   classifiers, how often the top-1 class and the top-5 set agree.  This
   measures what compression (and fine-tuning) cost; it is reported, not
   judged.
2. **Decomposition** (passed/failed): the compressed net must compute exactly
   what the original net computes with each compressed kernel replaced by
   the kernel its factors stand for (its Tucker/SVD reconstruction).  A
   difference beyond float tolerance here is a bug, not approximation.  It
   does not apply to fine-tuned weights (``tuned``): fine-tuning rightly
   changes the factors, which then reconstruct no kernel of the original.

Both nets and the :class:`~caffe_tucker.compress.record.CompressionRecord`
come from :func:`load_pair`: a ``convert`` output directory (its
``report.json``; with ``tuned``, its ``finetuned.caffemodel``), or four files
(the record is then told from the nets).  What ran, and how it came out, is
a :class:`Check` per :class:`CheckKind` in the :class:`VerifyResult`.

Before anything is allocated, the memory the inputs and Caffe's blobs will
take is estimated (:func:`forward_bytes`) and refused above
:func:`caffe_tucker.analysis.validate.memory_limit`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np
from PIL import Image

from caffe_tucker.analysis.subnet import BVLC_LAYER_TYPES, describe_cut, runnable_subnet
from caffe_tucker.analysis.validate import check_allocation
from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.record import CompressionRecord, read_record, record_from_nets
from caffe_tucker.errors import CaffeTuckerError, InputFileError
from caffe_tucker.graph import Net, net_outputs
from caffe_tucker.model import Model, load_model
from caffe_tucker.zoo import zoo_model

__all__ = ["BlobComparison", "Check", "CheckKind", "Status", "VerifyResult", "NetPair",
           "load_pair", "verify", "reconstructed_original", "image_files", "load_images",
           "compare_outputs", "net_outputs", "forward_bytes", "verify_passes",
           "DECOMPOSITION_TOLERANCE", "TUNED_WEIGHTS"]

#: The decomposition check fails beyond this relative difference.
DECOMPOSITION_TOLERANCE = 1e-4

#: The weights ``finetune`` writes into a convert output directory.
TUNED_WEIGHTS = "finetuned.caffemodel"


@dataclass(frozen=True, eq=False)
class NetPair:
    """An original net, its compressed version, and the record that links them.

    ``tuned`` says that the compressed net's weights are fine-tuned ones
    (``compressed.weights`` names the file), so its factors are not expected
    to reconstruct the original's kernels.
    """

    original: Model
    compressed: Model
    record: CompressionRecord
    out_dir: Path | None = None
    tuned: bool = False

    @property
    def preprocess(self) -> dict | None:
        """The zoo model's preprocessing, when the record names a zoo preset."""
        preset = self.record.preset
        if preset in ("auto", "unknown") or not preset:
            return None
        return zoo_model(preset).get("preprocess")


def load_pair(paths, tuned: bool = False) -> NetPair:
    """``[out_dir]`` or ``[orig.prototxt, orig.caffemodel, new.prototxt, new.caffemodel]``.

    With ``tuned``, the compressed weights are ``out_dir/finetuned.caffemodel``
    (directory form) or the given ``new.caffemodel``, and are taken as fine-tuned.

    Raises
    ------
    CaffeTuckerError
        One line, when the files are not an original net and its compressed
        version: missing files, weights that do not fit, different inputs, or
        an original layer the compressed net neither has nor replaces.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        out = paths[0]
        if not out.is_dir():
            what = "it is a file" if out.exists() else "no such directory"
            raise InputFileError(f"{out}: not a convert output directory ({what}); hint: pass "
                                 "the output directory of 'convert', or the four files")
        record = read_record(out)
        weights = out / (TUNED_WEIGHTS if tuned else "weights.caffemodel")
        if tuned and not weights.is_file():
            raise InputFileError(f"{weights}: missing, so there are no fine-tuned weights to "
                                 f"verify; hint: run 'finetune {out}' first, or leave out --tuned")
        compressed = load_model(out / "deploy.prototxt", weights)
        if record.source_prototxt is None or record.source_weights is None:
            raise InputFileError(f"{out / 'report.json'}: names no source net; hint: give the four "
                                 "files instead")
        original = load_model(record.source_prototxt, record.source_weights, deploy=True,
                              data_shapes=dict(compressed.shapes.inputs))
        _check_pair(original, compressed, record)
        return NetPair(original, compressed, record, out, tuned)
    if len(paths) == 4:
        compressed = load_model(paths[2], paths[3])
        original = load_model(paths[0], paths[1], deploy=True,
                              data_shapes=dict(compressed.shapes.inputs))
        record = record_from_nets(original, compressed)
        _check_pair(original, compressed, record)
        return NetPair(original, compressed, record, tuned=tuned)
    raise CaffeTuckerError(f"verify and bench take an output directory or four files (original "
                           f"prototxt and caffemodel, compressed prototxt and caffemodel), got "
                           f"{len(paths)}")


def _check_pair(original: Model, compressed: Model, record: CompressionRecord) -> None:
    """Refuse two nets that are not an original and its compressed version (one line)."""
    o_in, c_in = original.shapes.inputs, compressed.shapes.inputs
    hint = ("hint: give the original net and its compressed version (the deploy.prototxt and a "
            "caffemodel of one convert output directory)")
    if set(o_in) != set(c_in):
        raise CaffeTuckerError(f"{compressed.prototxt}: the nets have different inputs: "
                               f"{sorted(o_in)} in the original {original.prototxt}, "
                               f"{sorted(c_in)} in the compressed net; {hint}")
    for name, shape in o_in.items():
        if tuple(c_in[name][1:]) != tuple(shape[1:]):  # the batch is verify's and bench's own
            raise CaffeTuckerError(f"{compressed.prototxt}: input '{name}' is {list(shape)} in "
                                   f"the original {original.prototxt} but {list(c_in[name])} in "
                                   f"the compressed net; {hint}")
    replaced = {r.name: r for r in record.compressed}
    present = {l.name: l for l in compressed.net.layers}
    for layer in original.net.layers:
        r = replaced.get(layer.name)
        if r is not None:
            missing = [n for n in r.new_layers if n not in present]
            if missing:
                raise CaffeTuckerError(f"{compressed.prototxt}: layer '{missing[0]}', which "
                                       f"replaces '{layer.name}' of the original, is missing; "
                                       f"{hint}")
            continue
        other = present.get(layer.name)
        if other is None:
            raise CaffeTuckerError(f"{compressed.prototxt}: layer '{layer.name}' of the original "
                                   f"{original.prototxt} is neither in the compressed net nor "
                                   f"replaced by {layer.name}_tk1... layers; {hint}")
        if other.type != layer.type:
            raise CaffeTuckerError(f"{compressed.prototxt}: layer '{layer.name}' is a "
                                   f"{other.type} here but a {layer.type} in the original "
                                   f"{original.prototxt}; {hint}")


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


class CheckKind(enum.Enum):
    """The two checks of :func:`verify` (see the module docstring)."""

    APPROXIMATION = "approximation"
    DECOMPOSITION = "decomposition"


class Status(enum.Enum):
    """How a check came out."""

    MEASURED = "measured"                  # reported, not judged (the approximation)
    PASSED = "passed"
    FAILED = "failed"
    NOT_APPLICABLE = "not applicable"      # did not run (the decomposition of tuned weights)


@dataclass(frozen=True)
class Check:
    """One check: what it compared (one row per output blob) and how it came out."""

    kind: CheckKind
    status: Status
    comparisons: tuple[BlobComparison, ...] = ()
    reason: str | None = None              # why a check is not applicable

    def to_dict(self) -> dict:
        return {"check": self.kind.value, "status": self.status.value, "reason": self.reason,
                "comparisons": [c.to_dict() for c in self.comparisons]}


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` ran and found.

    ``checks`` holds one :class:`Check` per :class:`CheckKind`, in that order;
    ``weights`` is the compressed net's caffemodel and ``tuned`` whether it was
    taken as fine-tuned.
    """

    checks: tuple[Check, ...]
    compressed_layers: tuple[str, ...]
    inputs: dict
    weights: Path | None = None
    tuned: bool = False
    part: str | None = None     # which part of the net ran, when the runtime cannot run it all

    def check(self, kind: CheckKind) -> Check:
        return next(c for c in self.checks if c.kind is kind)

    @property
    def approximation(self) -> tuple[BlobComparison, ...]:
        return self.check(CheckKind.APPROXIMATION).comparisons

    @property
    def decomposition(self) -> tuple[BlobComparison, ...]:
        """The decomposition check's comparisons (none when it did not apply)."""
        return self.check(CheckKind.DECOMPOSITION).comparisons

    @property
    def verdict(self) -> Status:
        """FAILED when a check failed, else PASSED when one passed, else MEASURED (nothing was
        judged: the decomposition check did not apply)."""
        statuses = {c.status for c in self.checks}
        for status in (Status.FAILED, Status.PASSED):
            if status in statuses:
                return status
        return Status.MEASURED

    @property
    def passed(self) -> bool:
        """No check failed."""
        return self.verdict is not Status.FAILED

    def rows(self) -> list[dict]:
        """One report row per check and output blob (``check``, ``result`` and
        :meth:`BlobComparison.to_dict`'s keys); a check that did not apply is one row."""
        label = {CheckKind.APPROXIMATION: "vs original",
                 CheckKind.DECOMPOSITION: "vs reconstruction"}
        rows = []
        for check in self.checks:
            if check.status is Status.NOT_APPLICABLE:
                rows.append({"check": label[check.kind], "result": "not applicable (fine-tuned)"})
                continue
            for c in check.comparisons:
                if check.kind is CheckKind.APPROXIMATION:
                    outcome = Status.MEASURED.value
                else:
                    outcome = "passed" if c.max_rel <= DECOMPOSITION_TOLERANCE else "FAILED"
                rows.append({"check": label[check.kind], "result": outcome, **c.to_dict()})
        return rows

    def verdict_line(self) -> str:
        """The verdict in words, and what was checked."""
        if self.verdict is Status.FAILED:
            worst = max(c.max_rel for c in self.decomposition)
            return (f"FAILED: the compressed net does not compute its own decomposition (max rel. "
                    f"difference {worst:.3g} > {DECOMPOSITION_TOLERANCE:g}: a bug, not "
                    "approximation; if the weights are fine-tuned, verify them with --tuned)")
        if self.verdict is Status.PASSED:
            return (f"PASSED: the compressed net computes its own decomposition (within "
                    f"{DECOMPOSITION_TOLERANCE:g} relative of the original with reconstructed "
                    "kernels); the approximation above is measured, not judged")
        return (f"MEASURED: fine-tuned weights {self.weights} against the original: approximation "
                "and top-1/top-5 agreement above; the decomposition check does not apply to "
                "fine-tuned weights")

    def to_dict(self) -> dict:
        decomposition = self.check(CheckKind.DECOMPOSITION)
        return {"verdict": self.verdict.value, "passed": self.passed, "tuned": self.tuned,
                "weights": None if self.weights is None else str(self.weights),
                "tolerance": DECOMPOSITION_TOLERANCE,
                "compressed_layers": list(self.compressed_layers), "part": self.part,
                "inputs": {k: list(v) for k, v in self.inputs.items()},
                "checks": {c.kind.value: c.status.value for c in self.checks},
                "approximation": [c.to_dict() for c in self.approximation],
                "decomposition": (None if decomposition.status is Status.NOT_APPLICABLE
                                  else [c.to_dict() for c in decomposition.comparisons])}


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


def image_files(directory) -> list[Path]:
    """The files of an ``--images`` folder, in name order (hidden files and subfolders left out).

    Raises
    ------
    InputFileError
        When the folder is missing, is a file, cannot be read, or holds no files.
    """
    d = Path(directory)
    hint = "hint: --images takes a folder of images (.jpg, .png, .bmp, .ppm, .pgm, ...)"
    if not d.exists():
        raise InputFileError(f"{d}: no such folder; {hint}")
    if not d.is_dir():
        raise InputFileError(f"{d}: is a file, not a folder; {hint}")
    try:
        files = sorted(p for p in d.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError as exc:
        raise InputFileError(f"{d}: cannot list the folder ({exc.strerror or exc})") from None
    if not files:
        raise InputFileError(f"{d}: no images found; {hint}")
    return files


def _read_image(path: Path, mode: str) -> Image.Image:
    """One image decoded in ``mode``, or a one-line error naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    # Pillow's decoders raise many kinds of exception on bad bytes (OSError, SyntaxError,
    # EOFError, struct.error, DecompressionBombError ...): each means this file is not an image.
    except Exception as exc:  # noqa: BLE001
        reason = "not an image Pillow can read" if isinstance(exc, Image.UnidentifiedImageError) \
            else f"{type(exc).__name__}: {exc}"
        raise InputFileError(f"{path}: cannot read it as an image ({reason}); hint: --images "
                             "reads every file of its folder, so move other files out") from None


def load_images(directory, shape: tuple, preprocess: dict | None, limit: int | None = None,
                files: list[Path] | None = None) -> np.ndarray:
    """Images of a directory as a Caffe input batch (N, C, H, W), preprocessed like the zoo model.

    Every file of the folder (:func:`image_files`, or ``files`` when given) must
    be an image.  Each is resized so its shorter side is
    ``preprocess['resize']`` (or the crop size), center-cropped to the net's
    H×W, converted to BGR (Caffe's channel order; grayscale for one-channel
    nets), mean-subtracted and scaled.
    """
    paths = files if files is not None else image_files(directory)
    paths = paths[:limit] if limit else paths
    pre = preprocess or {}
    _, c, h, w = shape
    resize = pre.get("resize") or max(h, w)
    batch = []
    for p in paths:
        img = _read_image(p, "L" if c == 1 else "RGB")
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


def forward_bytes(model: Model, batch: int) -> int:
    """Bytes of every blob Caffe holds for a forward pass of ``batch`` samples (float32; the
    first axis of each blob taken as the batch)."""
    per_sample = sum(prod(shape[1:]) for shape in model.shapes.blobs.values() if shape)
    return 4 * batch * per_sample


def _check_memory(pair: NetPair, batch: int, what: str, hint: str) -> None:
    """Refuse a verify of ``batch`` samples whose inputs and blobs would not fit in memory:
    the inputs (here, and their copy on the way to Caffe) and the larger net's blobs in Caffe
    (one net is loaded at a time)."""
    inputs = 4 * batch * sum(prod(s[1:]) for s in pair.original.shapes.inputs.values())
    nbytes = 2 * inputs + max(forward_bytes(pair.original, batch),
                              forward_bytes(pair.compressed, batch))
    check_allocation(nbytes, what, hint)


def _decomposition(pair: NetPair, runtime, inputs: dict, outputs: list[str], got: dict,
                   progress=None) -> Check:
    if pair.tuned:
        return Check(CheckKind.DECOMPOSITION, Status.NOT_APPLICABLE,
                     reason="fine-tuned weights: fine-tuning changes the factors, so they no "
                     "longer reconstruct the original kernels")
    recon = _forward(runtime, progress, "reconstructed",
                     _runnable(reconstructed_original(pair), runtime).net, inputs, outputs)
    comparisons = compare_outputs(recon, got)
    ok = all(c.max_rel <= DECOMPOSITION_TOLERANCE for c in comparisons)
    return Check(CheckKind.DECOMPOSITION, Status.PASSED if ok else Status.FAILED, comparisons)


# -- issue 14: progress, one step per forward pass in Caffe -------------------------------------
def verify_passes(pair: NetPair) -> int:
    """The forward passes :func:`verify` runs in Caffe: the steps of its ``progress``."""
    return 2 if pair.tuned else 3


def _forward(runtime, progress, what: str, net: Net, inputs: dict, outputs: list[str]) -> dict:
    """``runtime.forward`` of one net, shown as a step of ``progress`` (when given)."""
    if progress is not None:
        progress.set_note(f"{what} net")
    blobs = runtime.forward(net, None, inputs, blobs=outputs)
    if progress is not None:
        progress.update(1, f"{what} net")
    return blobs


def verify(runtime, pair: NetPair, images=None, random: int = 2, seed: int = 0,
           progress=None) -> VerifyResult:
    """Run the checks in Caffe; see the module docstring.

    ``progress`` (a :class:`~caffe_tucker.report.progress.Progress` of :func:`verify_passes`
    steps) advances once per forward pass.

    Raises
    ------
    CaffeTuckerError
        For unreadable ``images``, or inputs whose blobs would need more memory than
        :func:`~caffe_tucker.analysis.validate.memory_limit` allows (checked before anything is
        allocated).
    """
    o_shapes = pair.original.shapes
    files = None
    if images is not None:
        files = image_files(images)
        _check_memory(pair, len(files), f"verify --images {images} ({len(files)} files)",
                      "use a folder with fewer images")
    else:
        _check_memory(pair, random, f"verify --random {random}", "use a smaller --random")
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in o_shapes.inputs.items():
        if files is not None and not inputs:
            inputs[name] = load_images(images, tuple(shape), pair.preprocess, files=files)
        else:
            n = len(files) if files is not None else random
            inputs[name] = rng.standard_normal((n,) + tuple(shape[1:])).astype(np.float32)
    original, compressed, outputs, part = _runnable_pair(pair, runtime)
    ref = _forward(runtime, progress, "original", original, inputs, outputs)
    got = _forward(runtime, progress, "compressed", compressed, inputs, outputs)
    approximation = Check(CheckKind.APPROXIMATION, Status.MEASURED, compare_outputs(ref, got))
    decomposition = _decomposition(pair, runtime, inputs, outputs, got, progress)
    return VerifyResult(checks=(approximation, decomposition),
                        compressed_layers=tuple(r.name for r in pair.record.compressed),
                        inputs={k: v.shape for k, v in inputs.items()},
                        weights=pair.compressed.weights, tuned=pair.tuned, part=part)


def _runnable(net: Net, runtime):
    """The part of ``net`` the runtime can run: all of it, unless it holds layers of Caffe forks
    (:mod:`caffe_tucker.analysis.subnet`); a runtime may name the types it knows
    (``layer_types``), else BVLC Caffe's are assumed."""
    return runnable_subnet(net, getattr(runtime, "layer_types", None) or BVLC_LAYER_TYPES)


def _runnable_pair(pair: NetPair, runtime):
    """Both nets cut to the part the runtime can run, the blobs to compare, and the line saying
    which part that is (None when the whole nets run)."""
    o, c = _runnable(pair.original.net, runtime), _runnable(pair.compressed.net, runtime)
    if o.whole and c.whole:
        return o.net, c.net, net_outputs(o.net), None
    name = getattr(runtime, "runtime_name", None) or "BVLC Caffe"
    if not o.outputs:
        first = o.unknown[0] if o.unknown else (o.dropped[0], "?")
        raise CaffeTuckerError(f"{pair.original.prototxt}: no part of the net runs in {name}: "
                               f"layer '{first[0]}' of type {first[1]} comes first; hint: verify "
                               "needs a runtime that has the net's layers")
    missing = [b for b in o.outputs if b not in {t for l in c.net.layers for t in l.tops}]
    if missing:
        raise CaffeTuckerError(f"{pair.compressed.prototxt}: blob '{missing[0]}', which the "
                               f"original computes in {name}, is not computed by the compressed "
                               "net's runnable part; hint: give the original net and its "
                               "compressed version")
    part = describe_cut(o, len(pair.original.net.layers), name,
                        [r.name for r in pair.record.compressed])
    return o.net, c.net, list(o.outputs), part


