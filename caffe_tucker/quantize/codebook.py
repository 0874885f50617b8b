"""The quantized form of one weight blob, shared by the quantizers, the fine-tuning and the container.

A :class:`QuantizedBlob` holds, for a blob of ``shape``:

- ``symbols``: one unsigned integer per weight (C order): ``0`` for a pruned weight (decoded as
  exactly 0.0, whatever the quantizer), ``1 + k`` for a weight mapped to codebook entry ``k``;
- ``codebook``: the ``K`` shared values (float32);
- ``dither_seed``: ``None``, or the seed of the dither ``u ~ U[-step/2, step/2]`` that the
  encoder subtracted: the decoder draws the same ``u`` for the non-pruned weights, in C order,
  from ``numpy.random.RandomState(dither_seed)`` (float64 draws, then float32), and decodes
  ``codebook[k] - u``;
- ``step``: the quantizer's step (0.0 for k-means), kept for the report.

:func:`decode` is the one decoding rule: the container's ``unpack`` and the fine-tuning both use it,
so decoded weights are the quantized weights bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["QuantizedBlob", "decode", "dither", "symbol_dtype"]


@dataclass(frozen=True, eq=False)
class QuantizedBlob:
    layer: str
    blob: int                                   # which blob of the layer (0: the weights)
    shape: tuple
    symbols: np.ndarray = field(repr=False)     # uint, C order, 0 = pruned
    codebook: np.ndarray = field(repr=False)    # float32 (K,)
    method: str = "uniform"                     # dithered, uniform or kmeans
    step: float = 0.0
    dither_seed: int | None = None

    @property
    def nonzero(self) -> int:
        return int(np.count_nonzero(self.symbols))

    def with_codebook(self, codebook: np.ndarray) -> "QuantizedBlob":
        from dataclasses import replace

        return replace(self, codebook=np.asarray(codebook, dtype=np.float32))


def symbol_dtype(k: int) -> np.dtype:
    """The smallest unsigned type for symbols ``0..k`` (``k`` codebook entries plus the zero)."""
    return np.dtype(np.uint8 if k < 2**8 else np.uint16 if k < 2**16 else np.uint32)


def dither(seed: int, count: int, step: float) -> np.ndarray:
    """The dither of ``count`` non-pruned weights: ``U[-step/2, step/2]`` as float32."""
    u = np.random.RandomState(seed).uniform(-0.5, 0.5, size=count) * step
    return u.astype(np.float32)


def decode(q: QuantizedBlob) -> np.ndarray:
    """The float32 weights of ``q`` (pruned ones exactly 0.0)."""
    sym = np.asarray(q.symbols).reshape(-1)
    out = np.zeros(sym.size, dtype=np.float32)
    kept = sym != 0
    values = np.asarray(q.codebook, dtype=np.float32)[sym[kept].astype(np.int64) - 1]
    if q.dither_seed is not None:
        values = values - dither(q.dither_seed, int(kept.sum()), q.step)
    out[kept] = values
    return out.reshape(q.shape)
