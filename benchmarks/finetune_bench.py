"""Benchmark: fine-tuning speed of the bundled digits model in real Caffe (CPU).

    CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" python benchmarks/finetune_bench.py [--epochs 5]

Converts zoo_models/digits (VBMF ranks) and the uncompressed net's layers, writes the
training/test LMDBs with the recipe's split, runs `finetune` for the given epochs on each and
prints seconds per epoch side by side (one run: compare the two within it, not across runs).
Needs scikit-learn and lmdb (the test extras) and a Caffe root made by docker/caffe-rootfs.sh
(the caffe binary is taken from the same chroot as $CAFFE_TUCKER_PYTHON).  Nothing is asserted:
this replaces the timing check that once lived in tests/test_finetune.py.
"""

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffe_tucker.caffe.finetune import finetune  # noqa: E402
from caffe_tucker.cli.main import main as cli  # noqa: E402

DIGITS = ROOT / "zoo_models" / "digits"


def _recipe():
    spec = importlib.util.spec_from_file_location("digits_train", DIGITS / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=5)
    args = parser.parse_args()
    argv = shlex.split(os.environ.get("CAFFE_TUCKER_PYTHON", ""))
    if len(argv) < 3 or os.path.basename(argv[0]) != "chroot":
        sys.exit("set CAFFE_TUCKER_PYTHON='chroot ROOT python3' (see docker/caffe-rootfs.sh)")
    root = Path(argv[1])
    os.environ["CAFFE_TUCKER_PROGRESS"] = "0"
    work = Path(tempfile.mkdtemp(prefix="ft_bench_", dir=root / "tmp"))
    try:
        train, test = _recipe().export_lmdb(work)
        inside = lambda p: "/" + str(Path(p).resolve().relative_to(root.resolve()))  # noqa: E731
        figures = {}
        for name, extra in (("vbmf", []), ("full rank (untouched)", ["--layers", "conv1",
                                                                     "--ranks", None])):
            out = work / name.split()[0]
            if extra and extra[-1] is None:
                ranks = work / "full.json"
                ranks.write_text(json.dumps({"conv1": 32}))
                extra = extra[:-1] + [str(ranks)]
            code = cli(["convert", str(DIGITS / "deploy.prototxt"), "-o", str(out), "--force",
                        "--train-source", inside(train), "--val-source", inside(test),
                        "--train-images", "1297", "--val-images", "500", "--batch-size", "64",
                        "--epochs", str(args.epochs), "--no-plot", *extra])
            if code:
                return code
            t0 = time.perf_counter()
            result = finetune(out, f"chroot {root} caffe", progress=False)
            seconds = time.perf_counter() - t0
            figures[name] = {"iterations": result.iterations, "seconds": round(seconds, 2),
                             "seconds_per_epoch": round(seconds / args.epochs, 2),
                             "final_accuracy": result.final_accuracy}
        print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
