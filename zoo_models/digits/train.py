#!/usr/bin/env python3
"""Train the bundled ``digits`` model in real BVLC Caffe and write its weights and metadata.

    CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" python zoo_models/digits/train.py

Data: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 real
8x8 grey images, pixel values 0..16, labels 0..9); scikit-learn is needed here only.  Split:
``numpy.random.RandomState(0).permutation(1797)``, the first 1,297 indices train, the last 500
test.  Preprocessing: pixels x 1/16 (model.json ``preprocess.scale``), no mean.

Recipe: ``train_val.prototxt`` (the deploy net with Input layers ``data``/``label`` of batch 64,
dropout 0.5 after fc1, gaussian weight fillers with std 0.3 x sqrt(2 / fan_in), and a
SoftmaxWithLoss) and ``solver.prototxt`` (SGD, momentum 0.9, weight decay 5e-3, base_lr 0.02 / 10
after 1,000 iterations, 2,000 iterations, random_seed 0) run in Caffe through
``CaffeRuntime.train``: each iteration copies the next 64 images of a stream of RandomState(0)
permutations of the training set into the Input blobs, then ``solver.step(1)``.  The trained
weights are re-saved for ``deploy.prototxt`` alone (``digits.caffemodel``), evaluated in Caffe on
the 500 test images, and ``model.json`` gets the file's SHA1 and size and the measured top-1
accuracy.  About a minute on 2 CPU cores; on one machine the bytes are the same every run.

``--check`` trains and evaluates without writing anything and exits 1 when the result differs
from the committed files.

``--export-npz DIR`` trains nothing: it writes the split as ``DIR/train.npz`` and
``DIR/test.npz`` (arrays ``data`` scaled by 1/16 and ``label``), the data ``sparsify`` reads.

``--export-lmdb DIR`` trains nothing: it writes the split as the Caffe LMDBs ``DIR/train_lmdb``
and ``DIR/test_lmdb`` that ``finetune`` reads (``convert --train-source/--val-source``), prints
their two paths, and exits; existing ones are replaced only with ``--force``.  It needs
scikit-learn and the PyPI ``lmdb`` package, not Caffe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0
N_TEST = 500
SCALE = 1.0 / 16.0
TRAIN_SEED = 0
SPLIT_RULE = ("numpy.random.RandomState(0).permutation(1797) of sklearn.datasets.load_digits(); "
              "the first 1297 indices train, the last 500 test")


def load_split():
    """``(x_train, y_train, x_test, y_test)``: float32, x as N x 1 x 8 x 8 scaled by 1/16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) * np.float32(SCALE))[:, None, :, :]
    y = digits.target.astype(np.float32)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    train, test = order[:-N_TEST], order[-N_TEST:]
    return x[train], y[train], x[test], y[test]


def export_lmdb(directory) -> tuple[Path, Path]:
    """Write the split as Caffe LMDBs ``directory/train_lmdb`` and ``directory/test_lmdb``.

    Each record is a ``caffe.Datum`` (channels 1, height 8, width 8, uint8 ``data`` holding the raw
    0..16 pixel values, ``label``) keyed ``{i:08d}`` so Caffe reads them in the split's order; the
    1/16 scale is left to the Data layer's ``transform_param`` (model.json ``preprocess.scale``).
    Needs the PyPI ``lmdb`` package (the ``test`` extra) and scikit-learn.
    """
    import lmdb

    sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing
    from caffe_tucker.io.caffe_pb2 import Datum

    x_train, y_train, x_test, y_test = load_split()
    out = Path(directory)
    paths = []
    for name, x, y in (("train_lmdb", x_train, y_train), ("test_lmdb", x_test, y_test)):
        path = out / name
        path.mkdir(parents=True, exist_ok=True)
        raw = np.rint(x / np.float32(SCALE)).astype(np.uint8)  # back to the 0..16 pixel values
        env = lmdb.open(str(path), map_size=64 << 20)
        try:
            with env.begin(write=True) as txn:
                for i in range(len(raw)):
                    datum = Datum(channels=1, height=8, width=8, data=raw[i].tobytes(),
                                  label=int(y[i]))
                    txn.put(f"{i:08d}".encode("ascii"), datum.SerializeToString())
        finally:
            env.close()
        paths.append(path)
    return paths[0], paths[1]


LMDB_NAMES = ("train_lmdb", "test_lmdb")


def export_lmdb_command(directory, force: bool = False) -> int:
    """``--export-lmdb DIR``: the LMDBs written beside each other, then moved into place, their
    paths printed; a problem is one line on stderr and exit status 1."""
    out = Path(directory)
    targets = [out / name for name in LMDB_NAMES]

    def fail(message: str) -> int:
        print(f"train.py: error: {message}", file=sys.stderr)
        return 1

    existing = [t for t in targets if t.exists()]
    if existing and not force:
        return fail(f"{existing[0]}: already exists; hint: pass --force to replace the LMDBs")
    if out.exists() and not out.is_dir():
        return fail(f"{out}: exists and is not a directory; hint: choose another directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".lmdb.", suffix=".tmp", dir=out))
    except OSError as exc:
        return fail(f"{out}: cannot write there ({exc.strerror or exc})")
    try:
        export_lmdb(tmp)
        for target in targets:
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp / target.name, target)
    except ImportError as exc:
        return fail(f"--export-lmdb needs {exc.name} (pip install lmdb scikit-learn)")
    except OSError as exc:
        return fail(f"{out}: cannot write the LMDBs ({exc.strerror or exc})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for target in targets:
        print(target)
    return 0


NPZ_NAMES = ("train.npz", "test.npz")


def export_npz_command(directory, force: bool = False) -> int:
    """``--export-npz DIR``: the split as ``DIR/train.npz`` and ``DIR/test.npz`` (arrays ``data``,
    float32 N x 1 x 8 x 8 already scaled by 1/16, and ``label``), the inputs ``sparsify`` takes;
    their paths printed; a problem is one line on stderr and exit status 1."""
    out = Path(directory)
    targets = [out / name for name in NPZ_NAMES]

    def fail(message: str) -> int:
        print(f"train.py: error: {message}", file=sys.stderr)
        return 1

    existing = [t for t in targets if t.exists()]
    if existing and not force:
        return fail(f"{existing[0]}: already exists; hint: pass --force to replace it")
    try:
        x_train, y_train, x_test, y_test = load_split()
    except ImportError as exc:
        return fail(f"--export-npz needs {exc.name} (pip install scikit-learn)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for target, x, y in ((targets[0], x_train, y_train), (targets[1], x_test, y_test)):
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, data=x, label=y)
            os.replace(tmp, target)
    except OSError as exc:
        return fail(f"{out}: cannot write there ({exc.strerror or exc})")
    for target in targets:
        print(target)
    return 0


def evaluate(runtime, deploy_text: str, weights: bytes, x, y) -> float:
    """Top-1 accuracy of the deploy net in Caffe on ``x``/``y``."""
    prob = runtime.forward(deploy_text, weights, {"data": x}, blobs=["prob"])["prob"]
    return float(np.mean(prob.reshape(len(x), -1).argmax(axis=1) == y.astype(np.int64)))


def deploy_weights(trained: bytes) -> bytes:
    """The trained train-net caffemodel re-saved with exactly the deploy net's layers."""
    import caffe_tucker as ct
    from caffe_tucker.io.emit import caffemodel_chunks

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trained.caffemodel"
        path.write_bytes(trained)
        net, _ = ct.load(HERE / "deploy.prototxt", path)
    missing = [l.name for l in net.layers if l.type in ("Convolution", "InnerProduct")
               and not l.blobs]
    if missing:
        raise SystemExit(f"the trained caffemodel has no weights for {missing}")
    return b"".join(bytes(c) for c in caffemodel_chunks(net))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caffe-python", default=None,
                        help="the Python with pycaffe (default: $CAFFE_TUCKER_PYTHON)")
    parser.add_argument("--check", action="store_true",
                        help="train and evaluate, write nothing, compare with the committed files")
    parser.add_argument("--echo", action="store_true", help="show Caffe's log")
    parser.add_argument("--export-lmdb", metavar="DIR",
                        help="train nothing: write the split as Caffe LMDBs DIR/train_lmdb and "
                        "DIR/test_lmdb (for finetune), print their paths and exit")
    parser.add_argument("--export-npz", metavar="DIR",
                        help="train nothing: write the split as DIR/train.npz and DIR/test.npz "
                        "(for sparsify), print their paths and exit")
    parser.add_argument("--force", action="store_true",
                        help="with --export-lmdb/--export-npz: replace existing files")
    args = parser.parse_args(argv)
    if args.export_lmdb is not None:
        return export_lmdb_command(args.export_lmdb, args.force)
    if args.export_npz is not None:
        return export_npz_command(args.export_npz, args.force)

    sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing
    from caffe_tucker.caffe.pycaffe import CaffeRuntime

    x_train, y_train, x_test, y_test = load_split()
    solver = (HERE / "solver.prototxt").read_text()
    train_net = (HERE / "train_val.prototxt").read_text()
    deploy = (HERE / "deploy.prototxt").read_text()
    with CaffeRuntime(args.caffe_python, timeout=1800, echo_stderr=args.echo) as runtime:
        t0 = time.monotonic()
        result = runtime.train(solver, train_net, {"data": x_train, "label": y_train},
                               seed=TRAIN_SEED)
        seconds = time.monotonic() - t0
        loss = result["loss"]
        every = max(len(loss) // 10, 1)
        for i in range(every - 1, len(loss), every):
            window = loss[max(i - every + 1, 0):i + 1]
            print(f"iteration {int(result['iterations'][i]):5d}  loss {float(window.mean()):.4f} "
                  f"(mean of the last {len(window)})")
        weights = deploy_weights(result["caffemodel"])
        train_acc = evaluate(runtime, deploy, weights, x_train, y_train)
        test_acc = evaluate(runtime, deploy, weights, x_test, y_test)
    sha1 = hashlib.sha1(weights).hexdigest()
    print(f"trained {result['max_iter']} iterations of batch {result['batch']} in {seconds:.1f} s "
          f"(Caffe: {result['seconds']:.1f} s)")
    print(f"top-1 accuracy: train {train_acc:.4f} ({len(y_train)} images), "
          f"test {test_acc:.4f} ({len(y_test)} images)")
    print(f"digits.caffemodel: {len(weights)} bytes, sha1 {sha1}")

    meta_path = HERE / "model.json"
    meta = json.loads(meta_path.read_text())
    if args.check:
        same = (meta["weights"]["sha1"] == sha1
                and round(test_acc, 4) == round(meta["accuracy"]["top1"], 4))
        print("matches the committed model" if same else
              f"differs from the committed model (sha1 {meta['weights']['sha1']}, "
              f"top-1 {meta['accuracy']['top1']})")
        return 0 if same else 1
    (HERE / "digits.caffemodel").write_bytes(weights)
    meta["weights"].update(sha1=sha1, bytes=len(weights))
    meta["accuracy"] = {"top1": round(test_acc, 4), "train_top1": round(train_acc, 4),
                        "images": len(y_test)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {HERE / 'digits.caffemodel'} and {meta_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
