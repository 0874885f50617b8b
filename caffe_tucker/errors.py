"""Exceptions the tool raises for bad input, and the parameter-check helper.

Every problem a user can cause (a missing file, a malformed prototxt, weights
that do not fit the net, an option out of range) is raised as a
:class:`CaffeTuckerError`.  Its message is one line: what is wrong, where
(file, line, layer) and, where there is one, a hint.  The command-line
interface prints that line and exits with status 1; anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CaffeTuckerError",
    "InputFileError",
    "PrototxtError",
    "CaffemodelError",
    "WeightsMismatchError",
    "ShapeError",
    "UnsupportedLayerError",
    "OutputExistsError",
    "OutputLocationError",
    "check_param",
    "where",
]


class CaffeTuckerError(Exception):
    """Base class of every error caused by the user's input or options."""


class InputFileError(CaffeTuckerError):
    """An input file is missing, unreadable, or of the wrong kind."""


class PrototxtError(CaffeTuckerError):
    """A prototxt does not parse as a Caffe net or solver."""


class CaffemodelError(CaffeTuckerError):
    """A ``.caffemodel`` is truncated, corrupt, or not a Caffe model at all."""


class WeightsMismatchError(CaffeTuckerError):
    """The weights in a ``.caffemodel`` do not fit the net they are loaded into."""


class ShapeError(CaffeTuckerError):
    """Blob shapes cannot be inferred (a missing input shape, an impossible layer)."""


class UnsupportedLayerError(CaffeTuckerError):
    """A layer of a type the tool does not know, or cannot handle in this stage."""


class OutputExistsError(CaffeTuckerError):
    """An output would replace an existing file without ``--force``, or an input."""


class OutputLocationError(CaffeTuckerError):
    """An output cannot be written where asked: no permission, a read-only or full file
    system, a path through a regular file."""


def where(source: str | None = None, line: int | None = None, layer: str | None = None) -> str:
    """Format a location prefix such as ``net.prototxt:12: layer 'conv1': ``."""
    parts = []
    if source:
        parts.append(f"{source}:{line}" if line else str(source))
    if layer:
        parts.append(f"layer '{layer}'")
    return ": ".join(parts) + ": " if parts else ""


def check_param(name: str, value, ok: bool, expected: str, owner: str, exc=ValueError):
    """Raise ``exc`` with scikit-learn's message shape when ``ok`` is false.

    The message reads ``The 'rank' parameter of convert must be an int in
    [1, 96]. Got 0 instead.``

    Parameters
    ----------
    name : str
        The parameter's name as the user wrote it.
    value : object
        The offending value; shown with ``repr`` for strings, ``str`` otherwise.
    ok : bool
        Whether ``value`` is acceptable.
    expected : str
        What the parameter must be, completing "must be ...".
    owner : str
        The function, command, or option group the parameter belongs to.
    exc : type, optional
        Exception class to raise; ``ValueError`` by default, a
        :class:`CaffeTuckerError` subclass where the value came from the user.
    """
    if not ok:
        shown = repr(value) if isinstance(value, str) else str(value)
        raise exc(f"The '{name}' parameter of {owner} must be {expected}. Got {shown} instead.")
    return value
