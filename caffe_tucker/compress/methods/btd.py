"""Block-term decomposition (BTD): a D×D convolution as N Tucker-2 blocks side by side.

Wang & Cheng, "Accelerating Convolutional Neural Networks for Mobile
Applications", ACM MM 2016.  With a Caffe kernel ``K`` of shape
``(T, S, D, D)`` (one group)::

    K ≈ Σ_{n=1..N} C_n ×1 V_n ×2 U_n
    K[t, s, i, j] ≈ Σ_n Σ_{a, b} C_n[a, b, i, j] · U_n[s, b] · V_n[t, a]

with ``U_n`` S × R3, ``V_n`` T × R4 and cores ``C_n`` R4 × R3 × D × D.  The
ranks are ``(S', T', N)`` with ``S' = N·R3`` and ``T' = N·R4``; ``N = 1`` is
exactly Tucker-2 (:mod:`caffe_tucker.compress.methods.tucker2`).

Caffe form (stock layers), for a layer with ``group`` g:

* ``L_tk1``: 1×1 convolution S → g·S', ``group`` g, no bias;
* ``L_tk2``: D×D convolution g·S' → g·T', ``group`` g·N, the original
  stride/pad/dilation, no bias;
* ``L_tk3``: 1×1 convolution g·T' → T, ``group`` g, the original bias.

Channels are group-major and block-major within a group: block n of
original group k owns channels ``(k·N + n)·R3 ...`` of ``L_tk1``'s output and
``(k·N + n)·R4 ...`` of ``L_tk2``'s, which is exactly the (k·N + n)-th group
of ``L_tk2``; ``L_tk3``'s group k reads the N blocks of group k.

Algorithm (this project's: the paper's code is not public; block-coordinate
descent over Tucker-2 blocks is how the public btd_caffe implementation is
described in this project's issue 10, whose code was not consulted).  The
start is greedy and deterministic: block 1 is the Tucker-2 (HOOI from the
truncated HOSVD, :func:`caffe_tucker.compress.hooi.tucker2_hooi`)
of ``K`` at (R3, R4), block n the Tucker-2 of the residual ``K − Σ_{j<n} block_j``.
Then each sweep refits every block to ``K − Σ_{j≠n} block_j`` the same way,
keeping the new block only if it lowers the error, and the sweeps stop when
one lowers the relative error by less than ``tol`` (or after ``max_sweeps``).

What that guarantees: the error never rises from sweep to sweep, and it is
never above the Tucker-2 error at the per-block ranks (R3, R4) — the first
block *is* that Tucker-2 and every further block is an orthogonal projection
of the residual, which cannot enlarge it.  With N = 1 the result is the
Tucker-2 of :mod:`tucker2` itself.  A BTD is a Tucker-2 at (S', T') whose
core is block-diagonal, so it is never better than the best Tucker-2 at
(S', T') (HOOI does not always find that best, so this holds up to HOOI's
own shortfall).

Ranks
-----
Fixed ranks (``--ranks``, presets) are ``(S', T', N)`` with N dividing both
S' and T', ``N ≤ S' ≤ S`` and ``N ≤ T' ≤ T``.  Automatic ranks are this
project's rule, not the paper's (which gives none): the unfoldings' ranks
(R3, R4) chosen as for Tucker-2 (VBMF by default) become S' and T', split
into ``N = min(blocks, R3, R4)`` blocks (``--blocks``, default 4) and rounded
up to multiples of N (at most the largest multiple of N within S and T).
"""

from __future__ import annotations

import math

import numpy as np

from caffe_tucker.compress.methods.base import ConvolutionMethod, conv_param, one_by_one
from caffe_tucker.compress.methods.tucker2 import METHOD as TUCKER2
from caffe_tucker.compress.hooi import tucker2_hooi
from caffe_tucker.errors import CaffeTuckerError, check_param

__all__ = ["BlockTerm", "METHOD", "block_term", "BTD_TOL", "BTD_MAX_SWEEPS", "DEFAULT_BLOCKS"]

#: Sweeps stop when one lowers the relative error by less than this ...
BTD_TOL = 1e-4
#: ... or after this many.
BTD_MAX_SWEEPS = 10
#: Blocks per layer for automatic ranks (``--blocks``).
DEFAULT_BLOCKS = 4


def _tucker2(tensor: np.ndarray, r3: int, r4: int):
    core, (v, u) = tucker2_hooi(tensor, (r4, r3))
    return u, core, v


def _block(u, core, v) -> np.ndarray:
    return np.einsum("abij,sb,ta->tsij", core, u, v, optimize=True)


def block_term(kernel: np.ndarray, r3: int, r4: int, blocks: int, tol: float = BTD_TOL,
               max_sweeps: int = BTD_MAX_SWEEPS):
    """The block-term decomposition of one kernel ``(T, S, kh, kw)``: ``blocks`` blocks of (r3, r4).

    Returns ``((U (N, S, r3), C (N, r4, r3, kh, kw), V (N, T, r4)), errors)``, ``errors`` the
    relative error after the greedy start and after each sweep (non-increasing).  See the
    module docstring for the algorithm.
    """
    k = kernel.astype(np.float64)
    norm = float(np.linalg.norm(k))
    scale = norm if norm > 0 else 1.0
    fitted, residual = [], k.copy()
    for _ in range(blocks):
        fit = _tucker2(residual, r3, r4)
        fitted.append(fit)
        residual = residual - _block(*fit)
    res_norm = float(np.linalg.norm(residual))
    errors = [res_norm / scale]
    if blocks > 1:
        for _ in range(max_sweeps):
            for n in range(blocks):
                target = residual + _block(*fitted[n])
                fit = _tucker2(target, r3, r4)
                new_residual = target - _block(*fit)
                new_norm = float(np.linalg.norm(new_residual))
                if new_norm < res_norm:
                    fitted[n], residual, res_norm = fit, new_residual, new_norm
            errors.append(res_norm / scale)
            if errors[-2] - errors[-1] < tol:
                break
    u = np.stack([f[0] for f in fitted])
    core = np.stack([f[1] for f in fitted])
    v = np.stack([f[2] for f in fitted])
    return (u, core, v), errors


class BlockTerm(ConvolutionMethod):
    name = "btd"
    rank_labels = ("S'", "T'", "N")
    unfolding_labels = {"input": "mode-3 (S) unfolding → S'", "output": "mode-4 (T) unfolding → T'"}
    new_types = ("Convolution",) * 3
    fc_hint = "svd (or tucker2)"

    def __init__(self, tol: float = BTD_TOL, max_sweeps: int = BTD_MAX_SWEEPS):
        self.tol = tol
        self.max_sweeps = max_sweeps

    def unfoldings(self, kernel):
        return TUCKER2.unfoldings(kernel)

    def full_ranks(self, layer, info):
        """``(S, T, min(S, T))`` of one group: S' ≤ S, T' ≤ T, and N ≤ both."""
        t, s = self.kernel_shape(layer, info)[:2]
        return (s, t, min(s, t))

    # -- ranks -----------------------------------------------------------------------------------
    def auto_ranks(self, found, layer, info, options):
        r3, r4 = (int(r) for r in found)
        s, t, _ = self.full_ranks(layer, info)
        r3, r4 = min(r3, s), min(r4, t)
        if min(r3, r4) == 0:
            return (r3, r4, 0)
        blocks = int(options.get("blocks", DEFAULT_BLOCKS))
        n = max(1, min(blocks, r3, r4))

        def split(r, full):
            return min(n * math.ceil(r / n), n * (full // n))

        return (split(r3, s), split(r4, t), n)

    def check_ranks(self, value, layer, info, name, source):
        if isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            s_, t_, n = value
            check_param("N", n, n >= 1, f"an int >= 1 for layer '{name}'", source,
                        exc=CaffeTuckerError)
            for label, v in (("S'", s_), ("T'", t_)):
                check_param(label, v, v % n == 0,
                            f"a multiple of N = {n} (S' = N·R3, T' = N·R4) for layer '{name}'",
                            source, exc=CaffeTuckerError)
        return super().check_ranks(value, layer, info, name, source)

    def ranks_file_value(self, ranks):
        return {"method": self.name, "ranks": [int(r) for r in ranks]}

    def side_ranks(self, ranks):
        return (int(ranks[0]), int(ranks[1]))

    def label(self, ranks):
        return f"{self.name}, N={int(ranks[2])}"

    def unfolding_ranks(self, ranks):
        return (int(ranks[0]), int(ranks[1]))

    # -- factorization ---------------------------------------------------------------------------
    def factorize(self, kernel, ranks):
        """``(U (N, S, R3), cores (N, R4, R3, kh, kw), V (N, T, R4))``."""
        s_, t_, n = (int(r) for r in ranks)
        factors, _errors = block_term(kernel, s_ // n, t_ // n, n, self.tol, self.max_sweeps)
        return factors

    def reconstruct(self, factors):
        u, core, v = factors
        return np.einsum("nabij,nsb,nta->tsij", core, u, v, optimize=True)

    # -- the new layers --------------------------------------------------------------------------
    def new_layer_params(self, layer, geo, ranks, bias):
        s_, t_, n = (int(r) for r in ranks)
        g = geo.group
        ones = (1,) * len(geo.kernel)
        return [
            ("Convolution", "convolution_param", conv_param(g * s_, ones, group=g)),
            ("Convolution", "convolution_param",
             conv_param(g * t_, geo.kernel, geo.stride, geo.pad, geo.dilation, group=g * n)),
            ("Convolution", "convolution_param", conv_param(geo.num_output, ones, group=g, bias=bias)),
        ]

    def layer_blobs(self, groups, bias):
        f32 = np.float32
        # Group-major, then block-major: block n of group k is group k·N + n of L_tk2.
        first = np.concatenate([u[b].T for u, _, _ in groups for b in range(len(u))])
        middle = np.concatenate([core[b] for _, core, _ in groups for b in range(len(core))])
        last = np.concatenate([v.transpose(1, 0, 2).reshape(v.shape[1], -1) for _, _, v in groups])
        return ((first[:, :, None, None].astype(f32),), (middle.astype(f32),),
                (last[:, :, None, None].astype(f32),) + tuple(bias))

    def factors_from_blobs(self, blobs, group):
        first, middle, last = (b[0].astype(np.float64) for b in blobs)
        r3 = middle.shape[1]
        n = first.shape[0] // (group * r3)
        r4 = middle.shape[0] // (group * n)
        tg = last.shape[0] // group
        out = []
        for k in range(group):
            u = one_by_one(first[k * n * r3:(k + 1) * n * r3]).reshape(n, r3, -1).transpose(0, 2, 1)
            core = middle[k * n * r4:(k + 1) * n * r4].reshape((n, r4) + middle.shape[1:])
            v = one_by_one(last[k * tg:(k + 1) * tg]).reshape(tg, n, r4).transpose(1, 0, 2)
            out.append((u, core, v))
        return out

    def ranks_from_layers(self, new_layers, group):
        first, middle = (l.spec.convolution_param for l in new_layers[:2])
        return (first.num_output // group, middle.num_output // group, middle.group // group)


METHOD = BlockTerm()
