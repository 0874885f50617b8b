"""The method table: every compression method, registered by name.

Each method is one module here with one :class:`~caffe_tucker.compress.methods.base.Method`
object (``METHOD``); adding a method is a new module plus one :func:`register` call.  Nothing
outside the method modules compares method names: the rest of the tool looks a method up with
:func:`get_method` and asks it.

========  ==================================================================
tucker2   1×1 → D×D → 1×1 convolutions (Kim et al. 2016, eq. 2)
tucker1   D×D → 1×1 convolutions, the output mode only
svd       two InnerProduct layers, truncated SVD
btd       1×1 → D×D in N groups → 1×1: N Tucker-2 blocks (Wang & Cheng 2016)
cp        1×1 → D×1 → 1×D depthwise → 1×1: rank-R CP (Lebedev et al. 2015)
========  ==================================================================
"""

from __future__ import annotations

from caffe_tucker.compress.methods import btd, cp, svd, tucker1, tucker2
from caffe_tucker.compress.methods.base import DecompositionFailed, Method
from caffe_tucker.errors import CaffeTuckerError, check_param

__all__ = ["Method", "DecompositionFailed", "register", "unregister", "get_method", "method_names"]

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the table under ``method.name``; returns it (usable as a decorator)."""
    check_param("method", method, isinstance(method, Method) and bool(method.name)
                and method.name not in _REGISTRY,
                "a Method instance with a new, non-empty name", "register")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (for tests that register a toy method)."""
    _REGISTRY.pop(name, None)


def get_method(name: str, owner: str = "convert") -> Method:
    """The registered method called ``name``; a one-line error naming the known ones otherwise."""
    method = _REGISTRY.get(name)
    if method is None:
        check_param("method", name, False, f"one of {', '.join(_REGISTRY)}", owner,
                    exc=CaffeTuckerError)
    return method


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


for _module in (tucker2, tucker1, svd, btd, cp):
    register(_module.METHOD)
