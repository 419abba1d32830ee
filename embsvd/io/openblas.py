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

``one_thread_each`` is the other way round: for the duration of a pass that runs threads
of its own (``embsvd.io.rows.parallel_row_blocks``), BLAS runs one thread per call.

``dsyevr`` finds LAPACK's ``dsyevr`` in the OpenBLAS numpy loaded, for the largest
eigenpairs of a symmetric matrix alone: numpy's ``eigh`` computes every eigenvector.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from threadpoolctl import threadpool_info  # no numpy: imported before numpy loads

THREAD_TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT"
# log2 of the cycles an idle thread spins before it sleeps: 4, the least OpenBLAS takes
THREAD_TIMEOUT = "4"


def prepare() -> None:
    """Let OpenBLAS's idle threads sleep at once, unless the environment says otherwise.
    Call it before anything imports numpy: once OpenBLAS has loaded it changes nothing."""
    os.environ.setdefault(THREAD_TIMEOUT_ENV, THREAD_TIMEOUT)


_threads_lock = threading.Lock()
_single_threaded = 0  # passes now inside ``one_thread_each``
_saved: list[int] = []  # each OpenBLAS's thread count before the first entered


@contextmanager
def one_thread_each() -> Iterator[None]:
    """OpenBLAS single-threaded while inside: for a pass that runs its own threads, each
    making products with a few axes (``embsvd.io.rows.parallel_row_blocks``), so that
    their products do not each spread over every core. Process-wide, as OpenBLAS's thread
    count is: passes that overlap share one limit, and the last to leave restores the
    counts that were set before the first entered, whichever thread each runs in
    (threadpoolctl's own limits only take effect from the first thread that set one)."""
    global _single_threaded, _saved
    with _threads_lock:
        if _single_threaded == 0:
            _saved = [get() for get, _ in _openblas()]
            for _, set_threads in _openblas():
                set_threads(1)
        _single_threaded += 1
    try:
        yield
    finally:
        with _threads_lock:
            _single_threaded -= 1
            if _single_threaded == 0:
                for (_, set_threads), count in zip(_openblas(), _saved, strict=True):
                    set_threads(count)


@functools.cache
def _openblas() -> tuple[tuple[Callable[[], int], Callable[[int], None]], ...]:
    """``(get, set)`` of the thread count of every OpenBLAS loaded (numpy's), found by
    threadpoolctl; their symbols carry the prefix and suffix of the build (numpy's
    wheels: ``scipy_openblas_set_num_threads64_``)."""
    found = []
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        library = ctypes.CDLL(info["filepath"])
        get = _symbol(library, "openblas_get_num_threads")
        set_threads = _symbol(library, "openblas_set_num_threads")
        if get is not None and set_threads is not None:
            get, set_threads = get[0], set_threads[0]
            set_threads.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
            found.append((get, set_threads))
    return tuple(found)


def _symbol(library: ctypes.CDLL, name: str) -> tuple[Callable[..., int], bool] | None:
    """``name`` in an OpenBLAS ``library``, with its build's prefix and suffix (numpy's
    wheels: ``scipy_`` and ``64_``), and whether its integers are 64-bit (the ``64_``
    builds); ``None`` where it has no such symbol."""
    for prefix, suffix in itertools.product(("scipy_", ""), ("64_", "")):
        function = getattr(library, f"{prefix}{name}{suffix}", None)
        if function is not None:
            return function, suffix == "64_"
    return None


COLUMN_MAJOR = 102  # LAPACKE's LAPACK_COL_MAJOR


@functools.cache
def dsyevr() -> tuple[Callable[..., int], type] | None:
    """LAPACKE's ``dsyevr`` in the OpenBLAS numpy loaded (its wheels' ``numpy.libs``,
    named with their build's prefix and suffix) and the C type of its integers; ``None``
    where numpy has no such OpenBLAS (another BLAS, another build). ``dsyevr`` finds
    selected eigenpairs of a symmetric matrix (``embsvd.method.geometry``'s Lanczos
    checks: the top ``k``), where numpy's ``eigh`` computes every eigenvector. Call it
    once numpy is imported."""
    spec = importlib.util.find_spec("numpy")
    if spec is None or spec.origin is None:
        return None
    site = Path(spec.origin).resolve().parent.parent  # numpy's wheel puts its libraries here
    for info in threadpool_info():
        path = Path(info["filepath"]).resolve()
        if info.get("internal_api") != "openblas" or path.parent.parent != site:
            continue
        if not path.parent.name.startswith("numpy"):
            continue
        found = _symbol(ctypes.CDLL(str(path)), "LAPACKE_dsyevr")
        if found is None:
            continue
        function, wide = found
        n = ctypes.c_int64 if wide else ctypes.c_int
        real, pointer, char = ctypes.c_double, ctypes.c_void_p, ctypes.c_char
        function.restype = n
        function.argtypes = [
            ctypes.c_int, char, char, char, n, pointer, n, real, real, n, n, real,
            ctypes.POINTER(n), pointer, pointer, n, pointer,
        ]  # fmt: skip
        return function, n
    return None
