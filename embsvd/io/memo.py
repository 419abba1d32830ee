"""Small per-process memos of values computed from a token matrix or from plain values:
a sweep's jobs share what depends only on the checkpoint and their common settings."""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

MEMO_SIZE = 4  # entries of each memo: a sweep alternates between few checkpoints
FINGERPRINT_ROWS = 64  # rows of a matrix hashed to tell it from one changed in place
T = TypeVar("T")


def value_digest(*parts: Any) -> str:
    """A digest of arrays (dtype, shape and bytes), strings, numbers, ``None`` and tuples,
    lists or dicts of them, for a memo key that compares values without holding them."""
    digest = hashlib.blake2b(digest_size=20)

    def update(part: Any) -> None:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            digest.update(f"<{array.dtype.str}{array.shape}>".encode())
            digest.update(array.data if array.size else b"")
        elif isinstance(part, tuple | list):
            digest.update(f"<{type(part).__name__}{len(part)}>".encode())
            for item in part:
                update(item)
        elif isinstance(part, dict):
            update(list(part.items()))
        else:
            digest.update(f"<{type(part).__name__}:{part!r}>".encode())

    for part in parts:
        update(part)
    return digest.hexdigest()


def matrix_fingerprint(W: Any) -> str:
    """A digest of ``W``'s shape and of ``FINGERPRINT_ROWS`` rows spread over it (read with
    ``W[ids]``, so a ``BFloat16Rows`` reads only those rows): a memo keyed by the matrix
    object rereads one changed in place since by any transform of its rows (normalized,
    centered, scaled, reordered). An edit of a few rows it does not sample goes unseen:
    give such a matrix as a new object (or call ``clear_memos``)."""
    rows = np.unique(np.linspace(0, len(W) - 1, min(len(W), FINGERPRINT_ROWS)).astype(np.int64))
    return value_digest(tuple(W.shape), np.asarray(W[rows]))


class _Lru:
    """The bookkeeping of a memo: at most ``size`` entries, the least recently used
    dropped first, a lock, and counts of hits and misses."""

    def __init__(self, size: int = MEMO_SIZE):
        self.size = size
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def _keep(self, key: Hashable, entry: Any) -> None:
        """Store ``entry`` as the most recent, dropping the oldest beyond ``size``."""
        with self.lock:
            self.entries[key] = entry
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.hits = self.misses = 0


class ValueMemo(_Lru):
    """A small LRU keyed by value (the key compared by equality, as a dict does)."""

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                self.hits += 1
                return self.entries[key]
            self.misses += 1
        value = compute()
        self._keep(key, value)
        return value


class MatrixMemo(_Lru):
    """A small LRU of values computed from a token matrix ``W``: keyed by the matrix
    object (held weakly: an entry goes when its matrix does, and a new matrix never finds
    another's entry even at a reused address) and a hashable key of everything else by
    value. A hit also needs ``matrix_fingerprint(W)`` unchanged. A matrix that cannot be
    referenced weakly is not memoized. Its entries are ``(slot, (weak reference,
    fingerprint, value))``, ``slot`` being ``(id(W), key)``."""

    def get(self, W: Any, key: Hashable, compute: Callable[[], T]) -> T:
        slot = (id(W), key)
        fingerprint = matrix_fingerprint(W)
        with self.lock:
            stale = [
                other
                for other, (ref, known, _) in self.entries.items()
                if other[0] == id(W) and (ref() is not W or known != fingerprint)
            ]
            for other in stale:  # of a matrix changed in place since: never to be hit
                del self.entries[other]
            if slot in self.entries:
                self.entries.move_to_end(slot)
                self.hits += 1
                return self.entries[slot][2]
            self.misses += 1
        value = compute()
        try:
            memo = weakref.ref(self)  # the callback must not keep the memo alive
            ref = weakref.ref(W, lambda _: _forget(memo, slot))
        except TypeError:  # no weak reference: cannot tell a new matrix at this address
            return value
        self._keep(slot, (ref, fingerprint, value))
        return value


def _forget(memo: weakref.ref, slot: tuple[int, Hashable]) -> None:
    """Drop the entry of a matrix that is gone (unless a new one took its slot)."""
    found = memo()
    if found is not None:
        with found.lock:
            entry = found.entries.get(slot)
            if entry is not None and entry[0]() is None:
                del found.entries[slot]


def read_only(array: np.ndarray) -> np.ndarray:
    """``array``, made read-only: a memoized value that the runs which hit it share."""
    array.flags.writeable = False
    return array
