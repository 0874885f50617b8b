"""What every compression method provides, and the pieces methods share.

A method (Tucker-2, Tucker-1, SVD, ...) is one object, a subclass of
:class:`Method`, that carries everything specific to it:

* which layers it applies to (:meth:`Method.why_not`);
* the kernel(s) of a layer it works on, one per group (:meth:`Method.kernel_groups`),
  the matrices whose ranks are chosen (:meth:`Method.unfoldings`) and their
  full ranks (:meth:`Method.full_ranks`);
* the factorization of one kernel (:meth:`Method.factorize`) and the kernel
  that factors stand for (:meth:`Method.reconstruct`);
* the new layers that replace the original (:meth:`Method.new_layer_params`,
  built into :class:`~caffe_tucker.graph.Layer` s by :meth:`Method.new_layers`),
  their blobs (:meth:`Method.layer_blobs`) and the way back from those blobs to
  factors (:meth:`Method.factors_from_blobs`), which ``verify`` uses;
* the weights and FLOPs of the new layers (:meth:`Method.cost`), counted by
  :func:`caffe_tucker.analysis.cost.layer_cost` on the new layers themselves,
  so there is one cost formula in the whole tool;
* hooks with defaults that fit methods whose ranks are the ranks of their
  unfoldings (Tucker-2, Tucker-1, SVD) and that other methods override: the
  method's ranks from the ranks chosen on the unfoldings and the method
  options (:meth:`Method.auto_ranks`), the check of ranks a user fixed
  (:meth:`Method.check_ranks`), their ``ranks.json`` form
  (:meth:`Method.ranks_file_value`), and how reports show them
  (:meth:`Method.side_ranks`, :meth:`Method.label`, :meth:`Method.unfolding_ranks`).

A factorization that must not be emitted (CP-ALS that diverged, say) raises
:class:`DecompositionFailed`; ``convert`` then leaves the layer untouched with
the exception's message as the reason.

Methods are registered by name in :mod:`caffe_tucker.compress.methods`;
nothing outside the method modules compares method names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from caffe_tucker.analysis.cost import layer_cost
from caffe_tucker.analysis.shapes import ConvGeometry, LayerShapes, infer_shapes
from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.caffe_pb2 import LayerParameter, ParamSpec

__all__ = ["Method", "ConvolutionMethod", "DecompositionFailed", "conv_param", "geometry_of",
           "new_layer_names"]


class DecompositionFailed(Exception):
    """A factorization that must not be emitted; the message says why (one line).

    Raised by :meth:`Method.factorize`; ``convert`` leaves the layer untouched
    and records the message as the reason.
    """

Factors = tuple  # of np.ndarray, one group's factors in the method's order


def new_layer_names(name: str, count: int) -> list[str]:
    """The names of the ``count`` layers (and intermediate blobs) that replace ``name``."""
    return [f"{name}_tk{i}" for i in range(1, count + 1)]


def geometry_of(layer: Layer, info: LayerShapes, whole_map: bool = False) -> ConvGeometry:
    """The layer seen as a convolution.

    A Convolution has its own geometry.  A fully connected layer is a 1×1
    convolution, or with ``whole_map`` an H×W convolution over the (N, C, H, W)
    map it reads (AlexNet's fc6 over pool5).
    """
    if layer.type != "InnerProduct":
        return info.geometry
    p = layer.spec.inner_product_param
    kernel = tuple(info.inputs[0][2:]) if whole_map else (1, 1)
    k = len(kernel)
    return ConvGeometry(kernel=kernel, stride=(1,) * k, pad=(0,) * k, dilation=(1,) * k, group=1,
                        num_output=p.num_output, axis=p.axis, bias_term=p.bias_term)


def _compact(values) -> list[int]:
    values = [int(v) for v in values]
    return values if len(set(values)) > 1 else values[:1]


def conv_param(num_output, kernel, stride=None, pad=None, dilation=None, group=1,
               bias=False) -> dict:
    """A ``convolution_param`` dict; defaults (stride 1, pad 0, dilation 1) are left out."""
    p = {"num_output": int(num_output), "bias_term": bool(bias), "group": int(group),
         "kernel_size": _compact(kernel)}
    if stride and any(s != 1 for s in stride):
        p["stride"] = _compact(stride)
    if pad and any(v != 0 for v in pad):
        p["pad"] = _compact(pad)
    if dilation and any(d != 1 for d in dilation):
        p["dilation"] = _compact(dilation)
    return p


def _multipliers(layer: Layer, with_bias: bool) -> list[ParamSpec]:
    """The layer's ``param`` multipliers for a new layer (never its sharing name)."""
    out = []
    for p in layer.spec.param[: 2 if with_bias else 1]:
        q = ParamSpec()
        q.CopyFrom(p)
        q.ClearField("name")
        q.ClearField("share_mode")
        out.append(q)
    return out


def has_bias(layer: Layer) -> bool:
    if layer.type == "InnerProduct":
        return layer.spec.inner_product_param.bias_term
    return layer.spec.convolution_param.bias_term


class Method(ABC):
    """One compression method; see the module docstring.

    Attributes
    ----------
    name : str
        The name used in presets, ``ranks.json``, ``report.json`` and ``--layers``.
    rank_labels : tuple of str
        One label per rank, e.g. ``("R3", "R4")``; ``len(rank_labels)`` ranks per layer.
    unfolding_labels : dict
        For each unfolding key of :meth:`unfoldings`, a label for plots.
    """

    name: str = ""
    rank_labels: tuple[str, ...] = ()
    unfolding_labels: dict = {}
    #: Types of the new layers, in order (also tells four-file verify which method made them).
    new_types: tuple[str, ...] = ()
    #: Types of the layers the method can replace.
    applies_to_types: tuple[str, ...] = ()

    # -- which layers ----------------------------------------------------------------------------
    @abstractmethod
    def why_not(self, layer: Layer, info: LayerShapes) -> str | None:
        """Why this method cannot be applied to ``layer`` (None if it can)."""

    # -- rank selection --------------------------------------------------------------------------
    @abstractmethod
    def kernel_shape(self, layer: Layer, info: LayerShapes) -> tuple[int, ...]:
        """Shape of one group's kernel, from the shapes alone (no weights needed)."""

    @abstractmethod
    def kernel_groups(self, layer: Layer, info: LayerShapes) -> list[np.ndarray]:
        """The kernel of each group (the arrays :meth:`factorize` takes)."""

    @abstractmethod
    def unfoldings(self, kernel: np.ndarray) -> dict[str, np.ndarray]:
        """The matrices whose ranks are chosen, one per rank, in rank order."""

    @abstractmethod
    def full_ranks(self, layer: Layer, info: LayerShapes) -> tuple[int, ...]:
        """The largest meaningful ranks of one group."""

    def auto_ranks(self, found: Sequence[int], layer: Layer, info: LayerShapes,
                   options: dict) -> tuple[int, ...]:
        """The method's ranks from the ranks chosen on its unfoldings (one each, in order).

        ``options`` holds the method options of ``convert`` (e.g. ``{"blocks": 4}``).
        A 0 among ``found`` (no component above the noise) must give a 0 rank,
        so that the layer is left untouched.  By default the ranks are the
        unfoldings' ranks, at most full.
        """
        return tuple(min(int(r), f) for r, f in zip(found, self.full_ranks(layer, info)))

    def check_ranks(self, value, layer: Layer, info: LayerShapes, name: str,
                    source: str) -> tuple[int, ...]:
        """Validate ranks a user fixed for layer ``name`` (an int, or a list of ints).

        Returns them as a tuple; a one-line :class:`CaffeTuckerError` naming
        ``source`` otherwise.  By default each rank must lie in [1, full].
        """
        labels = self.rank_labels
        values = value if isinstance(value, list) else [value]
        shape = ("one integer" if len(labels) == 1 else
                 f"{'a pair' if len(labels) == 2 else 'a list'} [{', '.join(labels)}]")
        check_param("ranks", value, len(values) == len(labels) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in values),
            f"{shape} for the {self.name} layer '{name}'", source, exc=CaffeTuckerError)
        full = self.full_ranks(layer, info)
        for v, f, label in zip(values, full, labels if len(labels) > 1 else ("rank",)):
            check_param(f"{label}", v, 1 <= v <= f, f"an int in [1, {f}] for layer '{name}'",
                        source, exc=CaffeTuckerError)
        return tuple(values)

    def ranks_file_value(self, ranks: Sequence[int]):
        """A layer's entry in ``ranks.json``; by default the plain :meth:`rank_value`.

        Methods that a preset never assigns by itself write
        ``{"method": name, "ranks": [...]}``, so that the file says how to
        compress the layer when it is read back.
        """
        return self.rank_value(ranks)

    def side_ranks(self, ranks: Sequence[int]) -> tuple[int | None, int]:
        """The rank on the input side (None if the input is not reduced) and on the output side,
        for report.md's S/R3 and T/R4 columns."""
        return (int(ranks[0]) if len(self.rank_labels) > 1 else None, int(ranks[-1]))

    def label(self, ranks: Sequence[int]) -> str:
        """How report.md names the method of a compressed row (the method's name by default)."""
        return self.name

    def unfolding_ranks(self, ranks: Sequence[int]) -> tuple[int, ...]:
        """The rank to mark on each unfolding's spectrum (ranks.png), in unfolding order."""
        return tuple(ranks)

    # -- factorization ---------------------------------------------------------------------------
    @abstractmethod
    def factorize(self, kernel: np.ndarray, ranks: Sequence[int]) -> Factors:
        """The factors of one group's kernel at ``ranks`` (float64)."""

    @abstractmethod
    def reconstruct(self, factors: Factors) -> np.ndarray:
        """The kernel (one group) that ``factors`` stand for."""

    # -- the new layers --------------------------------------------------------------------------
    def geometry(self, layer: Layer, info: LayerShapes) -> ConvGeometry:
        """The geometry the new layers are built from (the layer seen as a convolution)."""
        return geometry_of(layer, info)

    @abstractmethod
    def new_layer_params(self, layer: Layer, geo: ConvGeometry, ranks: Sequence[int],
                         bias: bool) -> list[tuple[str, str, dict]]:
        """``(type, parameter field, parameters)`` of each new layer, in order."""

    @abstractmethod
    def layer_blobs(self, groups: Sequence[Factors], bias: tuple) -> tuple[tuple[np.ndarray, ...], ...]:
        """The float32 blobs of each new layer (the original bias goes with the last)."""

    @abstractmethod
    def factors_from_blobs(self, blobs: Sequence[Sequence[np.ndarray]], group: int) -> list[Factors]:
        """Invert :meth:`layer_blobs`: each group's factors from the new layers' blobs."""

    @abstractmethod
    def ranks_from_layers(self, new_layers: Sequence[Layer], group: int) -> tuple[int, ...]:
        """The ranks that new layers (as written by :meth:`new_layers`) were built with."""

    def new_types_for(self, layer: Layer) -> tuple[str, ...]:
        """The types of the layers that replace ``layer`` (:attr:`new_types` unless a method
        lays out some kinds of layer differently)."""
        return self.new_types

    # -- derived, shared by all methods ----------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.new_types)

    def new_layer_names(self, name: str) -> list[str]:
        return new_layer_names(name, self.n_layers)

    def rank_value(self, ranks: Sequence[int]):
        """Ranks as ``ranks.json`` stores them: a list for several ranks, else one integer."""
        return [int(r) for r in ranks] if len(self.rank_labels) > 1 else int(ranks[0])

    def new_layers(self, layer: Layer, geo: ConvGeometry, ranks: Sequence[int],
                   blobs: Sequence[Sequence[np.ndarray]] | None = None) -> list[Layer]:
        """The layers that replace ``layer``: ``L_tk1`` ... chained from its bottom to its top.

        Intermediate blobs are named like their layers; the last new layer
        writes the original top blob, so every other layer is untouched.
        ``include``/``exclude`` rules carry over, and the ``param`` multipliers
        (weights to every new layer, bias to the last), never a sharing name.
        """
        names = self.new_layer_names(layer.name)
        bottoms = [layer.bottoms[0]] + names[:-1]
        tops = names[:-1] + [layer.tops[0]]
        bias = has_bias(layer)
        base = LayerParameter()
        for rule in layer.spec.include:
            base.include.add().CopyFrom(rule)
        for rule in layer.spec.exclude:
            base.exclude.add().CopyFrom(rule)
        out = []
        kinds = self.new_layer_params(layer, geo, ranks, bias)
        for i, (name, (typ, field, params)) in enumerate(zip(names, kinds)):
            last = i == len(names) - 1
            spec = make_spec(name, typ, [bottoms[i]], [tops[i]], base=base,
                             **{field: params, "param": _multipliers(layer, last and bias)})
            mine = tuple(blobs[i]) if blobs is not None else ()
            if typ == "InnerProduct" and mine:  # Caffe's InnerProduct weights are (N, K)
                mine = (mine[0].reshape(mine[0].shape[0], -1),) + mine[1:]
            out.append(Layer(spec=spec, blobs=mine, line=layer.line))
        return out

    def cost(self, layer: Layer, info: LayerShapes,
             ranks: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Weights and FLOPs of each new layer, per image, as ``info`` counts any layer."""
        x = info.inputs[0]
        feed = Layer(spec=make_spec("input", "Input", [], [layer.bottoms[0]],
                                    input_param={"shape": [{"dim": [1] + list(x[1:])}]}))
        new = self.new_layers(layer, self.geometry(layer, info), ranks)
        mini = Net(layers=(feed, *new))
        shapes = infer_shapes(mini)
        rows = [layer_cost(n, shapes) for n in new]
        return tuple(r.weights for r in rows), tuple(r.flops for r in rows)

    def kernel_from_blobs(self, blobs: Sequence[Sequence[np.ndarray]], group: int = 1) -> np.ndarray:
        """The whole original-layout kernel (all groups) that new layers' blobs compute."""
        factors = self.factors_from_blobs(blobs, group)
        return np.concatenate([self.reconstruct(f) for f in factors])

    def matches(self, original: Layer, info: LayerShapes, new_layers: Sequence[Layer]) -> bool:
        """Whether ``new_layers`` (found by name) are this method's rewrite of ``original``.

        The ranks are read off the new layers, the layers this method would
        write for them are built, and their layer parameters compared.
        """
        if (len(new_layers) != self.n_layers or original.type not in self.applies_to_types
                or tuple(l.type for l in new_layers) != self.new_types_for(original)
                or self.why_not(original, info) is not None):
            return False
        geo = self.geometry(original, info)
        expected = self.new_layers(original, geo, self.ranks_from_layers(new_layers, geo.group))
        for want, got in zip(expected, new_layers):
            fields = [f.name for f, _ in want.spec.ListFields() if f.name.endswith("_param")]
            if any(getattr(want.spec, f) != getattr(got.spec, f) for f in fields):
                return False
        return True

    def __repr__(self):
        return f"<method {self.name}>"


class ConvolutionMethod(Method, ABC):
    """A method for 2-D convolutions alone: their kernels, one per group."""

    applies_to_types = ("Convolution",)
    #: What to use on a fully connected layer instead (named in :meth:`why_not`'s message).
    fc_hint = "svd"

    def why_not(self, layer, info):
        if layer.type == "Convolution":
            return spatial_2d_reason(layer, info)
        if layer.type == "InnerProduct":
            return (f"{self.name} applies to convolutions; use {self.fc_hint} for a fully "
                    "connected layer")
        return f"a {layer.type} layer has no kernel to decompose (only Convolution and InnerProduct)"

    def kernel_shape(self, layer, info):
        return conv_kernel_shape(info)

    def kernel_groups(self, layer, info):
        return conv_kernel_groups(layer, info)


def conv_kernel_groups(layer: Layer, info: LayerShapes) -> list[np.ndarray]:
    """A convolution's kernel split into its groups: ``(T/g, S/g, kh, kw)`` each."""
    w = layer.blobs[0]
    g = info.geometry.group
    t = w.shape[0] // g
    return [w[i * t:(i + 1) * t] for i in range(g)]


def conv_kernel_shape(info: LayerShapes) -> tuple[int, ...]:
    w = info.params[0]
    g = info.geometry.group
    return (w[0] // g,) + tuple(w[1:])


def spatial_2d_reason(layer: Layer, info: LayerShapes) -> str | None:
    geo = info.geometry
    if len(geo.kernel) != 2 or geo.axis != 1:
        return "only 2-D convolutions over axis 1 can be decomposed"
    return None


def one_by_one(blob: np.ndarray) -> np.ndarray:
    """A (O, I, 1, 1) convolution blob as an (O, I) matrix."""
    return blob.reshape(blob.shape[0], -1)
