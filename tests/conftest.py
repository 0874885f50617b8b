"""Shared fixtures: paths of the repository, the zoo, and the real models in tests/data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "zoo_models"
TEST_MODELS = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The three real third-party models, kept in tests/data (provenance in its README)."""
    return TEST_MODELS


@pytest.fixture(scope="session")
def zoo_meta():
    def load(name):
        return json.loads((ZOO / name / "model.json").read_text())
    return load


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit status, stdout, stderr)."""
    from caffe_tucker.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("CAFFE_TUCKER_PROGRESS", "0")


@pytest.fixture
def cifar(tmp_path, shared_models):
    """cifar10_quick copied to tmp, with its weights beside it under the default name."""
    import shutil

    src = shared_models / "cifar10_quick"
    shutil.copy(src / "cifar10_quick.prototxt", tmp_path / "cifar.prototxt")
    shutil.copy(src / "cifar10_quick_iter_5000.caffemodel", tmp_path / "cifar.caffemodel")
    return tmp_path / "cifar.prototxt"


@pytest.fixture(scope="session")
def recipe():
    """zoo_models/digits/train.py as a module (its split, preprocessing, LMDB export)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_train", ZOO / "digits" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GET_CAFFE = ("get one with 'sudo docker/caffe-rootfs.sh /opt/caffe-root' and "
             "export CAFFE_TUCKER_PYTHON=\"chroot /opt/caffe-root python3\"")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def caffe_command() -> str:
    """The command that runs pycaffe; under CI=true a missing runtime fails, never skips."""
    from caffe_tucker.caffe.pycaffe import ENV_VAR, runtime_available

    reason = runtime_available()
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI must test against real Caffe, but: {reason}", pytrace=False)
        hint = "" if "caffe-rootfs.sh" in reason else f"; {GET_CAFFE}"
        pytest.skip(f"needs a Caffe runtime: {reason}{hint}")
    return os.environ[ENV_VAR]


@pytest.fixture(scope="session")
def caffe(caffe_command):
    from caffe_tucker.caffe.pycaffe import CaffeRuntime

    with CaffeRuntime(caffe_command, timeout=300) as runtime:
        yield runtime
