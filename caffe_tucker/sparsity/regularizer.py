"""The joint sparsity penalties: partial L2 in the spatial and the Winograd domain.

Training minimises (Choi, El-Khamy & Lee 2018, in the form this project believes is published;
the method section was not available to check it, see the README)::

    C(w, w_S, w_W) = E(w) + exp(w_S) R_S(w) + exp(w_W) R_W(w) - a_S w_S - a_W w_W

with ``E`` the network's loss and two *partial L2* penalties, recomputed at every iteration:

- ``R_S = 1/2 sum_l sum_{i in small_S(l)} w_i^2`` over the spatial weights of each penalised
  layer ``l`` whose magnitude is among its ``r_S`` smallest (its ``r_S``-th percentile),
- ``R_W = 1/2 sum_l sum_{j in small_W(l)} u_j^2`` over the Winograd-domain weights
  ``U = G g G^T`` of each stride-1 3x3 convolution (every filter ``g`` of the layer), below its
  ``r_W``-th percentile.

Their gradients with respect to the spatial weights are ``exp(w_S) [small_S] * w`` and
``exp(w_W) G^T ([small_W] * U) G`` filter by filter; the tool adds them to Caffe's own gradients
before each update (the solver's learning rate, momentum and weight decay then apply to the sum).

The coefficients are learnt: ``dC/dw = exp(w) R - a``.  Each iteration takes the step
``w <- w - eta (exp(w) R - a) / a``, i.e. gradient descent on ``C`` with the step ``eta / a``
(this project's choice: it makes ``eta`` the log-growth of the coefficient per iteration while
the penalty is still large, on every model).  At equilibrium ``exp(w) R = a``: as training drives
the small weights to zero the coefficient grows, which is what pushes them to zero; ``a`` sets
how far.  ``a`` defaults to ``coefficient_target R(w_0)`` from the first iteration's weights: the
coefficient climbs from ``coefficient_init`` to ``coefficient_target`` while the penalty stays
where it started, and beyond as the penalty falls.  It is capped (``coefficient_max``) so the
solver stays stable.

References
----------
Y. Choi, M. El-Khamy and J. Lee, "Compression of Deep Convolutional Neural Networks under Joint
Sparsity Constraints", arXiv:1805.08303, 2018.
Y. Choi, M. El-Khamy and J. Lee, "Jointly sparse convolutional neural networks in dual spatial-
Winograd domains", US patent 11,423,312 (claims: a regulariser per domain, each with a learnable
coefficient and a penalty on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from caffe_tucker.errors import check_param
from caffe_tucker.sparsity.prune import magnitude_mask
from caffe_tucker.sparsity.winograd import WinogradTile, to_winograd

__all__ = ["PenaltyOptions", "Coefficients", "PenaltyStep", "penalty_step", "initial_coefficients",
           "penalties"]


def _number(name, value, ok_range: str, low=None, high=None, low_open=False, owner="PenaltyOptions"):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high
    check_param(name, value, ok, ok_range, owner)


@dataclass(frozen=True)
class PenaltyOptions:
    """What the two penalties aim at and how their coefficients move.

    Attributes
    ----------
    spatial, winograd : float in [0, 1)
        ``r_S`` and ``r_W``: the fraction of each layer's weights the penalty pulls to zero
        (the targets of the later pruning).  0 switches that penalty off.
    coefficient_init : float > 0
        ``exp(w0)``, both coefficients' start.
    omega_lr : float > 0
        ``eta``, the coefficients' step (log-growth per iteration while the penalty is large).
    coefficient_target : float > 0
        ``a = coefficient_target R(w_0)`` for each domain, unless ``alpha_*`` is given: the
        coefficient the penalty settles at while it has not fallen.
    alpha_spatial, alpha_winograd : float > 0 or None
        ``a_S``, ``a_W`` in absolute terms.
    coefficient_max : float > 0
        The coefficients' cap.
    """

    spatial: float = 0.7
    winograd: float = 0.6
    coefficient_init: float = 1e-3
    omega_lr: float = 0.02
    coefficient_target: float = 1.0
    alpha_spatial: float | None = None
    alpha_winograd: float | None = None
    coefficient_max: float = 100.0

    def __post_init__(self):
        _number("spatial", self.spatial, "a float in [0, 1)", 0.0, 1.0)
        _number("winograd", self.winograd, "a float in [0, 1)", 0.0, 1.0)
        _number("coefficient_init", self.coefficient_init, "a float > 0", 0.0, low_open=True)
        _number("omega_lr", self.omega_lr, "a float > 0", 0.0, low_open=True)
        _number("coefficient_target", self.coefficient_target, "a float > 0", 0.0,
                low_open=True)
        _number("coefficient_max", self.coefficient_max, "a float > 0", 0.0, low_open=True)
        for name in ("alpha_spatial", "alpha_winograd"):
            value = getattr(self, name)
            if value is not None:
                _number(name, value, "a float > 0 or None", 0.0, low_open=True)


@dataclass(frozen=True)
class Coefficients:
    """The learnt log-coefficients ``w_S``, ``w_W`` and the ``a``'s in use."""

    omega_spatial: float
    omega_winograd: float
    alpha_spatial: float
    alpha_winograd: float

    @property
    def spatial(self) -> float:
        return math.exp(self.omega_spatial)

    @property
    def winograd(self) -> float:
        return math.exp(self.omega_winograd)

    def to_dict(self) -> dict:
        return {"omega_spatial": self.omega_spatial, "omega_winograd": self.omega_winograd,
                "alpha_spatial": self.alpha_spatial, "alpha_winograd": self.alpha_winograd}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Coefficients":
        return cls(float(d["omega_spatial"]), float(d["omega_winograd"]),
                   float(d["alpha_spatial"]), float(d["alpha_winograd"]))


@dataclass(frozen=True)
class PenaltyStep:
    """One iteration's penalties: the gradients to add and the coefficients' next values."""

    gradients: dict = field(repr=False)        # layer -> ndarray like its weights (float32)
    r_spatial: float                            # R_S at these weights
    r_winograd: float                           # R_W at these weights
    coefficients: Coefficients                  # the values used for these gradients
    next_coefficients: Coefficients             # after this iteration's coefficient step


def penalties(weights: Mapping[str, np.ndarray], winograd_layers, options: PenaltyOptions,
              tile: WinogradTile) -> tuple[float, float, dict, dict]:
    """``R_S``, ``R_W`` and their unscaled gradients, layer by layer.

    Returns ``(r_s, r_w, grad_s, grad_w)`` where ``grad_s[l] = [small_S] * w`` and
    ``grad_w[l] = G^T ([small_W] * U) G`` (float64), for the layers each penalty covers.
    """
    r_s = r_w = 0.0
    grad_s, grad_w = {}, {}
    g = tile.G
    for name in sorted(weights):
        w = np.asarray(weights[name], dtype=np.float64)
        if options.spatial > 0:
            small = ~magnitude_mask(w, options.spatial)
            ws = np.where(small, w, 0.0)
            r_s += 0.5 * float(np.sum(ws * ws))
            grad_s[name] = ws
        if options.winograd > 0 and name in winograd_layers:
            u = to_winograd(w, tile)
            small = ~magnitude_mask(u, options.winograd)
            us = np.where(small, u, 0.0)
            r_w += 0.5 * float(np.sum(us * us))
            # d/dg of 1/2 |M * (G g G^T)|^2 = G^T (M * U) G, filter by filter
            grad_w[name] = np.einsum("ai,tcab,bj->tcij", g, us, g)
    return r_s, r_w, grad_s, grad_w


def initial_coefficients(weights: Mapping[str, np.ndarray], winograd_layers,
                         options: PenaltyOptions, tile: WinogradTile) -> Coefficients:
    """The coefficients' start: ``w0 = log(coefficient_init)``, ``a`` from the first weights."""
    r_s, r_w, _, _ = penalties(weights, winograd_layers, options, tile)
    w0 = math.log(options.coefficient_init)

    def alpha(given, r):
        if given is not None:
            return float(given)
        return max(options.coefficient_target * r, 1e-30)

    return Coefficients(w0, w0, alpha(options.alpha_spatial, r_s),
                        alpha(options.alpha_winograd, r_w))


def _omega_step(omega: float, r: float, alpha: float, options: PenaltyOptions) -> float:
    omega = omega - options.omega_lr * (math.exp(omega) * r - alpha) / alpha
    return min(omega, math.log(options.coefficient_max))


def penalty_step(weights: Mapping[str, np.ndarray], winograd_layers, options: PenaltyOptions,
                 coefficients: Coefficients, tile: WinogradTile, terms=None) -> PenaltyStep:
    """The gradients to add to Caffe's for one iteration, and the coefficients' step.

    Parameters
    ----------
    weights : mapping of layer name to ndarray
        The current spatial weights (blob 0) of every penalised layer.
    winograd_layers : collection of str
        Which of them are stride-1 3x3 convolutions (also penalised in the Winograd domain).
    options : PenaltyOptions
    coefficients : Coefficients
        The current ``w_S``, ``w_W``, ``a_S``, ``a_W``.
    tile : WinogradTile
        The Winograd tile the Winograd-domain weights are taken in.
    terms : tuple, optional
        :func:`penalties` of these weights, already computed (a training loop logs them too); a
        domain whose target in ``options`` is 0 is left out of them.

    Returns
    -------
    PenaltyStep
        ``gradients[l] = exp(w_S) dR_S/dw_l + exp(w_W) dR_W/dw_l`` as float32.
    """
    if terms is None:
        terms = penalties(weights, winograd_layers, options, tile)
    r_s, r_w, grad_s, grad_w = terms
    if not options.spatial > 0:
        r_s, grad_s = 0.0, {}
    if not options.winograd > 0:
        r_w, grad_w = 0.0, {}
    c_s, c_w = coefficients.spatial, coefficients.winograd
    gradients = {}
    for name in sorted(weights):
        total = None
        if name in grad_s:
            total = c_s * grad_s[name]
        if name in grad_w:
            total = c_w * grad_w[name] if total is None else total + c_w * grad_w[name]
        if total is not None:
            gradients[name] = total.astype(np.float32)
    nxt = replace(coefficients,
                  omega_spatial=(_omega_step(coefficients.omega_spatial, r_s,
                                             coefficients.alpha_spatial, options)
                                 if options.spatial > 0 else coefficients.omega_spatial),
                  omega_winograd=(_omega_step(coefficients.omega_winograd, r_w,
                                              coefficients.alpha_winograd, options)
                                  if options.winograd > 0 and grad_w
                                  else coefficients.omega_winograd))
    return PenaltyStep(gradients, r_s, r_w, coefficients, nxt)
