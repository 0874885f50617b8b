"""The cost model (issue 13): the fit, the kinds of a net, the cache, and one real profile."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from caffe_tucker.caffe.profile import (CostProfile, Fit, Kind, MachineKey, conv_ops, find_cached,
                                        fit_times, grid, layer_kinds, load_profile, original_op,
                                        profile_net, profile_path, save_profile)
from caffe_tucker.compress.plan import make_plan
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.graph import Net
from caffe_tucker.model import load_model

CORE = Kind(kernel=(3, 3), stride=(1, 1), pad=(1, 1), dilation=(1, 1), group=1, height=13,
            width=13)
KEY = MachineKey(caffe_version="1.0.0", blas_corename="Zen", threads=2, cpu="Test CPU 9000",
                 batch=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_recovers_known_coefficients(seed):
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.01, 0.2), rng.uniform(1e-4, 1e-3), rng.uniform(5e-9, 5e-8)
    points = []
    for r in (8, 16, 24, 48, 96, 160, 256):
        for r2 in (r, r // 2 + 1):
            ms = a + b * (r + r2) + c * CORE.macs(r, r2)
            points.append((r, r2, ms * (1 + rng.normal(0, 1e-4))))
    fit = fit_times(CORE, points)
    assert fit.a == pytest.approx(a, rel=0.05)
    assert fit.b == pytest.approx(b, rel=0.05)
    assert fit.c == pytest.approx(c, rel=0.01)
    assert fit.residual < 1e-3
    assert fit.predict(CORE, 100, 50) == pytest.approx(a + b * 150 + c * CORE.macs(100, 50),
                                                       rel=1e-2)


def test_the_fit_is_non_negative():
    # times that fall with the channels would need b < 0: it stays 0
    fit = fit_times(CORE, [(8, 8, 3.0), (16, 16, 2.0), (32, 32, 1.5)])
    assert min(fit.a, fit.b, fit.c) >= 0


def test_grid_spans_the_range_in_multiples_of_the_group():
    assert grid(96)[0] == 8 and grid(96)[-1] == 96 and list(grid(96)) == sorted(set(grid(96)))
    g = grid(384, group=2)
    assert g[0] == 8 and g[-1] == 384 and all(v % 2 == 0 for v in g)
    assert 4 <= len(g) <= 6
    assert grid(3) == (3,)


def test_kind_keys_and_macs():
    assert CORE.key == "k3x3 s1x1 p1x1 d1x1 g1 @13x13"
    conv1 = Kind((11, 11), (4, 4), (0, 0), (1, 1), 1, 227, 227, fixed_in=3)
    assert conv1.out_hw == (55, 55)
    assert conv1.macs(3, 96) == 55 * 55 * 96 * 3 * 121
    assert conv1.key.endswith("@227x227 in=3")
    assert Kind.from_json(conv1.to_json()) == conv1


def test_machine_key_names_a_file_per_runtime():
    assert KEY.filename == KEY.filename
    assert KEY.filename.startswith("test-cpu-9000-b1-t2-")
    other = MachineKey("1.0.0", "Zen", 1, "Test CPU 9000", 1)
    assert other.filename != KEY.filename
    assert MachineKey.from_json(KEY.to_json()) == KEY


def _profile():
    fit = Fit(a=0.01, b=1e-4, c=2e-8, residual=0.02, points=((8, 8, 0.02), (16, 16, 0.05)))
    return CostProfile(KEY, {CORE.key: (CORE, fit)})


def test_the_cache_round_trips_deterministically(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFE_TUCKER_CACHE", str(tmp_path / "cache"))
    path = save_profile(_profile(), profile_path(KEY))
    assert path.parent == tmp_path / "cache" / "profiles"
    first = path.read_bytes()
    back = load_profile(path)
    assert back == _profile()
    save_profile(back, path)
    assert path.read_bytes() == first
    assert find_cached(cpu="Test CPU 9000", batch=1) == path
    assert find_cached(cpu="Test CPU 9000", batch=8) is None
    assert find_cached(cpu="another", batch=1) is None


def test_a_bad_profile_is_one_line_with_a_hint(tmp_path):
    bad = tmp_path / "bad.json"
    for text, words in [("[1]", "not a caffe_tucker cost profile"),
                        ("{", "cannot read"),
                        (json.dumps({**_profile().to_json(), "version": 99}), "version 99"),
                        (json.dumps({**_profile().to_json(), "kinds": [{"key": 1}]}), "malformed")]:
        bad.write_text(text)
        with pytest.raises(CaffeTuckerError, match=words) as info:
            load_profile(bad)
        assert "\n" not in str(info.value) and "hint" in str(info.value)
    with pytest.raises(CaffeTuckerError, match="no such cost profile"):
        load_profile(tmp_path / "missing.json")


def _kinds_of(model, plan):
    kinds = {}
    for name, method in plan.items():
        for kind, points in layer_kinds(model.net.layer(name), model.shapes.layers[name], method):
            kinds.setdefault(kind.key, (kind, set()))[1].update(points)
    return kinds


def test_every_candidate_layer_maps_to_a_profiled_kind(cifar):
    model = load_model(cifar, deploy=True)
    plan = make_plan(model.net, model.shapes, "auto")
    kinds = _kinds_of(model, plan)
    assert kinds
    for name, method in plan.items():
        layer, info = model.net.layer(name), model.shapes.layers[name]
        if method not in ("tucker1", "tucker2"):
            assert layer_kinds(layer, info, method) == []
            continue
        s, t = info.inputs[0][1], info.geometry.num_output
        candidates = [original_op(layer, info), conv_ops(layer, info, "tucker1", (5,))]
        if method == "tucker2":
            candidates += [conv_ops(layer, info, "tucker2", (5, 7)),
                           conv_ops(layer, info, "tucker2", (s, 7)),
                           conv_ops(layer, info, "tucker2", (5, t))]
        for ops in candidates:
            assert all(op.kind.key in kinds for op in ops), (name, [op.kind.key for op in ops])


def test_the_profile_net_has_a_convolution_per_grid_point(cifar):
    model = load_model(cifar, deploy=True)
    kinds = [(k, sorted(p)) for k, p in _kinds_of(model, make_plan(model.net, model.shapes,
                                                                   "auto")).values()]
    net, where = profile_net(kinds, batch=2)
    assert isinstance(net, Net)
    assert len(where) == sum(len(p) for _, p in kinds)
    convs = [l for l in net.layers if l.type == "Convolution"]
    assert [l.name for l in convs] == list(where)


def test_a_real_profile_predicts_a_measured_layer_within_a_loose_factor(
        caffe, caffe_command, cifar, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFE_TUCKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAFFE_TUCKER_PYTHON", caffe_command)
    code, out, err = cli("profile", cifar, "--iterations", "3", "-o", tmp_path / "p.json")
    assert code == 0, err
    assert "residual" in out and "wrote" in out
    profile = load_profile(tmp_path / "p.json")
    cached = list((tmp_path / "cache" / "profiles").glob("*.json"))
    assert len(cached) == 1 and load_profile(cached[0]) == profile
    # a second run measures nothing
    code, out, _ = cli("profile", cifar)
    assert code == 0 and "0 measured" in out
    # conv2 itself, timed alone, against its prediction
    model = load_model(cifar, deploy=True)
    layer, info = model.net.layer("conv2"), model.shapes.layers["conv2"]
    predicted = profile.predict(original_op(layer, info))
    ops = original_op(layer, info)
    net, where = profile_net([(ops[0].kind, [(ops[0].cin, ops[0].cout)])])
    runs = [caffe.time(net, iterations=5)["layers"] for _ in range(3)]
    measured = statistics.median(next(l["ms"] for l in r if l["name"] in where) for r in runs)
    assert predicted is not None and measured > 0
    assert measured / 5 < predicted < measured * 5


def test_profiling_another_net_keeps_the_kinds_already_cached(tmp_path, monkeypatch):
    from caffe_tucker.caffe.profile import cached_profile

    monkeypatch.setenv("CAFFE_TUCKER_CACHE", str(tmp_path / "cache"))
    save_profile(_profile(), profile_path(KEY))
    other = Kind((1, 1), (1, 1), (0, 0), (1, 1), 1, 8, 8, fixed_in=32)
    fresh = CostProfile(KEY, {other.key: (other, Fit(0.0, 1e-4, 1e-8, 0.01))})
    merged = cached_profile(KEY).merged(fresh)
    assert set(merged.fits) == {CORE.key, other.key}
