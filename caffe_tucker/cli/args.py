"""Argument groups shared by the subcommands, and the values they turn into.

Every flag is defined here once.  A subcommand's module adds the groups it
takes to its parser; a group that several subcommands share in the same
order is one function (:func:`add_net_input`, :func:`add_compression`,
:func:`add_caffe_runtime`); a flag that stands at different places in
different subcommands is a function of its own.  Help texts that differ per
subcommand are parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys

from caffe_tucker.analysis.shapes import parse_input_shapes
from caffe_tucker.caffe.pycaffe import CaffeRuntime
from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.io.read import read_ranks_file
from caffe_tucker.report.tables import FORMATS


def int_in(low: int, high: int | None = None):
    """An argparse ``type``: an integer in [low, high] (no upper bound when ``high`` is None).

    A value outside is a usage error naming the allowed range, e.g. ``argument --repeats: must
    be an integer >= 1, got 0``.
    """
    want = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {want}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float | None = None, low_open: bool = True):
    """An argparse ``type``: a finite number above ``low`` (or at it, with ``low_open=False``),
    at most ``high``; nan and inf are refused."""
    bound = f"> {low:g}" if low_open else f">= {low:g}"
    want = f"a finite number {bound}" + ("" if high is None else f" and <= {high:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if (not math.isfinite(value) or value < low or (low_open and value == low)
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def fraction(text: str) -> float:
    """An argparse ``type``: a share in [0, 1) (a sparsity: 1 would zero everything)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


fraction.__name__ = "fraction"


def non_empty(text: str) -> str:
    """An argparse ``type`` for a path or a name: any text but an empty one (``-o ""`` would
    otherwise mean the default, or the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


non_empty.__name__ = "value"


def names(text: str) -> tuple[str, ...]:
    """An argparse ``type``: comma-separated names (``--layers conv1,conv2``), at least one."""
    found = tuple(x.strip() for x in text.split(",") if x.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"must name at least one layer, e.g. conv1,conv2; "
                                         f"got {text!r}")
    return found


names.__name__ = "names"


def add_prototxt(p, help=None):
    p.add_argument("prototxt", type=non_empty, help=help)


def add_weights(p, help):
    p.add_argument("--weights", "-w", type=non_empty, metavar="CAFFEMODEL", help=help)


def add_input_shape(p, help=None):
    p.add_argument("--input-shape", action="append", metavar="[BLOB=]N,C,H,W", help=help)


def add_net_input(p):
    """The net to read as it is: prototxt (``-``: standard input), ``--weights``,
    ``--input-shape``, ``--phase``."""
    add_prototxt(p, "net definition (deploy or train_val; current, V1 or legacy input format; "
                 "- reads it from standard input)")
    add_weights(p, "trained weights (.caffemodel, current or V1 format)")
    add_input_shape(p, "shape of a data input the net does not declare (repeatable)")
    p.add_argument("--phase", default="TEST", choices=["TRAIN", "TEST"],
                   help="which phase's layers to keep for a train_val net (default TEST)")


def add_compression(p):
    """The net to compress and how: prototxt, ``--weights``, ``--preset``, ``--layers``,
    ``--ranks``, ``--rank-method``, ``--weaken``, ``--vbmf-solver``, ``--input-shape``
    (read back by :func:`convert_options`)."""
    add_prototxt(p, "deploy net definition")
    add_weights(p, "trained weights (default: <prototxt stem>.caffemodel beside it)")
    p.add_argument("--preset", type=non_empty, help="which layers to compress and how: auto or a zoo model's "
                   "(alexnet, vgg_s, googlenet, vgg16, digits); default: the zoo net this is, else auto")
    p.add_argument("--layers", type=names, metavar="L1,L2", help="compress only these layers")
    p.add_argument("--with-fc", action="store_true",
                   help="also compress the fully connected layers the preset leaves alone (svd; "
                   "e.g. VGG-16's fc6-fc8)")
    p.add_argument("--method", action="append", metavar="[LAYER=]METHOD",
                   help="compress LAYER with METHOD whatever the preset says (repeatable); a bare "
                   "METHOD: every planned layer it applies to (methods: tucker2, tucker1, svd, "
                   "btd, cp; see the README's method table)")
    p.add_argument("--blocks", type=int_in(1), default=4, metavar="N",
                   help="block terms per layer for automatic btd ranks (default 4)")
    p.add_argument("--ranks", type=non_empty, metavar="FILE", help="fixed ranks per layer (ranks.json); others untouched")
    p.add_argument("--rank-method", default="vbmf", metavar="vbmf|energy:F|ratio:F",
                   help="how ranks are chosen (default vbmf)")
    p.add_argument("--weaken", type=float_in(0), default=1.0,
                   help="scale VBMF's estimated noise variance (>1 keeps fewer components)")
    p.add_argument("--vbmf-solver", default="reference", choices=["reference", "global"],
                   help="how VBMF estimates the noise variance: reference (default; the ranks of "
                   "the public Python VBMF port Tucker tools use) or global (the free energy's "
                   "global minimum)")
    add_input_shape(p)


def add_compared_nets(p, help="a convert output directory, or "
                      "ORIG.prototxt ORIG.caffemodel NEW.prototxt NEW.caffemodel"):
    """The original and the compressed net, for ``verify`` and ``bench``: ``paths``."""
    p.add_argument("paths", nargs="+", type=non_empty, metavar="PATH", help=help)


def add_caffe_runtime(p, runtimes=None, help=None):
    """How to run pycaffe: ``--caffe-python``, ``--caffe-timeout`` (see :func:`caffe_runtime`);
    with ``runtimes`` (``verify``, ``bench``) also ``--runtime``, which engine runs the nets (see
    :func:`net_runtime`).  Fine-tuning subcommands take no ``--runtime``: only Caffe trains."""
    if runtimes:
        p.add_argument("--runtime", default="auto", choices=list(runtimes),
                       help=help or "which engine runs the nets: auto (default: Caffe when "
                       "--caffe-python or $CAFFE_TUCKER_PYTHON names one, else OpenCV), caffe, "
                       "or opencv (OpenCV's DNN module, from pip; no fine-tuning)")
    p.add_argument("--caffe-python", metavar="CMD",
                   help="command that runs pycaffe's Python, e.g. 'chroot /opt/caffe-root python3' "
                   "(default: $CAFFE_TUCKER_PYTHON)")
    p.add_argument("--caffe-timeout", type=float_in(0), default=600, metavar="S",
                   help="give up on a Caffe call after S seconds (default 600)")


def add_output(p, metavar, help=None, required=False):
    p.add_argument("-o", "--output", type=non_empty, required=required, metavar=metavar, help=help)


def add_force(p, help):
    p.add_argument("--force", action="store_true", help=help)


def add_seed(p):
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)


def add_format(p):
    p.add_argument("--format", "-f", default="table", choices=list(FORMATS))


def input_shapes(args) -> dict:
    """``--input-shape`` values as ``{blob or None: shape}``."""
    return parse_input_shapes(args.input_shape)


def convert_options(args, **extra):
    """The :class:`~caffe_tucker.compress.convert.ConvertOptions` of :func:`add_compression`'s
    flags; ``extra`` sets the other fields."""
    # compress.convert imports tensorly and scipy (about 0.4 s): imported on use so that
    # --help and the subcommands that do not compress stay quick.
    from caffe_tucker.compress.convert import ConvertOptions

    return ConvertOptions(
        preset=args.preset,
        layers=args.layers,
        methods=layer_methods(args.method), method=bare_method(args.method),
        with_fc=args.with_fc,
        blocks=args.blocks,
        ranks=read_ranks_file(args.ranks) if args.ranks else None,
        ranks_source=args.ranks or "ranks file",
        rank_method=args.rank_method, weaken=args.weaken, vbmf_solver=args.vbmf_solver,
        input_shapes=input_shapes(args), **extra)


def layer_methods(values) -> dict | None:
    """``--method conv2=tucker1`` values as ``{"conv2": "tucker1"}`` (None when none given)."""
    out = {}
    for value in values or ():
        layer, sep, method = value.partition("=")
        if not sep:
            continue  # a bare METHOD: bare_method
        check_param("method", value, bool(layer and method),
                    "LAYER=METHOD, e.g. conv2=tucker1, or a bare METHOD", "convert",
                    exc=CaffeTuckerError)
        out[layer] = method
    return out or None


def bare_method(values) -> str | None:
    """The one ``--method METHOD`` without ``LAYER=`` (for every planned layer), or None."""
    bare = [v for v in values or () if "=" not in v]
    check_param("method", bare[-1] if bare else None, len(bare) <= 1,
                "given once without LAYER= (a bare --method applies to every planned layer)",
                "convert", exc=CaffeTuckerError)
    return bare[0] if bare else None


def caffe_runtime(args):
    """The runtime :func:`add_caffe_runtime`'s flags ask for (a context manager): pycaffe, or
    for a subcommand with ``--runtime`` (verify, bench) the one it names (:func:`net_runtime`)."""
    if getattr(args, "runtime", None) is not None:
        return net_runtime(args)
    return CaffeRuntime(args.caffe_python, timeout=args.caffe_timeout)


@contextlib.contextmanager
def net_runtime(args):
    """The runtime ``--runtime`` names, started (:func:`caffe_tucker.caffe.runtimes.choose_runtime`);
    an automatic choice is stated on stderr (``runtime: opencv 4.10.0 (no Caffe configured)``)."""
    from caffe_tucker.caffe.runtimes import choose_runtime, describe_runtime

    runtime, why = choose_runtime(args.runtime, args.caffe_python, args.caffe_timeout)
    with runtime as rt:
        if why is not None:
            print(f"runtime: {describe_runtime(rt)} ({why})", file=sys.stderr, flush=True)
        yield rt
