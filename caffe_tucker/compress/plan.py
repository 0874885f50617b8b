"""Which layers to compress, and how: the paper's presets and the ``auto`` rule.

The methods themselves are in :mod:`caffe_tucker.compress.methods`.

Presets
-------
``alexnet``, ``vgg_s``, ``googlenet``, ``vgg16`` follow the paper (Section 4
and Tables 2-5; each zoo model's ``compress`` map).  ``auto``, for any other
net: the first convolution of the net ``tucker1``, every other convolution
with a kernel larger than 1×1 ``tucker2``, every fully connected layer
``svd``; 1×1 convolutions and deconvolutions are left alone.  ``with_fc`` (``--with-fc``) adds
the fully connected layers a preset leaves alone (VGG-16's, GoogLeNet's), with ``svd``.
"""

from __future__ import annotations

from caffe_tucker.compress.methods import get_method
from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.analysis.shapes import ShapeInfo
from caffe_tucker.graph import Net
from caffe_tucker.io.read import read_prototxt
from caffe_tucker.zoo import zoo_model, zoo_names

__all__ = ["AUTO", "presets", "make_plan", "detect_preset", "decomposable"]

#: The ``auto`` preset, for nets other than the paper's: which method each kind of layer gets.
AUTO = {"first convolution": "tucker1", "convolution": "tucker2", "fully connected": "svd"}


def presets() -> tuple[str, ...]:
    """``auto`` and every zoo model with a ``compress`` map."""
    return ("auto",) + tuple(n for n in zoo_names() if zoo_model(n).get("compress"))


def decomposable(net: Net, shapes: ShapeInfo, name: str, method: str) -> str | None:
    """Why ``method`` cannot be applied to layer ``name`` (None if it can)."""
    info = shapes.layers[name]
    if any(s is None for s in info.inputs + info.outputs):
        return ("its shapes are unknown (it follows a layer whose shapes are not inferred, "
                "see the warning)")
    return get_method(method).why_not(net.layer(name), info)


def detect_preset(net: Net) -> str:
    """The zoo preset whose deploy has exactly this net's conv/fc layers, else ``auto``."""
    def signature(n: Net):
        return [(l.name, l.type) for l in n.layers if l.type in ("Convolution", "InnerProduct")]

    mine = signature(net)
    for name in presets()[1:]:
        try:
            zoo_net = read_prototxt(zoo_model(name)["deploy_path"])
        except CaffeTuckerError:
            continue
        if signature(zoo_net) == mine:
            return name
    return "auto"


def make_plan(net: Net, shapes: ShapeInfo, preset: str = "auto", layers=None,
              methods=None, method: str | None = None, with_fc: bool = False) -> dict[str, str]:
    """Map layer name -> method for the layers to compress, in net order.

    Parameters
    ----------
    preset : str
        One of :data:`PRESETS`.
    layers : sequence of str, optional
        Restrict the plan to these layers (``--layers``); each must exist and
        be decomposable (a layer the preset leaves alone gets the ``auto`` method).
    methods : mapping of str to str, optional
        Layer name -> method name (``--method conv2=tucker1``): these layers are compressed with
        that method, whatever the preset says (and added to the plan if it left them alone).
    method : str, optional
        A method for every planned layer it applies to (a bare ``--method btd``); the layers it
        does not apply to keep the preset's method, and ``methods`` wins over it.
    with_fc : bool, default False
        Also compress the fully connected layers the preset leaves alone, with the ``auto``
        rule's method (``--with-fc``: VGG-16's fc6-fc8, which the paper keeps, are 23% of its
        batch-1 time in Caffe and cap the whole net's speed-up, issue 13).
    """
    known = presets()
    check_param("preset", preset, preset in known, f"one of {', '.join(known)}", "convert",
                exc=CaffeTuckerError)
    auto = _auto_plan(net, shapes)
    if preset == "auto":
        plan = auto
    else:
        wanted = zoo_model(preset)["compress"]
        missing = [n for n in wanted if n not in shapes.layers]
        if missing:
            raise CaffeTuckerError(
                f"{net.source}: preset '{preset}' compresses layer '{missing[0]}', which this net does "
                "not have; hint: use --preset auto for nets other than the paper's")
        plan = {l.name: wanted[l.name] for l in net.layers if l.name in wanted}
    if with_fc:
        plan = {l.name: plan.get(l.name) or auto[l.name] for l in net.layers
                if l.name in plan or (l.name in auto and l.type == "InnerProduct")}
    if layers is not None:
        chosen = {}
        for name in layers:
            if name not in shapes.layers:
                raise CaffeTuckerError(f"{net.source}: --layers names '{name}', which the net does not "
                                       "have")
            planned = plan.get(name) or auto.get(name) or _default_method(net, shapes, name)
            reason = decomposable(net, shapes, name, planned)
            if reason:
                raise CaffeTuckerError(f"{net.source}: layer '{name}' cannot be compressed: {reason}")
            chosen[name] = planned
        plan = {l.name: chosen[l.name] for l in net.layers if l.name in chosen}
    if method is not None:
        get_method(method)
        plan = {name: method if decomposable(net, shapes, name, method) is None else m
                for name, m in plan.items()}
    if methods:
        for name, named in methods.items():
            if name not in shapes.layers:
                raise CaffeTuckerError(f"{net.source}: --method names layer '{name}', which the "
                                       "net does not have; hint: check the layer names with 'info'")
            get_method(named)
        plan = {l.name: methods.get(l.name) or plan[l.name] for l in net.layers
                if l.name in plan or l.name in methods}
    for name, planned in plan.items():
        reason = decomposable(net, shapes, name, planned)
        if reason:
            raise CaffeTuckerError(f"{net.source}: layer '{name}' cannot be compressed with {planned}: "
                                   f"{reason}")
    return plan


def _default_method(net: Net, shapes: ShapeInfo, name: str) -> str:
    return AUTO["fully connected" if net.layer(name).type == "InnerProduct" else "convolution"]


def _auto_plan(net: Net, shapes: ShapeInfo) -> dict[str, str]:
    plan = {}
    first_conv = True
    for layer in net.layers:
        info = shapes.layers.get(layer.name)
        if info is None or any(s is None for s in info.outputs):
            continue
        if layer.type == "Convolution":
            geo = info.geometry
            if first_conv:
                first_conv = False
                kind = "first convolution"
            elif max(geo.kernel) > 1:
                kind = "convolution"
            else:
                continue
        elif layer.type == "InnerProduct":
            kind = "fully connected"
        else:
            continue
        if decomposable(net, shapes, layer.name, AUTO[kind]) is None:
            plan[layer.name] = AUTO[kind]
    return plan
