"""Run Caffe nets in OpenCV's DNN module: ``verify`` and ``bench`` without Caffe, from pip alone.

:class:`OpenCVRuntime` answers the requests :mod:`caffe_tucker.caffe.verify` and
:mod:`caffe_tucker.caffe.bench` make of a :class:`~caffe_tucker.caffe.pycaffe.CaffeRuntime`
(``hello``, ``forward``, ``time``, ``release``, ``close``, a context manager), with OpenCV's own
Caffe importer (``cv2.dnn.readNetFromCaffe``) in this process::

    with OpenCVRuntime() as cv:
        out = cv.forward(prototxt_text, caffemodel_bytes, {"data": x})   # {"prob": array}
        timing = cv.time(net, batch=8, iterations=10)                     # per layer, via
                                                                          # getPerfProfile

OpenCV is not Caffe: it cannot train, so fine-tuning stays with real Caffe; it names a layer's
output by the *layer*, where Caffe names blobs by their *top*.  A blob written in place (a ReLU
whose top is its bottom) holds, after Caffe's forward pass, what its last writer wrote, so a
blob is fetched from the last layer that has it as a top.  ``forward`` runs without layer fusion
and without Winograd convolutions so that it computes what Caffe computes (to float rounding);
``time`` runs OpenCV as it comes (fusion on: a ReLU fused into its convolution reports 0 ms).

``cv2`` (``opencv-python-headless>=4.5,<5``: OpenCV 5 dropped the Caffe importer) is imported
on first use; without it every request is a one-line :class:`OpenCVUnavailable` with the hint.
"""

from __future__ import annotations

import hashlib
import statistics
import time as _time
from typing import Mapping, Sequence

import numpy as np

from caffe_tucker.caffe.pycaffe import CaffeRuntimeError, CaffeRuntimeUnavailable, _net_sources
from caffe_tucker.graph import Net, net_outputs

__all__ = ["OpenCVRuntime", "OpenCVUnavailable", "import_cv2", "opencv_available",
           "INSTALL_HINT"]

INSTALL_HINT = "pip install 'opencv-python-headless>=4.5,<5' (a dependency of caffe-tucker: reinstall it)"


class OpenCVUnavailable(CaffeRuntimeUnavailable):
    """OpenCV (with its Caffe importer) cannot be imported."""


def import_cv2():
    """The ``cv2`` module, or a one-line :class:`OpenCVUnavailable` with the install hint."""
    try:
        import cv2
    except ImportError as exc:
        raise OpenCVUnavailable(f"the OpenCV runtime needs the opencv-python-headless package, "
                                f"which cannot be imported ({exc}); hint: {INSTALL_HINT}") from None
    if not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
        raise OpenCVUnavailable(f"OpenCV {getattr(cv2, '__version__', '?')} has no Caffe importer "
                                f"(cv2.dnn.readNetFromCaffe; OpenCV 5 dropped it); hint: "
                                f"{INSTALL_HINT}")
    return cv2


def opencv_available() -> str | None:
    """None when ``cv2`` with its Caffe importer can be imported; else the one-line reason."""
    try:
        import_cv2()
    except OpenCVUnavailable as exc:
        return str(exc)
    return None


def _structure(prototxt) -> Net:
    """The net ``forward`` is given (text, a path or a Net), read as every command reads one."""
    if isinstance(prototxt, Net):
        return prototxt
    from caffe_tucker.io.read import NetText, read_prototxt

    if isinstance(prototxt, str):
        prototxt = prototxt.encode("utf-8")
    if isinstance(prototxt, (bytes, bytearray)):
        prototxt = NetText(bytes(prototxt), "<prototxt>")
    return read_prototxt(prototxt)




class OpenCVRuntime:
    """Caffe nets run by OpenCV's DNN module (CPU), in this process; see the module docstring.

    Parameters
    ----------
    threads : int or None
        ``cv2.setNumThreads`` before each request; None leaves OpenCV's default.

    Holds one loaded net at a time (the last one asked about), as the Caffe worker does.
    """

    name = "opencv"
    #: How verify names this runtime when it runs part of a net (analysis/subnet.py).
    runtime_name = "OpenCV"
    #: The layer types verify may run here: BVLC Caffe's and the SSD fork's that OpenCV's Caffe
    #: importer implements, so that a detector verifies as a whole (issue 14).
    layer_types = None  # set below the class, from analysis.subnet

    def __init__(self, threads: int | None = None):
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or threads < 1):
            raise ValueError("The 'threads' parameter of OpenCVRuntime must be an int >= 1 or "
                             f"None. Got {threads!r} instead.")
        self.threads = threads
        self._cv2 = None
        self._loaded: tuple | None = None   # (key, fused, cv2 net, structure, layer names)

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "OpenCVRuntime":
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"OpenCVRuntime({'started' if self._cv2 is not None else 'not started'})"

    def start(self) -> dict:
        """Import cv2 (a one-line OpenCVUnavailable when it cannot be); returns :meth:`hello`."""
        if self._cv2 is None:
            self._cv2 = import_cv2()
        return self.hello()

    def close(self) -> None:
        self.release()

    def release(self) -> None:
        """Drop the loaded net."""
        self._loaded = None

    @property
    def cv2(self):
        if self._cv2 is None:
            self._cv2 = import_cv2()
        return self._cv2

    def hello(self) -> dict:
        """``{"runtime": "opencv", "version", "threads", "caffe_version": None, "blas"}``; ``blas``
        has the keys of :meth:`CaffeRuntime.hello`'s (no library: OpenCV brings its own)."""
        cv2 = self.cv2
        threads = cv2.getNumThreads()
        return {"runtime": "opencv", "version": cv2.__version__, "opencv_version": cv2.__version__,
                "caffe_version": None, "threads": threads,
                "blas": {"library": None, "threads": threads, "corename": None, "config": None}}

    # -- the net --------------------------------------------------------------------------------
    def _load(self, prototxt, caffemodel, fused: bool):
        text, weights = _net_sources(prototxt, caffemodel)
        digest = hashlib.sha1(text.encode("utf-8"))
        digest.update(b"\0weights\0" if weights is not None else b"\0none\0")
        if weights is not None:
            digest.update(weights)
        key = digest.hexdigest()
        if self._loaded is not None and self._loaded[:2] == (key, fused):
            return self._loaded[2], self._loaded[3]
        cv2 = self.cv2
        structure = _structure(prototxt).for_state("TEST")
        self._loaded = None
        try:
            proto = np.frombuffer(text.encode("utf-8"), np.uint8)
            if weights is not None:
                net = cv2.dnn.readNetFromCaffe(proto, np.frombuffer(bytes(weights), np.uint8))
            else:
                net = cv2.dnn.readNetFromCaffe(proto)
        except cv2.error as exc:
            raise self._error("could not read the net", exc) from None
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if not fused:
            net.enableFusion(False)
            if hasattr(net, "enableWinograd"):  # OpenCV >= 4.7
                net.enableWinograd(False)
        self._loaded = (key, fused, net, structure, self._layer_names(net, structure))
        return net, structure

    @staticmethod
    def _layer_names(net, structure: Net) -> dict[str, str]:
        """Caffe layer name -> OpenCV's.  The importer makes one layer per Caffe layer but may
        rename it (a layer whose top is named like another layer takes that name: the last
        Tucker factor ``conv1_tk2`` writing ``conv1`` becomes ``conv1``), so layers are matched
        by position when the counts agree, else by name."""
        cv_names = list(net.getLayerNames())
        caffe = [layer.name for layer in structure.layers if layer.type != "Input"]
        if len(cv_names) == len(caffe):
            return dict(zip(caffe, cv_names))
        known = set(cv_names)
        return {name: name for name in caffe if name in known}

    def _error(self, doing: str, exc) -> CaffeRuntimeError:
        lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        return CaffeRuntimeError(f"OpenCV {self.cv2.__version__} {doing}: {reason}")

    def _set_threads(self, threads: int | None):
        threads = threads if threads is not None else self.threads
        if threads is not None:
            self.cv2.setNumThreads(int(threads))

    def _writers(self, structure: Net) -> dict[str, str]:
        """Caffe blob name -> the OpenCV output that holds it after the pass: the last layer
        writing it (``layer`` for its first top, ``layer.i`` for its i-th)."""
        names = self._loaded[4]
        writers = {}
        for layer in structure.layers:
            for i, top in enumerate(layer.tops):
                if layer.type == "Input":
                    writers[top] = None  # an input: given, not computed
                else:
                    name = names.get(layer.name, layer.name)
                    writers[top] = name if i == 0 else f"{name}.{i}"
        return writers

    # -- requests -------------------------------------------------------------------------------
    def forward(self, prototxt, caffemodel=None, inputs: Mapping[str, np.ndarray] | None = None,
                blobs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One forward pass in OpenCV (CPU, no fusion, no Winograd); arguments and result as
        :meth:`CaffeRuntime.forward` (``blobs`` are Caffe's top names; default: the outputs)."""
        net, structure = self._load(prototxt, caffemodel, fused=False)
        arrays = {str(k): np.ascontiguousarray(v, dtype=np.float32)
                  for k, v in (inputs or {}).items()}
        names = sorted(net_outputs(structure)) if blobs is None else [str(b) for b in blobs]
        writers = self._writers(structure)
        unknown = [b for b in names if b not in writers]
        if unknown:
            raise CaffeRuntimeError(f"OpenCV forward failed: no blob named "
                                    f"{', '.join(repr(b) for b in unknown)} in the net; its blobs "
                                    f"are {list(writers)}")
        self._set_threads(None)
        cv2 = self.cv2
        try:
            for name, value in arrays.items():
                net.setInput(value, name)
            wanted = [writers[b] for b in names if writers[b] is not None]
            values = net.forward(wanted) if wanted else []
        except cv2.error as exc:
            raise self._error("forward failed", exc) from None
        got = dict(zip(wanted, values))
        out = {}
        for b in names:
            value = arrays[b] if writers[b] is None else got[writers[b]]
            out[b] = np.array(value, dtype=np.float32, copy=True)
        return out

    def time(self, prototxt, caffemodel=None, batch: int = 1, iterations: int = 10,
             warmup: int = 2, threads: int | None = None) -> dict:
        """Time the forward pass in OpenCV (CPU, its defaults) on random inputs of ``batch``.

        Each iteration is one whole pass, timed by the clock (``forward_ms``) and, layer by
        layer, by OpenCV itself (``net.getPerfProfile()``); medians over ``iterations`` after
        ``warmup`` passes.  Returns the keys of :meth:`CaffeRuntime.time`, every layer of the
        Caffe net listed (one OpenCV dropped or fused away reports 0 ms); ``blas`` has no
        library and the OpenCV threads in force.
        """
        for name, value, low in (("batch", batch, 1), ("iterations", iterations, 1),
                                 ("warmup", warmup, 0), ("threads", threads, 1)):
            if name == "threads" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"The '{name}' parameter of OpenCVRuntime.time must be an int "
                                 f">= {low}{' or None' if name == 'threads' else ''}. "
                                 f"Got {value!r} instead.")
        from caffe_tucker.analysis.shapes import infer_shapes

        net, structure = self._load(prototxt, caffemodel, fused=True)
        declared = infer_shapes(structure).inputs
        shapes = {name: (batch,) + tuple(shape[1:]) for name, shape in declared.items()}
        rng = np.random.RandomState(0)
        values = {name: rng.standard_normal(shape).astype(np.float32)
                  for name, shape in shapes.items()}
        self._set_threads(threads)
        cv2 = self.cv2
        tick = cv2.getTickFrequency() / 1e3  # ticks per ms
        cv_names = list(net.getLayerNames())
        per_layer = {name: [] for name in cv_names}
        whole = []
        clock = _time.perf_counter
        try:
            for i in range(warmup + iterations):
                for name, value in values.items():
                    net.setInput(value, name)
                t0 = clock()
                net.forward()
                elapsed = clock() - t0
                if i < warmup:
                    continue
                whole.append(1e3 * elapsed)
                _, layer_ticks = net.getPerfProfile()
                for name, ticks in zip(cv_names, np.ravel(layer_ticks)):
                    per_layer[name].append(float(ticks) / tick)
        except cv2.error as exc:
            raise self._error("forward failed", exc) from None
        rows = []
        names = self._loaded[4]
        for layer in structure.layers:
            if layer.type == "Input":
                continue
            times = per_layer.get(names.get(layer.name))
            rows.append({"name": layer.name, "type": layer.type,
                         "ms": statistics.median(times) if times else 0.0})
        in_force = cv2.getNumThreads()
        return {"layers": rows, "forward_ms": statistics.median(whole),
                "layers_sum_ms": sum(row["ms"] for row in rows), "batch": batch,
                "iterations": iterations, "warmup": warmup,
                "input_shapes": {name: list(shape) for name, shape in shapes.items()},
                "blas": {"library": None, "threads": in_force, "corename": None, "config": None},
                "runtime": "opencv", "runtime_version": cv2.__version__}


def _opencv_layer_types() -> frozenset:
    from caffe_tucker.analysis.subnet import BVLC_LAYER_TYPES

    return frozenset(BVLC_LAYER_TYPES) | {"Permute", "PriorBox", "DetectionOutput", "Normalize"}


OpenCVRuntime.layer_types = _opencv_layer_types()
