"""Training and test data for ``sparsify``, and the two measures of a model: accuracy and PSNR.

Two sources:

- an ``.npz`` file (numpy, no pickles) with one array per input blob of the train net, all with
  the same first dimension N (the samples): ``data`` (N, C, H, W) and ``label`` (N,) for a
  classifier, ``data`` and ``label`` of the same shape for an image-to-image net;
- a directory of images for super-resolution (Set5, Set14, ...): each image is turned into its
  luminance ``Y`` (ITU-R BT.601 as MATLAB's ``rgb2ycbcr``: ``Y = (16 + 65.481 R + 128.553 G +
  24.966 B) / 255`` for R, G, B in [0, 1]), cropped to a multiple of the scale, shrunk by the
  scale and enlarged back with bicubic interpolation (Pillow's), which gives the net's input;
  the original ``Y`` is the target.  For training, aligned ``patch`` x ``patch`` pieces are cut
  at ``stride``; for testing, whole images.

The minibatch of iteration ``i`` is a pure function of the seed and ``i`` (epoch ``k`` is the
permutation drawn by ``numpy.random.RandomState([seed, k])``), so a resumed run draws exactly the
batches the uninterrupted run would have drawn.

Measures: top-1 accuracy of the first output against integer labels; PSNR
``10 log10(1 / MSE)`` of the output clipped to [0, 1] against the target, with ``shave`` pixels
cut from each border (the scale, by convention), averaged over the images.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from caffe_tucker.errors import InputFileError

__all__ = ["TrainSet", "EvalSet", "load_npz", "load_sets", "train_set_from_npz",
           "eval_set_from_npz", "eval_set_from_arrays", "sr_train_set", "sr_eval_set", "image_files", "luminance", "accuracy", "psnr",
           "METRICS"]

METRICS = ("accuracy", "psnr")
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class TrainSet:
    """Samples to train on: one float32 array per input blob, all with N samples."""

    arrays: Mapping[str, np.ndarray] = field(repr=False)
    source: str = ""

    @property
    def count(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def sample_shapes(self) -> dict:
        return {k: tuple(v.shape[1:]) for k, v in self.arrays.items()}

    def indices(self, iteration: int, batch: int, seed: int) -> np.ndarray:
        """The sample indices of (0-based) ``iteration``'s minibatch of ``batch``."""
        n = self.count
        start = iteration * batch
        out = np.empty(batch, dtype=np.int64)
        got = 0
        while got < batch:
            pos = start + got
            epoch, offset = divmod(pos, n)
            perm = np.random.RandomState([seed, epoch]).permutation(n)
            take = min(batch - got, n - offset)
            out[got:got + take] = perm[offset:offset + take]
            got += take
        return out

    def batch(self, iteration: int, batch: int, seed: int) -> dict:
        idx = self.indices(iteration, batch, seed)
        return {k: v[idx] for k, v in self.arrays.items()}


@dataclass(frozen=True)
class EvalSet:
    """Test items, each one forward: its inputs and the target to measure the output against."""

    items: tuple = field(repr=False)          # ((inputs dict, target ndarray), ...)
    metric: str = "accuracy"
    shave: int = 0
    source: str = ""

    @property
    def count(self) -> int:
        return int(sum(len(t) for _, t in self.items))


def _bad(path, what: str) -> InputFileError:
    return InputFileError(f"{path}: {what}")


def load_npz(path) -> dict:
    """The arrays of an ``.npz`` file (pickles refused), as float32."""
    p = Path(path)
    if not p.exists():
        raise _bad(p, "no such file; give an .npz of arrays or a directory of images")
    if p.is_dir():
        raise _bad(p, "is a directory; an .npz file is expected here")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _bad(p, f"not a readable .npz file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                      "write one with numpy.savez") from None
    if not arrays:
        raise _bad(p, "holds no arrays")
    sizes = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values() or 0 in sizes.values():
        raise _bad(p, f"its arrays must share a first dimension N >= 1 (the samples); got shapes "
                      f"{ {k: list(a.shape) for k, a in arrays.items()} }")
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise _bad(p, f"array {k!r} has dtype {a.dtype}; numbers are expected")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise _bad(p, f"array {k!r} holds NaN or infinite values")
    return {k: a.astype(np.float32) for k, a in arrays.items()}


def load_sets(train_data, test_data, scale: int, patch: int) -> tuple:
    """``(train, test)`` of ``--train-data``/``--test-data``: ``.npz`` files or image folders
    (super-resolution at ``scale``, training patches of ``patch``); ``train_data`` may be None."""
    train = None
    if train_data is not None:
        path = Path(train_data)
        train = sr_train_set(path, scale, patch, patch) if path.is_dir() else train_set_from_npz(path)
    path = Path(test_data)
    return train, sr_eval_set(path, scale) if path.is_dir() else eval_set_from_npz(path)


def eval_set_from_arrays(x: np.ndarray, y: np.ndarray, data: str = "data", chunk: int = 100,
                         metric: str | None = None, shave: int = 0, source: str = "") -> EvalSet:
    """Test items from arrays ``x`` (the net's input) and ``y`` (the truth), ``chunk`` samples a
    forward; the metric defaults to accuracy for one integer class per sample, else PSNR."""
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    if metric is None:
        metric = "accuracy" if y.ndim == 1 or y[0].size == 1 else "psnr"
    if metric == "accuracy" and not np.all(y == np.round(y)):
        raise _bad(source, "the labels must be integer class indices for accuracy")
    items = tuple(({data: x[i:i + chunk]}, y[i:i + chunk]) for i in range(0, len(x), chunk))
    return EvalSet(items, metric, shave, source)


def train_set_from_npz(path) -> TrainSet:
    return TrainSet(load_npz(path), str(path))


def eval_set_from_npz(path, data: str = "data", label: str = "label", chunk: int = 100,
                      metric: str | None = None, shave: int = 0) -> EvalSet:
    """Test items from an ``.npz`` with ``data`` and ``label`` arrays, ``chunk`` samples a forward.

    The metric defaults to accuracy when ``label`` is one integer class per sample, PSNR when it
    has the shape of an image.
    """
    arrays = load_npz(path)
    for key in (data, label):
        if key not in arrays:
            raise _bad(path, f"has no array {key!r} (it has {sorted(arrays)}); a test set needs "
                             f"'{data}' (the net's input) and '{label}' (the truth)")
    return eval_set_from_arrays(arrays[data], arrays[label], data, chunk, metric, shave, str(path))


# -- super-resolution images -------------------------------------------------------------------

def image_files(directory) -> list:
    d = Path(directory)
    if not d.is_dir():
        raise _bad(d, "not a directory of images")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise _bad(d, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image (H, W, 3) in [0, 255] as MATLAB's rgb2ycbcr, in [0, 1]."""
    rgb = np.asarray(rgb, dtype=np.float64) / 255.0
    if rgb.ndim == 2:
        return rgb
    return (16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _read_y(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im
            return luminance(np.asarray(im))
    except (UnidentifiedImageError, OSError) as exc:
        raise _bad(path, f"cannot read the image ({exc})") from None


def _resize(y: np.ndarray, size: tuple) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(y.astype(np.float32), mode="F")
    return np.asarray(im.resize(size, Image.BICUBIC), dtype=np.float64)


def _pair(path: Path, scale: int) -> tuple:
    y = _read_y(path)
    h, w = (y.shape[0] // scale) * scale, (y.shape[1] // scale) * scale
    if h < 2 * scale or w < 2 * scale:
        raise _bad(path, f"is {y.shape[1]}x{y.shape[0]}; too small for scale {scale}")
    y = y[:h, :w]
    low = _resize(y, (w // scale, h // scale))
    up = _resize(low, (w, h))
    return up.astype(np.float32), y.astype(np.float32)


def sr_eval_set(directory, scale: int, data: str = "data") -> EvalSet:
    """Whole images of ``directory``: bicubic ``Y`` in, true ``Y`` as target, PSNR shaved by scale."""
    items = []
    for path in image_files(directory):
        x, y = _pair(path, scale)
        items.append(({data: x[None, None]}, y[None, None]))
    return EvalSet(tuple(items), "psnr", scale, str(directory))


def sr_train_set(directory, scale: int, patch: int = 41, stride: int = 41, data: str = "data",
                 label: str = "label") -> TrainSet:
    """``patch`` x ``patch`` pieces of every image (input and target aligned) cut at ``stride``."""
    xs, ys = [], []
    for path in image_files(directory):
        x, y = _pair(path, scale)
        for i in range(0, x.shape[0] - patch + 1, stride):
            for j in range(0, x.shape[1] - patch + 1, stride):
                xs.append(x[i:i + patch, j:j + patch])
                ys.append(y[i:i + patch, j:j + patch])
    if not xs:
        raise _bad(directory, f"no image is {patch}x{patch} or larger")
    return TrainSet({data: np.stack(xs)[:, None], label: np.stack(ys)[:, None]}, str(directory))


# -- measures -----------------------------------------------------------------------------------

def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``scores`` (N, K, ...) against integer ``labels`` (N,)."""
    s = np.asarray(scores).reshape(len(labels), -1)
    return float(np.mean(np.argmax(s, axis=1) == np.asarray(labels).reshape(-1).astype(np.int64)))


def psnr(output: np.ndarray, target: np.ndarray, shave: int = 0) -> float:
    """PSNR in dB of ``output`` clipped to [0, 1] against ``target`` (both H x W at the end)."""
    o = np.clip(np.asarray(output, dtype=np.float64), 0.0, 1.0)
    t = np.asarray(target, dtype=np.float64)
    if shave:
        o = o[..., shave:-shave, shave:-shave]
        t = t[..., shave:-shave, shave:-shave]
    mse = float(np.mean((o - t) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
