"""The Caffe worker: runs inside the pycaffe interpreter, driven by :mod:`caffe_tucker.caffe.pycaffe`.

This file is a standalone script.  It needs only the standard library, numpy and pycaffe (BVLC
Caffe 1.0), runs on Python 3.6 or later, and never imports anything from caffe_tucker: the runtime
sends its source to the other interpreter (``python3 -c BOOTSTRAP``, then the source on stdin) and
talks to it over stdin/stdout only, so it works the same through ``chroot DIR python3``,
``docker run --rm -i IMAGE python3`` or ``conda run -n ENV python``, with no shared filesystem.
The runtime imports this module too, for the framing functions (they do not touch caffe).

Protocol (version 1).  Every message, in both directions, is one frame::

    b"CTKW"  uint64 little-endian N  N bytes of UTF-8 JSON header  payload 0  payload 1 ...

The header's ``"payloads"`` lists the byte length of each payload that follows.  Inside the
header, ``{"$bytes": i}`` stands for payload ``i`` as bytes (read back as a bytearray) and
``{"$array": i, "dtype": "<f4", "shape": [...]}`` for payload ``i`` as a C-order numpy array.
After the bootstrap the worker sends ``{"type": "ready", ...}`` (or ``{"type": "ready", "ok":
false, "error": ...}`` when caffe does not import); then each request ``{"type": T, ...}`` gets
exactly one response, ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``.
``{"type": "quit"}`` or EOF ends it.
Requests: ``hello``, ``forward``, ``time``, ``train``, and a training session's ``session_open``,
``session_step``, ``session_set_params``, ``session_get``, ``session_weights``,
``session_snapshot``, ``session_restore``, ``session_close`` (see the ``_req_*`` methods).
A Caffe CHECK failure aborts the whole process; the runtime then reads the reason from the
worker's stderr.
"""

import json
import os
import shutil
import struct
import sys
import time

try:  # numpy is optional only so that the bootstrap can report its absence cleanly
    import numpy as np
except ImportError:  # pragma: no cover - exercised through the worker's ready message
    np = None

PROTOCOL = 1
MAGIC = b"CTKW"
_LEN = struct.Struct("<Q")
MAX_HEADER = 256 << 20

# The -c argument given to the interpreter: check the version, read the worker's source (its
# byte length on one line, then the source) from stdin, and run it as __main__.  One line with no
# quotes, so that command prefixes that re-quote their arguments (conda run) pass it intact.
BOOTSTRAP = ("import sys;sys.version_info<(3,6)and sys.exit('caffe_tucker: the Caffe worker needs "
             "Python 3.6 or later, this is Python '+sys.version.split()[0]);"
             "n=int(sys.stdin.buffer.readline());"
             "exec(compile(sys.stdin.buffer.read(n),'caffe_worker.py','exec'))")


class ProtocolError(Exception):
    """The other side sent something that is not a frame of this protocol."""


# ---------------------------------------------------------------------------------------------
# Framing (shared with the runtime)

def _encode(value, payloads):
    """Replace arrays and bytes in ``value`` by payload references (appending to ``payloads``)."""
    if np is not None and isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        payloads.append(memoryview(arr.reshape(-1).view(np.uint8)))
        return {"$array": len(payloads) - 1, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        payloads.append(memoryview(value).cast("B") if isinstance(value, memoryview) else value)
        return {"$bytes": len(payloads) - 1}
    if isinstance(value, dict):
        return dict((str(k), _encode(v, payloads)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_encode(v, payloads) for v in value]
    if np is not None and isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value, payloads):
    if isinstance(value, dict):
        if "$array" in value and len(value) == 3:
            buf = payloads[value["$array"]]
            return np.frombuffer(buf, dtype=np.dtype(value["dtype"])).reshape(value["shape"])
        if "$bytes" in value and len(value) == 1:
            return payloads[value["$bytes"]]  # a bytearray: no copy of a large caffemodel
        return dict((k, _decode(v, payloads)) for k, v in value.items())
    if isinstance(value, list):
        return [_decode(v, payloads) for v in value]
    return value


def write_message(stream, message):
    """Write one frame holding ``message`` (a JSON-able dict that may contain arrays and bytes)."""
    payloads = []
    header = _encode(message, payloads)
    header["payloads"] = [len(p) if not isinstance(p, memoryview) else p.nbytes for p in payloads]
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    stream.write(MAGIC + _LEN.pack(len(text)) + text)
    for p in payloads:
        stream.write(p)
    stream.flush()


def _read_exact(stream, n):
    """Read exactly ``n`` bytes into a writable bytearray; None on EOF before the first byte."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            if got == 0:
                return None
            raise EOFError("end of stream after %d of %d bytes" % (got, n))
        got += k
    return buf


def read_message(stream):
    """Read one frame; returns the decoded dict, or None at a clean end of stream."""
    head = _read_exact(stream, len(MAGIC) + _LEN.size)
    if head is None:
        return None
    if bytes(head[:len(MAGIC)]) != MAGIC:
        raise ProtocolError(bytes(head))
    (n,) = _LEN.unpack(bytes(head[len(MAGIC):]))
    if n > MAX_HEADER:
        raise ProtocolError(bytes(head))
    text = _read_exact(stream, n)
    if text is None:
        raise EOFError("end of stream before the message header")
    header = json.loads(text.decode("utf-8"))
    payloads = []
    for size in header.pop("payloads", []):
        data = _read_exact(stream, int(size)) if size else bytearray()
        if data is None:
            raise EOFError("end of stream before a payload")
        payloads.append(data)
    return _decode(header, payloads)


# ---------------------------------------------------------------------------------------------
# The worker

class RequestError(Exception):
    """A request that cannot be served; answered with ``{"ok": false, "error": message}``."""

    def __init__(self, message, code="error"):
        Exception.__init__(self, message)
        self.code = code


def _one_line(text):
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _median(values):
    values = sorted(values)
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


# BLAS sonames tried when /proc/self/maps cannot be read (a chroot without /proc): only ones
# already in the process are opened (RTLD_NOLOAD), so nothing new is loaded.
_BLAS_SONAMES = ("libopenblas.so.0", "libblas.so.3", "libopenblas.so", "libopenblasp-r0.so",
                 "libopenblas64_.so.0", "libcblas.so.3")


def _library_path(handle, symbol):
    """The file a symbol of ``handle`` was loaded from (dladdr), or None."""
    import ctypes

    class _DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                    ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]

    try:
        info = _DlInfo()
        address = ctypes.cast(getattr(handle, symbol), ctypes.c_void_p)
        if ctypes.CDLL(None).dladdr(address, ctypes.byref(info)) and info.fname:
            return os.fsdecode(info.fname)
    except Exception:
        pass
    return None


def _openblas_handles():
    """ctypes handles of the OpenBLAS libraries in this process, one per file: [(path, handle)].

    Found through the global symbol table, the BLAS files mapped in /proc/self/maps, then the
    usual sonames (only when already loaded); every step guarded, so a build without OpenBLAS
    gives [].
    """
    try:
        import ctypes
    except Exception:
        return []
    candidates = [None]
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "blas" in os.path.basename(path) and path not in candidates:
                    candidates.append(path)
    except Exception:
        pass
    candidates += [name for name in _BLAS_SONAMES if name not in candidates]
    found, seen = [], set()
    for name in candidates:
        try:
            if name is None:
                handle = ctypes.CDLL(None)
            else:
                handle = ctypes.CDLL(name, mode=getattr(os, "RTLD_NOLOAD", 4) | ctypes.RTLD_LOCAL)
            if not hasattr(handle, "openblas_get_num_threads"):
                continue
        except Exception:
            continue
        path = _library_path(handle, "openblas_get_num_threads") or name or "(global)"
        real = os.path.realpath(path) if os.path.isabs(path) else path
        if real in seen:
            continue
        seen.add(real)
        found.append((path, handle))
    return found


def _openblas_text(handle, name):
    """The string an ``openblas_get_*`` function returns, or None."""
    try:
        import ctypes
        function = getattr(handle, name)
        function.restype = ctypes.c_char_p
        value = function()
        return None if value is None else value.decode("utf-8", "replace").strip()
    except Exception:
        return None


def blas_info(threads=None):
    """The BLAS this process computes with: ``{"library", "threads", "corename", "config"}``.

    ``threads`` (an int >= 1) is first set in every OpenBLAS of the process
    (``openblas_set_num_threads``); the threads reported are those then in force.  Without
    OpenBLAS every value is None.
    """
    handles = _openblas_handles()
    if threads is not None:
        for _, handle in handles:
            try:
                handle.openblas_set_num_threads(int(threads))
            except Exception:
                pass
    if not handles:
        return {"library": None, "threads": None, "corename": None, "config": None}
    path, handle = handles[0]
    try:
        in_force = int(handle.openblas_get_num_threads())
    except Exception:
        in_force = None
    return {"library": path, "threads": in_force,
            "corename": _openblas_text(handle, "openblas_get_corename"),
            "config": _openblas_text(handle, "openblas_get_config")}


def _clean_stale_tempdirs(prefix):
    """Remove temp dirs left by workers that Caffe aborted (their pid is in the name)."""
    import tempfile
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        try:
            pid = int(name[len(prefix):].split("_", 1)[0])
            os.kill(pid, 0)
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except OSError:
            continue


def _weighted_loss(net):
    """The loss of the last forward pass: the loss outputs weighted as the solver weighs them."""
    loss = 0.0
    weights_of = net.blob_loss_weights
    for n in net.outputs:
        w = weights_of.get(n, 0.0)
        if w:
            loss += w * float(net.blobs[n].data.sum())
    return loss


def _scalar_outputs(net):
    return [n for n in net.outputs if net.blobs[n].data.size == 1]


def _copy_weights(net, base, weights):
    """Copy weights (caffemodel bytes, or None for none) into ``net`` by layer name."""
    if weights is None:
        return
    path = os.path.join(base, "initial.caffemodel")
    with open(path, "wb") as f:
        f.write(weights)
    try:
        net.copy_from(path)  # weights that do not fit abort here (glog)
    finally:
        os.remove(path)


def _shape(arr):
    return list(np.shape(arr))


def _learnable(params):
    """(layer, blob index, shape) of the solver's learnable blobs, in the order of its history:
    every blob of every layer with blobs, in net order, but a blob shared with an earlier layer
    (same data) only once."""
    seen = set()
    out = []
    for layer, blobs in params.items():
        for j, blob in enumerate(blobs):
            data = blob.data
            key = data.__array_interface__["data"][0]
            if key in seen:
                continue
            seen.add(key)
            out.append((layer, j, list(data.shape)))
    return out


class _Session(object):
    """The state of one training session (``session_open`` .. ``session_close``).

    The solver holds the gradient hook for as long as it lives and Caffe never frees it, so the
    hook refers only to ``pending``, which holds the net, the solver and the work of one step
    while ``solver.step(1)`` runs and nothing otherwise: no reference cycle keeps a closed
    session's solver alive.
    """

    def __init__(self, token, solver, base, batch, lr_reliable):
        self.token = token
        self.solver = solver
        self.net = solver.net
        self.base = base
        self.batch = batch
        self.lr_reliable = lr_reliable
        self.params = self.net.params           # layer name -> BlobVec (pycaffe caches it)
        self.inputs = list(self.net.inputs)
        self.scalars = _scalar_outputs(self.net)
        self.pending = {}
        solver.add_callback(_nothing, _gradient_hook(self.pending))


def _nothing():
    pass


def _gradient_hook(pending):
    """The solver's ``on_gradients_ready`` callback of a session.

    ``Solver::Step`` calls it once per iteration after ``ForwardBackward`` and before
    ``ApplyUpdate`` (which regularizes, applies the lr and momentum, and updates the weights), so
    what it adds to a diff goes through the solver's own update rule, and a masked diff stays
    masked under weight decay as long as the masked weights are 0.  The diffs asked for with
    ``fetch_diffs`` are copied here too, last: the gradient the update is about to apply (after
    the additions and masks, before weight decay, momentum and the lr).  ``solver.lr`` is read here
    because ``GetLearningRate`` depends on ``iter``, which ``Step`` increments only after the
    update.  pycaffe's other hook, ``Net.after_backward``, would do too (the backward pass ends
    with layer 0), but it calls into Python once per layer per iteration, to be filtered by
    index, and belongs to the net rather than to the solver's step.
    """
    def on_gradients_ready():
        solver = pending.get("solver")
        if solver is None:
            return
        if pending.get("lr_reliable"):
            pending["lr"] = float(solver.lr)
        for blob, add, zero in pending.get("work", ()):
            diff = blob.diff
            if add is not None:
                diff += add
            if zero is not None:
                np.copyto(diff, 0.0, where=zero)
        diffs = pending.get("diffs")
        if diffs is not None:
            for layer, blob in pending.get("diff_blobs", ()):
                diffs[layer] = np.array(blob.diff, dtype=np.float32, copy=True)
    return on_gradients_ready


class Worker(object):
    TMP_PREFIX = "caffe_tucker_worker_"

    def __init__(self, caffe, out):
        import tempfile
        self.caffe = caffe
        self.out = out
        _clean_stale_tempdirs(self.TMP_PREFIX)
        self.tmp = tempfile.mkdtemp(prefix="%s%d_" % (self.TMP_PREFIX, os.getpid()))
        self.net = None
        self.net_key = None
        self.count = 0
        self.session = None

    def close(self):
        self._end_session()
        self.net = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- loading ------------------------------------------------------------------------------
    def _load(self, req):
        """The caffe.Net of a request: the cached one when its key matches, else a new one."""
        key = req.get("net_key")
        prototxt = req.get("prototxt")
        if prototxt is None:
            if key is not None and key == self.net_key and self.net is not None:
                return self.net
            raise RequestError("the worker does not hold net %r; send its prototxt" % (key,),
                               code="net_not_loaded")
        self.net = None
        self.net_key = None
        self.count += 1
        proto_path = os.path.join(self.tmp, "net%d.prototxt" % self.count)
        with open(proto_path, "w") as f:
            f.write(prototxt)
        weights = req.get("caffemodel")
        weights_path = None
        if weights is not None:
            weights_path = os.path.join(self.tmp, "net%d.caffemodel" % self.count)
            with open(weights_path, "wb") as f:
                f.write(weights)
        caffe = self.caffe
        caffe.set_mode_cpu()
        try:
            # A net Caffe cannot parse, or weights that do not fit it, abort the process here:
            # the runtime reports what glog printed on stderr.
            if weights_path is not None:
                net = caffe.Net(proto_path, weights_path, caffe.TEST)
            else:
                net = caffe.Net(proto_path, caffe.TEST)
        finally:
            for path in (proto_path, weights_path):
                if path is not None:
                    try:
                        os.remove(path)
                    except OSError:
                        pass
        self.net = net
        self.net_key = key
        return net

    def _set_inputs(self, net, inputs):
        names = list(net.inputs)
        for name in inputs:
            if name not in names:
                raise RequestError("%r is not an input blob of the net; its inputs are %s"
                                   % (name, names or "none (the net has no Input layer)"))
        missing = [name for name in names if name not in inputs]
        if missing:
            raise RequestError("no array given for the net's input blob(s) %s" % missing)
        arrays = {}
        for name in names:
            arr = np.ascontiguousarray(inputs[name], dtype=np.float32)
            if arr.ndim == 0:
                raise RequestError("input %r is a scalar; give an array such as N,C,H,W" % name)
            arrays[name] = arr
            net.blobs[name].reshape(*arr.shape)
        net.reshape()  # shape mismatches inside the net abort here, with Caffe's CHECK message
        for name, arr in arrays.items():
            net.blobs[name].data[...] = arr

    def _blob_names(self, net, blobs):
        if blobs is None:
            return list(net.outputs)
        unknown = [b for b in blobs if b not in net.blobs]
        if unknown:
            raise RequestError("no blob named %s in the net; its blobs are %s"
                               % (", ".join(repr(b) for b in unknown), list(net.blobs.keys())))
        return list(blobs)

    # -- requests -----------------------------------------------------------------------------
    def _req_release(self, req):
        """Drop the cached net (its blobs can be gigabytes); the next forward loads it again."""
        import gc
        had = self.net is not None
        self.net = None
        self.net_key = None
        gc.collect()
        return {"released": had}

    def _req_hello(self, req):
        caffe = self.caffe
        info = {
            "caffe_version": getattr(caffe, "__version__", "unknown"),
            "caffe_path": os.path.dirname(getattr(caffe, "__file__", "") or ""),
            "python_version": sys.version.split()[0],
            "python_executable": sys.executable,
            "numpy_version": np.__version__,
            "protocol": PROTOCOL,
            "pid": os.getpid(),
            "nets_loaded": self.count,
            "blas": blas_info(),
        }
        try:
            info["layer_types"] = sorted(caffe.layer_type_list())
        except Exception:  # not in every pycaffe build
            info["layer_types"] = None
        return info

    def _req_forward(self, req):
        net = self._load(req)
        names = self._blob_names(net, req.get("blobs"))
        self._set_inputs(net, req.get("inputs") or {})
        net.forward()
        out = {}
        for name in names:
            out[name] = np.array(net.blobs[name].data, dtype=np.float32, copy=True)
        return {"blobs": out, "order": names}

    def _req_time(self, req):
        net = self._load(req)
        batch = int(req.get("batch", 1))
        iterations = int(req.get("iterations", 10))
        warmup = int(req.get("warmup", 2))
        if batch < 1 or iterations < 1 or warmup < 0:
            raise RequestError("time needs batch >= 1, iterations >= 1 and warmup >= 0; got "
                               "batch=%d, iterations=%d, warmup=%d" % (batch, iterations, warmup))
        threads = req.get("threads")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or threads < 1):
            raise RequestError("time needs threads >= 1 or null; got %r" % (threads,))
        blas = blas_info(threads)
        rng = np.random.RandomState(0)
        shapes = {}
        for name in net.inputs:
            shape = (batch,) + tuple(net.blobs[name].data.shape[1:])
            net.blobs[name].reshape(*shape)
            shapes[name] = list(shape)
        net.reshape()
        for name in net.inputs:
            blob = net.blobs[name]
            blob.data[...] = rng.standard_normal(blob.data.shape).astype(np.float32)
        names = list(net._layer_names)
        types = [layer.type for layer in net.layers]
        n = len(names)
        if n == 0:
            raise RequestError("the net has no layers to time")
        clock = time.perf_counter
        for _ in range(warmup):
            net._forward(0, n - 1)
        per_layer = [[] for _ in range(n)]
        whole = []
        for _ in range(iterations):
            for i in range(n):
                t0 = clock()
                net._forward(i, i)
                per_layer[i].append(clock() - t0)
            t0 = clock()
            net._forward(0, n - 1)
            whole.append(clock() - t0)
        layers = [{"name": names[i], "type": types[i], "ms": 1e3 * _median(per_layer[i])}
                  for i in range(n)]
        return {"layers": layers, "forward_ms": 1e3 * _median(whole),
                "layers_sum_ms": sum(layer["ms"] for layer in layers), "batch": batch,
                "iterations": iterations, "warmup": warmup, "input_shapes": shapes, "blas": blas}

    def _req_train(self, req):
        """Train a net with a Caffe solver, feeding its Input blobs from arrays.

        Request: ``solver`` (SolverParameter text; its net fields, test nets and snapshots are
        replaced), ``net`` (the train net's prototxt text; every input is an Input layer),
        ``caffemodel`` (optional initial weights, copied by layer name), ``inputs`` (one array
        per input blob of the net, all with the same first dimension N: the samples), ``seed``
        (optional: overrides the solver's ``random_seed`` and seeds the shuffling; 0 otherwise)
        and ``shuffle`` (default true).  Each iteration the next ``batch`` samples of a stream of
        permutations of range(N) (numpy RandomState(seed); range(N) repeated when not shuffling)
        are copied into the input blobs and ``solver.step(1)`` runs, so the solver's own
        schedule (lr policy, momentum, weight decay) applies; ``max_iter`` iterations in all.

        Response: ``caffemodel`` (the trained weights, ``net.save``), ``iterations`` (int32
        1..max_iter), ``loss`` (float32: the weighted sum of the loss outputs after each
        iteration), ``outputs`` (float32 per scalar output blob of the net), ``batch``,
        ``max_iter``, ``seconds``.
        """
        caffe = self.caffe
        param = self._parse_solver(req, "train")
        if param.max_iter < 1:
            raise RequestError("the solver's max_iter must be >= 1; got %d" % param.max_iter)
        seed = req.get("seed")
        shuffle_seed = int(seed) if seed is not None else 0
        base, solver_path = self._write_solver(param, req, "train")
        caffe.set_mode_cpu()
        try:
            solver = caffe.get_solver(solver_path)  # an unparsable net aborts here (glog)
            net = solver.net
            _copy_weights(net, base, req.get("caffemodel"))
            inputs = req.get("inputs") or {}
            names = list(net.inputs)
            if not names:
                raise RequestError("the train net has no Input layer to feed")
            unknown = [n for n in inputs if n not in names]
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise RequestError("train needs exactly one array per input blob of the net %s; "
                                   "got %s" % (names, sorted(inputs)))
            arrays = dict((n, np.asarray(inputs[n], dtype=np.float32)) for n in names)
            sizes = set(a.shape[0] if a.ndim else -1 for a in arrays.values())
            if len(sizes) != 1 or min(sizes) < 1:
                raise RequestError("the input arrays must share a first dimension N >= 1 (the "
                                   "samples); got shapes %s"
                                   % dict((n, list(a.shape)) for n, a in arrays.items()))
            count = sizes.pop()
            batch = int(net.blobs[names[0]].data.shape[0]) if net.blobs[names[0]].data.ndim else 1
            for n in names:
                blob = net.blobs[n].data
                if blob.ndim == 0 or blob.shape[0] != batch:
                    raise RequestError("the net's input blobs must share a batch dimension; "
                                       "%r has shape %s" % (n, list(blob.shape)))
                if tuple(arrays[n].shape[1:]) != tuple(blob.shape[1:]):
                    raise RequestError("input %r: a sample has shape %s, but the net's blob "
                                       "takes %s" % (n, list(arrays[n].shape[1:]),
                                                     list(blob.shape[1:])))
            rng = np.random.RandomState(shuffle_seed)
            order = np.zeros(0, dtype=np.int64)
            max_iter = int(param.max_iter)
            losses = np.zeros(max_iter, dtype=np.float32)
            scalars = _scalar_outputs(net)
            outputs = dict((n, np.zeros(max_iter, dtype=np.float32)) for n in scalars)
            t0 = time.perf_counter()
            done = 0
            while solver.iter < max_iter:
                while order.size < batch:
                    more = rng.permutation(count) if req.get("shuffle", True) else np.arange(count)
                    order = np.concatenate([order, more])
                idx, order = order[:batch], order[batch:]
                for n in names:
                    blob = net.blobs[n]
                    blob.data[...] = arrays[n][idx]
                solver.step(1)
                losses[done] = _weighted_loss(net)
                for n in scalars:
                    outputs[n][done] = float(net.blobs[n].data.reshape(-1)[0])
                done += 1
            seconds = time.perf_counter() - t0
            out_path = os.path.join(base, "trained.caffemodel")
            net.save(out_path)
            with open(out_path, "rb") as f:
                trained = f.read()
        finally:
            solver = net = None
            shutil.rmtree(base, ignore_errors=True)
        return {"caffemodel": trained, "iterations": np.arange(1, done + 1, dtype=np.int32),
                "loss": losses[:done], "outputs": dict((n, v[:done]) for n, v in outputs.items()),
                "batch": batch, "max_iter": max_iter, "seconds": seconds}

    # -- solvers ------------------------------------------------------------------------------
    def _parse_solver(self, req, what):
        """The SolverParameter of a request's ``solver`` text, with its ``seed`` applied."""
        from caffe.proto import caffe_pb2
        from google.protobuf import text_format
        if not isinstance(req.get("solver"), str) or not isinstance(req.get("net"), str):
            raise RequestError("%s needs 'solver' and 'net' prototxt text" % what)
        param = caffe_pb2.SolverParameter()
        try:
            text_format.Merge(req["solver"], param)
        except text_format.ParseError as exc:
            raise RequestError("cannot parse the solver: %s" % exc)
        if param.iter_size != 1:
            raise RequestError("%s feeds one batch per iteration: the solver's iter_size must "
                               "be 1; got %d" % (what, param.iter_size))
        seed = req.get("seed")
        if seed is not None:
            param.random_seed = int(seed)
        return param

    def _write_solver(self, param, req, prefix):
        """Write the request's net and ``param`` into a new directory, the net as the solver's
        only net, with no testing and no snapshots of its own (snapshot_prefix points into the
        directory, in binary proto format).  Returns (directory, solver path)."""
        from caffe.proto import caffe_pb2
        from google.protobuf import text_format
        self.count += 1
        base = os.path.join(self.tmp, "%s%d" % (prefix, self.count))
        os.mkdir(base)
        net_path = os.path.join(base, "train.prototxt")
        with open(net_path, "w") as f:
            f.write(req["net"])
        for name in ("net", "net_param", "train_net", "train_net_param", "test_net",
                     "test_net_param", "train_state", "test_state", "test_iter"):
            param.ClearField(name)
        param.train_net = net_path
        param.test_interval = 0
        param.test_initialization = False
        param.snapshot = 0
        param.snapshot_after_train = False
        param.snapshot_prefix = os.path.join(base, "snapshot")
        param.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
        param.snapshot_diff = False
        param.solver_mode = caffe_pb2.SolverParameter.CPU
        solver_path = os.path.join(base, "solver.prototxt")
        with open(solver_path, "w") as f:
            f.write(text_format.MessageToString(param))
        return base, solver_path

    # -- training sessions --------------------------------------------------------------------
    def _session(self, req):
        session = self.session
        if session is None:
            raise RequestError("no training session is open; open one first (session_open)",
                               code="no_session")
        token = req.get("session")
        if token is not None and token != session.token:
            raise RequestError("that training session was closed: the worker holds another one "
                               "now (one at a time)", code="no_session")
        return session

    def _end_session(self):
        session, self.session = self.session, None
        if session is not None:
            session.pending.clear()
            session.solver = session.net = session.params = None
            shutil.rmtree(session.base, ignore_errors=True)

    def _param_blob(self, session, layer, what):
        """Blob 0 (the weights) of a layer with learnable blobs."""
        blobs = session.params.get(layer) if isinstance(layer, str) else None
        if blobs is None:
            raise RequestError("%s: no layer %r with learnable blobs in the net; those are %s"
                               % (what, layer, list(session.params.keys())))
        return blobs[0]

    def _fetch(self, session, req, key="fetch"):
        """The request's ``fetch`` (or ``key``): a list of layers with learnable blobs."""
        fetch = req.get(key) or []
        if not isinstance(fetch, list):
            raise RequestError("%s must be a list of layer names; got %r" % (key, fetch))
        for layer in fetch:
            self._param_blob(session, layer, key)
        return fetch

    def _weights(self, session, layers):
        """Copies of the weights (blob 0, float32) of checked layers."""
        return dict((layer, np.array(session.params[layer][0].data, dtype=np.float32, copy=True))
                    for layer in layers)

    def _session_info(self, session):
        net = session.net
        return {"session": session.token, "batch": session.batch,
                "inputs": dict((n, list(net.blobs[n].data.shape[1:])) for n in session.inputs),
                "params": dict((layer, [list(b.data.shape) for b in blobs])
                               for layer, blobs in session.params.items()),
                "outputs": session.scalars, "iter": int(session.solver.iter)}

    def _req_session_open(self, req):
        """Open a training session (closing the one open): a solver on a train net fed from
        Input layers, stepped one iteration per ``session_step``.

        Request: ``solver``, ``net``, ``caffemodel`` and ``seed`` as for ``train`` (the
        solver's net fields, test nets and snapshot settings are replaced; ``iter_size`` must be
        1; ``max_iter`` does not stop a session), and ``session`` (a token the runtime names the
        session by; later requests that carry another are refused).

        Response: ``batch``, ``inputs`` (input blob -> the shape of one sample), ``params``
        (layer with learnable blobs -> the shapes of its blobs, in net order), ``outputs`` (the
        scalar output blobs), ``iter`` (the solver's iteration).
        """
        self._end_session()
        caffe = self.caffe
        param = self._parse_solver(req, "a training session")
        # GetLearningRate advances multistep's current step once per call; with stepvalues that
        # do not increase, reading solver.lr in the hook would advance it twice in one iteration.
        steps = list(param.stepvalue)
        lr_reliable = (param.lr_policy != "multistep"
                       or all(a < b for a, b in zip(steps, steps[1:])))
        base, solver_path = self._write_solver(param, req, "session")
        caffe.set_mode_cpu()
        try:
            solver = caffe.get_solver(solver_path)  # an unparsable net aborts here (glog)
            net = solver.net
            _copy_weights(net, base, req.get("caffemodel"))
            names = list(net.inputs)
            if not names:
                raise RequestError("the train net has no Input layer to feed")
            shapes = [net.blobs[n].data.shape for n in names]
            if any(len(shape) == 0 or shape[0] != shapes[0][0] for shape in shapes):
                raise RequestError("the net's input blobs must share a batch dimension; their "
                                   "shapes are %s" % dict((n, list(shape))
                                                          for n, shape in zip(names, shapes)))
            if not hasattr(solver, "add_callback"):
                raise RequestError("this pycaffe has no Solver.add_callback: training sessions "
                                   "need BVLC Caffe 1.0's")
            session = _Session(req.get("session"), solver, base, int(shapes[0][0]),
                               lr_reliable)
        except BaseException:
            solver = net = None
            shutil.rmtree(base, ignore_errors=True)
            raise
        self.session = session
        return self._session_info(session)

    def _req_session_step(self, req):
        """Run one solver iteration on one batch.

        Request: ``inputs`` (one array per input blob, of exactly the blob's shape),
        ``add_diffs`` (optional: layer -> an array shaped like its weights, added to their
        gradient), ``masks`` (optional: layer -> a 0/1 array shaped like its weights),
        ``fetch`` (optional: layers whose weights to return), ``fetch_diffs`` (optional: layers
        whose weight gradient to return).  ``solver.step(1)`` runs with the session's
        ``on_gradients_ready`` hook: after the backward pass and before the update it adds
        ``add_diffs[layer]`` to ``params[layer][0].diff``, zeroes that diff where
        ``masks[layer]`` is 0, and copies the diffs of the ``fetch_diffs`` layers; after the
        update the weights are set to 0.0 where masked.  Everything is checked before the step,
        so a refused request changes nothing.

        Response: ``iter`` (after the step), ``loss`` (the weighted loss of this iteration's
        forward pass), ``outputs`` (scalar output blob -> float), ``lr`` (the learning rate the
        update used; absent where reading it could change the schedule), ``weights``, ``diffs``
        (layer -> the gradient of its weights (blob 0, float32) as the update received it: with
        ``base_lr`` 0 a tool can apply its own update rule).
        """
        session = self._session(req)
        net = session.net
        inputs = req.get("inputs") or {}
        names = session.inputs
        if sorted(inputs) != sorted(names):
            raise RequestError("a step needs exactly one array per input blob of the net %s; "
                               "got %s" % (names, sorted(inputs)))
        for n in names:
            want = tuple(net.blobs[n].data.shape)
            if tuple(np.shape(inputs[n])) != want:
                raise RequestError("input %r has shape %s; a step takes exactly one batch, %s"
                                   % (n, _shape(inputs[n]), list(want)))
        work = {}
        for what, arrays in (("add_diffs", req.get("add_diffs")), ("masks", req.get("masks"))):
            for layer, arr in (arrays or {}).items():
                blob = self._param_blob(session, layer, what)
                arr = np.asarray(arr)
                if np.shape(arr) != blob.data.shape:
                    raise RequestError("%s for layer %r has shape %s; the layer's weights (blob "
                                       "0) have shape %s" % (what, layer, _shape(arr),
                                                             list(blob.data.shape)))
                item = work.setdefault(layer, [blob, None, None])
                if what == "add_diffs":
                    item[1] = np.asarray(arr, dtype=np.float32)
                else:
                    zero = arr == 0
                    if not (zero | (arr == 1)).all():
                        raise RequestError("masks for layer %r must hold only 0 and 1" % layer)
                    item[2] = zero
        fetch = self._fetch(session, req)
        fetch_diffs = self._fetch(session, req, "fetch_diffs")
        for n in names:
            net.blobs[n].data[...] = inputs[n]
        pending = session.pending
        diffs = {}
        pending.update(solver=session.solver, work=list(work.values()),
                       lr_reliable=session.lr_reliable, diffs=diffs,
                       diff_blobs=[(layer, session.params[layer][0]) for layer in fetch_diffs])
        try:
            session.solver.step(1)
            lr = pending.get("lr")
        finally:
            pending.clear()
        for blob, _, zero in work.values():
            if zero is not None:
                np.copyto(blob.data, 0.0, where=zero)
        result = {"iter": int(session.solver.iter), "loss": _weighted_loss(net),
                  "outputs": dict((n, float(net.blobs[n].data.reshape(-1)[0]))
                                  for n in session.scalars),
                  "weights": self._weights(session, fetch), "diffs": diffs}
        if lr is not None:
            result["lr"] = lr
        return result

    def _req_session_set_params(self, req):
        """Overwrite learnable blobs: ``params`` is layer -> a list of arrays, the first k blobs
        of the layer (1 <= k <= its number of blobs), each of exactly the blob's shape.  All are
        checked before any is written."""
        session = self._session(req)
        params = req.get("params")
        if not isinstance(params, dict):
            raise RequestError("session_set_params needs 'params': layer -> list of arrays")
        writes = []
        for layer, arrays in params.items():
            self._param_blob(session, layer, "set_params")
            blobs = session.params[layer]
            if not isinstance(arrays, list) or not 1 <= len(arrays) <= len(blobs):
                raise RequestError("set_params for layer %r needs a list of 1 to %d arrays (its "
                                   "blobs, in order); got %s" % (
                                       layer, len(blobs), "%d" % len(arrays)
                                       if isinstance(arrays, list) else type(arrays).__name__))
            for i, arr in enumerate(arrays):
                arr = np.asarray(arr, dtype=np.float32)
                shape = list(blobs[i].data.shape)
                if _shape(arr) != shape:
                    raise RequestError("set_params for layer %r blob %d has shape %s; the blob "
                                       "has shape %s" % (layer, i, _shape(arr), shape))
                writes.append((blobs[i], arr))
        for blob, arr in writes:
            blob.data[...] = arr
        return {"iter": int(session.solver.iter)}

    def _req_session_get(self, req):
        """The weights (blob 0, float32) of the layers in ``fetch``."""
        session = self._session(req)
        return {"weights": self._weights(session, self._fetch(session, req)),
                "iter": int(session.solver.iter)}

    def _req_session_weights(self, req):
        """All the net's weights as caffemodel bytes (``net.save``)."""
        session = self._session(req)
        path = os.path.join(session.base, "weights.caffemodel")
        session.net.save(path)
        try:
            with open(path, "rb") as f:
                return {"caffemodel": f.read(), "iter": int(session.solver.iter)}
        finally:
            os.remove(path)

    def _req_session_snapshot(self, req):
        """``solver.snapshot()``: the weights and the solver state (iteration, lr schedule
        step, momentum history).  The state's ``learned_net`` names the caffemodel by its bare
        file name (``snapshot_iter_N.caffemodel``) rather than a path in this worker's temp dir;
        ``session_restore`` rewrites it anyway."""
        from caffe.proto import caffe_pb2
        session = self._session(req)
        session.solver.snapshot()
        it = int(session.solver.iter)
        prefix = os.path.join(session.base, "snapshot_iter_%d" % it)  # Caffe's SnapshotFilename
        try:
            with open(prefix + ".caffemodel", "rb") as f:
                model = f.read()
            with open(prefix + ".solverstate", "rb") as f:
                state = caffe_pb2.SolverState()
                state.ParseFromString(f.read())
        finally:
            for ext in (".caffemodel", ".solverstate"):
                try:
                    os.remove(prefix + ext)
                except OSError:
                    pass
        state.learned_net = os.path.basename(prefix + ".caffemodel")
        return {"caffemodel": model, "solverstate": state.SerializeToString(), "iter": it}

    def _req_session_restore(self, req):
        """Restore a snapshot: ``solverstate`` (bytes) sets the iteration, the lr schedule step
        and the momentum history (``solver.restore``), ``caffemodel`` (bytes, optional) the
        weights.  The state's ``learned_net`` is rewritten to name the caffemodel sent (or
        cleared when none is, keeping the weights), so a path from another machine never
        matters.  The history is checked against the net's learnable blobs first: Caffe would
        take a history of the wrong shapes without a word and then write out of bounds."""
        from caffe.proto import caffe_pb2
        from google.protobuf.message import DecodeError
        session = self._session(req)
        data = req.get("solverstate")
        if not isinstance(data, (bytes, bytearray)):
            raise RequestError("session_restore needs 'solverstate' bytes")
        state = caffe_pb2.SolverState()
        try:
            state.ParseFromString(bytes(data))
        except DecodeError as exc:
            raise RequestError("cannot parse the solver state: %s" % exc)
        learnable = _learnable(session.params)
        n, k = len(learnable), len(state.history)
        if n == 0 or k == 0 or k % n:
            raise RequestError("the solver state holds %d history blobs, but the net has %d "
                               "learnable blobs (a solver keeps 1 or 2 per blob): it comes from "
                               "another net" % (k, n))
        for i, blob in enumerate(state.history):
            layer, j, shape = learnable[i % n]
            size = int(np.prod(shape))
            dims = list(blob.shape.dim) if blob.HasField("shape") else None
            if len(blob.data) != size or (dims is not None and dims != shape):
                raise RequestError("the solver state's history blob %d has shape %s (%d values); "
                                   "it belongs to layer %r blob %d, of shape %s: the state comes "
                                   "from another net" % (i, dims, len(blob.data), layer, j,
                                                         shape))
        model = req.get("caffemodel")
        paths = []
        try:
            if model is not None:
                path = os.path.join(session.base, "restore.caffemodel")
                with open(path, "wb") as f:
                    f.write(model)
                paths.append(path)
                state.learned_net = path  # weights that do not fit abort in restore (glog)
            else:
                state.ClearField("learned_net")
            path = os.path.join(session.base, "restore.solverstate")
            with open(path, "wb") as f:
                f.write(state.SerializeToString())
            paths.append(path)
            session.solver.restore(path)
        finally:
            for path in paths:
                try:
                    os.remove(path)
                except OSError:
                    pass
        return {"iter": int(session.solver.iter)}

    def _req_session_close(self, req):
        session = self.session
        if session is not None and req.get("session") in (None, session.token):
            self._end_session()
        return {}

    def serve(self, instream):
        while True:
            req = read_message(instream)
            if req is None:
                return
            kind = req.get("type")
            if kind == "quit":
                write_message(self.out, {"ok": True, "type": "bye"})
                return
            handler = getattr(self, "_req_%s" % kind, None) if isinstance(kind, str) else None
            try:
                if handler is None:
                    raise RequestError("unknown request type %r" % (kind,))
                result = handler(req)
                result["ok"] = True
            except RequestError as exc:
                result = {"ok": False, "error": _one_line(exc), "code": exc.code}
            except Exception as exc:  # pycaffe raised: report it, keep serving
                result = {"ok": False, "error": _one_line("%s: %s" % (type(exc).__name__, exc)),
                          "code": "exception"}
            result["net_key"] = self.net_key  # lets the runtime skip resending this net
            write_message(self.out, result)


def main():
    # Keep the protocol channel to ourselves: frames go to a private duplicate of the original
    # stdout, and fd 1 becomes stderr, so nothing Caffe, glog or a library prints (at the C or
    # the Python level) can corrupt a frame.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    instream = sys.stdin.buffer
    # glog reads its flags from the environment when libcaffe is loaded: at level 2 only errors
    # and CHECK failures (whose text the runtime needs for its messages) are printed.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("MPLBACKEND", "Agg")
    base = {"type": "ready", "protocol": PROTOCOL, "python_version": sys.version.split()[0],
            "python_executable": sys.executable, "pid": os.getpid()}
    if np is None:
        base.update(ok=False, error="ImportError: No module named 'numpy'", code="import")
        write_message(out, base)
        return 3
    try:
        import caffe
    except BaseException as exc:  # ImportError, or a broken build raising anything else
        base.update(ok=False, error=_one_line("%s: %s" % (type(exc).__name__, exc)), code="import")
        write_message(out, base)
        return 3
    base.update(ok=True, caffe_version=getattr(caffe, "__version__", "unknown"))
    write_message(out, base)
    worker = Worker(caffe, out)
    try:
        worker.serve(instream)
    except (BrokenPipeError, EOFError):
        return 0
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
