"""The README's walkthrough "From your model to a fine-tuned compressed model" runs as written.

Its second shell block (the path after the one-time setup) is taken from README.md and run with
bash in a temporary directory holding a copy of ``zoo_models/digits``, in real Caffe: convert,
verify, bench, the LMDB export, convert with the LMDBs, finetune (5 short epochs), verify --tuned.
The only edit is where it works inside the Caffe chroot: ``/work/digits`` becomes a fresh
directory under the chroot's ``/tmp`` (and ``/opt/caffe-root`` the chroot of
$CAFFE_TUCKER_PYTHON), so that runs never meet.  Needs a chroot Caffe runtime, scikit-learn and
lmdb; skipped without them, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, ZOO, in_ci

HEADING = "## From your model to a fine-tuned compressed model"
DOC_ROOT = "/opt/caffe-root"
DOC_WORK = "/work/digits"


def walkthrough_blocks(readme: str) -> list[str]:
    """The indented code blocks of the walkthrough section, dedented."""
    start = readme.index(HEADING + "\n")
    end = readme.find("\n## ", start + len(HEADING))
    section = readme[start:end if end >= 0 else None]
    blocks = re.findall(r"(?:^\n)((?:(?: {4}.*)?\n)+)", section, flags=re.M)
    out = []
    for block in blocks:
        text = "\n".join(line[4:] for line in block.splitlines()).strip("\n")
        if text:
            out.append(text + "\n")
    return out


def test_walkthrough_blocks_are_the_setup_and_the_path():
    setup, path = walkthrough_blocks((ROOT / "README.md").read_text())
    assert "pip install -e '.[test]'" in setup and "docker/caffe-rootfs.sh /opt/caffe-root" in setup
    assert 'export CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3"' in setup
    commands = [l for l in path.splitlines() if l.startswith("python")]
    assert [c.split()[1:5] for c in commands] == [
        ["-m", "caffe_tucker", "convert", "zoo_models/digits/deploy.prototxt"],
        ["-m", "caffe_tucker", "verify", "digits_tucker"],
        ["-m", "caffe_tucker", "bench", "digits_tucker"],
        ["zoo_models/digits/train.py", "--export-lmdb", f"{DOC_ROOT}{DOC_WORK}/data", "--force"],
        ["-m", "caffe_tucker", "convert", "zoo_models/digits/deploy.prototxt"],
        ["-m", "caffe_tucker", "finetune", f"{DOC_ROOT}{DOC_WORK}/tucker"],
        ["-m", "caffe_tucker", "verify", f"{DOC_ROOT}{DOC_WORK}/tucker"]]
    # Every path inside the chroot is under the one work directory the run below moves.
    assert all(p.startswith(DOC_WORK + "/") for p in re.findall(r"/work/\S*", path))


@pytest.fixture
def chroot_root(caffe_command) -> Path:
    argv = shlex.split(caffe_command)
    if not argv or os.path.basename(argv[0]) != "chroot" or len(argv) < 3:
        if in_ci():
            pytest.fail(f"the walkthrough needs a chroot Caffe runtime, not {caffe_command!r}",
                        pytrace=False)
        pytest.skip("the walkthrough runs Caffe in a chroot; "
                    f"$CAFFE_TUCKER_PYTHON is {caffe_command!r}")
    for module in ("sklearn", "lmdb"):
        try:
            __import__(module)
        except ImportError:
            if in_ci():
                pytest.fail(f"CI must run the walkthrough, but {module} is not installed",
                            pytrace=False)
            pytest.skip(f"needs {module} (pip install '.[test]')")
    return Path(argv[1])


def test_walkthrough_runs_as_written(chroot_root, caffe_command, tmp_path):
    _, path = walkthrough_blocks((ROOT / "README.md").read_text())
    work = Path(tempfile.mkdtemp(prefix="walkthrough.", dir=chroot_root / "tmp"))
    inside = "/" + str(work.relative_to(chroot_root))
    script = (path.replace(DOC_ROOT + DOC_WORK, str(work)).replace(DOC_WORK, inside)
              .replace(DOC_ROOT, str(chroot_root)))
    shutil.copytree(ZOO / "digits", tmp_path / "zoo_models" / "digits")
    bindir = tmp_path / "bin"             # `python` is this interpreter, as in the activated venv
    bindir.mkdir()
    (bindir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bindir / "python").chmod(0o755)
    env = dict(os.environ, CAFFE_TUCKER_PYTHON=caffe_command, CAFFE_TUCKER_PROGRESS="0",
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        out = run.stdout
        assert out.count("total: weights 188K -> 34.7K (x5.41), FLOPs 3.69M -> 328K (x11.24)") == 2
        assert "PASSED: the compressed net computes its own decomposition" in out
        assert "batch 64 (Caffe CPU" in out and (tmp_path / "digits_tucker" / "bench.png").is_file()
        accuracy = float(re.search(r"final test accuracy ([0-9.]+)", out).group(1))
        assert accuracy >= 0.97, out
        assert (work / "tucker" / "finetuned.caffemodel").is_file()
        assert "MEASURED: fine-tuned weights" in out
    finally:
        shutil.rmtree(work, ignore_errors=True)
