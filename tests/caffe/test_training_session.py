"""Training sessions: a Caffe solver stepped one batch at a time by the caller (real Caffe).

A session is what a custom training loop needs (issue 11's sparsity training): extra gradients
computed in this process (``add_diffs``), pruning masks, and snapshots that keep the momentum.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffe_tucker.caffe.pycaffe import CaffeRuntime, CaffeRuntimeError, StepResult
from caffe_tucker.io.caffe_pb2 import SolverState

NET = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 4 dim: 1 dim: 6 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
LR = 0.1
SOLVER = (f'type: "SGD" base_lr: {LR} momentum: 0 weight_decay: 0 lr_policy: "fixed" '
          'random_seed: 5')
MOMENTUM = SOLVER.replace("momentum: 0 ", "momentum: 0.9 ")


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"data": rng.standard_normal((4, 1, 6, 6)).astype(np.float32),
             "label": rng.integers(0, 3, 4).astype(np.float32)} for _ in range(n)]


def test_open_describes_the_net(caffe):
    with caffe.open_training(SOLVER, NET) as session:
        assert session.batch == 4
        assert session.input_shapes == {"data": (1, 6, 6), "label": ()}
        assert session.param_shapes == {"conv": ((3, 1, 3, 3), (3,)), "fc": ((3, 48), (3,))}
        assert session.outputs == ("loss",) and session.iteration == 0
        result = session.step(_batches(1)[0], fetch=["fc"])
    assert isinstance(result, StepResult)
    assert result.iteration == 1 and session.iteration == 1
    assert result.lr == pytest.approx(LR) and np.isfinite(result.loss)
    assert result.outputs == {"loss": pytest.approx(result.loss)}
    assert list(result.weights) == ["fc"] and result.weights["fc"].dtype == np.float32
    assert session.closed


def test_lr_is_the_one_the_update_used(caffe):
    multistep = SOLVER.replace('lr_policy: "fixed"', 'lr_policy: "multistep" gamma: 0.5')
    batches = _batches(3)
    with caffe.open_training(multistep + " stepvalue: 1 stepvalue: 2", NET) as session:
        assert [session.step(b).lr for b in batches] == pytest.approx([LR, LR / 2, LR / 4])
        stepped = session.caffemodel()
    # and the hook changed nothing else: train on the same batches gives the same weights
    inputs = {name: np.concatenate([b[name] for b in batches]) for name in ("data", "label")}
    trained = caffe.train(multistep + " stepvalue: 1 stepvalue: 2 max_iter: 3", NET, inputs,
                          shuffle=False)
    assert stepped == trained["caffemodel"]
    # reading solver.lr advances multistep once per read: with repeated step values a read in
    # the hook would change the schedule, so the lr is not reported
    with caffe.open_training(multistep + " stepvalue: 1 stepvalue: 1", NET) as session:
        assert session.step(_batches(1)[0]).lr is None

def test_add_diffs_move_the_weights_by_minus_lr_times_them(caffe):
    batch = _batches(1)[0]
    rng = np.random.default_rng(1)
    diffs = {"conv": rng.standard_normal((3, 1, 3, 3)).astype(np.float32),
             "fc": rng.standard_normal((3, 48)).astype(np.float32)}
    with caffe.open_training(SOLVER, NET) as plain:
        start = plain.caffemodel()
        before = plain.get_weights(["conv", "fc"])
        base = plain.step(batch, fetch=["conv", "fc"]).weights
    with caffe.open_training(SOLVER, NET, start, seed=99) as extra:  # other fillers, same start
        np.testing.assert_array_equal(extra.get_weights(["conv"])["conv"], before["conv"])
        moved = extra.step(batch, add_diffs=diffs, fetch=["conv", "fc"]).weights
    for layer, d in diffs.items():
        assert not np.allclose(base[layer], before[layer])
        np.testing.assert_allclose(moved[layer] - base[layer], -LR * d, rtol=0, atol=1e-6)


def test_fetched_diffs_are_the_gradient_the_update_applied(caffe):
    batch = _batches(1, seed=7)[0]
    rng = np.random.default_rng(8)
    extra = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    keep = rng.random((3, 48)) > 0.4
    with caffe.open_training(SOLVER, NET) as session:             # SGD, momentum 0, decay 0
        before = session.get_weights(["conv", "fc"])
        result = session.step(batch, add_diffs={"conv": extra}, masks={"fc": keep},
                              fetch=["conv", "fc"], fetch_diffs=["conv", "fc"])
    assert sorted(result.diffs) == ["conv", "fc"]
    for layer in ("conv", "fc"):
        d = result.diffs[layer]
        assert d.dtype == np.float32 and d.shape == before[layer].shape and np.abs(d).max() > 0
        implied = (before[layer] - result.weights[layer]) / np.float32(LR)
        moved = keep if layer == "fc" else np.ones(d.shape, bool)   # masked ones are set to 0
        np.testing.assert_allclose(d[moved], implied[moved], rtol=1e-4, atol=1e-5)
    assert not result.diffs["fc"][~keep].any()          # taken after the masks
    # after add_diffs too: the same step without them differs by exactly the addition
    with caffe.open_training(SOLVER, NET) as session:
        plain = session.step(batch, fetch_diffs=["conv"])
    np.testing.assert_allclose(result.diffs["conv"] - plain.diffs["conv"], extra, atol=1e-6)
    assert plain.weights == {}

    # base_lr 0: nothing moves, the gradient is still there (a tool's own update rule)
    frozen = SOLVER.replace(f"base_lr: {LR}", "base_lr: 0")
    with caffe.open_training(frozen, NET) as session:
        start = session.get_weights(["conv", "fc"])
        results = [session.step(b, fetch=["conv", "fc"], fetch_diffs=["fc"])
                   for b in _batches(2, seed=9)]
    for r in results:
        assert r.lr == 0.0 and list(r.diffs) == ["fc"] and np.abs(r.diffs["fc"]).max() > 0
        for layer in ("conv", "fc"):
            assert r.weights[layer].tobytes() == start[layer].tobytes()
    assert results[0].diffs["fc"].tobytes() != results[1].diffs["fc"].tobytes()  # other batch
    # no fetch_diffs: no diffs
    assert StepResult(1, 0.0, {}, None, {}).diffs == {}


def test_masked_weights_stay_exactly_zero(caffe):
    rng = np.random.default_rng(2)
    keep_conv = rng.random((3, 1, 3, 3)) > 0.5                       # bool
    keep_fc = (rng.random((3, 48)) > 0.3).astype(np.float64)         # 0.0/1.0
    with caffe.open_training(SOLVER, NET) as session:
        before = session.get_weights(["conv", "fc"])
        for batch in _batches(3):
            # a gradient pushing every weight keeps the masked ones at 0 all the same
            result = session.step(batch, add_diffs={"conv": np.ones((3, 1, 3, 3))},
                                  masks={"conv": keep_conv, "fc": keep_fc},
                                  fetch=["conv", "fc"])
        after = result.weights
        assert session.get_weights(["conv"])["conv"].tobytes() == after["conv"].tobytes()
        _, state = session.snapshot()
    for layer, keep in (("conv", keep_conv), ("fc", keep_fc.astype(bool))):
        pruned = after[layer][~keep]
        assert pruned.size and not pruned.view(np.uint32).any(), "not +0.0 everywhere"
        assert (after[layer][keep] != before[layer][keep]).all()
    # the gradient was masked before the update, not just the weights after it: SGD's history
    # holds lr * diff of the last step (conv weights are history 0, fc weights history 2)
    history = SolverState.FromString(state).history
    for i, keep in ((0, keep_conv), (2, keep_fc.astype(bool))):
        h = np.asarray(history[i].data, np.float32).reshape(keep.shape)
        assert not h[~keep].any() and h[keep].all()


def test_restore_continues_with_the_momentum_history(caffe):
    batches = _batches(5, seed=3)
    with caffe.open_training(MOMENTUM, NET) as first:
        for batch in batches[:3]:
            first.step(batch)
        model, state = first.snapshot()
        assert first.iteration == 3
        tail = [first.step(batch, fetch=["conv", "fc"]) for batch in batches[3:]]
    with caffe.open_training(MOMENTUM, NET, seed=17) as second:
        assert second.restore(model, state) == 3 and second.iteration == 3
        again = [second.step(batch, fetch=["conv", "fc"]) for batch in batches[3:]]
    assert [r.iteration for r in again] == [r.iteration for r in tail] == [4, 5]
    for want, got in zip(tail, again):
        assert got.loss == want.loss
        for layer in ("conv", "fc"):
            np.testing.assert_array_equal(got.weights[layer], want.weights[layer])
    # the weights alone do not continue the run: the history is what momentum needs
    with caffe.open_training(MOMENTUM, NET, model) as weights_only:
        fresh = [weights_only.step(batch, fetch=["fc"]) for batch in batches[3:]]
    assert not np.allclose(fresh[-1].weights["fc"], tail[-1].weights["fc"], rtol=0, atol=1e-6)


def test_set_params_and_get_weights_round_trip(caffe):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    fc = rng.standard_normal((3, 48))  # float64: sent as float32
    with caffe.open_training(SOLVER, NET) as session:
        session.set_params({"conv": [w, b], "fc": [fc]})
        got = session.get_weights(["conv", "fc"])
        np.testing.assert_array_equal(got["conv"], w)
        np.testing.assert_array_equal(got["fc"], fc.astype(np.float32))
        model = session.caffemodel()
    with caffe.open_training(SOLVER, NET, model, seed=1) as reloaded:
        np.testing.assert_array_equal(reloaded.get_weights(["conv"])["conv"], w)


def test_misuse_is_refused_in_one_line_naming_the_layer(caffe):
    pid = caffe.hello()["pid"]
    batch = _batches(1)[0]
    # the worker itself: no session open
    caffe._request("x", {"type": "session_close"})
    response = caffe._request("x", {"type": "session_step", "inputs": batch})
    assert not response["ok"] and "no training session is open" in response["error"]

    with caffe.open_training(SOLVER, NET) as session:
        before = session.get_weights(["conv"])["conv"]
        cases = [
            (dict(masks={"nope": np.ones(3)}), r"masks: no layer 'nope' with learnable blobs.*"
                                               r"\['conv', 'fc'\]"),
            (dict(add_diffs={"conv": np.ones((3, 9))}),
             r"add_diffs for layer 'conv' has shape \[3, 9\]; the layer's weights \(blob 0\) "
             r"have shape \[3, 1, 3, 3\]"),
            (dict(fetch=["loss"]), r"fetch: no layer 'loss' with learnable blobs"),
            (dict(fetch_diffs=["nope"]), r"fetch_diffs: no layer 'nope' with learnable blobs"),
        ]
        for kwargs, pattern in cases:
            with pytest.raises(CaffeRuntimeError, match=pattern) as exc:
                session.step(batch, **kwargs)
            assert "\n" not in str(exc.value)
        with pytest.raises(CaffeRuntimeError, match=r"input 'data' has shape \[2, 1, 6, 6\]; a "
                                                    r"step takes exactly one batch, \[4, 1, 6, 6\]"):
            session.step({"data": batch["data"][:2], "label": batch["label"]})
        with pytest.raises(CaffeRuntimeError, match=r"one array per input blob .*'label'"):
            session.step({"data": batch["data"]})
        with pytest.raises(CaffeRuntimeError, match=r"set_params for layer 'fc' blob 1 has shape "
                                                    r"\[4\]; the blob has shape \[3\]"):
            session.set_params({"conv": [before], "fc": [np.zeros((3, 48)), np.zeros(4)]})
        with pytest.raises(ValueError, match=r"'masks' parameter of TrainingSession.step must "
                                             r"hold bool or 0/1 arrays.*'conv'"):
            session.step(batch, masks={"conv": np.full((3, 1, 3, 3), 0.5)})
        with pytest.raises(ValueError, match=r"'fetch' parameter of TrainingSession.step"):
            session.step(batch, fetch="conv")
        with pytest.raises(ValueError, match=r"list of arrays, one per blob"):
            session.set_params({"conv": before})
        with pytest.raises(CaffeRuntimeError, match="cannot parse the solver state"):
            session.restore(None, b"\xff\xff not a state")
        # refused requests changed nothing: not the weights, not the iteration
        assert session.iteration == 0
        np.testing.assert_array_equal(session.get_weights(["conv"])["conv"], before)
        _, state = session.snapshot()

    wider = NET.replace("num_output: 3 kernel_size", "num_output: 5 kernel_size")
    with caffe.open_training(SOLVER, wider) as other:
        with pytest.raises(CaffeRuntimeError, match=r"history blob 0 .*layer 'conv' blob 0, of "
                                                    r"shape \[5, 1, 3, 3\]"):
            other.restore(None, state)
        replaced = other
        with caffe.open_training(SOLVER, NET) as newer:
            with pytest.raises(CaffeRuntimeError, match="open_training opened another"):
                replaced.step(batch)
            assert replaced.closed and not newer.closed
    with pytest.raises(CaffeRuntimeError, match="training session is closed"):
        newer.step(batch)
    with pytest.raises(CaffeRuntimeError, match="iter_size must be 1"):
        caffe.open_training(SOLVER + " iter_size: 2", NET)
    assert caffe.hello()["pid"] == pid


def test_a_session_dies_with_its_worker(caffe_command):
    with CaffeRuntime(caffe_command, timeout=60) as runtime:
        session = runtime.open_training(SOLVER, NET)
        runtime.kill()
        assert session.closed
        with pytest.raises(CaffeRuntimeError, match="its Caffe worker stopped"):
            session.step(_batches(1)[0])
        session.close()  # no worker to tell: nothing happens
        assert not runtime.alive


def test_release_drops_the_cached_net_and_forward_loads_it_again(caffe):
    from pathlib import Path

    zoo = Path(__file__).resolve().parents[2] / "zoo_models" / "digits"
    x = np.zeros((1, 1, 8, 8), np.float32)
    first = caffe.forward(zoo / "deploy.prototxt", zoo / "digits.caffemodel", {"data": x})
    caffe.release()
    assert caffe.hello()["nets_loaded"] >= 1
    again = caffe.forward(zoo / "deploy.prototxt", zoo / "digits.caffemodel", {"data": x})
    np.testing.assert_array_equal(first["prob"], again["prob"])
    caffe.release()
    caffe.release()  # twice is fine
