"""``evbmf(solver="reference")`` makes the rank decisions of the public Python EVBMF port.

``_port`` below is this file's own transcription of what that port (``EVBMF`` in
CasvandenBogaard/VBMF's ``VBMF.py``, the function PyTorch Tucker tools call on each unfolding)
computes, written from its mathematics and sharing nothing with ``caffe_tucker.compress.vbmf``:
tau_underbar approximated by 2.5129 sqrt(alpha), the noise-variance interval of Nakajima et al.,
the port's objective, scipy's bounded Brent search with its default absolute tolerance (reached
here through ``fminbound``, whose own default ``xtol`` is the same 1e-5), and the rank as the
number of singular values strictly above the threshold.  It is checked against the module on
every unfolding of the bundled real models and on seeded synthetic matrices; then the two
solvers are compared on the layers where their ranks differ, the global one having the lower free
energy there.
"""

import argparse
import json
import math
import re

import numpy as np
import pytest
from scipy.optimize import brentq, fminbound

from caffe_tucker.cli.main import build_parser
from caffe_tucker.compress.convert import ConvertOptions, choose_ranks, convert
from caffe_tucker.compress.record import CompressionRecord
from caffe_tucker.compress.vbmf import SOLVERS, evbmf
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.model import load_model
from caffe_tucker.report.markdown import convert_markdown
from conftest import TEST_MODELS, ZOO

MODELS = {
    "digits": (ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel", None),
    "cifar10_quick": (TEST_MODELS / "cifar10_quick" / "cifar10_quick.prototxt",
                      TEST_MODELS / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel", None),
    "resnet20_cifar10": (TEST_MODELS / "resnet20_cifar10" / "res20_cifar_train_test.prototxt",
                         TEST_MODELS / "resnet20_cifar10" / "cifar10_res20_iter_64000.caffemodel",
                         {"Data1": (1, 3, 32, 32)}),
    "lenet_mnist_v1format": (TEST_MODELS / "lenet_mnist_v1format" / "lenet.prototxt",
                             TEST_MODELS / "lenet_mnist_v1format" / "lenet_iter_10000.caffemodel",
                             None),
}


def _port(Y, sigma2=None):
    """(rank, sigma2, threshold) of the port's EVBMF on ``Y`` (which must have L <= M)."""
    L, M = Y.shape
    assert L <= M, "the port requires L <= M"
    alpha = L / M
    tau = 2.5129 * np.sqrt(alpha)
    x_bar = (1 + tau) * (1 + alpha / tau)
    s = np.linalg.svd(Y, full_matrices=False)[1]  # with the singular vectors, as the port
    if sigma2 is None:
        h = int(min(np.ceil(L / (1 + alpha)) - 1, L))  # H_bar; s[h] is the (H_bar+1)-th value
        upper = np.sum(s ** 2) / (L * M)
        lower = max(s[h] ** 2 / (M * x_bar), np.mean(s[h:] ** 2) / M)

        def objective(s2):
            x = s ** 2 / (M * s2)
            over, under = x[x > x_bar], x[x <= x_bar]
            t = 0.5 * (over - (1 + alpha) + np.sqrt((over - (1 + alpha)) ** 2 - 4 * alpha))
            return (np.sum(under - np.log(under)) + np.sum(over - t)
                    + np.sum(np.log((t + 1) / over)) + alpha * np.sum(np.log(t / alpha + 1)))

        sigma2 = float(fminbound(objective, lower, upper))
    threshold = np.sqrt(M * sigma2 * (1 + tau) * (1 + alpha / tau))
    return int(np.sum(s > threshold)), sigma2, float(threshold)


def _free_energy(Y, sigma2):
    """The EVB free energy (2F/M up to a constant) at ``sigma2``, with the exact tau_underbar."""
    L, M = sorted(Y.shape)
    alpha = L / M
    tau_u = brentq(lambda t: math.log1p(t) + alpha * math.log1p(t / alpha) - t,
                   math.sqrt(alpha), 100.0, xtol=1e-15)
    g2 = np.linalg.svd(Y, compute_uv=False) ** 2
    x = g2 / (M * sigma2)
    x = x[x > (1 + tau_u) * (1 + alpha / tau_u)]
    t = 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))
    return (L * math.log(sigma2) + np.sum(g2) / (M * sigma2)
            + np.sum(np.log1p(t) + alpha * np.log1p(t / alpha) - t))


def _unfoldings(name):
    """Every weight matrix of a bundled model: the mode-3 (S x D²T) and mode-4 (T x D²S)
    unfoldings of each convolution kernel, each fully connected layer's N x K matrix."""
    prototxt, weights, shapes = MODELS[name]
    model = load_model(prototxt, weights, input_shapes=shapes)
    out = {}
    for layer in model.net.layers:
        if layer.type not in ("Convolution", "InnerProduct") or not layer.blobs:
            continue
        W = np.asarray(layer.blobs[0], dtype=np.float64)
        if layer.type == "Convolution":
            T, S = W.shape[:2]
            out[f"{layer.name}/mode3"] = W.transpose(1, 0, 2, 3).reshape(S, -1)
            out[f"{layer.name}/mode4"] = W.reshape(T, -1)
        else:
            out[layer.name] = W.reshape(W.shape[-2], W.shape[-1])
    return out


def _oriented(Y):
    return Y.T if Y.shape[0] > Y.shape[1] else Y


# --------------------------------------------------------------------------
# The reference solver is the port
# --------------------------------------------------------------------------

UNFOLDINGS = {"digits": 8, "cifar10_quick": 8, "resnet20_cifar10": 43,
              "lenet_mnist_v1format": 6}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_is_the_port_on_real_kernels(name):
    mats = _unfoldings(name)
    assert len(mats) == UNFOLDINGS[name]
    for key, Y in mats.items():
        res = evbmf(Y, solver="reference")
        rank, sigma2, threshold = _port(_oriented(Y))
        assert res.rank == rank, key
        # Equal up to the rounding of the singular values (the port takes them with the
        # singular vectors, the module without).
        assert math.isclose(res.sigma2, sigma2, rel_tol=1e-9), key
        assert math.isclose(res.threshold, threshold, rel_tol=1e-9), key


SYNTHETIC = [
    # seed, L, M, true rank, noise std: sigma^2 from far below the search's absolute
    # tolerance (1e-5) to far above it; L > M is passed to the port transposed
    (0, 64, 576, 8, 0.002),
    (1, 64, 576, 8, 0.01),
    (2, 128, 1152, 20, 0.003),
    (3, 100, 300, 5, 0.5),
    (4, 300, 100, 10, 0.3),
    (5, 200, 200, 6, 1.0),
    (6, 16, 144, 3, 0.05),
    (7, 500, 40, 4, 2.0),
]


@pytest.mark.parametrize("seed, L, M, rank, sigma", SYNTHETIC)
def test_reference_is_the_port_on_synthetic_matrices(seed, L, M, rank, sigma):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((L, rank)))
    V, _ = np.linalg.qr(rng.standard_normal((M, rank)))
    edge = sigma * (math.sqrt(L) + math.sqrt(M))
    Y = (U * edge * np.linspace(3.0, 1.2, rank)) @ V.T + sigma * rng.standard_normal((L, M))
    res = evbmf(Y, solver="reference")
    port_rank, sigma2, threshold = _port(_oriented(Y))
    assert res.rank == port_rank
    assert math.isclose(res.sigma2, sigma2, rel_tol=1e-9)
    assert math.isclose(res.threshold, threshold, rel_tol=1e-9)
    # weaken scales the variance the threshold is computed from; a given sigma2 is used as is
    for weaken in (0.5, 2.0):
        weakened = evbmf(Y, weaken=weaken, solver="reference")
        assert weakened.sigma2 == res.sigma2
        assert weakened.rank == _port(_oriented(Y), sigma2=weaken * sigma2)[0]
    assert evbmf(Y, sigma2=sigma**2, solver="reference").rank == _port(_oriented(Y), sigma**2)[0]


def test_reference_search_makes_no_step_when_its_tolerance_spans_the_interval():
    """With sigma^2 far below 1e-5 the bracket is already within the absolute tolerance: the
    port's estimate is the first golden-section point, lower + 0.382 (upper - lower)."""
    rng = np.random.default_rng(11)
    Y = 1e-4 * rng.standard_normal((32, 288))
    L, M = Y.shape
    alpha = L / M
    tau = 2.5129 * math.sqrt(alpha)
    s2 = np.linalg.svd(Y, compute_uv=False) ** 2
    h = math.ceil(L / (1 + alpha)) - 1
    upper = s2.sum() / (L * M)
    lower = max(s2[h] / (M * (1 + tau) * (1 + alpha / tau)), s2[h:].mean() / M)
    golden = lower + (3 - math.sqrt(5)) / 2 * (upper - lower)
    assert math.isclose(evbmf(Y, solver="reference").sigma2, golden, rel_tol=1e-9)


# --------------------------------------------------------------------------
# Where the two solvers differ
# --------------------------------------------------------------------------

#: Unfoldings whose ranks differ between the solvers: (reference, global).
DIFFERING = {
    ("digits", "fc1"): (25, 27),
    ("lenet_mnist_v1format", "ip1"): (91, 115),
    ("resnet20_cifar10", "Convolution9/mode3"): (4, 5),
    ("cifar10_quick", "conv3/mode4"): (6, 5),
}


@pytest.mark.parametrize("name, key", sorted(DIFFERING))
def test_global_solver_has_the_lower_free_energy_where_ranks_differ(name, key):
    Y = _unfoldings(name)[key]
    ref, glob = evbmf(Y, solver="reference"), evbmf(Y, solver="global")
    assert (ref.rank, glob.rank) == DIFFERING[name, key]
    assert _free_energy(Y, glob.sigma2) <= _free_energy(Y, ref.sigma2)


#: Planned layers (the tool's default plan) whose ranks differ: {layer: (reference, global)}.
LAYER_DIFFERENCES = {
    "digits": {"fc1": ((25,), (27,))},
    "cifar10_quick": {"conv2": ((14, 14), (14, 13)), "conv3": ((10, 6), (10, 5))},
    "resnet20_cifar10": {"Convolution9": ((4, 3), (5, 3)), "Convolution11": ((8, 4), (8, 5)),
                         "Convolution17": ((12, 5), (13, 5)), "Convolution18": ((9, 4), (7, 4)),
                         "Convolution20": ((9, 10), (7, 10))},
    "lenet_mnist_v1format": {"ip1": ((91,), (115,))},
}
PLANNED = {"digits": 4, "cifar10_quick": 5, "resnet20_cifar10": 20, "lenet_mnist_v1format": 4}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_planned_layers_where_the_solvers_differ(name):
    """The README's count: the solvers give different ranks on 9 of the 33 planned layers."""
    prototxt, weights, shapes = MODELS[name]
    ranks = {}
    for solver in SOLVERS:
        options = ConvertOptions(vbmf_solver=solver, input_shapes=shapes, spectra=False)
        ranks[solver] = {k: c.ranks for k, c in
                         choose_ranks(prototxt, weights, options, progress=False)[2].items()}
    assert len(ranks["reference"]) == PLANNED[name]
    assert {k: (v, ranks["global"][k]) for k, v in ranks["reference"].items()
            if v != ranks["global"][k]} == LAYER_DIFFERENCES[name]


# --------------------------------------------------------------------------
# The option through convert, and its record
# --------------------------------------------------------------------------

def test_convert_records_the_solver(cifar):
    record = convert(cifar, options=ConvertOptions(spectra=False), progress=False).record
    assert record.vbmf_solver == "reference"
    assert "ranks by `vbmf` (solver `reference`)" in convert_markdown(record)
    data = record.to_json()
    assert data["vbmf_solver"] == "reference" and data["version"] == 1
    assert CompressionRecord.from_json(data).vbmf_solver == "reference"
    # A record written before the key existed had its VBMF ranks from the global solver.
    del data["vbmf_solver"]
    assert CompressionRecord.from_json(data).vbmf_solver == "global"
    data["rank_method"] = "energy:0.9"
    assert CompressionRecord.from_json(data).vbmf_solver is None
    other = convert(cifar, options=ConvertOptions(rank_method="ratio:0.5", spectra=False),
                    progress=False).record
    assert other.vbmf_solver is None and other.to_json()["vbmf_solver"] is None


def test_cli_solver_flag(cli, cifar):
    def conv2(*extra):
        code, out, err = cli("ranks", cifar, "--format", "json", *extra)
        assert code == 0, err
        return json.loads(out)["conv2"]

    assert conv2() == conv2("--vbmf-solver", "reference") == [14, 14]
    assert conv2("--vbmf-solver", "global") == [14, 13]


# --------------------------------------------------------------------------
# Parameter errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("solver, shown", [("Reference", "'Reference'"), ("exact", "'exact'"),
                                           (None, "None"), (1, "1")])
def test_bad_solver(solver, shown):
    msg = (f"The 'solver' parameter of evbmf must be one of 'reference', 'global'. "
           f"Got {shown} instead.")
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        evbmf(np.ones((3, 4)), solver=solver)


def test_bad_vbmf_solver_in_convert(cifar):
    msg = ("The 'vbmf-solver' parameter of convert must be one of 'reference', 'global'. "
           "Got 'exact' instead.")
    with pytest.raises(CaffeTuckerError, match=f"^{re.escape(msg)}$"):
        choose_ranks(cifar, options=ConvertOptions(vbmf_solver="exact"), progress=False)


def test_bad_vbmf_solver_flag(cli, cifar):
    code, _, err = cli("convert", cifar, "--vbmf-solver", "exact")
    assert code == 1 and "argument --vbmf-solver: invalid choice: 'exact'" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_choices_are_the_solvers():
    """cli/args.py spells the choices out (importing the module would slow down --help)."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command in ("convert", "ranks"):
        (action,) = [a for a in sub.choices[command]._actions if a.dest == "vbmf_solver"]
        assert tuple(action.choices) == SOLVERS and action.default == SOLVERS[0]


def test_reference_refuses_overflowing_squares():
    msg = ("The 'Y' parameter of evbmf must have a finite sum of squares with "
           "solver='reference' (it works in the units of Y). Got entries up to 1e+200 instead.")
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        evbmf(np.full((3, 4), 1e200), solver="reference")
    assert evbmf(np.full((3, 4), 1e200), solver="global").rank == 1
