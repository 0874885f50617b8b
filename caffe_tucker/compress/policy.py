"""Rank policies: what to do with each planned layer once VBMF has chosen its ranks.

``vbmf`` (the default) keeps VBMF's choice as it is.  ``latency`` (issue 13; the project's own
policy, not the paper's) asks a cost model (a :class:`~caffe_tucker.caffe.profile.CostProfile`
made by ``profile``) for the predicted Caffe time of each candidate of a Tucker-2 / Tucker-1
layer whose ranks were chosen automatically, and takes the fastest one whose reconstruction
error is no higher than VBMF's:

1. free rounding: each rank may be raised to the next multiple of 8 or 16 (at most full) when
   the predicted time does not increase; a higher rank never raises the error;
2. Tucker-1 at the smallest rank whose error is at most VBMF's (for a Tucker-2 layer);
3. the original layer (error 0), chosen when its predicted time is at most the compressed one's.

The error is the relative reconstruction error ``||W - W_hat|| / ||W||`` from the unfoldings'
spectra: Tucker-1's is exact (the discarded singular values of the mode-4 unfolding); for
Tucker-2 it is the *lower* bound that Eckart-Young puts on each unfolding (the larger of the two
discarded energies, per group), so a Tucker-1 within it is never worse than HOOI's Tucker-2.
With the fitted linear model (``a + b·channels + c·MACs``, b, c >= 0) a
higher rank never predicts faster, so rounding is taken only where the fit is flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import product
from math import prod

import numpy as np

from caffe_tucker.analysis.cost import layer_cost
from caffe_tucker.compress.methods import get_method
from caffe_tucker.errors import CaffeTuckerError, check_param

__all__ = ["POLICIES", "PolicyDecision", "latency_policy", "apply_rank_policy", "profile_cost",
           "relative_error", "round_up"]

POLICIES = ("vbmf", "latency")
_POLICY_METHODS = ("tucker2", "tucker1")


@dataclass(frozen=True)
class PolicyDecision:
    """What the latency policy did with one layer, and the times it predicted (ms)."""

    layer: str
    decision: str                  # "vbmf" (kept), "rounded", "tucker1", "original"
    method: str                    # the method now planned (that of VBMF's choice for "original")
    ranks: tuple[int, ...]
    vbmf_method: str
    vbmf_ranks: tuple[int, ...]
    vbmf_ms: float
    chosen_ms: float
    original_ms: float
    vbmf_error: float
    chosen_error: float
    candidates: tuple = ()         # (label, method or None, ranks, ms, error)

    @classmethod
    def from_json(cls, layer: str, d: dict) -> "PolicyDecision":
        """Read :meth:`to_json`'s object back (a layer's ``policy`` in report.json)."""
        return cls(layer=layer, decision=d["decision"], method=d["method"],
                   ranks=tuple(d["ranks"]), vbmf_method=d["vbmf_method"],
                   vbmf_ranks=tuple(d["vbmf_ranks"]), vbmf_ms=d["vbmf_ms"],
                   chosen_ms=d["chosen_ms"], original_ms=d["original_ms"],
                   vbmf_error=d["vbmf_error"], chosen_error=d["chosen_error"],
                   candidates=tuple((c["label"], c["method"], tuple(c["ranks"]), c["ms"],
                                     c["error"]) for c in d.get("candidates", ())))

    def to_json(self) -> dict:
        r = lambda v: round(float(v), 6)  # noqa: E731
        return {"decision": self.decision, "method": self.method, "ranks": list(self.ranks),
                "vbmf_method": self.vbmf_method, "vbmf_ranks": list(self.vbmf_ranks),
                "vbmf_ms": r(self.vbmf_ms), "chosen_ms": r(self.chosen_ms),
                "original_ms": r(self.original_ms), "vbmf_error": r(self.vbmf_error),
                "chosen_error": r(self.chosen_error),
                "candidates": [{"label": c[0], "method": c[1], "ranks": list(c[2]), "ms": r(c[3]),
                                "error": r(c[4])} for c in self.candidates]}


# -- pure pieces --------------------------------------------------------------------------------
def round_up(r: int, full: int) -> list[int]:
    """``r`` and its next multiples of 8 and 16, at most ``full``."""
    out = {r}
    for m in (8, 16):
        up = -(-r // m) * m
        if up <= full:
            out.add(up)
    return sorted(out)


def _tail(values, r: int) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.sum(v[r:] ** 2))


def relative_error(spectra: dict, method: str, ranks) -> float:
    """The relative error bound of ``method`` at ``ranks`` from the unfoldings' spectra
    (``{"input": per-group values, "output": per-group values}``); see the module docstring."""
    out = spectra["output"]
    total = sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in out)
    if total == 0:
        return 0.0
    if method == "tucker1":
        err2 = sum(_tail(v, ranks[0]) for v in out)
    else:  # the larger discarded energy of the two unfoldings, per group: a lower bound
        err2 = sum(max(_tail(vi, ranks[0]), _tail(vo, ranks[1]))
                   for vi, vo in zip(spectra["input"], out))
    return math.sqrt(min(err2 / total, 1.0))


def _reduces(layer, info, shapes, method: str, ranks) -> bool:
    w, f = get_method(method).cost(layer, info, ranks)
    return sum(w) < prod(info.params[0]) and sum(f) < layer_cost(layer, shapes).flops


def latency_policy(layer, info, shapes, choice, cost) -> PolicyDecision | None:
    """The policy's decision for one layer (None when it does not apply: not Tucker-2/1, left
    untouched already, ranks fixed by the user, no spectra).

    ``cost(layer, info, method, ranks)`` is the predicted ms (``method`` None: the original
    layer), or None where the model cannot say; a candidate it cannot price is dropped, and
    VBMF's choice or the original unpriced is an error.
    """
    if (choice.method not in _POLICY_METHODS or choice.skipped_reason is not None
            or choice.source == "file" or "output" not in choice.spectra):
        return None
    spectra = choice.spectra
    e0 = relative_error(spectra, choice.method, choice.ranks)
    t0 = cost(layer, info, choice.method, choice.ranks)
    t_orig = cost(layer, info, None, ())
    if t0 is None or t_orig is None:
        raise CaffeTuckerError(f"the cost profile has no fit for layer '{layer.name}' "
                               f"({info.geometry.kernel} kernel over {info.inputs[0][1:]}); hint: "
                               "run 'profile' on this net first")
    candidates = [("vbmf", choice.method, tuple(choice.ranks), t0, e0)]

    def rounded(method, ranks, base_ms, label):
        full = get_method(method).full_ranks(layer, info)
        best = None
        for combo in product(*(round_up(r, f) for r, f in zip(ranks, full))):
            if combo == tuple(ranks) or not _reduces(layer, info, shapes, method, combo):
                continue
            t = cost(layer, info, method, combo)
            if t is None or t > base_ms:
                continue
            if best is None or (sum(combo), -t) > (sum(best[0]), -best[1]):
                best = (combo, t)
        if best is not None:
            candidates.append((label, method, best[0], best[1],
                               relative_error(spectra, method, best[0])))

    rounded(choice.method, choice.ranks, t0, "rounded")
    if choice.method == "tucker2":
        (full1,) = get_method("tucker1").full_ranks(layer, info)
        r1 = next((r for r in range(1, full1 + 1)
                   if relative_error(spectra, "tucker1", (r,)) <= e0 + 1e-12), None)
        if r1 is not None and _reduces(layer, info, shapes, "tucker1", (r1,)):
            t1 = cost(layer, info, "tucker1", (r1,))
            if t1 is not None:
                candidates.append(("tucker1", "tucker1", (r1,), t1,
                                   relative_error(spectra, "tucker1", (r1,))))
                rounded("tucker1", (r1,), t1, "tucker1")
    # the cheapest compressed candidate; on a tie the lower error (free rounding), then VBMF's
    order = {"rounded": 0, "vbmf": 1, "tucker1": 2}
    best = min(candidates, key=lambda c: (c[3], c[4], order[c[0]]))
    if t_orig <= best[3]:
        label, method, ranks, ms, err = "original", choice.method, tuple(choice.ranks), t_orig, 0.0
    else:
        label, method, ranks, ms, err = best
    candidates.append(("original", None, (), t_orig, 0.0))
    return PolicyDecision(layer=layer.name, decision=label, method=method, ranks=tuple(ranks),
                          vbmf_method=choice.method, vbmf_ranks=tuple(choice.ranks), vbmf_ms=t0,
                          chosen_ms=ms, original_ms=t_orig, vbmf_error=e0, chosen_error=err,
                          candidates=tuple(candidates))


def profile_cost(profile):
    """A ``cost`` function for :func:`latency_policy` from a fitted cost profile."""
    from caffe_tucker.caffe.profile import conv_ops, original_op

    def cost(layer, info, method, ranks):
        ops = original_op(layer, info) if method is None else conv_ops(layer, info, method, ranks)
        return profile.predict(ops)

    return cost


def _apply(choice, decision: PolicyDecision, layer, info):
    if decision.decision == "vbmf":
        return choice
    if decision.decision == "original":
        return replace(choice, skipped_reason=(
            f"latency policy: the original layer is predicted at {decision.original_ms:.3f} ms, "
            f"the fastest compressed candidate at {min(c[3] for c in decision.candidates[:-1]):.3f}"
            " ms"))
    m = get_method(decision.method)
    groups = len(choice.group_ranks) or 1
    return replace(choice, method=m.name, ranks=tuple(decision.ranks),
                   full=m.full_ranks(layer, info),
                   group_ranks=tuple(tuple(decision.ranks) for _ in range(groups)),
                   source=f"{choice.source}, latency")


def apply_rank_policy(net, shapes, choices: dict, policy: str = "vbmf", profile=None,
                      cost=None) -> tuple[dict, dict]:
    """Apply ``policy`` to the rank choices; returns ``(choices, decisions by layer)``.

    ``vbmf`` returns them as they are.  ``latency`` needs ``cost`` (see
    :func:`latency_policy`) or a profile: ``profile`` (a path, or None for the newest cached
    profile of this CPU at batch 1).
    """
    check_param("rank-policy", policy, policy in POLICIES, "one of " + ", ".join(map(repr, POLICIES)),
                "convert", exc=CaffeTuckerError)
    if policy == "vbmf":
        return choices, {}
    if cost is None:
        from caffe_tucker.caffe.profile import find_cached, load_profile

        path = profile if profile is not None else find_cached(batch=1)
        if path is None:
            raise CaffeTuckerError("--rank-policy latency needs a cost profile of this machine "
                                   "and none is cached; hint: run 'profile NET.prototxt' first")
        cost = profile_cost(load_profile(path))
    out, decisions = dict(choices), {}
    for name, choice in choices.items():
        layer, info = net.layer(name), shapes.layers[name]
        decision = latency_policy(layer, info, shapes, choice, cost)
        if decision is None:
            continue
        decisions[name] = decision
        out[name] = _apply(choice, decision, layer, info)
    return out, decisions
