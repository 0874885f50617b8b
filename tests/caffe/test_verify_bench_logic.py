"""verify and bench logic with the numpy FakeRuntime: runs everywhere, no Caffe needed.

The real-Caffe versions of these checks are in test_caffe_integration.py; the fake agrees with
real Caffe to 1e-6 (test_fake_runtime.py), so what these tests assert holds in Caffe too.
"""

import json
import shutil

import numpy as np
import pytest

from caffe_tucker import ConvertOptions, convert, write_outputs
from caffe_tucker.caffe.bench import bench, speedup_ceiling
from caffe_tucker.caffe.verify import (DECOMPOSITION_TOLERANCE, load_pair, reconstructed_original,
                                       verify)
from caffe_tucker.errors import CaffeTuckerError, InputFileError
from caffe_tucker.io.emit import write_caffemodel
from fake_runtime import FakeRuntime


@pytest.fixture
def converted(cifar, tmp_path):
    """cifar10_quick with the first three layers compressed (tucker1, tucker2, svd), written out."""
    result = convert(cifar, None, ConvertOptions(ranks={"conv1": 12, "conv2": [6, 9], "ip1": 20},
                                                 spectra=False), progress=False)
    out = tmp_path / "cifar_tucker"
    write_outputs(result, out, plot=False)
    return result, out


def test_verify_output_directory_passes_and_measures_the_approximation(converted):
    result, out = converted
    fake = FakeRuntime()
    v = verify(fake, load_pair([out]), random=3, seed=1)
    assert v.passed and v.compressed_layers == ("conv1", "conv2", "ip1")
    assert [c.blob for c in v.approximation] == ["prob"] and v.inputs == {"data": (3, 3, 32, 32)}
    (d,) = v.decomposition
    assert d.max_rel <= DECOMPOSITION_TOLERANCE
    (a,) = v.approximation
    assert a.max_rel > 10 * DECOMPOSITION_TOLERANCE      # low ranks do change the outputs
    assert a.top1 is not None and 0 <= a.top1 <= 1 and a.top5 >= a.top1
    assert [c.kind for c in fake.calls] == ["forward"] * 3


def test_verify_fails_when_the_compressed_net_does_not_compute_its_decomposition(converted):
    """A ReLU slipped between two new layers: the chain no longer computes the factor product."""
    result, out = converted
    text = (out / "deploy.prototxt").read_text()
    relu = 'layer {\n  name: "sneaky"\n  type: "ReLU"\n  bottom: "conv2_tk1"\n  top: "conv2_tk1"\n}\n'
    anchor = 'layer {\n  name: "conv2_tk2"'
    assert anchor in text
    (out / "deploy.prototxt").write_text(text.replace(anchor, relu + anchor))
    v = verify(FakeRuntime(), load_pair([out]))
    assert not v.passed and v.decomposition[0].max_rel > DECOMPOSITION_TOLERANCE


def test_four_files_give_the_same_verdict_and_record(converted, cifar):
    result, out = converted
    pair = load_pair([cifar, cifar.with_suffix(".caffemodel"), out / "deploy.prototxt",
                      out / "weights.caffemodel"])
    assert [(r.name, r.method, r.ranks) for r in pair.record.layers] == [
        (r.name, r.method, r.ranks) for r in result.record.compressed]
    assert verify(FakeRuntime(), pair).passed


def test_reconstructed_original_has_the_reconstructed_kernels(converted):
    result, out = converted
    pair = load_pair([out])
    net = reconstructed_original(pair)
    for r in result.record.compressed:
        want = result.decompositions[r.name]
        kernel = net.layer(r.name).blobs[0].astype(np.float64)
        orig = pair.original.net.layer(r.name).blobs[0].astype(np.float64)
        assert np.linalg.norm(kernel - orig) / np.linalg.norm(orig) == pytest.approx(
            want.rel_error, rel=1e-4)
        assert np.array_equal(net.layer(r.name).blobs[1], pair.original.net.layer(r.name).blobs[1])


def test_report_paths_are_relative_to_the_output_directory(converted, tmp_path, monkeypatch):
    result, out = converted
    data = json.loads((out / "report.json").read_text())
    assert data["source"] == {"prototxt": "../cifar.prototxt", "weights": "../cifar.caffemodel"}
    assert data["version"] == 1
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)                   # verify from another directory
    assert verify(FakeRuntime(), load_pair(["../../cifar_tucker"])).passed
    sibling = tmp_path / "copy"                    # a copy at the same depth finds the same sources
    shutil.copytree(out, sibling)
    assert load_pair([sibling]).original.prototxt == (tmp_path / "cifar.prototxt").resolve()


def test_bench_rows_come_from_the_record(converted):
    result, out = converted
    fake = FakeRuntime()
    b = bench(fake, load_pair([out]), batches=(1, 2), iterations=2, repeats=2, warmup=0)
    assert set(b["batches"]) == {1, 2}
    rows = {r["name"]: r for r in b["batches"][2]["layers"]}
    for r in result.record.compressed:
        row = rows[r.name]
        assert row["method"] == r.method and len(row["parts_ms"]) == len(r.new_layers)
        assert row["theoretical"] == pytest.approx(r.flops_before / r.flops_after)
        assert row["compressed_ms"] == pytest.approx(sum(row["parts_ms"]))
    assert rows["conv3"]["method"] is None and rows["conv3"]["theoretical"] == 1.0
    total = b["batches"][1]["total"]
    assert total["theoretical"] == pytest.approx(result.record.total.flops_ratio)
    assert total["quotient"] == pytest.approx(total["speedup"] / total["theoretical"])
    compressed = [(rows[r.name]["original_ms"], rows[r.name]["theoretical"])
                  for r in result.record.compressed]
    total2 = b["batches"][2]["total"]
    assert total2["ceiling"] == pytest.approx(speedup_ceiling(total2["original_ms"], compressed))
    assert total2["realized"] == pytest.approx(total2["speedup"] / total2["ceiling"])
    env = b["batches"][2]["environment"]
    assert (env["batch"], env["iterations"], env["repeats"]) == (2, 2, 2)
    assert env["threads"] is None and env["threads_requested"] is None   # the fake has no BLAS
    assert env["caffe_version"] is None and env["blas_library"] is None
    assert [c.kind for c in fake.calls] == ["time"] * 8       # 2 batches x 2 repeats x 2 nets


def test_speedup_ceiling_keeps_the_untouched_time():
    """A fake timing table: 100 ms in all, conv1 40 ms at FLOPs x4, conv2 20 ms at x2; the other
    40 ms (untouched layers and overhead) stay: 100 / (40 + 10 + 10)."""
    assert speedup_ceiling(100.0, [(40.0, 4.0), (20.0, 2.0)]) == pytest.approx(100 / 60)
    assert speedup_ceiling(100.0, []) == 1.0                           # nothing compressed
    assert speedup_ceiling(50.0, [(50.0, 5.0)]) == pytest.approx(5.0)   # all of it compressed
    # per-layer times adding up to more than the pass: no negative untouched time
    assert speedup_ceiling(50.0, [(30.0, 3.0), (30.0, 3.0)]) == pytest.approx(50 / 20)
    # a ratio below 1 (a layer that grew) lowers the ceiling under 1
    assert speedup_ceiling(10.0, [(10.0, 0.5)]) == pytest.approx(0.5)
    for total, layers in ((0.0, []), (10.0, [(1.0, 0.0)]), (10.0, [(-1.0, 2.0)])):
        with pytest.raises(ValueError, match="parameter of speedup_ceiling must"):
            speedup_ceiling(total, layers)


def test_bench_passes_the_threads_and_checks_them(converted):
    result, out = converted
    b = bench(FakeRuntime(), load_pair([out]), iterations=1, repeats=1, warmup=0, threads=3)
    env = b["batches"][1]["environment"]
    assert (env["threads"], env["threads_requested"]) == (3, 3)   # the fake echoes what it got
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="'threads' parameter of bench must be an int >= 1"):
            bench(FakeRuntime(), load_pair([out]), threads=bad)


def test_four_file_bench_works(converted, cifar):
    """The four-file form used to die with KeyError: 'flops_before' (issue 8)."""
    result, out = converted
    pair = load_pair([cifar, cifar.with_suffix(".caffemodel"), out / "deploy.prototxt",
                      out / "weights.caffemodel"])
    b = bench(FakeRuntime(), pair, iterations=1, repeats=1, warmup=0)
    rows = {r["name"]: r for r in b["batches"][1]["layers"]}
    assert rows["conv2"]["theoretical"] == pytest.approx(result.record.layer("conv2").flops_ratio)


def test_load_pair_refuses_what_is_not_a_pair(tmp_path, cifar):
    with pytest.raises(InputFileError, match="not a convert output directory"):
        load_pair([tmp_path])
    with pytest.raises(CaffeTuckerError, match="output directory or four files"):
        load_pair([cifar, cifar])
    (tmp_path / "report.json").write_text("{\"layers\": 3}")
    with pytest.raises(InputFileError, match="not a caffe_tucker compression record"):
        load_pair([tmp_path])


# -- issue 14: progress on verify and bench (a bar on stderr, one step per pass in Caffe) ---------

def _bar(monkeypatch, total, label):
    import io

    from caffe_tucker.report.progress import Progress

    monkeypatch.setenv("CAFFE_TUCKER_PROGRESS", "1")
    return Progress(total, label, stream=io.StringIO())


def test_verify_advances_its_progress_once_per_forward_pass(converted, monkeypatch):
    from caffe_tucker.caffe.verify import verify_passes

    result, out = converted
    pair = load_pair([out])
    with _bar(monkeypatch, verify_passes(pair), "verify") as bar:
        verify(FakeRuntime(), pair, progress=bar)
    drawn = bar.stream.getvalue()
    assert bar.done == verify_passes(pair) == 3
    assert "100.0% 3/3" in drawn
    for what in ("original", "compressed", "reconstructed"):
        assert f"{what} net" in drawn
    assert verify_passes(load_pair([out], tuned=False)) == 3


def test_bench_advances_its_progress_once_per_timing_run(converted, monkeypatch):
    from caffe_tucker.caffe.bench import bench_runs

    result, out = converted
    fake = FakeRuntime()
    with _bar(monkeypatch, bench_runs((1, 2), 2), "bench") as bar:
        bench(fake, load_pair([out]), batches=(1, 2), iterations=1, repeats=2, warmup=0,
              progress=bar)
    assert bar.done == bench_runs((1, 2), 2) == len(fake.calls) == 8
    assert "100.0% 8/8" in bar.stream.getvalue()
    assert "batch 2, compressed, run 2/2" in bar.stream.getvalue()


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_cli_shows_progress_on_stderr_only_when_asked(converted, monkeypatch, cli, command):
    """The bar follows the project's convention (report/progress.py): drawn on a terminal or
    with CAFFE_TUCKER_PROGRESS=1, never on stdout, and nothing when stderr is not a terminal."""
    import contextlib

    import caffe_tucker.cli.bench
    import caffe_tucker.cli.verify

    result, out = converted
    module = getattr(caffe_tucker.cli, command)
    monkeypatch.setattr(module, "caffe_runtime", lambda args: contextlib.nullcontext(FakeRuntime()))
    extra = ["--iterations", "1", "--repeats", "1"] if command == "bench" else []
    code, stdout, stderr = cli(command, out, *extra)       # conftest: CAFFE_TUCKER_PROGRESS=0
    assert code == 0 and stderr == "" and "\r" not in stdout
    monkeypatch.setenv("CAFFE_TUCKER_PROGRESS", "1")
    code, stdout2, stderr = cli(command, out, *extra)
    assert code == 0 and f"\r{command} [" in stderr and "100.0%" in stderr
    assert "\r" not in stdout2
