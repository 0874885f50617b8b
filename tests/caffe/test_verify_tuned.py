"""verify after fine-tuning (--tuned), its output and exit status, and its bad inputs.

Runs everywhere: the Caffe runtime is the numpy FakeRuntime (tests/fake_runtime.py, checked
against real Caffe to 1e-6), put in place of the CLI's by monkeypatching
``caffe_tucker.cli.verify.caffe_runtime`` (and bench's).  "Fine-tuned" weights are the
compressed ones with every factor nudged, as a fine-tuning run would leave them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from caffe_tucker.caffe.verify import (DECOMPOSITION_TOLERANCE, TUNED_WEIGHTS, CheckKind, Status,
                                       load_pair, verify)
from caffe_tucker.errors import CaffeTuckerError, InputFileError
from caffe_tucker.io.emit import write_caffemodel
from caffe_tucker.io.read import read_net
from conftest import ZOO
from fake_runtime import FakeRuntime

DIGITS = ZOO / "digits"


@pytest.fixture
def converted(cli, cifar, tmp_path):
    """cifar10_quick with conv1, conv2 and ip1 compressed, written out, plus fine-tuned weights."""
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"conv1": 12, "conv2": [6, 9], "ip1": 20}))
    out = tmp_path / "cifar_tucker"
    code, _, err = cli("convert", cifar, "--ranks", ranks, "-o", out, "--no-plot")
    assert code == 0, err
    net = read_net(out / "deploy.prototxt", out / "weights.caffemodel")
    rng = np.random.default_rng(0)
    tuned = net.with_layers(
        l.with_blobs(b * (1 + 0.05 * rng.standard_normal(b.shape)).astype(np.float32)
                     for b in l.blobs) if "_tk" in l.name else l
        for l in net.layers)
    write_caffemodel(tuned, out / TUNED_WEIGHTS)
    return out


@pytest.fixture
def fake_cli(cli, monkeypatch):
    """The CLI with FakeRuntime as its Caffe runtime; ``fake_cli.runtimes`` lists those made."""
    made = []

    def runtime(args):
        made.append(FakeRuntime())
        return made[-1]

    monkeypatch.setattr("caffe_tucker.cli.verify.caffe_runtime", runtime)
    monkeypatch.setattr("caffe_tucker.cli.bench.caffe_runtime", runtime)
    cli.runtimes = made
    return cli


def _four(cifar, out, weights):
    return [cifar, cifar.with_suffix(".caffemodel"), out / "deploy.prototxt", out / weights]


# --------------------------------------------------------------------------------------------
# The library

def test_tuned_directory_form_measures_and_skips_the_decomposition(converted):
    fake = FakeRuntime()
    pair = load_pair([converted], tuned=True)
    assert pair.tuned and pair.compressed.weights == converted / TUNED_WEIGHTS
    v = verify(fake, pair, random=3)
    approximation, decomposition = v.checks
    assert approximation.kind is CheckKind.APPROXIMATION and approximation.status is Status.MEASURED
    assert decomposition.kind is CheckKind.DECOMPOSITION
    assert decomposition.status is Status.NOT_APPLICABLE and decomposition.comparisons == ()
    assert "fine-tun" in decomposition.reason
    assert v.verdict is Status.MEASURED and v.passed and v.tuned
    (a,) = v.approximation
    assert a.top1 is not None and a.top5 is not None and a.max_rel > DECOMPOSITION_TOLERANCE
    assert [c.kind for c in fake.calls] == ["forward"] * 2   # no reconstructed net was run
    data = v.to_dict()
    assert data["verdict"] == "measured" and data["decomposition"] is None
    assert data["checks"] == {"approximation": "measured", "decomposition": "not applicable"}
    assert data["weights"] == str(converted / TUNED_WEIGHTS) and data["tuned"] is True


def test_without_tuned_the_directory_form_checks_the_untuned_weights(converted):
    v = verify(FakeRuntime(), load_pair([converted]))
    assert v.compressed_layers == ("conv1", "conv2", "ip1")
    assert v.check(CheckKind.DECOMPOSITION).status is Status.PASSED and v.verdict is Status.PASSED
    assert v.weights == converted / "weights.caffemodel" and not v.tuned


def test_tuned_four_file_form(converted, cifar):
    files = _four(cifar, converted, TUNED_WEIGHTS)
    untuned = verify(FakeRuntime(), load_pair(files))
    assert untuned.verdict is Status.FAILED and not untuned.passed  # the factors were changed
    assert "--tuned" in untuned.verdict_line()
    tuned = verify(FakeRuntime(), load_pair(files, tuned=True))
    assert tuned.verdict is Status.MEASURED and tuned.passed
    assert tuned.weights == converted / TUNED_WEIGHTS
    assert tuned.compressed_layers == ("conv1", "conv2", "ip1")
    assert tuned.approximation[0].max_abs == pytest.approx(untuned.approximation[0].max_abs)


def test_tuned_directory_without_finetuned_weights(converted):
    (converted / TUNED_WEIGHTS).unlink()
    with pytest.raises(InputFileError, match="finetune.*first"):
        load_pair([converted], tuned=True)


# --------------------------------------------------------------------------------------------
# The command line: output and exit status

def test_json_is_only_json(fake_cli, converted):
    code, out, err = fake_cli("verify", converted, "--format", "json")
    assert code == 0 and err == ""
    data = json.loads(out)                      # nothing after the JSON
    assert data["verdict"] == "passed" and data["passed"] is True
    code, out, _ = fake_cli("verify", converted, "--tuned", "--format", "json")
    assert code == 0 and json.loads(out)["verdict"] == "measured"


def test_tuned_text_report_says_what_was_checked(fake_cli, converted):
    code, out, err = fake_cli("verify", converted, "--tuned")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert f"weights: {converted / TUNED_WEIGHTS} (fine-tuned)" in lines[0]
    assert any("vs reconstruction" in l and "not applicable" in l for l in lines)
    assert lines[-1].startswith("MEASURED: fine-tuned weights") and "does not apply" in lines[-1]
    assert "PASSED" not in out and "FAILED" not in out


def test_failed_exits_with_status_2(fake_cli, converted, cifar):
    code, out, err = fake_cli("verify", *_four(cifar, converted, TUNED_WEIGHTS))
    assert code == 2 and err == ""
    assert out.strip().splitlines()[-1].startswith("FAILED: the compressed net does not compute")
    assert "FAILED" in out.split("vs reconstruction", 1)[1]      # the result column
    code, out, _ = fake_cli("verify", *_four(cifar, converted, TUNED_WEIGHTS), "--format", "json")
    assert code == 2 and json.loads(out)["verdict"] == "failed"
    code, _, _ = fake_cli("verify", *_four(cifar, converted, TUNED_WEIGHTS), "--tuned")
    assert code == 0


def test_passed_exits_0_with_a_verdict_line(fake_cli, converted):
    code, out, err = fake_cli("verify", converted, "--format", "csv")
    assert code == 0 and err == ""
    assert out.strip().splitlines()[-1].startswith("PASSED: the compressed net computes")


# --------------------------------------------------------------------------------------------
# Bad input: exit 1, one line on stderr, no traceback, before Caffe allocates anything

def _images(tmp_path, name, *, corrupt=None):
    d = tmp_path / name
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt is not None:
        (d / corrupt[0]).write_bytes(corrupt[1])
    return d


def _bad_verify_inputs(tmp_path, converted, cifar):
    """(id, argv, what the error line must contain)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    digits = [DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel"]
    truncated = (_images(tmp_path, "src") / "0.png").read_bytes()[:60]
    return [
        ("missing dir", ["verify", tmp_path / "nope"], "no such directory"),
        ("unknown runtime", ["verify", converted, "--runtime", "tensorrt"],
         "invalid choice: 'tensorrt'"),
        ("onnxruntime only times", ["verify", converted, "--runtime", "onnxruntime"],
         "invalid choice: 'onnxruntime'"),
        ("not a convert dir", ["verify", empty], "not a convert output directory"),
        ("a file for the dir", ["verify", cifar], "not a convert output directory (it is a file)"),
        ("images: no folder", ["verify", converted, "--images", tmp_path / "nope"],
         "no such folder"),
        ("images: a file", ["verify", converted, "--images", cifar], "is a file, not a folder"),
        ("images: empty", ["verify", converted, "--images", empty], "no images found"),
        ("images: not an image", ["verify", converted, "--images",
                                  _images(tmp_path, "text", corrupt=("notes.txt", b"hello"))],
         "notes.txt: cannot read it as an image"),
        ("images: corrupt png", ["verify", converted, "--images",
                                 _images(tmp_path, "trunc", corrupt=("9.png", truncated))],
         "9.png: cannot read it as an image"),
        ("original weights do not fit", ["verify", cifar, digits[1], converted / "deploy.prototxt",
                                         converted / "weights.caffemodel"], "do not belong together"),
        ("compressed weights do not fit", ["verify", cifar, cifar.with_suffix(".caffemodel"),
                                           converted / "deploy.prototxt", digits[1]],
         "no weights for this layer"),
        ("unrelated nets", ["verify", *digits, converted / "deploy.prototxt",
                            converted / "weights.caffemodel"], "in the compressed net; hint: give the original"),
        ("tuned without finetune", ["verify", tmp_path / "plain", "--tuned"],
         "finetuned.caffemodel: missing"),
        ("huge --random", ["verify", converted, "--random", "100000000"],
         "use a smaller --random"),
    ]


def test_verify_bad_inputs(fake_cli, converted, cifar, tmp_path):
    shutil.copytree(converted, tmp_path / "plain")
    (tmp_path / "plain" / TUNED_WEIGHTS).unlink()
    before = {p: p.read_bytes() for p in converted.iterdir()}
    for case, argv, expected in _bad_verify_inputs(tmp_path, converted, cifar):
        code, out, err = fake_cli(*argv)
        assert code == 1, (case, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (case, err)
        assert expected in err, (case, err)
    assert {p: p.read_bytes() for p in converted.iterdir()} == before   # inputs untouched
    assert all(not r.calls for r in fake_cli.runtimes)       # refused before running anything


def test_huge_random_names_the_figure(fake_cli, converted):
    code, _, err = fake_cli("verify", converted, "--random", "100000000")
    assert code == 1 and "GiB of memory" in err and "verify --random 100000000" in err


def test_images_above_the_memory_limit(fake_cli, converted, tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFE_TUCKER_MAX_MEMORY_GB", "0.00001")
    code, _, err = fake_cli("verify", converted, "--images", _images(tmp_path, "imgs"))
    assert code == 1 and "(2 files)" in err and "fewer images" in err


def test_bench_bad_inputs(fake_cli, converted, cifar):
    digits = [DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel"]
    for argv, expected in [
        (["bench", cifar, cifar.with_suffix(".caffemodel"), *digits], "in the compressed net; hint: give the original"),
        (["bench", converted, "--batch", "100000000"], "use a smaller --batch"),
    ]:
        code, _, err = fake_cli(*argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert all(not r.calls for r in fake_cli.runtimes)


def test_a_compressed_net_missing_an_original_layer_is_refused(converted, cifar, tmp_path):
    """Same inputs, but the "compressed" net lacks a layer of the original: bench used to die
    with StopIteration looking for its time."""
    text = (converted / "deploy.prototxt").read_text()
    assert 'name: "relu3"' in text
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(text.replace('name: "relu3"', 'name: "relu3b"'))
    with pytest.raises(CaffeTuckerError, match="'relu3' of the original .* is neither in the "
                       "compressed net nor replaced"):
        load_pair([cifar, cifar.with_suffix(".caffemodel"), renamed,
                   converted / "weights.caffemodel"])


def test_the_declared_batch_of_an_input_may_differ(converted, cifar, tmp_path):
    """verify and bench feed their own batch: a deploy declaring 10 images pairs with one of 1."""
    text = cifar.read_text()
    assert "dim: 1 dim: 3 dim: 32 dim: 32" in text
    ten = tmp_path / "ten.prototxt"
    ten.write_text(text.replace("dim: 1 dim: 3 dim: 32 dim: 32", "dim: 10 dim: 3 dim: 32 dim: 32"))
    pair = load_pair([ten, cifar.with_suffix(".caffemodel"), converted / "deploy.prototxt",
                      converted / "weights.caffemodel"])
    assert verify(FakeRuntime(), pair, random=2).verdict is Status.PASSED
