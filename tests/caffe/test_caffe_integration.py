"""Emitted models in real Caffe: verify, bench, and the paper-rank zoo nets (needs a runtime)."""

import json
import shutil

import numpy as np
import pytest

from caffe_tucker import infer_shapes, read_prototxt
from caffe_tucker.caffe.bench import speedup_ceiling
from caffe_tucker.io.emit import write_caffemodel
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.compress.methods import get_method
from conftest import ZOO, write


def caffe_cli(cli, caffe_command, *args):
    return cli(*args, "--caffe-python", caffe_command)


def test_full_rank_convert_verifies_exactly(cli, caffe_command, cifar, tmp_path):
    net = read_prototxt(cifar).for_state("TEST")
    shapes = infer_shapes(net)
    ranks = {}
    for name, method in (("conv1", "tucker1"), ("conv2", "tucker2"), ("conv3", "tucker2"),
                         ("ip1", "svd"), ("ip2", "svd")):
        full = list(get_method(method).full_ranks(net.layer(name), shapes.layers[name]))
        ranks[name] = full if method == "tucker2" else full[0]
    f = write(tmp_path / "full.json", json.dumps(ranks))
    assert cli("convert", cifar, "--ranks", f, "-o", tmp_path / "full")[0] == 0
    code, out, err = caffe_cli(cli, caffe_command, "verify", tmp_path / "full", "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert result["verdict"] == "passed" and set(result["compressed_layers"]) == set(ranks)
    (prob,) = result["approximation"]
    assert prob["max_rel"] < 1e-4 and prob["top1_agreement"] == 1.0


def test_vbmf_convert_verifies_and_benches(cli, caffe_command, cifar, tmp_path):
    assert cli("convert", cifar, "-o", tmp_path / "out")[0] == 0
    code, out, err = caffe_cli(cli, caffe_command, "verify", tmp_path / "out", "--random", "4")
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED: "), err
    assert "vs reconstruction" in out and "vs original" in out
    # the four-file form finds the compressed layers by their names
    code, out, err = caffe_cli(cli, caffe_command, "verify", cifar, cifar.with_suffix(".caffemodel"),
                               tmp_path / "out" / "deploy.prototxt",
                               tmp_path / "out" / "weights.caffemodel", "--format", "json")
    assert code == 0, err
    assert set(json.loads(out)["compressed_layers"]) == {"conv1", "conv2", "conv3"}
    code, out, err = caffe_cli(cli, caffe_command, "bench", tmp_path / "out", "--batch", "1,2",
                               "--iterations", "3", "--repeats", "1", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"1", "2"}
    total = data["1"]["total"]
    assert total["original_ms"] > 0 and total["compressed_ms"] > 0
    assert total["theoretical"] == pytest.approx(
        json.loads((tmp_path / "out" / "report.json").read_text())["total"]["flops_before"]
        / json.loads((tmp_path / "out" / "report.json").read_text())["total"]["flops_after"])
    conv2 = next(r for r in data["1"]["layers"] if r["name"] == "conv2")
    assert conv2["method"] == "tucker2" and len(conv2["parts_ms"]) == 3
    assert (tmp_path / "out" / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_states_its_blas_pins_threads_and_gives_the_ceiling(cli, caffe_command, tmp_path):
    """The digits convert output benched with --threads 1: the JSON names Caffe and OpenBLAS,
    the one thread in force, and the whole net's ceiling from its own layer times."""
    digits = tmp_path / "digits.prototxt"
    digits.write_text((ZOO / "digits" / "deploy.prototxt").read_text())
    digits.with_suffix(".caffemodel").write_bytes((ZOO / "digits" / "digits.caffemodel").read_bytes())
    assert cli("convert", digits, "-o", tmp_path / "out", "--no-plot")[0] == 0
    code, out, err = caffe_cli(cli, caffe_command, "bench", tmp_path / "out", "--threads", "1",
                               "--iterations", "2", "--repeats", "1", "--format", "json")
    assert code == 0, err
    result = json.loads(out)["1"]
    env, total = result["environment"], result["total"]
    assert env["caffe_version"].startswith("1.0") and "blas" in env["blas_library"]
    assert env["blas_corename"] and env["blas_config"].startswith("OpenBLAS")
    assert (env["threads"], env["threads_requested"], env["batch"]) == (1, 1, 1)
    compressed = [(r["original_ms"], r["theoretical"]) for r in result["layers"] if r["method"]]
    assert compressed
    assert total["ceiling"] == pytest.approx(speedup_ceiling(total["original_ms"], compressed))
    assert 1 < total["ceiling"] <= max(r for _, r in compressed) + 1e-9
    assert total["realized"] == pytest.approx(total["speedup"] / total["ceiling"])
    code, out, err = caffe_cli(cli, caffe_command, "bench", tmp_path / "out", "--iterations", "1",
                               "--repeats", "1")
    assert code == 0, err
    assert "Caffe 1.0" in out and "OpenBLAS" in out and "thread(s)" in out and "ceiling x" in out


@pytest.mark.parametrize("model, weights, extra", [
    ("lenet_mnist_v1format/lenet.prototxt", "lenet_mnist_v1format/lenet_iter_10000.caffemodel", []),
    ("resnet20_cifar10/res20_cifar_train_test.prototxt",
     "resnet20_cifar10/cifar10_res20_iter_64000.caffemodel", ["--input-shape", "1,3,32,32"]),
])
def test_real_models_convert_and_verify(cli, caffe_command, shared_models, tmp_path, model, weights, extra):
    code, _, err = cli("convert", shared_models / model, "--weights", shared_models / weights,
                       "-o", tmp_path / "out", *extra)
    assert code == 0, err
    code, out, err = caffe_cli(cli, caffe_command, "verify", tmp_path / "out")
    assert code == 0 and "PASSED" in out, out + err


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_paper_rank_zoo_nets_run_in_caffe(name, cli, caffe_command, zoo_meta, tmp_path):
    proto = tmp_path / f"{name}.prototxt"
    shutil.copy(ZOO / name / "deploy.prototxt", proto)
    write_caffemodel(init_weights(read_prototxt(proto), seed=0), proto.with_suffix(".caffemodel"))
    ranks = {r["layer"]: r["ranks"] for r in zoo_meta(name)["paper"]["layers"]}
    f = write(tmp_path / "ranks.json", json.dumps(ranks))
    code, out, err = cli("convert", proto, "--ranks", f, "-o", tmp_path / "out", "--no-plot")
    assert code == 0, err
    code, out, err = caffe_cli(cli, caffe_command, "verify", tmp_path / "out", "--random", "1",
                               "--format", "json")
    assert code == 0, out + err
    result = json.loads(out)
    assert set(result["compressed_layers"]) == set(ranks)
    assert result["decomposition"][0]["max_rel"] < 1e-4


def test_worker_command_that_does_not_exist(cli, cifar, tmp_path):
    assert cli("convert", cifar, "-o", tmp_path / "out")[0] == 0
    code, _, err = cli("verify", tmp_path / "out", "--caffe-python", "/nonexistent/python3")
    assert code == 1 and "/nonexistent/python3" in err and len(err.strip().splitlines()) == 1


def test_caffe_message_is_passed_through(cli, caffe_command, tmp_path):
    # A net our reader accepts but Caffe refuses: a Convolution whose group does not divide
    # its input channels is caught by us; a Pooling on a 2-D blob is caught by Caffe.
    proto = write(tmp_path / "n.prototxt", """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "p" type: "Pooling" bottom: "fc" top: "p" pooling_param { kernel_size: 1 } }
""")
    from caffe_tucker.caffe.pycaffe import CaffeRuntime, CaffeRuntimeError
    with CaffeRuntime(caffe_command, timeout=120) as rt:
        with pytest.raises(CaffeRuntimeError, match="Check failed|axes"):
            rt.forward(proto.read_text(), None, {"data": np.zeros((1, 4), np.float32)})


def test_mismatched_inputs_are_refused(cli, caffe_command, cifar, tmp_path):
    """The compressed net reads another input blob: refused in one line before Caffe runs.  (Its
    weights fit: a net that differs in the input's size would be refused for its weights.)"""
    assert cli("convert", cifar, "-o", tmp_path / "out")[0] == 0
    text = (tmp_path / "out" / "deploy.prototxt").read_text()
    other = write(tmp_path / "other.prototxt",
                  text.replace('top: "data"', 'top: "image"').replace('bottom: "data"',
                                                                       'bottom: "image"'))
    code, _, err = caffe_cli(cli, caffe_command, "verify", cifar, cifar.with_suffix(".caffemodel"),
                             other, tmp_path / "out" / "weights.caffemodel")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "the nets have different inputs: ['data'] in the original" in err, err
    assert "['image'] in the compressed net" in err


def test_verify_with_images(cli, caffe_command, cifar, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 36), (32, 32), (50, 64)]):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(images / f"{i}.png")
    from caffe_tucker.caffe.verify import load_images
    batch = load_images(images, (1, 3, 32, 32), {"mean_bgr": [100, 110, 120], "scale": 0.5})
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    assert cli("convert", cifar, "-o", tmp_path / "out")[0] == 0
    code, out, err = caffe_cli(cli, caffe_command, "verify", tmp_path / "out", "--images", images,
                               "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert result["inputs"]["data"] == [3, 3, 32, 32] and result["passed"]
