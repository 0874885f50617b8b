"""BLAS threads: the tool sets them ($CAFFE_TUCKER_BLAS_THREADS, default the CPUs it may use)
while it decomposes."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from caffe_tucker.compress import blas
from caffe_tucker.compress.blas import BLAS_THREADS_ENV, BlasThreadsError, blas_limits, blas_threads


def _blas_counts():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_default_is_the_cpus_this_process_may_use():
    import os

    cpus = len(os.sched_getaffinity(0))
    assert blas_threads({}) == cpus
    assert blas_threads({BLAS_THREADS_ENV: ""}) == cpus


@pytest.mark.parametrize("raw, n", [("1", 1), ("2", 2), (" 3 ", 3)])
def test_env_var_is_honored(raw, n):
    assert blas_threads({BLAS_THREADS_ENV: raw}) == n


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_bad_value_is_a_one_line_error(raw):
    with pytest.raises(BlasThreadsError) as info:
        blas_threads({BLAS_THREADS_ENV: raw})
    msg = str(info.value)
    assert "\n" not in msg and BLAS_THREADS_ENV in msg and repr(raw) in msg


@pytest.mark.parametrize("n", [1, 2])
def test_inside_the_context_blas_has_n_threads(monkeypatch, n):
    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # BLAS loaded
    if not _blas_counts():
        pytest.skip("no BLAS seen by threadpoolctl")
    monkeypatch.setenv(BLAS_THREADS_ENV, str(n))
    before = _blas_counts()
    with blas_limits() as used:
        assert used == n
        assert _blas_counts() == {n}
    assert _blas_counts() == before


def test_convert_runs_under_the_limit(monkeypatch, cifar):
    from caffe_tucker.compress import convert as convert_module

    seen = []
    real = convert_module.decompose_layer

    def spy(*args):
        seen.append(_blas_counts())
        return real(*args)

    monkeypatch.setattr(convert_module, "decompose_layer", spy)
    monkeypatch.setenv(BLAS_THREADS_ENV, "1")
    convert_module.convert(cifar, progress=False)
    assert seen and all(s <= {1} for s in seen)


def test_cli_reports_a_bad_value_in_one_line(cli, monkeypatch, cifar, tmp_path):
    monkeypatch.setenv(BLAS_THREADS_ENV, "0")
    code, _, err = cli("convert", cifar, "-o", tmp_path / "out", "--no-plot")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and BLAS_THREADS_ENV in err
    assert blas.DEFAULT_BLAS_THREADS >= 1


def test_small_matrices_run_on_one_blas_thread():
    """Below SMALL_MATRIX_ROWS rows the block runs on one BLAS thread; from it on, as set."""
    from threadpoolctl import threadpool_info

    from caffe_tucker.compress.blas import SMALL_MATRIX_ROWS, blas_limits, small_matrix_limits

    def blas_counts():
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    with blas_limits(2):
        assert blas_counts() == {2}
        with small_matrix_limits(SMALL_MATRIX_ROWS - 1):
            assert blas_counts() == {1}
        assert blas_counts() == {2}
        with small_matrix_limits(SMALL_MATRIX_ROWS):
            assert blas_counts() == {2}
