"""Bad input, subcommand by subcommand: one line on stderr, exit status 1, no traceback, inputs
unchanged, nothing half-written left behind.

Each subcommand has a table of bad invocations; ``{name}`` in an argument is a file or directory
of the ``bad`` fixture.  Output locations that cannot be written are paths through a regular file
(``{file}/out``): that fails for root too, where permission bits would not.  Pipes and signals
are tested on a real process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caffe_tucker.io import fsutil
from conftest import ROOT

NET_HEAD = 'name: "wide"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'


@pytest.fixture
def bad(cifar, monkeypatch):
    """A tmp directory with good and bad inputs, and existing outputs: their paths by name."""
    tmp = cifar.parent
    paths = {"tmp": tmp, "cifar": cifar, "weights": cifar.with_suffix(".caffemodel"),
             "dir": tmp / "dir", "file": tmp / "file.txt", "binary": tmp / "binary.prototxt",
             "latin1": tmp / "latin1.prototxt", "empty": tmp / "empty.prototxt",
             "truncated": tmp / "truncated.caffemodel", "list": tmp / "list.json",
             "broken": tmp / "broken.json", "existing_model": tmp / "existing.caffemodel",
             "existing_out": tmp / "existing_out"}
    paths["dir"].mkdir()
    paths["file"].write_text("a regular file, not a directory\n")
    paths["binary"].write_bytes(b"\x08\x00\x12\x04conv" + bytes(range(256)))
    paths["latin1"].write_bytes('name: "réseau"\n'.encode("latin-1"))
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(paths["weights"].read_bytes()[:5000])
    paths["list"].write_text("[25, 59]\n")
    paths["broken"].write_text('{"conv2": [25, 59}\n')
    paths["existing_model"].write_bytes(b"an earlier output\n")
    paths["existing_out"].mkdir()
    import numpy as np
    paths["npz"] = tmp / "cifar_train.npz"
    np.savez(paths["npz"], data=np.zeros((4, 3, 32, 32), np.float32), label=np.arange(4))
    paths["npz_small"] = tmp / "small.npz"
    np.savez(paths["npz_small"], data=np.zeros((4, 3, 8, 8), np.float32), label=np.arange(4))
    paths["npz_nolabel"] = tmp / "nolabel.npz"
    np.savez(paths["npz_nolabel"], data=np.zeros((4, 3, 32, 32), np.float32))
    (paths["existing_out"] / "deploy.prototxt").write_text("an earlier output\n")
    # fetch must never reach the network or the user's cache.
    monkeypatch.setenv("CAFFE_TUCKER_CACHE", str(tmp / "cache"))
    return paths


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root``: its SHA1 (files) or ``dir``."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def assert_one_line(code: int, err: str, words: str, status: int = 1) -> None:
    assert code == status, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("caffe-tucker"), err
    assert words in lines[0], err


# (what, arguments, words the line must hold)
CASES = {
    "info": [
        ("missing file", ["info", "{tmp}/missing.prototxt"], "no such prototxt"),
        ("directory instead of a file", ["info", "{dir}"], "is a directory, expected a prototxt"),
        ("binary file", ["info", "{binary}"], "looks like a binary file, not a prototxt"),
        ("non-UTF-8 text", ["info", "{latin1}"], "is not UTF-8 text"),
        ("empty file", ["info", "{empty}"], "defines no layers"),
        ("a caffemodel as the net", ["info", "{weights}"], "hint: a .caffemodel goes to --weights"),
        ("directory as weights", ["info", "{cifar}", "--weights", "{dir}"],
         "is a directory, expected a .caffemodel"),
        ("prototxt as weights", ["info", "{cifar}", "--weights", "{cifar}"],
         "is a text prototxt, not a binary .caffemodel"),
        ("truncated weights", ["info", "{cifar}", "--weights", "{truncated}"],
         "the .caffemodel is truncated"),
        ("empty path", ["info", ""], "argument prototxt: must not be empty"),
        ("bad --format", ["info", "{cifar}", "--format", "yaml"], "invalid choice: 'yaml'"),
        ("bad --phase", ["info", "{cifar}", "--phase", "VAL"], "invalid choice: 'VAL'"),
        ("bad --input-shape", ["info", "{cifar}", "--input-shape", "data=0,3"],
         "expected positive integers"),
    ],
    "convert": [
        ("missing file", ["convert", "{tmp}/missing.prototxt"], "no such prototxt"),
        ("directory instead of a file", ["convert", "{dir}", "--weights", "{weights}"],
         "is a directory, expected a prototxt"),
        ("binary file", ["convert", "{binary}", "--weights", "{weights}", "-o", "{tmp}/o"],
         "looks like a binary file"),
        ("empty file", ["convert", "{empty}", "--weights", "{weights}", "-o", "{tmp}/o"],
         "defines no layers"),
        ("directory as --ranks", ["convert", "{cifar}", "--ranks", "{dir}", "-o", "{tmp}/o"],
         "is a directory, expected a ranks file"),
        ("binary --ranks", ["convert", "{cifar}", "--ranks", "{binary}", "-o", "{tmp}/o"],
         "looks like a binary file, not a ranks file"),
        ("non-UTF-8 --ranks", ["convert", "{cifar}", "--ranks", "{latin1}", "-o", "{tmp}/o"],
         "is not UTF-8 text"),
        ("invalid JSON --ranks", ["convert", "{cifar}", "--ranks", "{broken}", "-o", "{tmp}/o"],
         "not valid JSON"),
        ("directory as --train-val", ["convert", "{cifar}", "--train-val", "{dir}", "-o", "{tmp}/o"],
         "is a directory, expected a prototxt"),
        ("output is a file", ["convert", "{cifar}", "-o", "{file}"], "exists and is not a directory"),
        ("output under a regular file", ["convert", "{cifar}", "-o", "{file}/out"],
         "cannot write the output (a part of the path is a file, not a directory)"),
        ("existing output without --force", ["convert", "{cifar}", "-o", "{existing_out}"],
         "pass --force"),
        ("empty --output", ["convert", "{cifar}", "-o", ""], "must not be empty"),
        ("bad --epochs", ["convert", "{cifar}", "--epochs", "nan"], "must be a finite number > 0"),
        ("bad --layers", ["convert", "{cifar}", "--layers", ","], "must name at least one layer"),
    ],
    "ranks": [
        ("missing file", ["ranks", "{tmp}/missing.prototxt"], "no such prototxt"),
        ("directory instead of a file", ["ranks", "{dir}", "--weights", "{weights}"],
         "is a directory, expected a prototxt"),
        ("non-UTF-8 text", ["ranks", "{latin1}", "--weights", "{weights}"], "is not UTF-8 text"),
        ("missing weights", ["ranks", "{cifar}", "--weights", "{tmp}/missing.caffemodel"],
         "no such .caffemodel"),
        ("directory as --ranks", ["ranks", "{cifar}", "--ranks", "{dir}"],
         "is a directory, expected a ranks file"),
        ("a JSON list as --ranks", ["ranks", "{cifar}", "--ranks", "{list}"],
         "a ranks file is a JSON object"),
        ("empty --ranks file", ["ranks", "{cifar}", "--ranks", "{empty}"], "not valid JSON"),
        ("bad --rank-method", ["ranks", "{cifar}", "--rank-method", "energy:2"], "with F in (0, 1]"),
        ("bad --weaken", ["ranks", "{cifar}", "--weaken", "-1"], "must be a finite number > 0"),
        ("bad --method", ["ranks", "{cifar}", "--method", "=btd"], "must be LAYER=METHOD"),
        ("unknown bare --method", ["ranks", "{cifar}", "--method", "conv2"],
         "must be one of tucker2, tucker1, svd, btd, cp"),
        ("two bare --method", ["ranks", "{cifar}", "--method", "btd", "--method", "cp"],
         "given once without LAYER="),
        ("bad --blocks", ["ranks", "{cifar}", "--blocks", "0"], "must be an integer >= 1"),
        ("empty --preset", ["ranks", "{cifar}", "--preset", ""], "must not be empty"),
    ],
    "bench": [
        ("missing output directory", ["bench", "{tmp}/missing"], "not a convert output directory"),
        ("three paths", ["bench", "{cifar}", "{weights}", "{cifar}"], "got 3"),
        ("missing file of four", ["bench", "{cifar}", "{weights}", "{tmp}/missing.prototxt",
                                  "{weights}"], "no such prototxt"),
        ("bad --batch", ["bench", "{cifar}", "{weights}", "{cifar}", "{weights}", "--batch", "1,0"],
         "positive integers separated by commas"),
        ("bad --iterations", ["bench", "{cifar}", "{weights}", "{cifar}", "{weights}",
                              "--iterations", "0"], "must be an integer >= 1"),
        ("bad --threads", ["bench", "{cifar}", "{weights}", "{cifar}", "{weights}",
                           "--threads", "0"], "must be an integer >= 1"),
        ("--png under a regular file", ["bench", "{cifar}", "{weights}", "{cifar}", "{weights}",
                                        "--png", "{file}/bench.png"], "cannot write the output"),
        ("--png over an input", ["bench", "{cifar}", "{weights}", "{cifar}", "{weights}",
                                 "--png", "{cifar}"], "refusing to write over the input"),
        ("--png is a directory", ["bench", "{cifar}", "{weights}", "{cifar}", "{weights}",
                                  "--png", "{dir}"], "is a directory, expected a file path"),
        ("bad --runtime", ["bench", "{tmp}", "--runtime", "tensorrt"], "invalid choice: 'tensorrt'"),
        ("bad --runtime: caffe's name for it", ["bench", "{tmp}", "--runtime", "cv2"],
         "invalid choice: 'cv2' (choose from"),
    ],
    "init": [
        ("missing file", ["init", "{tmp}/missing.prototxt", "-o", "{tmp}/w.caffemodel"],
         "no such prototxt"),
        ("directory instead of a file", ["init", "{dir}", "-o", "{tmp}/w.caffemodel"],
         "is a directory, expected a prototxt"),
        ("binary file", ["init", "{binary}", "-o", "{tmp}/w.caffemodel"], "looks like a binary file"),
        ("empty file", ["init", "{empty}", "-o", "{tmp}/w.caffemodel"], "defines no layers"),
        ("existing output without --force", ["init", "{cifar}", "-o", "{existing_model}"],
         "already exists; hint: pass --force"),
        ("output over the input", ["init", "{cifar}", "-o", "{cifar}", "--force"],
         "refusing to write over the input"),
        ("output is a directory", ["init", "{cifar}", "-o", "{dir}"], "is a directory"),
        ("output under a regular file", ["init", "{cifar}", "-o", "{file}/w.caffemodel"],
         "cannot write the output (a part of the path is a file, not a directory)"),
        ("missing --output", ["init", "{cifar}"], "the following arguments are required: -o/--output"),
        ("bad --seed", ["init", "{cifar}", "-o", "{tmp}/w.caffemodel", "--seed", "-1"],
         "must be an integer in [0, 4294967295]"),
    ],
    "fetch": [
        ("unknown model", ["fetch", "lenet"], "unknown zoo model 'lenet'"),
        ("model without a URL", ["fetch", "digits", "-o", "{tmp}/d.caffemodel"], "no download URL"),
        ("missing --url file", ["fetch", "alexnet", "-o", "{tmp}/a.caffemodel", "--url",
                                "file://{tmp}/missing.caffemodel"], "download failed"),
        ("wrong checksum", ["fetch", "alexnet", "-o", "{tmp}/a.caffemodel", "--url",
                            "file://{weights}"], "differs from the published"),
        ("existing output without --force", ["fetch", "alexnet", "-o", "{existing_model}",
                                             "--url", "file://{weights}"], "pass --force"),
        ("output under a regular file", ["fetch", "alexnet", "-o", "{file}/a.caffemodel", "--url",
                                         "file://{weights}"], "cannot write the output"),
        ("empty --url", ["fetch", "alexnet", "--url", ""], "must not be empty"),
    ],
    "sparsify": [
        ("missing net", ["sparsify", "{tmp}/missing.prototxt", "--train-data", "{npz}",
                         "--test-data", "{npz}", "-o", "{tmp}/s"], "no such prototxt"),
        ("no data given", ["sparsify", "{cifar}"],
         "the following arguments are required: --train-data, --test-data"),
        ("missing data file", ["sparsify", "{cifar}", "--train-data", "{tmp}/missing.npz",
                               "--test-data", "{npz}", "-o", "{tmp}/s"], "no such file; give an .npz"),
        ("data not an npz", ["sparsify", "{cifar}", "--train-data", "{file}", "--test-data",
                             "{npz}", "-o", "{tmp}/s"], "not a readable .npz"),
        ("a folder without images", ["sparsify", "{cifar}", "--train-data", "{dir}",
                                     "--test-data", "{npz}", "-o", "{tmp}/s"], "holds no images"),
        ("samples of another size", ["sparsify", "{cifar}", "--train-data", "{npz_small}",
                                     "--test-data", "{npz}", "-o", "{tmp}/s"],
         "does not fit the net"),
        ("test data without labels", ["sparsify", "{cifar}", "--train-data", "{npz}",
                                      "--test-data", "{npz_nolabel}", "-o", "{tmp}/s"],
         "has no array 'label'"),
        ("existing output without --force", ["sparsify", "{cifar}", "--train-data", "{npz}",
                                             "--test-data", "{npz}", "-o", "{existing_out}"],
         "pass --force"),
        ("sparsity of 1", ["sparsify", "{cifar}", "--train-data", "{npz}", "--test-data", "{npz}",
                           "--spatial", "1"], "argument --spatial: must be a number in [0, 1), got 1"),
        ("tile 3", ["sparsify", "{cifar}", "--train-data", "{npz}", "--test-data", "{npz}",
                    "--tile", "3"], "invalid choice: 3"),
        ("--runtime opencv: only Caffe fine-tunes", ["sparsify", "{cifar}", "--train-data",
                                                     "{npz}", "--test-data", "{npz}",
                                                     "--runtime", "opencv"],
         "unrecognized arguments: --runtime opencv"),
    ],
    "quantize": [
        ("missing net", ["quantize", "{tmp}/missing.prototxt", "--weights", "{weights}",
                         "-o", "{tmp}/q.ctz"], "no such prototxt"),
        ("existing output without --force", ["quantize", "{cifar}", "-o", "{existing_model}"],
         "pass --force"),
        ("output over the input", ["quantize", "{cifar}", "-o", "{weights}", "--force"],
         "input"),
        ("two targets", ["quantize", "{cifar}", "--bits", "4", "--step", "0.1"],
         "not allowed with argument"),
        ("bits out of range", ["quantize", "{cifar}", "--bits", "0"],
         "must be an integer in [1, 16], got 0"),
        ("fine-tuning without data", ["quantize", "{cifar}", "--finetune-iterations", "5",
                                      "-o", "{tmp}/q.ctz"], "needs --train-data and --test-data"),
        ("unknown layer", ["quantize", "{cifar}", "--layers", "nope", "-o", "{tmp}/q.ctz"],
         "'nope' cannot be quantized"),
        ("test data without labels", ["quantize", "{cifar}", "--test-data", "{npz_nolabel}",
                                      "-o", "{tmp}/q.ctz"], "has no array 'label'"),
    ],
    "reproduce": [
        ("unknown model", ["reproduce", "lenet", "-o", "{tmp}/r"], "unknown zoo model 'lenet'"),
        ("not a paper model", ["reproduce", "digits", "-o", "{tmp}/r"], "not one of the paper's"),
        ("missing weights", ["reproduce", "alexnet", "--weights", "{tmp}/missing.caffemodel",
                             "-o", "{tmp}/r"], "no such .caffemodel"),
        ("directory as weights", ["reproduce", "alexnet", "--weights", "{dir}", "-o", "{tmp}/r"],
         "is a directory, expected a .caffemodel"),
        ("weights of another net", ["reproduce", "alexnet", "--weights", "{weights}", "-o", "{tmp}/r"],
         "do not belong together"),
        ("output under a regular file", ["reproduce", "alexnet", "--weights", "{weights}",
                                         "-o", "{file}/r"], "cannot write the output"),
        ("existing output without --force", ["reproduce", "alexnet", "--weights", "{weights}",
                                             "-o", "{existing_out}"], "pass --force"),
        ("bad --format", ["reproduce", "alexnet", "--format", "yaml"], "invalid choice: 'yaml'"),
        ("--method without that paper's figures", ["reproduce", "vgg16", "--method", "cp",
                                                   "-o", "{tmp}/r"], "no paper figures for method 'cp'"),
    ],
    "pack": [
        ("missing file", ["pack", "{tmp}/missing.prototxt", "-o", "{tmp}/m.ctz"], "no such prototxt"),
        ("binary file", ["pack", "{binary}", "--weights", "{weights}", "-o", "{tmp}/m.ctz"],
         "looks like a binary file"),
        ("missing weights", ["pack", "{cifar}", "--weights", "{tmp}/missing.caffemodel",
                             "-o", "{tmp}/m.ctz"], "no such .caffemodel"),
        ("truncated weights", ["pack", "{cifar}", "--weights", "{truncated}", "-o", "{tmp}/m.ctz"],
         "the .caffemodel is truncated"),
        ("empty file", ["pack", "{empty}"], "defines no layers"),
        ("existing output without --force", ["pack", "{cifar}", "-o", "{existing_model}"],
         "already exists; hint: pass --force"),
        ("output over the input", ["pack", "{cifar}", "-o", "{weights}", "--force"],
         "refusing to write over the input"),
        ("output is a directory", ["pack", "{cifar}", "-o", "{dir}"], "is a directory"),
        ("output under a regular file", ["pack", "{cifar}", "-o", "{file}/m.ctz"],
         "cannot write the output (a part of the path is a file, not a directory)"),
        ("bad --codec", ["pack", "{cifar}", "--codec", "gzip"], "invalid choice: 'gzip'"),
        ("empty --output", ["pack", "{cifar}", "-o", ""], "must not be empty"),
    ],
    "export": [
        ("missing file", ["export", "{tmp}/missing.prototxt", "--onnx", "{tmp}/m.onnx"],
         "no such prototxt"),
        ("binary file", ["export", "{binary}", "--weights", "{weights}", "--onnx", "{tmp}/m.onnx"],
         "looks like a binary file"),
        ("missing weights", ["export", "{cifar}", "--weights", "{tmp}/missing.caffemodel",
                             "--onnx", "{tmp}/m.onnx"], "no such .caffemodel"),
        ("truncated weights", ["export", "{cifar}", "--weights", "{truncated}",
                               "--onnx", "{tmp}/m.onnx"], "the .caffemodel is truncated"),
        ("no --onnx", ["export", "{cifar}"], "the following arguments are required: --onnx"),
        ("existing output without --force", ["export", "{cifar}", "--onnx", "{existing_model}"],
         "already exists; hint: pass --force"),
        ("output over the input", ["export", "{cifar}", "--onnx", "{weights}", "--force"],
         "refusing to write over the input"),
        ("output is a directory", ["export", "{cifar}", "--onnx", "{dir}"], "is a directory"),
        ("output under a regular file", ["export", "{cifar}", "--onnx", "{file}/m.onnx"],
         "cannot write the output (a part of the path is a file, not a directory)"),
        ("opset too old", ["export", "{cifar}", "--onnx", "{tmp}/m.onnx", "--opset", "11"],
         "must be an integer >= 13, got 11"),
        ("opset too new", ["export", "{cifar}", "--onnx", "{tmp}/m.onnx", "--opset", "999"],
         "knows opsets up to"),
        ("bad --input-shape", ["export", "{cifar}", "--onnx", "{tmp}/m.onnx",
                               "--input-shape", "1,x"], "expected positive integers"),
        ("directory without a net", ["export", "{dir}", "--onnx", "{tmp}/m.onnx"],
         "not a convert output directory"),
    ],
    "unpack": [
        ("missing file", ["unpack", "{tmp}/missing.ctz"], "no such .ctz container"),
        ("directory instead of a file", ["unpack", "{dir}"],
         "is a directory, expected a .ctz container"),
        ("a caffemodel", ["unpack", "{weights}", "-o", "{tmp}/u"], "is not a .ctz container"),
        ("empty file", ["unpack", "{empty}", "-o", "{tmp}/u"],
         "is not a .ctz container (it is empty)"),
        ("--check of a prototxt", ["unpack", "--check", "{cifar}"], "is not a .ctz container"),
        ("--check with --output", ["unpack", "--check", "{weights}", "-o", "{tmp}/u"],
         "not allowed with argument --check"),
        ("existing output without --force", ["unpack", "{weights}", "-o", "{existing_out}"],
         "pass --force"),
        ("output is a file", ["unpack", "{weights}", "-o", "{file}"], "exists and is not a directory"),
        ("output holds the input", ["unpack", "{weights}", "-o", "{tmp}", "--force"],
         "holds the input"),
        ("output under a regular file", ["unpack", "{weights}", "-o", "{file}/out"],
         "cannot write the output (a part of the path is a file, not a directory)"),
    ],
}

# -- issue 13: profile, and convert's --rank-policy / --profile -----------------------------------
CASES["profile"] = [
    ("missing net", ["profile", "{tmp}/missing.prototxt"], "no such prototxt"),
    ("bad --batch", ["profile", "{cifar}", "--batch", "0"], "must be an integer >= 1, got 0"),
    ("bad --threads", ["profile", "{cifar}", "--threads", "x"], "must be an integer >= 1, got 'x'"),
    ("unknown --preset", ["profile", "{cifar}", "--preset", "nope"], "must be one of"),
    ("-o under a regular file", ["profile", "{cifar}", "-o", "{file}/p.json"],
     "cannot write the output"),
    ("existing -o without --force", ["profile", "{cifar}", "-o", "{existing_model}"], "--force"),
]
CASES["convert"] += [
    ("unknown --rank-policy", ["convert", "{cifar}", "--rank-policy", "fastest"],
     "invalid choice: 'fastest'"),
    ("latency without a profile", ["convert", "{cifar}", "--rank-policy", "latency",
                                   "-o", "{tmp}/o"], "needs a cost profile"),
    ("missing --profile", ["convert", "{cifar}", "--rank-policy", "latency", "--profile",
                           "{tmp}/missing.json", "-o", "{tmp}/o"], "no such cost profile"),
    ("--profile not a profile", ["convert", "{cifar}", "--rank-policy", "latency", "--profile",
                                 "{list}", "-o", "{tmp}/o"], "not a caffe_tucker cost profile"),
]

TABLE = [pytest.param(args, words, id=f"{command}: {what}")
         for command, cases in CASES.items() for what, args, words in cases]


def test_every_subcommand_of_this_table_has_cases():
    from caffe_tucker.cli.main import SUBCOMMANDS

    owned_elsewhere = {"verify", "finetune"}
    names = {m.__name__.rsplit(".", 1)[1] for m in SUBCOMMANDS} - owned_elsewhere
    assert names == set(CASES)


@pytest.mark.parametrize("args, words", TABLE)
def test_bad_invocation(cli, bad, args, words):
    argv = [a.format(**bad) for a in args]
    before = snapshot(bad["tmp"])
    code, out, err = cli(*argv)
    assert_one_line(code, err, words)
    assert snapshot(bad["tmp"]) == before  # inputs unchanged, nothing written, no temporary left


def test_read_only_directory(cli, bad, monkeypatch):
    """A directory that refuses new files (EACCES). Root writes through permission bits, so the
    refusal is simulated where files are created; the paths through a regular file in the table
    are real failures for root too."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(fsutil.tempfile, "mkdtemp", refuse)
    ro = bad["tmp"] / "ro"
    ro.mkdir()
    for argv in (["convert", bad["cifar"], "-o", ro / "out"], ["init", bad["cifar"], "-o", ro / "w.caffemodel"]):
        assert_one_line(*cli(*argv)[::2], "permission denied")
    assert list(ro.iterdir()) == []


def test_debug_after_the_subcommand_shows_the_traceback(cli, bad):
    for argv in (["info", bad["dir"], "--debug"], ["--debug", "info", bad["dir"]]):
        code, _, err = cli(*argv)
        assert code == 1 and "Traceback" in err
        assert err.strip().splitlines()[-1].startswith("caffe-tucker: error: ")
    code, _, err = cli("info", bad["dir"])
    assert_one_line(code, err, "is a directory")


def test_a_prototxt_above_the_size_limit(cli, bad, monkeypatch):
    monkeypatch.setenv("CAFFE_TUCKER_MAX_PROTOTXT_MB", "0.001")
    before = snapshot(bad["tmp"])
    for argv in (["info", bad["cifar"]], ["init", bad["cifar"], "-o", bad["tmp"] / "w.caffemodel"],
                 ["convert", bad["cifar"]]):
        code, _, err = cli(*argv)
        assert_one_line(code, err, "larger than the 0.001 MiB a prototxt may have")
    assert snapshot(bad["tmp"]) == before


# --- real processes: stdin, pipes, signals ---------------------------------------------------

def _env(**extra) -> dict:
    env = dict(os.environ, CAFFE_TUCKER_PROGRESS="0", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_info_reads_standard_input(bad):
    def info_stdin(data: bytes):
        proc = subprocess.run([sys.executable, "-m", "caffe_tucker", "info", "-"], input=data,
                              capture_output=True, env=_env(), cwd=ROOT)
        return proc.returncode, proc.stdout.decode(), proc.stderr.decode()

    code, out, err = info_stdin(bad["cifar"].read_bytes())
    assert code == 0 and "conv1" in out, err
    code, _, err = info_stdin(bad["binary"].read_bytes())
    assert_one_line(code, err, "<stdin>: looks like a binary file")
    code, _, err = info_stdin(b'name: "x"\nbogus: 1\n')
    assert_one_line(code, err, "<stdin>:2:")


def test_a_reader_that_closes_the_pipe_early(tmp_path):
    # About 1 MB of table: far more than a pipe holds, so the writer meets the closed end.
    layers = "".join(f'layer {{ name: "relu_{i:05d}_{"x" * 150}" type: "ReLU" bottom: "data" '
                     f'top: "data" }}\n' for i in range(5000))
    net = tmp_path / "wide.prototxt"
    net.write_text(NET_HEAD + layers)
    proc = subprocess.Popen([sys.executable, "-m", "caffe_tucker", "info", str(net)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    assert proc.stdout.read(10) == b"model: wid"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 1
    assert err == ""  # quietly: no traceback, no "Exception ignored"


# A convert whose writing stops, after its first file is in the temporary directory, until a
# signal comes; "ready" says it got there.
_PAUSED_CONVERT = """
import sys, time
from pathlib import Path
from caffe_tucker.io import fsutil
from caffe_tucker.cli.main import main

write = fsutil._write_chunks
def paused(fd, path, chunks):
    write(fd, path, chunks)
    Path(sys.argv[1]).write_text(str(path))
    time.sleep(600)
fsutil._write_chunks = paused
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig, status, word", [(signal.SIGTERM, 143, "terminated"),
                                               (signal.SIGINT, 130, "interrupted")])
@pytest.mark.parametrize("existing", [False, True], ids=["new output", "replacing with --force"])
def test_a_signal_while_writing_leaves_no_half_written_output(bad, sig, status, word, existing):
    tmp, out = bad["tmp"], bad["tmp"] / "out"
    if existing:
        out.mkdir()
        (out / "deploy.prototxt").write_text("the earlier output\n")
    ready = tmp / "ready"
    before = snapshot(tmp)
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_CONVERT, str(ready), "convert",
                             str(bad["cifar"]), "-o", str(out), "--force"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    deadline = time.monotonic() + 600  # a guard against hanging, not a timing assertion
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert Path(ready.read_text()).parent.name.startswith(".out.")  # inside the temporary dir
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert_one_line(proc.returncode, err.decode(), f"caffe-tucker: {word}", status=status)
    ready.unlink()
    assert snapshot(tmp) == before  # no temporary beside it; the old output (or none) as it was
