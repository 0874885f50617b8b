"""The in-memory model every stage works on: a :class:`Net` of :class:`Layer` s.

Reading turns a prototxt (whatever its schema generation) and a caffemodel
into a ``Net``; every later stage takes a ``Net`` and returns a new one;
writing turns a ``Net`` back into Caffe's current format.  Nothing is
modified in place: ``Net`` and ``Layer`` are frozen, and the methods that
"change" them return new objects, in the spirit of onnx-graphsurgeon's
import -> edit -> export.

A layer's settings (``convolution_param``, ``include`` rules, ``param``
multipliers, ...) live in ``Layer.spec``, a ``caffe.LayerParameter`` without
blobs; treat it as read-only and build new specs with :func:`make_spec`.
Weights live in ``Layer.blobs`` as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from caffe_tucker.io.caffe_pb2 import LayerParameter, NetParameter, NetState, Phase
from caffe_tucker.io.wire import encode_blob

__all__ = ["Layer", "Net", "make_spec", "phase_value", "net_outputs"]


def make_spec(name: str, type: str, bottoms: Sequence[str], tops: Sequence[str],
              base: LayerParameter | None = None, **params) -> LayerParameter:
    """Build a ``LayerParameter``: ``base`` (copied) with a new name, type, bottoms, tops.

    Keyword arguments name sub-messages or scalar fields, e.g.
    ``convolution_param={"num_output": 64, "kernel_size": [3]}``.
    """
    spec = LayerParameter()
    if base is not None:
        spec.CopyFrom(base)
        spec.ClearField("blobs")
    spec.name = name
    spec.type = type
    del spec.bottom[:]
    spec.bottom.extend(bottoms)
    del spec.top[:]
    spec.top.extend(tops)
    for key, value in params.items():
        _assign(spec, key, value)
    return spec


def _is_repeated(fd) -> bool:
    # protobuf >= 5 has FieldDescriptor.is_repeated; 7.x removed ``label``.
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == fd.LABEL_REPEATED


def _assign(msg, key, value):
    fd = msg.DESCRIPTOR.fields_by_name[key]
    repeated = _is_repeated(fd)
    if fd.message_type is not None and not repeated:
        sub = getattr(msg, key)
        sub.Clear()
        if isinstance(value, dict):
            for k, v in value.items():
                _assign(sub, k, v)
        else:
            sub.CopyFrom(value)
    elif repeated:
        container = getattr(msg, key)
        del container[:]
        for item in value:
            if fd.message_type is not None:
                new = container.add()
                if isinstance(item, dict):
                    for k, v in item.items():
                        _assign(new, k, v)
                else:
                    new.CopyFrom(item)
            else:
                container.append(item)
    else:
        setattr(msg, key, value)


def phase_value(phase) -> int:
    """Map ``"TRAIN"``/``"TEST"`` (any case) or a ``caffe.Phase`` value to the enum value."""
    if isinstance(phase, str):
        return Phase.Value(phase.upper())
    return int(phase)


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer: its Caffe definition (without blobs), its weights, its source line."""

    spec: LayerParameter
    blobs: tuple[np.ndarray, ...] = ()
    line: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def bottoms(self) -> tuple[str, ...]:
        return tuple(self.spec.bottom)

    @property
    def tops(self) -> tuple[str, ...]:
        return tuple(self.spec.top)

    def with_blobs(self, blobs: Iterable[np.ndarray]) -> "Layer":
        return replace(self, blobs=tuple(blobs))

    def included(self, state: NetState) -> bool:
        """Whether Caffe keeps this layer in a net of the given state (Caffe's FilterNet)."""
        if self.spec.include:
            return any(_rule_matches(rule, state) for rule in self.spec.include)
        return not any(_rule_matches(rule, state) for rule in self.spec.exclude)


def _rule_matches(rule, state: NetState) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


@dataclass(frozen=True, eq=False)
class Net:
    """A whole network: its layers in order plus the net-level settings.

    Attributes
    ----------
    layers : tuple of Layer
    header : caffe.NetParameter
        Net-level fields (name, force_backward, state, debug_info) without layers.
    source : str or None
        Where the definition was read from, for messages.
    upgrades : tuple of str
        The schema upgrades applied while reading (e.g. ``"V1 layers"``).
    weights_source : str or None
        The caffemodel the blobs came from, if any.
    """

    layers: tuple[Layer, ...]
    header: NetParameter = field(default_factory=NetParameter)
    source: str | None = None
    upgrades: tuple[str, ...] = ()
    weights_source: str | None = None

    @property
    def name(self) -> str:
        return self.header.name

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise KeyError(name)

    def with_layers(self, layers: Iterable[Layer]) -> "Net":
        return replace(self, layers=tuple(layers))

    def replace_layer(self, name: str, new: Sequence[Layer]) -> "Net":
        """Return a net where the layer ``name`` is replaced by the layers ``new``."""
        i = self.index(name)
        return self.with_layers(self.layers[:i] + tuple(new) + self.layers[i + 1:])

    def for_state(self, phase="TEST", level: int = 0, stages: Sequence[str] = ()) -> "Net":
        """The net as Caffe instantiates it for a phase (layers filtered by include/exclude)."""
        state = NetState(phase=phase_value(phase), level=level, stage=list(stages))
        return self.with_layers(layer for layer in self.layers if layer.included(state))

    def to_proto(self, with_blobs: bool = True) -> NetParameter:
        """Export to a current-format ``caffe.NetParameter`` (copies)."""
        net = NetParameter()
        net.CopyFrom(self.header)
        for layer in self.layers:
            spec = net.layer.add()
            spec.CopyFrom(layer.spec)
            if with_blobs:
                for blob in layer.blobs:
                    spec.blobs.add().MergeFromString(encode_blob(blob))
        return net


def net_outputs(net: Net) -> list[str]:
    """Caffe's net outputs, in the order the blobs are first produced: the blobs still available
    after the last layer, where each layer's bottoms stop being available and its tops become so
    (an in-place layer takes its blob and gives it back)."""
    available: set[str] = set()
    order: list[str] = []
    for layer in net.layers:
        available.difference_update(layer.bottoms)
        available.update(layer.tops)
        order.extend(t for t in layer.tops if t not in order)
    return [b for b in order if b in available]
