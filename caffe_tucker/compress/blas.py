"""How many threads BLAS/LAPACK may use while the tool decomposes: ``$CAFFE_TUCKER_BLAS_THREADS``.

The rank selection (SVDs of the unfoldings) and the decompositions (eigendecompositions of Gram
matrices in HOOI) are LAPACK calls; :func:`blas_limits` runs them under
``threadpoolctl.threadpool_limits`` so that the tool, not the environment, decides the thread
count.  The default is 1: issue 13's author measured LAPACK calls 10–45× slower with OpenBLAS's
default of 2 threads than with 1 on this project's shared 2-core machine (one later end-to-end
AlexNet conversion there was faster with 2: 87 s against 127 s, so the gain depends on the load;
see the README's Performance section).  Set ``CAFFE_TUCKER_BLAS_THREADS=N`` (an int ≥ 1) to allow
more.
"""

from __future__ import annotations

import contextlib
import os

from threadpoolctl import threadpool_limits

from caffe_tucker.errors import CaffeTuckerError, check_param

__all__ = ["BLAS_THREADS_ENV", "DEFAULT_BLAS_THREADS", "BlasThreadsError", "blas_threads",
           "blas_limits"]

BLAS_THREADS_ENV = "CAFFE_TUCKER_BLAS_THREADS"
#: 1 thread: OpenBLAS's default 2 threads ran LAPACK 10-45x slower on the 2-core machine.
DEFAULT_BLAS_THREADS = 1


class BlasThreadsError(CaffeTuckerError, ValueError):
    """``$CAFFE_TUCKER_BLAS_THREADS`` is not an int ≥ 1."""


def blas_threads(environ=None) -> int:
    """The BLAS thread count: ``$CAFFE_TUCKER_BLAS_THREADS`` if set (an int ≥ 1), else 1.

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
