"""The models and data the sparsity and quantization benchmarks share (digits, VDSR).

Imported by ``sparsity_compare.py`` and ``quantize_compare.py`` (run from this folder's parent or
anywhere: they put the repository on ``sys.path`` first).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from caffe_tucker.model import load_model
from caffe_tucker.sparsity.data import TrainSet, eval_set_from_arrays, sr_eval_set, sr_train_set

ROOT = Path(__file__).resolve().parent.parent


def digits():
    """``(model, train, test)``: the zoo digits model and its split (needs scikit-learn)."""
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "zoo_models/digits/train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    x_tr, y_tr, x_te, y_te = recipe.load_split()
    model = load_model(ROOT / "zoo_models/digits/deploy.prototxt",
                       ROOT / "zoo_models/digits/digits.caffemodel")
    return (model, TrainSet({"data": x_tr, "label": y_tr}, "digits train split"),
            eval_set_from_arrays(x_te, y_te, source="digits test split"))


def vdsr(shared: Path, patch: int):
    """``(model, train, test)``: VDSR from ``shared/models``, Set14 patches to train, Set5 ×3."""
    model = load_model(shared / "models/vdsr/VDSR_net_deploy.prototxt",
                       shared / "models/vdsr/VDSR_Adam.caffemodel")
    return (model, sr_train_set(shared / "data/sr/Set14", 3, patch=patch, stride=patch),
            sr_eval_set(shared / "data/sr/Set5", 3))
