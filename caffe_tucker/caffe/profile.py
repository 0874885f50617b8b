"""A cost model of Caffe's CPU convolutions: measured, fitted, cached per machine and runtime.

``profile`` times small single-layer convolutions in the Caffe worker (the ``time`` request
``bench`` uses) over a grid of channel counts, for each *kind* of convolution that the net's
planned Tucker-2 / Tucker-1 layers produce or replace:

* ``full``    the layer's own D×D geometry over its input, S input channels, R outputs
  (Tucker-1's first layer; the original layer is the point R = T);
* ``reduce``  a 1×1 convolution over the same input, S → R (Tucker-2's first layer);
* ``core``    the D×D geometry, R → R (Tucker-2's core, R3 → R4);
* ``restore`` a 1×1 convolution over the output map, R → T (the last layer of both).

A kind is the geometry (kernel, stride, pad, dilation, group), the input H×W and the channel
count that stays fixed (S in, T out, or none).  Per kind the times are fitted by non-negative
least squares as::

    t(cin, cout) = a + b · (cin + cout) + c · MACs,   MACs = Ho·Wo·cout·(cin/g)·kh·kw

(``a`` the call's overhead, ``b`` the per-channel memory traffic (im2col, output, bias),
``c`` the GEMM's inverse peak).  The issue's measurements found such fits within 0.4-4 % on
this machine; the fit's residual (relative RMS over the grid) is kept beside the coefficients.
This form, the grid and the kinds are the project's own choices, not the paper's.

Fits are cached as JSON under ``$CAFFE_TUCKER_CACHE`` (or ``~/.cache/caffe_tucker``)
``/profiles/``, one file per :class:`MachineKey` (Caffe version, OpenBLAS core type and
threads as the worker reports them, CPU model, batch); profiling another net adds its kinds to
the same file.  Everything but :func:`measure` is pure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe_tucker.analysis.shapes import LayerShapes, infer_shapes
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.graph import Layer, Net, make_spec
from caffe_tucker.io.caffe_pb2 import NetParameter

__all__ = ["Kind", "Fit", "MachineKey", "CostProfile", "ConvOp", "fit_times", "grid",
           "layer_kinds", "conv_ops", "original_op", "profile_net", "measure", "plan_kinds",
           "ProfileRun", "profile_kinds", "profile_dir",
           "profile_path", "load_profile", "save_profile", "cpu_model", "machine_key",
           "PROFILE_FORMAT"]

PROFILE_FORMAT = "caffe_tucker cost profile"
PROFILE_VERSION = 1

#: Channel counts per kind (grid points), and the timing passes (see :func:`measure`).
GRID_POINTS = 5


# -- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """A kind of convolution: geometry, input H×W, and the channel count held fixed."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    group: int
    height: int
    width: int
    fixed_in: int | None = None
    fixed_out: int | None = None

    @property
    def key(self) -> str:
        """A stable, readable name, e.g. ``k3x3 s1x1 p1x1 d1x1 g1 @13x13 in=256``."""
        def xy(v):
            return f"{v[0]}x{v[1]}"
        fixed = (f" in={self.fixed_in}" if self.fixed_in is not None else "") + \
            (f" out={self.fixed_out}" if self.fixed_out is not None else "")
        return (f"k{xy(self.kernel)} s{xy(self.stride)} p{xy(self.pad)} d{xy(self.dilation)} "
                f"g{self.group} @{self.height}x{self.width}{fixed}")

    @property
    def out_hw(self) -> tuple[int, int]:
        hw = []
        for size, k, s, p, d in zip((self.height, self.width), self.kernel, self.stride, self.pad,
                                    self.dilation):
            hw.append((size + 2 * p - (d * (k - 1) + 1)) // s + 1)
        return hw[0], hw[1]

    def macs(self, cin: int, cout: int) -> int:
        """Multiply-adds per image of this convolution with ``cin`` → ``cout`` channels."""
        ho, wo = self.out_hw
        return ho * wo * cout * (cin // self.group) * self.kernel[0] * self.kernel[1]

    def to_json(self) -> dict:
        return {"kernel": list(self.kernel), "stride": list(self.stride), "pad": list(self.pad),
                "dilation": list(self.dilation), "group": self.group, "height": self.height,
                "width": self.width, "fixed_in": self.fixed_in, "fixed_out": self.fixed_out}

    @classmethod
    def from_json(cls, d: dict) -> "Kind":
        return cls(kernel=tuple(d["kernel"]), stride=tuple(d["stride"]), pad=tuple(d["pad"]),
                   dilation=tuple(d["dilation"]), group=int(d["group"]), height=int(d["height"]),
                   width=int(d["width"]), fixed_in=d.get("fixed_in"), fixed_out=d.get("fixed_out"))


@dataclass(frozen=True)
class ConvOp:
    """One convolution to time or predict: its kind and channel counts."""

    kind: Kind
    cin: int
    cout: int

    @property
    def features(self) -> tuple[float, float, float]:
        return (1.0, float(self.cin + self.cout), float(self.kind.macs(self.cin, self.cout)))


@dataclass(frozen=True)
class Fit:
    """``t = a + b·(cin + cout) + c·MACs`` in ms, from ``points`` ``(cin, cout, ms)``."""

    a: float
    b: float
    c: float
    residual: float                      # relative RMS of the fit over its points
    points: tuple[tuple[int, int, float], ...] = ()

    def predict(self, kind: Kind, cin: int, cout: int) -> float:
        return self.a + self.b * (cin + cout) + self.c * kind.macs(cin, cout)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "c": self.c, "residual": round(self.residual, 6),
                "points": [[ci, co, round(ms, 6)] for ci, co, ms in self.points]}

    @classmethod
    def from_json(cls, d: dict) -> "Fit":
        return cls(a=float(d["a"]), b=float(d["b"]), c=float(d["c"]),
                   residual=float(d["residual"]),
                   points=tuple((int(p[0]), int(p[1]), float(p[2])) for p in d.get("points", ())))


@dataclass(frozen=True)
class MachineKey:
    """What a profile is valid for: the runtime and the machine that timed it."""

    caffe_version: str | None
    blas_corename: str | None
    threads: int | None
    cpu: str | None
    batch: int

    def to_json(self) -> dict:
        return {"caffe_version": self.caffe_version, "blas_corename": self.blas_corename,
                "threads": self.threads, "cpu": self.cpu, "batch": self.batch}

    @classmethod
    def from_json(cls, d: dict) -> "MachineKey":
        return cls(caffe_version=d.get("caffe_version"), blas_corename=d.get("blas_corename"),
                   threads=d.get("threads"), cpu=d.get("cpu"), batch=int(d["batch"]))

    @property
    def filename(self) -> str:
        """``<cpu slug>-b<batch>-t<threads>-<hash>.json``: readable, and unique per key."""
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()
        slug = re.sub(r"[^a-z0-9]+", "-", (self.cpu or "unknown-cpu").lower()).strip("-")[:40]
        return f"{slug or 'cpu'}-b{self.batch}-t{self.threads}-{digest[:12]}.json"

    def describe(self) -> str:
        return (f"Caffe {self.caffe_version or '?'}, OpenBLAS core {self.blas_corename or '?'}, "
                f"{self.threads if self.threads is not None else '?'} thread(s), "
                f"{self.cpu or 'unknown CPU'}, batch {self.batch}")


@dataclass(frozen=True)
class CostProfile:
    """The fits of one machine/runtime, by kind key."""

    machine: MachineKey
    fits: dict = field(default_factory=dict)     # Kind.key -> (Kind, Fit)

    def fit_for(self, kind: Kind) -> Fit | None:
        entry = self.fits.get(kind.key)
        return entry[1] if entry else None

    def predict(self, ops) -> float | None:
        """Predicted ms of a sequence of :class:`ConvOp`; None when a kind was not profiled."""
        if ops is None:
            return None
        total = 0.0
        for op in ops:
            fit = self.fit_for(op.kind)
            if fit is None:
                return None
            total += fit.predict(op.kind, op.cin, op.cout)
        return total

    def merged(self, other: "CostProfile") -> "CostProfile":
        """This profile with ``other``'s fits added (``other`` wins)."""
        return CostProfile(self.machine, {**self.fits, **other.fits})

    def to_json(self) -> dict:
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION,
                "machine": self.machine.to_json(),
                "model": "t = a + b*(cin + cout) + c*MACs (ms; MACs per image)",
                "kinds": [{"key": key, "kind": kind.to_json(), "fit": fit.to_json()}
                          for key, (kind, fit) in sorted(self.fits.items())]}

    @classmethod
    def from_json(cls, d: dict, source: str = "profile") -> "CostProfile":
        if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
            raise CaffeTuckerError(f"{source}: not a caffe_tucker cost profile; hint: make one "
                                   "with 'profile'")
        if d.get("version") != PROFILE_VERSION:
            raise CaffeTuckerError(f"{source}: cost profile version {d.get('version')!r}, this "
                                   f"tool reads {PROFILE_VERSION}; hint: run 'profile --force'")
        try:
            fits = {}
            for e in d["kinds"]:
                kind = Kind.from_json(e["kind"])
                fits[kind.key] = (kind, Fit.from_json(e["fit"]))
            return cls(MachineKey.from_json(d["machine"]), fits)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CaffeTuckerError(f"{source}: a malformed cost profile ({exc!r}); hint: run "
                                   "'profile --force'") from None


# -- fitting (pure) -----------------------------------------------------------------------------
def fit_times(kind: Kind, points) -> Fit:
    """Non-negative least squares of ``t = a + b·(cin+cout) + c·MACs`` over ``(cin, cout, ms)``.

    The columns are scaled to unit norm before :func:`scipy.optimize.nnls`, and weighted by
    1/t so that the fit minimizes *relative* error (small layers count as much as large ones).
    """
    from scipy.optimize import nnls

    pts = [(int(ci), int(co), float(ms)) for ci, co, ms in points]
    if not pts:
        raise ValueError("The 'points' parameter of fit_times must be non-empty. Got [] instead.")
    x = np.array([ConvOp(kind, ci, co).features for ci, co, _ in pts], dtype=np.float64)
    t = np.array([ms for _, _, ms in pts], dtype=np.float64)
    w = 1.0 / np.maximum(t, 1e-9)
    xw = x * w[:, None]
    scale = np.linalg.norm(xw, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(xw / scale, t * w)
    coef = coef / scale
    pred = x @ coef
    residual = float(np.sqrt(np.mean(((pred - t) / np.maximum(t, 1e-9)) ** 2)))
    return Fit(a=float(coef[0]), b=float(coef[1]), c=float(coef[2]), residual=residual,
               points=tuple(pts))


def grid(high: int, group: int = 1, points: int = GRID_POINTS, low: int = 8) -> tuple[int, ...]:
    """About ``points`` channel counts from ``low`` to ``high`` (both included), geometric,
    multiples of ``group``."""
    high = max(group, high - high % group)
    low = max(group, min(low, high))
    values = np.geomspace(low, high, points) if points > 1 else np.array([high])
    out = sorted({max(group, int(round(v / group)) * group) for v in values} | {high})
    return tuple(v for v in out if v <= high)


# -- kinds of a net's planned layers (pure) ------------------------------------------------------
def _kind(info: LayerShapes, kernel=None, stride=None, pad=None, dilation=None,
          fixed_in=None, fixed_out=None, hw=None) -> Kind:
    geo = info.geometry
    h, w = hw if hw is not None else tuple(info.inputs[0][2:4])
    return Kind(kernel=tuple(kernel or geo.kernel), stride=tuple(stride or geo.stride),
                pad=tuple(pad if pad is not None else geo.pad),
                dilation=tuple(dilation or geo.dilation), group=geo.group, height=int(h),
                width=int(w), fixed_in=fixed_in, fixed_out=fixed_out)


def _is_2d_conv(layer: Layer, info: LayerShapes) -> bool:
    return (layer.type == "Convolution" and info.geometry is not None
            and len(info.geometry.kernel) == 2 and len(info.inputs[0] or ()) == 4)


def layer_kinds(layer: Layer, info: LayerShapes, method: str) -> list[tuple[Kind, list[tuple[int, int]]]]:
    """The kinds a planned layer needs profiled, each with its grid of ``(cin, cout)``.

    Tucker-1 needs ``full`` and ``restore``; Tucker-2 those and ``reduce`` and ``core``; other
    methods and layers that are not 2-D convolutions need none.
    """
    if method not in ("tucker1", "tucker2") or not _is_2d_conv(layer, info):
        return []
    geo = info.geometry
    s, t, g = info.inputs[0][1], geo.num_output, geo.group
    ho, wo = info.outputs[0][2:4]
    ones = (1, 1)
    out = [(_kind(info, fixed_in=s), [(s, r) for r in grid(t, g)]),
           (_kind(info, ones, ones, (0, 0), ones, fixed_out=t, hw=(ho, wo)),
            [(r, t) for r in grid(t, g)])]
    if method == "tucker2":
        out += [(_kind(info, ones, ones, (0, 0), ones, fixed_in=s), [(s, r) for r in grid(s, g)]),
                (_kind(info), [(r, r) for r in grid(max(s, t), g)])]
    return out


def _op(info: LayerShapes, s: int, t: int) -> ConvOp:
    """A new convolution layer (its own shapes ``info``) as a ConvOp of the original's S, T."""
    cin, cout = info.inputs[0][1], info.geometry.num_output
    one_by_one = tuple(info.geometry.kernel) == (1, 1)
    fixed_in = s if cin == s else None
    fixed_out = t if cout == t and fixed_in is None and one_by_one else None
    return ConvOp(_kind(info, fixed_in=fixed_in, fixed_out=fixed_out), cin, cout)


def original_op(layer: Layer, info: LayerShapes) -> list[ConvOp] | None:
    """The layer itself as ops (None when it is not a 2-D convolution)."""
    if not _is_2d_conv(layer, info):
        return None
    s, t = info.inputs[0][1], info.geometry.num_output
    return [ConvOp(_kind(info, fixed_in=s), s, t)]


def conv_ops(layer: Layer, info: LayerShapes, method: str, ranks) -> list[ConvOp] | None:
    """The convolutions that replace ``layer`` under ``method`` at ``ranks`` (None when the
    layer is not a 2-D convolution or a new layer is not one)."""
    from caffe_tucker.compress.methods import get_method

    if not _is_2d_conv(layer, info):
        return None
    m = get_method(method)
    x = info.inputs[0]
    feed = Layer(spec=make_spec("input", "Input", [], [layer.bottoms[0]],
                                input_param={"shape": [{"dim": [1] + list(x[1:])}]}))
    new = m.new_layers(layer, m.geometry(layer, info), ranks)
    shapes = infer_shapes(Net(layers=(feed, *new)))
    s, t = x[1], info.geometry.num_output
    ops = []
    for n in new:
        if n.type != "Convolution":
            return None
        ops.append(_op(shapes.layers[n.name], s, t))
    return ops


# -- measuring ----------------------------------------------------------------------------------
def profile_net(kinds, batch: int = 1) -> tuple[Net, dict]:
    """One Caffe net holding a convolution per grid point of every kind.

    Returns the net and ``{layer name: (kind key, cin, cout)}``.  Kinds with a fixed input
    share one Input blob; the others get an Input per grid point.
    """
    layers, where = [], {}
    for i, (kind, points) in enumerate(kinds):
        shared = None
        for j, (cin, cout) in enumerate(points):
            if shared is None or kind.fixed_in is None:
                blob = f"in{i}_{j}"
                layers.append(Layer(spec=make_spec(
                    blob, "Input", [], [blob],
                    input_param={"shape": [{"dim": [batch, cin, kind.height, kind.width]}]})))
                shared = blob
            name = f"k{i}_{j}"
            param = {"num_output": cout, "bias_term": True, "group": kind.group,
                     "kernel_h": kind.kernel[0], "kernel_w": kind.kernel[1],
                     "stride_h": kind.stride[0], "stride_w": kind.stride[1],
                     "pad_h": kind.pad[0], "pad_w": kind.pad[1],
                     "dilation": [kind.dilation[0]] if kind.dilation[0] == kind.dilation[1]
                     else list(kind.dilation)}
            layers.append(Layer(spec=make_spec(name, "Convolution", [shared], [name],
                                               convolution_param=param)))
            where[name] = (kind.key, cin, cout)
    return Net(layers=tuple(layers), header=NetParameter(name="caffe_tucker_profile")), where


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    import platform

    return platform.processor() or None


def machine_key(runtime_info: dict, blas: dict | None, batch: int) -> MachineKey:
    """The key from the worker's hello and the ``blas`` of a time response (threads in force)."""
    blas = blas or runtime_info.get("blas") or {}
    return MachineKey(caffe_version=runtime_info.get("caffe_version"),
                      blas_corename=blas.get("corename"), threads=blas.get("threads"),
                      cpu=cpu_model(), batch=int(batch))


def measure(runtime, kinds, batch: int = 1, threads: int | None = None, iterations: int = 5,
            repeats: int = 3, warmup: int = 1, progress=None) -> CostProfile:
    """Time every grid point of ``kinds`` in Caffe and fit each kind.

    The whole grid is one net, timed ``repeats`` times by the worker's ``time`` request (each
    time the median of ``iterations`` passes per layer); a point's time is the median of those.
    ``progress`` (a :class:`~caffe_tucker.report.progress.Progress`) advances once per repeat.
    """
    kinds = list(kinds)
    net, where = profile_net(kinds, batch)
    runs = []
    for _ in range(repeats):
        runs.append(runtime.time(net, batch=batch, iterations=iterations, warmup=warmup,
                                 threads=threads))
        if progress is not None:
            progress.update(1)
    times = {}
    for name in where:
        times[name] = statistics.median(next(l["ms"] for l in r["layers"] if l["name"] == name)
                                        for r in runs)
    key = machine_key(runtime.hello(), runs[-1].get("blas"), batch)
    fits = {}
    for kind, points in kinds:
        pts = [(ci, co, times[n]) for n, (k, ci, co) in where.items() if k == kind.key]
        fits[kind.key] = (kind, fit_times(kind, pts))
    return CostProfile(key, fits)


def plan_kinds(net: Net, shapes, plan: dict) -> list[tuple[Kind, list[tuple[int, int]]]]:
    """The kinds of convolution the planned layers (name -> method) can become, each with its
    grid points, merged across layers; refused in one line when there is none."""
    kinds: dict = {}
    for name, method in plan.items():
        for kind, points in layer_kinds(net.layer(name), shapes.layers[name], method):
            kinds.setdefault(kind.key, (kind, set()))[1].update(points)
    if not kinds:
        raise CaffeTuckerError(f"{net.source}: no Tucker-2 or Tucker-1 convolution is planned, "
                               "so there is nothing to profile; hint: check the plan with 'ranks'")
    return [(kind, sorted(points)) for kind, points in kinds.values()]


@dataclass(frozen=True)
class ProfileRun:
    """What :func:`profile_kinds` did: the machine's profile, this net's kind keys, how many
    kinds were measured (the others came from the cache), and where the profile was cached."""

    profile: CostProfile
    keys: frozenset
    measured: int
    path: Path


def profile_kinds(runtime, kinds, batch: int = 1, threads: int | None = None,
                  iterations: int = 20, force: bool = False, repeats: int = 3,
                  progress=None) -> ProfileRun:
    """Measure the ``kinds`` the cache of this machine/runtime lacks (all with ``force``), merge
    them into its profile (other nets' kinds are kept) and cache it.

    ``progress(repeats, kinds)``, when given, makes the bar (a context manager such as
    :class:`~caffe_tucker.report.progress.Progress`) that advances once per repetition.
    """
    hello = runtime.hello()
    blas = dict(hello.get("blas") or {})
    if threads is not None:
        blas["threads"] = threads
    cached = None if force else cached_profile(machine_key(hello, blas, batch))
    todo = [(k, p) for k, p in kinds if cached is None or cached.fit_for(k) is None]
    profile = cached
    if todo:
        with (progress(repeats, len(todo)) if progress is not None else
              contextlib.nullcontext()) as bar:
            fresh = measure(runtime, todo, batch=batch, threads=threads, iterations=iterations,
                            repeats=repeats, progress=bar)
        # keyed by the threads actually in force; the other kinds of the machine's file are kept
        profile = (cached_profile(fresh.machine) or CostProfile(fresh.machine)).merged(fresh)
    path = save_profile(profile, profile_path(profile.machine))
    return ProfileRun(profile=profile, keys=frozenset(k.key for k, _ in kinds),
                      measured=len(todo), path=path)


# -- the cache ----------------------------------------------------------------------------------
def profile_dir() -> Path:
    """``$CAFFE_TUCKER_CACHE/profiles`` (default ``~/.cache/caffe_tucker/profiles``)."""
    from caffe_tucker.zoo import cache_dir

    return cache_dir() / "profiles"


def profile_path(key: MachineKey) -> Path:
    return profile_dir() / key.filename


def load_profile(path) -> CostProfile:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaffeTuckerError(f"{p}: no such cost profile; hint: make one with 'profile'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaffeTuckerError(f"{p}: cannot read the cost profile ({exc}); hint: run "
                               "'profile --force'") from None
    return CostProfile.from_json(data, str(p))


def save_profile(profile: CostProfile, path, force: bool = True) -> Path:
    from caffe_tucker.io.fsutil import write_atomic
    from caffe_tucker.report.tables import dumps_json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(p, dumps_json(profile.to_json()), force=force)


def cached_profile(key: MachineKey) -> CostProfile | None:
    """The cached profile of exactly this machine/runtime, or None."""
    p = profile_path(key)
    return load_profile(p) if p.is_file() else None


def find_cached(cpu: str | None = None, batch: int = 1) -> Path | None:
    """The newest cached profile of this CPU model and batch (any runtime), or None: for
    ``convert``, which runs no Caffe to ask for the exact key."""
    cpu = cpu if cpu is not None else cpu_model()
    best = None
    d = profile_dir()
    if not d.is_dir():
        return None
    for p in sorted(d.glob("*.json")):
        try:
            m = json.loads(p.read_text(encoding="utf-8")).get("machine") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if m.get("cpu") == cpu and m.get("batch") == batch:
            if best is None or p.stat().st_mtime > best.stat().st_mtime:
                best = p
    return best


def finite(x) -> bool:
    return x is not None and math.isfinite(x)
