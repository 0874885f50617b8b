"""The files `convert` writes are pinned byte for byte (issue 8: restructuring must not change them).

The digits model and cifar10_quick are converted from a copy in a temporary directory, run from
there with relative paths (the deploy's header comment names the input as given). The hashes were
taken on the code before the stage packages were introduced; a change to any of them is a change
of behaviour and needs a reason in the commit that updates it (the last: Tucker-2 by
compress/hooi.py instead of TensorLy's partial_tucker, issue 13 -- weights.caffemodel only, in
both tables: same ranks, reconstruction errors equal or lower up to float rounding; before it,
the reference VBMF solver as the default, see PINNED_GLOBAL).
"""

import hashlib
import shutil

import pytest

from conftest import TEST_MODELS, ZOO

PINNED = {
    "digits": {
        "deploy.prototxt": "1c2c35815152daf7c8f20a28a99f4c968e48cab6995cace66584a416c1c4b796",
        "weights.caffemodel": "48a3e55d5f767e09d842105ae27319818c8914a1e9d70c8ff0f4614d842ced6f",
        "ranks.json": "c817377bee754c59ada458379f381dd1071c2a5b2bc15e2fc226a500913dc05e",
        "solver.prototxt": "96d62f58271a95e93ccec9f9f1316f7bfb42f066ea7820221c33165528b293a4",
        "train_val.prototxt": "860ce41201d95ad06b13f423dd5504850183ff131f9f76ebf96c151d136d82de",
    },
    "cifar10_quick": {
        "deploy.prototxt": "ec3ff230056818e28d1ebf1a208bf843ab08e01a1a3ee8f09aa2c843b33fcbc7",
        "weights.caffemodel": "dd999d0fe491686297d8f7c6ac79d9014f59f8a26f06e063e6e8a438849293a1",
        "ranks.json": "669e97b7d8a5316f99aa31bbc479a13f1c5d6d006d23e8226a3bd233013d1b85",
        "solver.prototxt": "af0f7fe7ec79ba5d11fbcc1f696b0022976cc9b6d701c29243ed02b47b2a4802",
        "train_val.prototxt": "933cb0b28124c77657a146c81be9ce8c31aa7c3c14b466f040369d6a302e3226",
    },
}

#: With --vbmf-solver global: the files as they were before the reference solver became the
#: default (it changed the VBMF ranks of digits fc1, 27 -> 25, and of cifar10_quick conv2,
#: (14, 13) -> (14, 14), and conv3, (10, 5) -> (10, 6); nothing else).
PINNED_GLOBAL = {
    "digits": {
        "deploy.prototxt": "57f1f966b7203becf1110f3fbe53e60116a483d958a6707b729fa94b300b17d8",
        "weights.caffemodel": "293c135fec68419a4d73d511471339384f665b3d588a0e7b41e41e60415c76eb",
        "ranks.json": "41e17fc86c1c78853f39a0f5007289c8a688202715d132db38b94bdae5a860c0",
        "solver.prototxt": "96d62f58271a95e93ccec9f9f1316f7bfb42f066ea7820221c33165528b293a4",
        "train_val.prototxt": "fe1b3e0699c990c390b812d13d5d5d1bb1f038d6765eb8d932bd9d9b52724732",
    },
    "cifar10_quick": {
        "deploy.prototxt": "6780df0bb479fc65c419531a751d797421a5b4eec7716160d35eca404cee4bde",
        "weights.caffemodel": "06b2e2527233d29482da89d876f7b39302f2c59524425a9cf0a65e5205c8fe80",
        "ranks.json": "1229f6b13e6f4e005d81c04f86c281d31b47fac9da01a2425a4f1533a5115ef4",
        "solver.prototxt": "af0f7fe7ec79ba5d11fbcc1f696b0022976cc9b6d701c29243ed02b47b2a4802",
        "train_val.prototxt": "1f240a7909598dd689a23665cf28853e9fd7d29559502afc36abf63cb1d7a28c",
    },
}


def _convert(cli, tmp_path, monkeypatch, model, *options):
    if model == "digits":
        shutil.copy(ZOO / "digits" / "deploy.prototxt", tmp_path / "net.prototxt")
        shutil.copy(ZOO / "digits" / "digits.caffemodel", tmp_path / "net.caffemodel")
        extra = ["--preset", "digits"]
    else:
        src = TEST_MODELS / "cifar10_quick"
        shutil.copy(src / "cifar10_quick.prototxt", tmp_path / "net.prototxt")
        shutil.copy(src / "cifar10_quick_iter_5000.caffemodel", tmp_path / "net.caffemodel")
        extra = []
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("convert", "net.prototxt", "-o", "out", "--no-plot", *extra, *options)
    assert code == 0, err
    return {name: hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest()
            for name in PINNED[model]}


@pytest.mark.parametrize("model", sorted(PINNED))
def test_convert_outputs_are_pinned(cli, tmp_path, monkeypatch, model):
    assert _convert(cli, tmp_path, monkeypatch, model) == PINNED[model]


@pytest.mark.parametrize("model", sorted(PINNED_GLOBAL))
def test_global_vbmf_solver_outputs_are_pinned(cli, tmp_path, monkeypatch, model):
    assert _convert(cli, tmp_path, monkeypatch, model, "--vbmf-solver", "global") == \
        PINNED_GLOBAL[model]
