"""The latency rank policy (issue 13) on synthetic cost models, and end to end in convert."""

from __future__ import annotations

import json
import math

import pytest

from caffe_tucker import ConvertOptions, convert, write_outputs
from caffe_tucker.caffe.profile import CostProfile, Fit, MachineKey, layer_kinds, save_profile
from caffe_tucker.compress.decompose import decompose_layer
from caffe_tucker.compress.plan import make_plan
from caffe_tucker.compress.policy import (apply_rank_policy, latency_policy, relative_error,
                                          round_up)
from caffe_tucker.compress.ranks import select_ranks
from caffe_tucker.compress.record import read_record
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.model import load_model


@pytest.fixture
def chosen(cifar):
    model = load_model(cifar, cifar.with_suffix(".caffemodel"), deploy=True, strict=True)
    plan = make_plan(model.net, model.shapes, "auto")
    choices = select_ranks(model.net, model.shapes, plan)
    return model, choices


def decide(model, choice, cost):
    name = choice.layer
    return latency_policy(model.net.layer(name), model.shapes.layers[name], model.shapes, choice,
                          cost)


def cost_of(original, tucker2, tucker1):
    def cost(layer, info, method, ranks):
        return {None: lambda r: original, "tucker2": tucker2, "tucker1": tucker1}[method](ranks)
    return cost


def test_round_up():
    assert round_up(9, 64) == [9, 16]
    assert round_up(17, 64) == [17, 24, 32]
    assert round_up(16, 64) == [16]
    assert round_up(30, 30) == [30]


def test_rounding_is_taken_only_when_it_is_free(chosen):
    model, choices = chosen
    c = choices["conv2"]
    assert c.method == "tucker2" and all(r % 16 for r in c.ranks)
    steps = cost_of(100.0, lambda r: sum(math.ceil(x / 16) for x in r), lambda r: 100.0)
    d = decide(model, c, steps)
    assert d.decision == "rounded"
    assert all(x >= r and (x % 16 == 0 or x % 8 == 0 or x == f)
               for x, r, f in zip(d.ranks, c.ranks, c.full))
    assert d.chosen_ms <= d.vbmf_ms and d.chosen_error <= d.vbmf_error
    linear = cost_of(100.0, lambda r: 1.0 + sum(r), lambda r: 100.0)
    d = decide(model, c, linear)
    assert d.decision == "vbmf" and d.ranks == tuple(c.ranks) and d.chosen_ms == d.vbmf_ms


def test_the_original_is_kept_when_it_is_predicted_as_fast(chosen):
    model, choices = chosen
    for original in (0.5, 2.0):  # cheaper, and a tie (the original wins ties)
        d = decide(model, choices["conv3"], cost_of(original, lambda r: 2.0 + 1e-3 * sum(r),
                                                     lambda r: 50.0))
        assert d.decision == ("original" if original <= 2.0 + 1e-3 * sum(choices["conv3"].ranks)
                              else "vbmf")
        assert d.chosen_error == 0.0 and d.chosen_ms == original
    out, decisions = apply_rank_policy(model.net, model.shapes, choices, "latency",
                                       cost=cost_of(0.5, lambda r: 2.0, lambda r: 3.0))
    assert set(decisions) == {"conv1", "conv2", "conv3"}
    for name in decisions:
        assert out[name].skipped_reason.startswith("latency policy: the original layer")
    assert out["ip1"] == choices["ip1"]  # svd layers are not the policy's


def test_tucker1_is_chosen_when_cheaper_at_no_higher_error(chosen):
    model, choices = chosen
    c = choices["conv2"]
    d = decide(model, c, cost_of(100.0, lambda r: 10.0 + sum(r), lambda r: 0.01 * r[0]))
    assert d.decision == "tucker1" and d.method == "tucker1"
    (r,) = d.ranks
    assert d.chosen_error <= d.vbmf_error
    assert relative_error(c.spectra, "tucker1", (r - 1,)) > d.vbmf_error  # the smallest such rank
    out, _ = apply_rank_policy(model.net, model.shapes, {"conv2": c}, "latency",
                               cost=cost_of(100.0, lambda r: 10.0 + sum(r), lambda r: 0.01 * r[0]))
    assert out["conv2"].method == "tucker1" and out["conv2"].ranks == (r,)
    assert out["conv2"].skipped_reason is None and out["conv2"].source.endswith("latency")


def test_the_error_bounds(chosen):
    model, choices = chosen
    c = choices["conv2"]
    # Tucker-1's is exact: the truncated SVD decompose computes
    t1 = choices["conv2"].__class__(**{**c.__dict__, "method": "tucker1", "ranks": (7,),
                                       "full": (32,), "group_ranks": ((7,),)})
    d = decompose_layer(model.net.layer("conv2"), model.shapes.layers["conv2"], t1)
    assert relative_error(c.spectra, "tucker1", (7,)) == pytest.approx(d.rel_error, rel=1e-6)
    # Tucker-2's bounds HOOI's from below, and does not rise with either rank
    d2 = decompose_layer(model.net.layer("conv2"), model.shapes.layers["conv2"], c)
    bound = relative_error(c.spectra, "tucker2", c.ranks)
    assert bound <= d2.rel_error + 1e-9
    r3, r4 = c.ranks
    assert relative_error(c.spectra, "tucker2", (r3 + 1, r4)) <= bound
    assert relative_error(c.spectra, "tucker2", (r3, r4 + 1)) <= bound


def test_fixed_ranks_and_other_methods_are_left_alone(chosen):
    model, choices = chosen
    fixed = choices["conv2"].__class__(**{**choices["conv2"].__dict__, "source": "file"})
    assert decide(model, fixed, cost_of(0.0, lambda r: 1.0, lambda r: 1.0)) is None
    assert decide(model, choices["ip1"], cost_of(0.0, lambda r: 1.0, lambda r: 1.0)) is None


def test_an_unpriced_layer_asks_for_a_profile(chosen):
    model, choices = chosen
    with pytest.raises(CaffeTuckerError, match="run 'profile'"):
        decide(model, choices["conv2"], lambda *a: None)


def test_policy_arguments(chosen, tmp_path, monkeypatch):
    model, choices = chosen
    assert apply_rank_policy(model.net, model.shapes, choices) == (choices, {})
    with pytest.raises(CaffeTuckerError, match="The 'rank-policy' parameter of convert must be"):
        apply_rank_policy(model.net, model.shapes, choices, "fastest")
    monkeypatch.setenv("CAFFE_TUCKER_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CaffeTuckerError, match="none is cached; hint: run 'profile"):
        apply_rank_policy(model.net, model.shapes, choices, "latency")


def macs_profile(model, plan, path):
    """A profile of every kind of the plan whose time is its multiply-adds (1 ms per 100M)."""
    fits = {}
    for name, method in plan.items():
        for kind, _ in layer_kinds(model.net.layer(name), model.shapes.layers[name], method):
            fits[kind.key] = (kind, Fit(a=0.001, b=0.0, c=1e-8, residual=0.0))
    key = MachineKey("1.0.0", "Test", 1, "Test CPU", 1)
    return save_profile(CostProfile(key, fits), path)


def test_convert_with_the_latency_policy_records_its_decisions(cifar, tmp_path):
    model = load_model(cifar, deploy=True)
    path = macs_profile(model, make_plan(model.net, model.shapes, "auto"), tmp_path / "p.json")
    result = convert(cifar, options=ConvertOptions(rank_policy="latency", profile=str(path)),
                     progress=False)
    out = tmp_path / "out"
    write_outputs(result, out, plot=False)
    report = json.loads((out / "report.json").read_text())
    assert report["rank_policy"] == "latency"
    rows = {r["name"]: r for r in report["layers"]}
    for name in ("conv1", "conv2", "conv3"):
        p = rows[name]["policy"]
        assert p["decision"] in ("vbmf", "rounded", "tucker1", "original")
        assert p["chosen_error"] <= p["vbmf_error"] + 1e-9
        assert p["chosen_ms"] <= min(p["vbmf_ms"], p["original_ms"]) + 1e-12
        if p["decision"] != "original":
            assert rows[name]["method"] == p["method"] and rows[name]["ranks"] == p["ranks"]
    assert "policy" not in rows["ip1"]
    assert "Rank policy `latency`" in (out / "report.md").read_text()
    back = read_record(out)
    assert back.rank_policy == "latency"
    assert back.layers[1].policy.to_json() == rows["conv2"]["policy"]  # a typed record, read back
    assert back.layers[1].policy.decision == rows["conv2"]["policy"]["decision"]
    # the default policy writes neither key
    plain = convert(cifar, options=ConvertOptions(), progress=False).record.to_json()
    assert "rank_policy" not in plain and all("policy" not in r for r in plain["layers"])


def test_the_convert_command_prints_the_policy(cli, cifar, tmp_path):
    model = load_model(cifar, deploy=True)
    path = macs_profile(model, make_plan(model.net, model.shapes, "auto"), tmp_path / "p.json")
    code, out, err = cli("convert", cifar, "--rank-policy", "latency", "--profile", path,
                         "-o", tmp_path / "out", "--no-plot")
    assert code == 0, err
    assert out.count("latency policy") + out.count("untouched (latency policy") >= 3
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rank_policy"] == "latency"
