"""Which engine runs the nets of ``verify`` and ``bench``: the one place that chooses.

``caffe``  real Caffe through a pycaffe worker (:class:`~caffe_tucker.caffe.pycaffe.CaffeRuntime`);
           the reference, and the only one that trains (fine-tuning needs it).
``opencv`` OpenCV's DNN module in this process (:class:`~caffe_tucker.caffe.opencv_runtime.
           OpenCVRuntime`): forward passes and per-layer times from pip alone, no root.
``auto``   Caffe when a command is configured (``--caffe-python`` or ``$CAFFE_TUCKER_PYTHON``),
           else OpenCV when ``cv2`` imports, else a one-line error with both hints.

(``bench --runtime onnxruntime`` times ONNX exports whole; it is :mod:`caffe_tucker.export.
ort_bench`'s and needs no runtime object.)
"""

from __future__ import annotations

import os

from caffe_tucker.caffe.pycaffe import (DEFAULT_TIMEOUT, ENV_VAR, HOW_TO_GET_ONE, CaffeRuntime,
                                        CaffeRuntimeUnavailable)

__all__ = ["RUNTIMES", "choose_runtime", "describe_runtime", "caffe_configured"]

#: The choices of ``--runtime`` for ``verify`` (``bench`` adds ``onnxruntime``).
RUNTIMES = ("auto", "caffe", "opencv")


def caffe_configured(command=None) -> str | None:
    """Where a Caffe command comes from (``--caffe-python``, ``$CAFFE_TUCKER_PYTHON``), or None."""
    if command is not None and str(command).strip():
        return "--caffe-python given"
    if os.environ.get(ENV_VAR, "").strip():
        return f"{ENV_VAR} set"
    return None


def choose_runtime(choice: str = "auto", command=None, timeout: float = DEFAULT_TIMEOUT):
    """``(runtime, why)``: the runtime ``choice`` names (not started yet; a context manager) and,
    for ``auto``, why it was picked (None for an explicit choice).

    Raises
    ------
    CaffeRuntimeUnavailable
        For ``auto`` with neither a Caffe command nor an importable cv2 (one line, both hints);
        ``caffe`` without a command; ``opencv`` without cv2 (when the runtime starts).
    ValueError
        For an unknown ``choice``.
    """
    from caffe_tucker.caffe.opencv_runtime import INSTALL_HINT, OpenCVRuntime, opencv_available

    if choice not in RUNTIMES:
        raise ValueError(f"The 'choice' parameter of choose_runtime must be one of "
                         f"{', '.join(RUNTIMES)}. Got {choice!r} instead.")
    why = None
    if choice == "auto":
        why = caffe_configured(command)
        if why is not None:
            choice = "caffe"
        elif opencv_available() is None:
            choice, why = "opencv", "no Caffe configured"
        else:
            raise CaffeRuntimeUnavailable(
                f"no runtime to run the nets: no Caffe configured ({HOW_TO_GET_ONE}) and no "
                f"OpenCV to fall back on (hint: {INSTALL_HINT}, or pass --runtime)")
    if choice == "caffe":
        return CaffeRuntime(command, timeout=timeout), why
    return OpenCVRuntime(), why


def describe_runtime(runtime) -> str:
    """``opencv 4.10.0`` or ``caffe 1.0.0``: the started runtime's name and version."""
    info = runtime.hello()
    if info.get("runtime") == "opencv":
        return f"opencv {info['version']}"
    return f"caffe {info.get('caffe_version') or '?'}"
