"""Quantizers for a weight blob: dithered uniform (universal), plain uniform and k-means.

Each turns one blob into a :class:`~caffe_tucker.quantize.codebook.QuantizedBlob`; only the kept
weights are quantized (``mask``; by default the weights that are not exactly zero, so a
``sparsify`` output keeps its pattern): the others get symbol 0 and decode to exactly 0.0.
:func:`~caffe_tucker.quantize.codebook.decode` gives the quantized weights back.

- **dithered** (universal quantization, Choi et al. 2018, after Ziv 1985): the encoder adds a
  dither ``u ~ U[-step/2, step/2]``, one draw per kept weight from a seed the decoder knows, and
  rounds: ``k = round((w + u) / step)``; the decoder outputs ``step * k - u``.  Whatever the
  weights' distribution, the error ``w_hat - w`` is then uniform on ``[-step/2, step/2]`` and
  independent of ``w`` (Schuchman's condition holds for a uniform dither of one step; Gray &
  Stockham 1993), which is what lets one step and one entropy coder serve every layer.  The
  dither's seed is derived from ``seed``, the layer's name and the blob index
  (:func:`dither_seed`), so layers draw different dithers, and is stored in the record.
- **uniform**: ``k = round(w / step)``, decoded ``step * k``; the error is at most ``step/2``
  but depends on ``w``.
- **kmeans**: Lloyd's algorithm on the kept weights (one dimension), ``K = 2**bits - 1``
  centroids initialised evenly over ``[min, max]`` (Han et al.'s "linear" initialisation, which
  keeps the few large weights represented), until no weight changes cluster or
  :data:`KMEANS_ITERATIONS` rounds; the codebook is the centroids that have weights (float32,
  increasing), each weight mapped to its nearest.

For the uniform quantizers the grid is ``step * k`` for integer ``k`` (0 is always a level) and
the codebook holds the range of levels used, ``step * [k_min .. k_max]``, so that symbol
``1 + k - k_min`` stands for level ``k``.  The step comes from exactly one of:

- ``step``: given (one step for all layers is the paper's setting);
- ``bits``: the step whose ``L = 2**bits - 1`` cells exactly cover the values the quantizer
  rounds, so that the levels used fit ``L`` codebook entries, ``k in [-m, m]`` with
  ``m = 2**(bits-1) - 1``.  With ``A`` the kept weights' largest magnitude: uniform rounds
  ``w in [-A, A]``, so ``step = 2A / (2**bits - 1)``; dithered rounds ``w + u in [-A - step/2,
  A + step/2]``, so ``step = 2A / (2**bits - 2) = A / m``.  A value exactly at the end of the
  range is a tie between the last level and the next; it goes to the last (error ``step/2``).
  At 2 bits the levels are ``{-2A/3, 0, 2A/3}`` (uniform) and ``{-A, 0, A}`` less the dither;
- ``rel_error``: the step whose RMS error is ``rel_error`` times the RMS of the kept weights
  under the uniform-error model (variance ``step**2 / 12``): ``step = sqrt(12) * rel_error *
  RMS(w)``.  Exact in expectation for the dithered quantizer; for plain uniform quantization
  the model holds at fine steps and overstates the error at coarse ones.

References
----------
Y. Choi, M. El-Khamy and J. Lee, "Universal Deep Neural Network Compression",
arXiv:1802.02271, 2018.
J. Ziv, "On universal quantization", IEEE Trans. Information Theory 31(3), 1985.
R. M. Gray and T. G. Stockham, "Dithered quantizers", IEEE Trans. Information Theory 39(3), 1993.
S. P. Lloyd, "Least squares quantization in PCM", IEEE Trans. Information Theory 28(2), 1982.
S. Han, H. Mao and W. J. Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding", ICLR 2016.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.graph import Net
from caffe_tucker.quantize.codebook import QuantizedBlob, decode, dither, symbol_dtype

__all__ = ["METHODS", "MAX_BITS", "MAX_LEVELS", "KMEANS_ITERATIONS", "QUANTIZED_TYPES",
           "QuantStats", "quantize_blob", "quantize_net", "quantized_layers", "decoded_net",
           "quant_stats", "dither_seed", "step_for_bits", "step_for_rel_error"]

METHODS = ("dithered", "uniform", "kmeans")
MAX_BITS = 16
MAX_LEVELS = 2 ** MAX_BITS - 1        # codebook entries; symbols then fit 16 bits
KMEANS_ITERATIONS = 1000
QUANTIZED_TYPES = ("Convolution", "InnerProduct")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)) and math.isfinite(v))


def dither_seed(seed: int, layer: str, blob: int = 0) -> int:
    """The dither seed of a blob: the first 4 bytes (little-endian) of
    ``sha256(f"{seed}\\0{layer}\\0{blob}")``, a valid ``numpy.random.RandomState`` seed.

    Parameters
    ----------
    seed : int
        The run's seed.
    layer : str
        The layer's name.
    blob : int
        The blob's index in the layer.
    """
    digest = hashlib.sha256(f"{int(seed)}\0{layer}\0{int(blob)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def step_for_bits(max_abs: float, bits: int, method: str) -> float:
    """The step whose ``2**bits - 1`` cells cover the kept weights (``|w| <= max_abs``).

    ``2 * max_abs / (2**bits - 1)`` for ``uniform``, ``2 * max_abs / (2**bits - 2)`` for
    ``dithered`` (whose dither widens the range by a step; see the module docstring); 0.0 when
    ``max_abs`` is 0.
    """
    m = 2 ** (int(bits) - 1) - 1
    return float(max_abs) / (m if method == "dithered" else m + 0.5)


def step_for_rel_error(rms: float, rel_error: float) -> float:
    """``sqrt(12) * rel_error * rms``: the step whose uniform error has RMS ``rel_error * rms``."""
    return math.sqrt(12.0) * float(rel_error) * float(rms)


def _check(method, bits, step, rel_error, seed, owner: str) -> None:
    check_param("method", method, method in METHODS, f"one of {set(METHODS)}", owner)
    given = {n: v for n, v in (("bits", bits), ("step", step), ("rel_error", rel_error))
             if v is not None}
    if len(given) != 1:
        got = ", ".join(f"{n}={v!r}" for n, v in given.items()) or "none of them"
        raise ValueError(f"The 'bits', 'step' and 'rel_error' parameters of {owner} must be "
                         f"given one at a time (exactly one of them). Got {got} instead.")
    low = 1 if method == "kmeans" else 2
    if method == "kmeans":
        check_param("bits", bits, bits is not None and _is_int(bits) and low <= bits <= MAX_BITS,
                    f"an int in [{low}, {MAX_BITS}] for method 'kmeans' (k-means takes a number "
                    "of levels, not a step or an error)", owner)
    elif bits is not None:
        check_param("bits", bits, _is_int(bits) and low <= bits <= MAX_BITS,
                    f"an int in [{low}, {MAX_BITS}]", owner)
    for name, value in (("step", step), ("rel_error", rel_error)):
        if value is not None:
            check_param(name, value, _is_real(value) and value > 0, "a finite float > 0", owner)
    check_param("seed", seed, _is_int(seed) and seed >= 0, "an int >= 0", owner)


def _kept(weights: np.ndarray, mask, owner: str) -> np.ndarray:
    if mask is None:
        return weights != 0
    m = np.asarray(mask)
    if m.shape != weights.shape:
        raise ValueError(f"The 'mask' parameter of {owner} must be a bool array shaped like the "
                         f"weights, {weights.shape}. Got an array of shape {m.shape} instead.")
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biuf" or not np.all((m == 0) | (m == 1)):
            raise ValueError(f"The 'mask' parameter of {owner} must be a bool (or 0/1) array. "
                             f"Got values other than 0 and 1 ({m.dtype}) instead.")
        m = m != 0
    return m


def _nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the increasing ``centroids`` for each value (ties: the lower)."""
    if centroids.size == 1:
        return np.zeros(values.size, dtype=np.int64)
    mids = 0.5 * (centroids[:-1] + centroids[1:])
    return np.searchsorted(mids, values, side="left").astype(np.int64)


def _kmeans(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook float32 increasing, index per value)``: Lloyd from a linear initialisation.

    In one dimension a cluster is an interval of the sorted values, so each round costs a search
    of the ``k - 1`` midpoints and prefix sums, not a pass over the weights.
    """
    v = np.sort(values)
    prefix = np.concatenate([[0.0], np.cumsum(v)])
    centroids = np.linspace(v[0], v[-1], k)
    ends = None
    for _ in range(KMEANS_ITERATIONS):
        # cluster j holds the values in (mid[j-1], mid[j]]: ties go to the lower centroid
        new = np.searchsorted(v, 0.5 * (centroids[:-1] + centroids[1:]), side="right")
        if ends is not None and np.array_equal(new, ends):
            break
        ends = new
        edges = np.concatenate([[0], ends, [v.size]])
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
    edges = np.concatenate([[0], np.searchsorted(v, 0.5 * (centroids[:-1] + centroids[1:]),
                                                  side="right"), [v.size]])
    starts = edges[:-1][np.diff(edges) > 0]
    means = np.add.reduceat(v, starts) / np.diff(np.concatenate([starts, [v.size]]))
    codebook = np.unique(means.astype(np.float32))
    index = _nearest(values, codebook.astype(np.float64))
    used = np.unique(index)                    # float32 rounding can empty a cluster: drop it
    if used.size < codebook.size:
        codebook = codebook[used]
        index = np.searchsorted(used, index)
    return codebook, index


def quantize_blob(layer: str, blob_index: int, weights, *, method: str = "dithered",
                  bits: int | None = None, step: float | None = None,
                  rel_error: float | None = None, seed: int = 0, mask=None) -> QuantizedBlob:
    """Quantize one blob's kept weights; see the module docstring for the three methods.

    Parameters
    ----------
    layer : str
        The layer's name (recorded; it also seeds the dither).
    blob_index : int
        Which blob of the layer (0: the weights).
    weights : array_like
        The blob, any shape; finite.
    method : {"dithered", "uniform", "kmeans"}
    bits, step, rel_error : exactly one
        ``bits``: at most ``2**bits - 1`` codebook entries (1..16; 2..16 for the uniform
        methods); ``step``: the uniform step (uniform methods); ``rel_error``: the target RMS
        error relative to the kept weights' RMS (uniform methods).
    seed : int
        Mixed with the layer name and blob index into the dither seed (:func:`dither_seed`).
    mask : array_like of bool, optional
        True where a weight is kept; default: the weights that are not exactly zero.

    Returns
    -------
    QuantizedBlob
        Symbols (flat, C order, 0 for pruned), codebook (float32), the step (0.0 for k-means)
        and, for ``dithered``, the dither seed.

    References
    ----------
    Y. Choi, M. El-Khamy and J. Lee, "Universal Deep Neural Network Compression",
    arXiv:1802.02271, 2018.
    """
    owner = "quantize_blob"
    _check(method, bits, step, rel_error, seed, owner)
    check_param("layer", layer, isinstance(layer, str), "a str", owner)
    check_param("blob_index", blob_index, _is_int(blob_index) and blob_index >= 0,
                "an int >= 0", owner)
    w = np.asarray(weights)
    if w.dtype.kind not in "biuf":
        raise ValueError(f"The 'weights' parameter of {owner} must be an array of numbers. "
                         f"Got dtype {w.dtype} instead.")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"The 'weights' parameter of {owner} must be finite. Got NaN or "
                         "infinite values instead.")
    keep = _kept(w, mask, owner).reshape(-1)
    values = w.reshape(-1)[keep].astype(np.float32).astype(np.float64)
    shape = tuple(int(d) for d in w.shape)
    record = dict(layer=layer, blob=int(blob_index), shape=shape, method=method)
    symbols = np.zeros(w.size, dtype=np.int64)

    if method == "kmeans":
        if values.size == 0:
            codebook, index = np.zeros(0, np.float32), np.zeros(0, np.int64)
        else:
            codebook, index = _kmeans(values, 2 ** bits - 1)
        symbols[keep] = 1 + index
        return QuantizedBlob(symbols=symbols.astype(symbol_dtype(codebook.size)),
                             codebook=codebook, step=0.0, dither_seed=None, **record)

    if step is None:
        if bits is not None:
            step = step_for_bits(np.abs(values).max() if values.size else 0.0, bits, method)
        else:
            rms = math.sqrt(float(np.mean(values ** 2))) if values.size else 0.0
            step = step_for_rel_error(rms, rel_error)
    step = float(step)
    seed_u = dither_seed(seed, layer, blob_index) if method == "dithered" else None
    if values.size == 0:
        return QuantizedBlob(symbols=symbols.astype(np.uint8), codebook=np.zeros(0, np.float32),
                             step=step, dither_seed=seed_u, **record)
    if step == 0.0:                        # every kept weight is 0.0: one level, no dither
        levels = np.zeros(values.size, dtype=np.int64)
    else:
        x = values
        if seed_u is not None:
            x = values + dither(seed_u, values.size, step).astype(np.float64)
        levels = np.rint(x / step).astype(np.int64)
        if bits is not None:               # a tie at the range's end rounds to even, outside
            m = 2 ** (bits - 1) - 1
            levels = np.clip(levels, -m, m)
    k_min, k_max = int(levels.min()), int(levels.max())
    count = k_max - k_min + 1
    if count > MAX_LEVELS:
        raise CaffeTuckerError(f"layer '{layer}': a step of {step:g} gives {count} levels for "
                               f"weights in [{values.min():g}, {values.max():g}]; at most "
                               f"{MAX_LEVELS} fit; hint: a larger step, or bits")
    codebook = (step * np.arange(k_min, k_max + 1, dtype=np.float64)).astype(np.float32)
    symbols[keep] = 1 + levels - k_min
    return QuantizedBlob(symbols=symbols.astype(symbol_dtype(count)), codebook=codebook,
                         step=step, dither_seed=seed_u, **record)


def quantized_layers(net: Net, names: Sequence[str] | None = None) -> list[str]:
    """The layers to quantize, in net order: ``names``, or every Convolution and InnerProduct
    with weights; a name that is not one of those is refused in one line."""
    have = [layer.name for layer in net.layers if layer.type in QUANTIZED_TYPES and layer.blobs]
    if names is None:
        return have
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in have]
    if unknown:
        raise CaffeTuckerError(f"{net.source or 'the net'}: layer(s) "
                               f"{', '.join(map(repr, unknown))} cannot be quantized (no "
                               f"Convolution or InnerProduct weights); hint: choose among {have}")
    return [n for n in have if n in names]


def quantize_net(net: Net, layers: Sequence[str] | None = None, method: str = "dithered", *,
                 bits: int | None = None, step: float | None = None,
                 rel_error: float | None = None, seed: int = 0,
                 masks: Mapping[str, np.ndarray] | None = None) -> tuple[QuantizedBlob, ...]:
    """Quantize the weights (blob 0) of each of ``layers`` (net order); biases stay float32.

    Parameters
    ----------
    net : Net
        A net with weights.
    layers : sequence of str, optional
        The layers; default every Convolution and InnerProduct with weights.
    method, bits, step, rel_error, seed
        As for :func:`quantize_blob`, the same for every layer (``bits`` and ``rel_error`` give
        each layer its own step; ``step`` one step for all).
    masks : mapping of layer to bool array, optional
        The kept weights of a layer; default its weights that are not exactly zero.

    Returns
    -------
    tuple of QuantizedBlob
        One per layer, in net order.

    References
    ----------
    Y. Choi, M. El-Khamy and J. Lee, "Universal Deep Neural Network Compression",
    arXiv:1802.02271, 2018.
    """
    _check(method, bits, step, rel_error, seed, "quantize_net")
    masks = dict(masks or {})
    names = quantized_layers(net, layers)
    stray = sorted(set(masks) - set(names))
    if stray:
        raise ValueError(f"The 'masks' parameter of quantize_net must name layers that are "
                         f"quantized ({names}). Got {stray} instead.")
    return tuple(quantize_blob(n, 0, net.layer(n).blobs[0], method=method, bits=bits, step=step,
                               rel_error=rel_error, seed=seed, mask=masks.get(n))
                 for n in names)


def decoded_net(net: Net, quantized: Sequence[QuantizedBlob]) -> Net:
    """``net`` with each quantized blob replaced by its decoded weights (float32).

    Raises
    ------
    CaffeTuckerError
        When a record names a layer or blob the net lacks, or its shape differs.
    """
    by_layer: dict = {}
    for q in quantized:
        by_layer.setdefault(q.layer, {})[q.blob] = q
    names = {layer.name for layer in net.layers}
    missing = [n for n in by_layer if n not in names]
    if missing:
        raise CaffeTuckerError(f"{net.source or 'the net'}: no layer {missing[0]!r} for its "
                               "quantized weights")
    layers = []
    for layer in net.layers:
        records = by_layer.get(layer.name)
        if not records:
            layers.append(layer)
            continue
        blobs = list(layer.blobs)
        for i, q in records.items():
            if i >= len(blobs) or tuple(np.shape(blobs[i])) != tuple(q.shape):
                have = tuple(np.shape(blobs[i])) if i < len(blobs) else "no such blob"
                raise CaffeTuckerError(f"layer '{layer.name}': quantized blob {i} has shape "
                                       f"{tuple(q.shape)}; the net's is {have}")
            blobs[i] = decode(q)
        layers.append(layer.with_blobs(blobs))
    return net.with_layers(layers)


@dataclass(frozen=True)
class QuantStats:
    """What quantization did to one blob (a report row).

    Attributes
    ----------
    layer, blob, method
        Which blob, and how it was quantized.
    count : int
        Its weights.
    kept : int
        The non-pruned ones (symbols other than 0).
    levels : int
        Codebook entries in use.
    codebook : int
        Codebook entries.
    step : float
        The uniform step (0.0 for k-means).
    entropy : float
        Empirical entropy of the symbol stream, zeros included, in bits per weight: what an
        ideal entropy coder of independent symbols would spend.
    rel_error : float
        RMS of ``decode(q) - weights`` over the kept weights divided by their RMS (0.0 when
        none are kept or they are all 0).
    """

    layer: str
    blob: int
    method: str
    count: int
    kept: int
    levels: int
    codebook: int
    step: float
    entropy: float
    rel_error: float

    def to_dict(self) -> dict:
        return asdict(self)


def _entropy(symbols: np.ndarray) -> float:
    counts = np.bincount(np.asarray(symbols).reshape(-1).astype(np.int64))
    p = counts[counts > 0] / max(int(counts.sum()), 1)
    return float(max(0.0, -np.sum(p * np.log2(p))))


def quant_stats(q: QuantizedBlob, weights) -> QuantStats:
    """The :class:`QuantStats` of ``q`` against the ``weights`` it was made from."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    sym = np.asarray(q.symbols).reshape(-1)
    kept = sym != 0
    err = decode(q).reshape(-1).astype(np.float64) - w
    ref = float(np.sqrt(np.mean(w[kept] ** 2))) if kept.any() else 0.0
    rel = float(np.sqrt(np.mean(err[kept] ** 2))) / ref if ref > 0 else 0.0
    return QuantStats(layer=q.layer, blob=q.blob, method=q.method, count=int(sym.size),
                      kept=int(kept.sum()), levels=int(np.unique(sym[kept]).size),
                      codebook=int(np.size(q.codebook)), step=float(q.step),
                      entropy=_entropy(sym), rel_error=rel)
