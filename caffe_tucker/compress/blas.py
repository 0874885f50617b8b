"""How many threads BLAS/LAPACK may use while the tool decomposes: ``$CAFFE_TUCKER_BLAS_THREADS``.

The rank selection (SVDs of the unfoldings) and the decompositions (eigendecompositions of Gram
matrices in HOOI) are LAPACK calls; :func:`blas_limits` runs them under
``threadpoolctl.threadpool_limits`` so that the tool, not the environment, decides the thread
count.  The default is the number of CPUs this process may run on (``os.sched_getaffinity``): on
an idle 2-core machine 2 threads ran a 4096 x 4096 ``eigh`` in 6.1 s against 10.9 s with 1, and a
2048 x 1152 SVD in 0.67 s against 1.04 s (medians of 3, side by side).  On a loaded machine
oversubscribed BLAS threads can be far slower (issue 13's author measured LAPACK 10–45x slower with
2 threads than with 1 while other jobs ran): set ``CAFFE_TUCKER_BLAS_THREADS=1`` (or any int ≥ 1)
there.

Small matrices run on one thread whatever the count (:func:`small_matrix_limits`): below 1024
rows OpenBLAS's threads cost more than they give (idle machine, 2 cores, leading vectors of a
512 x 4608 unfolding: 0.064 s with 1 thread, 0.117 s with 2; 1024 x 9216: 0.42 s against 0.37 s;
4096 x 7560: 11.0 s against 6.4 s), and VGG-16's Tucker-2 layers are all below it.
"""

from __future__ import annotations

import contextlib
import os

from threadpoolctl import threadpool_limits

from caffe_tucker.errors import CaffeTuckerError, check_param

__all__ = ["BLAS_THREADS_ENV", "DEFAULT_BLAS_THREADS", "BlasThreadsError", "blas_threads",
           "blas_limits", "small_matrix_limits", "SMALL_MATRIX_ROWS"]

BLAS_THREADS_ENV = "CAFFE_TUCKER_BLAS_THREADS"


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


#: The CPUs this process may use (see the module docstring for the measurements).
DEFAULT_BLAS_THREADS = _cpus()


class BlasThreadsError(CaffeTuckerError, ValueError):
    """``$CAFFE_TUCKER_BLAS_THREADS`` is not an int ≥ 1."""


def blas_threads(environ=None) -> int:
    """The BLAS thread count: ``$CAFFE_TUCKER_BLAS_THREADS`` if set (an int ≥ 1), else the CPUs
    this process may run on.

    Parameters
    ----------
    environ : mapping, optional
        Where to look the variable up; ``os.environ`` by default.

    Raises
    ------
    BlasThreadsError
        The variable is set to anything but a positive integer.
    """
    raw = (os.environ if environ is None else environ).get(BLAS_THREADS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_BLAS_THREADS
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    check_param(BLAS_THREADS_ENV, raw, value is not None and value >= 1, "an int >= 1",
                "the environment", exc=BlasThreadsError)
    return value


@contextlib.contextmanager
def blas_limits(n: int | None = None):
    """Run the block with BLAS limited to ``n`` threads (default :func:`blas_threads`)."""
    n = blas_threads() if n is None else n
    with threadpool_limits(limits=n, user_api="blas"):
        yield n


#: Matrices (Gram matrices, unfoldings) with fewer rows than this run on one BLAS thread.
SMALL_MATRIX_ROWS = 1024


@contextlib.contextmanager
def small_matrix_limits(rows: int):
    """One BLAS thread for the block when ``rows`` < :data:`SMALL_MATRIX_ROWS`; else as it is.

    The loaded BLAS libraries are looked up on each call (0.13 ms): a controller kept from an
    earlier call would miss a library loaded since.
    """
    if rows >= SMALL_MATRIX_ROWS:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
