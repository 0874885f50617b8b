"""sparsify's data: npz and image-directory sources, resumable minibatches, accuracy and PSNR."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffe_tucker.errors import InputFileError
from caffe_tucker.sparsity.data import (TrainSet, accuracy, eval_set_from_npz, load_npz, luminance,
                                        psnr, sr_eval_set, sr_train_set)


def test_minibatches_are_a_function_of_seed_and_iteration_and_cover_each_epoch():
    t = TrainSet({"data": np.arange(10, dtype=np.float32)[:, None], "label": np.zeros(10)})
    # 4 per batch over 10 samples: iterations 0..4 span exactly two epochs
    stream = np.concatenate([t.indices(i, 4, seed=7) for i in range(5)])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])      # a fresh order per epoch
    np.testing.assert_array_equal(t.indices(3, 4, seed=7), stream[12:16])  # random access
    assert not np.array_equal(t.indices(0, 4, seed=8), t.indices(0, 4, seed=7))
    b = t.batch(2, 4, seed=7)
    np.testing.assert_array_equal(b["data"][:, 0], stream[8:12])


def test_npz_is_read_as_float32_and_bad_files_get_one_line(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, data=np.ones((3, 1, 2, 2), np.float64), label=np.array([0, 1, 2]))
    arrays = load_npz(good)
    assert arrays["data"].dtype == np.float32 and arrays["label"].tolist() == [0, 1, 2]
    cases = {
        "missing.npz": "no such file",
        "text.npz": "not a readable .npz",
        "ragged.npz": "share a first dimension",
        "nan.npz": "NaN",
        "objects.npz": "not a readable .npz",
    }
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "ragged.npz", data=np.ones((3, 2)), label=np.ones(2))
    np.savez(tmp_path / "nan.npz", data=np.array([[np.nan]]), label=np.ones(1))
    np.savez(tmp_path / "objects.npz", data=np.array([{"a": 1}], dtype=object))
    for name, words in cases.items():
        with pytest.raises(InputFileError) as info:
            load_npz(tmp_path / name)
        assert words in str(info.value) and "\n" not in str(info.value)
        assert str(info.value).startswith(str(tmp_path / name))


def test_eval_set_picks_accuracy_for_class_labels_and_psnr_for_images(tmp_path):
    np.savez(tmp_path / "cls.npz", data=np.zeros((250, 1, 4, 4)), label=np.arange(250) % 10)
    ev = eval_set_from_npz(tmp_path / "cls.npz", chunk=100)
    assert ev.metric == "accuracy" and [len(t) for _, t in ev.items] == [100, 100, 50]
    np.savez(tmp_path / "img.npz", data=np.zeros((4, 1, 5, 5)), label=np.zeros((4, 1, 5, 5)))
    assert eval_set_from_npz(tmp_path / "img.npz").metric == "psnr"
    np.savez(tmp_path / "nolabel.npz", data=np.zeros((4, 1, 5, 5)))
    with pytest.raises(InputFileError, match="has no array 'label'"):
        eval_set_from_npz(tmp_path / "nolabel.npz")


def test_measures_by_hand():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(scores, np.array([1, 1, 1])) == pytest.approx(2 / 3)
    target = np.full((1, 1, 6, 6), 0.5)
    out = target.copy()
    out[0, 0, 1:5, 1:5] += 0.1                       # inside after shaving 1
    out[0, 0, 0, 0] = 7.0                            # shaved away (and clipped)
    assert psnr(out, target, shave=1) == pytest.approx(10 * math.log10(1 / 0.01))
    assert psnr(target, target) == math.inf
    assert psnr(np.full((2, 2), 1.5), np.ones((2, 2))) == math.inf  # clipped to [0, 1]


def test_luminance_is_bt601_studio_range():
    assert luminance(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16 / 255)
    assert luminance(np.full((1, 1, 3), 255.0))[0, 0] == pytest.approx(235 / 255, abs=1e-3)


def test_image_directories_give_aligned_patches_and_whole_test_images(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for i, (w, h) in enumerate([(50, 40), (31, 64)]):
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(tmp_path / f"{i}.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    ev = sr_eval_set(tmp_path, 3)
    assert ev.metric == "psnr" and ev.shave == 3
    assert [x["data"].shape for x, _ in ev.items] == [(1, 1, 39, 48), (1, 1, 63, 30)]
    assert all(x["data"].shape == y.shape for x, y in ev.items)
    t = sr_train_set(tmp_path, 3, patch=16, stride=16)
    # 39x48 -> 2x3 patches, 63x30 -> 3x1 patches
    assert t.arrays["data"].shape == (9, 1, 16, 16) == t.arrays["label"].shape
    x, y = ev.items[0]
    np.testing.assert_array_equal(t.arrays["label"][0, 0], y[0, 0, :16, :16])
    np.testing.assert_array_equal(t.arrays["data"][1, 0], x["data"][0, 0, :16, 16:32])
    with pytest.raises(InputFileError, match="no image is 64x64"):
        sr_train_set(tmp_path, 3, patch=64, stride=64)
    with pytest.raises(InputFileError, match="not a directory"):
        sr_eval_set(tmp_path / "0.bmp", 3)
