"""CP decomposition: a D×D convolution as 1×1 → D×1 → 1×D → 1×1 (Lebedev et al., ICLR 2015).

The rank-R CP (CANDECOMP/PARAFAC) of a Caffe kernel ``K`` ``(T, S, kh, kw)``
(one group)::

    K[t, s, i, j] ≈ Σ_r A[t, r] · B[s, r] · Y[i, r] · X[j, r]

computed by CP-ALS (TensorLy's ``parafac`` through
:func:`caffe_tucker.compress.tensorly_wrapper.parafac`: started from the
unfoldings' SVDs, deterministic).  The component weights are spread evenly
over the four factors, so that no layer carries the whole scale in float32.

Caffe form (stock layers), for a layer with ``group`` g:

* ``L_tk1``: 1×1 convolution S → g·R, ``group`` g, no bias (B);
* ``L_tk2``: kh×1 depthwise convolution (``group`` g·R) with the vertical
  stride, pad and dilation (Y);
* ``L_tk3``: 1×kw depthwise convolution (``group`` g·R) with the horizontal
  stride, pad and dilation (X);
* ``L_tk4``: 1×1 convolution g·R → T, ``group`` g, the original bias (A).

Splitting the padding this way is exact: the vertical layer pads only rows,
and the zero columns the horizontal layer adds are what the vertical layer
would have computed from zero-padded input columns.  A grouped layer is one
CP per group: group k's R components are channels ``k·R ...`` of every new
layer, so the depthwise layers need no special case.

CP-ALS is unstable at low rank (Lebedev et al. report it; so does Kolda &
Bader's review).  A fit is never emitted when it diverged — the layer is left
untouched, with the reason in the record (:class:`~caffe_tucker.compress.methods.base.DecompositionFailed`):

* a sweep whose normal equations are singular (NumPy's LinAlgError);
* a NaN or infinite factor or error;
* a relative error ‖K − K̂‖/‖K‖ ≥ 1 (worse than a zero kernel);
* degenerate components: one component's norm above ``CP_MAX_COMPONENT``
  (100) times ‖K‖.  Components that large cancel each other to give K, which
  costs float32 two of its seven digits, and ALS is then drifting along a
  degenerate path (Kolda & Bader, Sec. 3.3) rather than converging.  Ratios
  up to about 15 occur on trained ResNet-20 kernels at the automatic ranks
  and are harmless.

The relative error of every emitted fit is in the record (``rel_error``).

Ranks
-----
R, in [1, full] where full is a bound on the kernel's tensor rank (the
product of its dimensions over the largest).  Automatic ranks are this
project's rule (CP has no VBMF of its own): R3 and R4 are chosen on the
mode-3 and mode-4 unfoldings as for Tucker-2, and R is the largest rank whose
multiply-adds do not exceed those of Tucker-2 at (R3, R4), so that the two
methods are compared at equal cost.

References
----------
.. [1] V. Lebedev, Y. Ganin, M. Rakhuba, I. Oseledets, V. Lempitsky,
       "Speeding-up Convolutional Neural Networks Using Fine-tuned
       CP-Decomposition", ICLR 2015.
.. [2] T. G. Kolda, B. W. Bader, "Tensor decompositions and applications",
       SIAM Review 51(3), 2009 (Sec. 3.3, degeneracy).
"""

from __future__ import annotations

from math import prod

import numpy as np

from caffe_tucker.compress.methods.base import (ConvolutionMethod, DecompositionFailed,
                                                conv_param, one_by_one)
from caffe_tucker.compress.methods.tucker2 import METHOD as TUCKER2
from caffe_tucker.compress.tensorly_wrapper import CP_MAX_ITER, CP_TOL, parafac

__all__ = ["CP", "METHOD", "CP_MAX_COMPONENT", "cp_fit"]

#: A component whose norm exceeds this many times the kernel's marks a degenerate fit.
CP_MAX_COMPONENT = 100.0


def cp_fit(kernel: np.ndarray, rank: int, n_iter_max: int = CP_MAX_ITER, tol: float = CP_TOL):
    """CP of one kernel ``(T, S, kh, kw)`` at ``rank``, checked.

    Returns ``((A (T, R), B (S, R), Y (kh, R), X (kw, R)), rel_error)``; raises
    :class:`DecompositionFailed` when the fit must not be emitted (see the module docstring).
    """
    k = kernel.astype(np.float64)
    norm = float(np.linalg.norm(k))
    if norm == 0:
        return tuple(np.zeros((d, rank)) for d in k.shape), 0.0
    try:
        weights, factors, _errors = parafac(k, rank, n_iter_max=n_iter_max, tol=tol)
    except np.linalg.LinAlgError as exc:
        raise DecompositionFailed(f"CP-ALS at rank {rank} broke down ({exc}: the normal "
                                  "equations of a sweep are singular); left untouched") from None
    if not (np.all(np.isfinite(weights)) and all(np.all(np.isfinite(f)) for f in factors)):
        raise DecompositionFailed(f"CP-ALS at rank {rank} diverged (NaN or infinite factors); "
                                  "left untouched")
    a, b, y, x = factors
    rec = np.einsum("r,tr,sr,ir,jr->tsij", weights, a, b, y, x, optimize=True)
    rel = float(np.linalg.norm(k - rec) / norm)
    if not np.isfinite(rel) or rel >= 1:
        raise DecompositionFailed(f"CP-ALS at rank {rank} did not fit (relative error {rel:.3g}, "
                                  "no better than a zero kernel); left untouched")
    biggest = float(np.max(np.abs(weights)))
    if biggest > CP_MAX_COMPONENT * norm:
        raise DecompositionFailed(
            f"CP-ALS at rank {rank} is degenerate (a component {biggest / norm:.3g} times the "
            f"kernel's norm, above {CP_MAX_COMPONENT:g}: components cancel, float32 cannot hold "
            f"the difference; relative error {rel:.3g}); left untouched")
    # Spread each component's weight over the four factors (signs stay with A).
    share = np.abs(weights) ** 0.25
    return (a * (np.sign(weights) * share), b * share, y * share, x * share), rel


class CP(ConvolutionMethod):
    name = "cp"
    rank_labels = ("R",)
    unfolding_labels = {"input": "mode-3 (S) unfolding → R3 (for R)",
                        "output": "mode-4 (T) unfolding → R4 (for R)"}
    new_types = ("Convolution",) * 4

    def __init__(self, n_iter_max: int = CP_MAX_ITER, tol: float = CP_TOL):
        self.n_iter_max = n_iter_max
        self.tol = tol

    def unfoldings(self, kernel):
        return TUCKER2.unfoldings(kernel)

    def full_ranks(self, layer, info):
        """A bound on the tensor rank of one group's kernel: the product of its dimensions over
        the largest (the kernel is that many rank-1 terms along its longest mode)."""
        k = self.kernel_shape(layer, info)
        return (prod(k) // max(k),)

    # -- ranks -----------------------------------------------------------------------------------
    def auto_ranks(self, found, layer, info, options):
        """The largest R whose multiply-adds do not exceed Tucker-2's at the unfoldings' (R3, R4)."""
        r3, r4 = TUCKER2.auto_ranks(found, layer, info, options)
        if min(r3, r4) == 0:
            return (0,)
        target = sum(TUCKER2.cost(layer, info, (r3, r4))[1])
        per_rank = sum(self.cost(layer, info, (1,))[1])  # every new layer is linear in R
        return (max(1, min(target // per_rank, self.full_ranks(layer, info)[0])),)

    def ranks_file_value(self, ranks):
        return {"method": self.name, "ranks": int(ranks[0])}

    def side_ranks(self, ranks):
        return (int(ranks[0]), int(ranks[0]))

    def unfolding_ranks(self, ranks):
        return ()

    # -- factorization ---------------------------------------------------------------------------
    def factorize(self, kernel, ranks):
        """``(A (T, R), B (S, R), Y (kh, R), X (kw, R))``; raises DecompositionFailed."""
        factors, _rel = cp_fit(kernel, int(ranks[0]), self.n_iter_max, self.tol)
        return factors

    def reconstruct(self, factors):
        a, b, y, x = factors
        return np.einsum("tr,sr,ir,jr->tsij", a, b, y, x, optimize=True)

    # -- the new layers --------------------------------------------------------------------------
    def new_layer_params(self, layer, geo, ranks, bias):
        (r,) = ranks
        g = geo.group
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo.kernel, geo.stride, geo.pad, geo.dilation
        return [
            ("Convolution", "convolution_param", conv_param(g * r, (1, 1), group=g)),
            ("Convolution", "convolution_param",
             conv_param(g * r, (kh, 1), (sh, 1), (ph, 0), (dh, 1), group=g * r)),
            ("Convolution", "convolution_param",
             conv_param(g * r, (1, kw), (1, sw), (0, pw), (1, dw), group=g * r)),
            ("Convolution", "convolution_param", conv_param(geo.num_output, (1, 1), group=g, bias=bias)),
        ]

    def layer_blobs(self, groups, bias):
        f32 = np.float32
        first = np.concatenate([b.T for _, b, _, _ in groups])[:, :, None, None]
        vertical = np.concatenate([y.T for _, _, y, _ in groups])[:, None, :, None]
        horizontal = np.concatenate([x.T for _, _, _, x in groups])[:, None, None, :]
        last = np.concatenate([a for a, _, _, _ in groups])[:, :, None, None]
        return ((first.astype(f32),), (vertical.astype(f32),), (horizontal.astype(f32),),
                (last.astype(f32),) + tuple(bias))

    def factors_from_blobs(self, blobs, group):
        first, vertical, horizontal, last = (b[0].astype(np.float64) for b in blobs)
        r, tg = first.shape[0] // group, last.shape[0] // group
        return [(one_by_one(last[k * tg:(k + 1) * tg]), one_by_one(first[k * r:(k + 1) * r]).T,
                 vertical[k * r:(k + 1) * r, 0, :, 0].T, horizontal[k * r:(k + 1) * r, 0, 0, :].T)
                for k in range(group)]

    def ranks_from_layers(self, new_layers, group):
        return (new_layers[0].spec.convolution_param.num_output // group,)


METHOD = CP()
