"""OpenBLAS's worker threads, set up by the entry points before numpy loads them.

After each product, OpenBLAS's idle worker threads spin for 2^28 cycles (about 0.1 s)
before they sleep: its default ``OPENBLAS_THREAD_TIMEOUT``. A job makes many small products
between stretches of Python (the checks, its tables, its explorer), so a spinning thread
holds one of this machine's two cores through most of a job, against the job's own Python
and the figure process beside it. Measured on 2026-11-30 (2 cores), the seed
replication's four jobs took 1.78-1.89 s with the default and 1.42-1.44 s with the threads
asleep at once (1.37-1.44 s with one thread); one warm 128256 x 4096 run 4.70-5.35 s
against 4.54-4.86 s. A large product (the global components' scatter) still runs on
every core: only the threads' idle wait changes, never a result.

Only the entry points (``experiments/*.py``, the ``embsvd`` command: ``embsvd.__main__``)
call ``prepare``:
OpenBLAS reads the variable when it loads, and a library imported into someone's
notebook leaves their environment alone.
"""

from __future__ import annotations

import os

THREAD_TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT"
# log2 of the cycles an idle thread spins before it sleeps: 4, the least OpenBLAS takes
THREAD_TIMEOUT = "4"


def prepare() -> None:
    """Let OpenBLAS's idle threads sleep at once, unless the environment says otherwise.
    Call it before anything imports numpy: once OpenBLAS has loaded it changes nothing."""
    os.environ.setdefault(THREAD_TIMEOUT_ENV, THREAD_TIMEOUT)
