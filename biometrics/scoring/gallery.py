"""An in-memory 1:N gallery: unit-length embeddings in one float32 matrix, one row per key.

A query is one matrix-vector product over every row (cosine scores, since rows and query are unit
length), then a partial sort for the best ``k``. Rows are added, replaced and removed in place (a
removed row is filled with the last one), so the gallery follows enrolments and withdrawals without a
rebuild. Nothing here knows where the embeddings came from: a caller that holds protected templates
keeps the gallery as a cache and checks every key it returns against its own records.

float32 on purpose: on the 2-core CPU the benchmarks run on, numpy's float16 and int8 products (or their
conversion to float32 in blocks) were 6-13 times slower than the BLAS float32 product, and a million
192-d rows in float32 still fit in 768 MB (benchmarks/identify_scale.py).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Match(Generic[K]):
    key: K
    score: float  # cosine


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero or non-finite row is refused."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.isfinite(vectors).all() or not (norms > 0).all():
        raise ValueError("gallery vectors must be finite and non-zero")
    return vectors / norms


class Gallery(Generic[K]):
    """Keys and their unit embeddings; ``top_k`` answers a query with one matrix product. Thread-safe."""

    def __init__(self, dim: int, *, capacity: int = 1024) -> None:
        if dim < 1:
            raise ValueError("dim must be positive")
        self.dim = dim
        self._matrix = np.empty((max(1, capacity), dim), dtype=np.float32)
        self._keys: list[K] = []
        self._rows: dict[K, int] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def nbytes(self) -> int:
        """Memory held by the matrix (allocated rows included)."""
        return self._matrix.nbytes

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._keys)

    def vector(self, key: K) -> np.ndarray:
        """The stored (unit) vector of ``key``; KeyError when absent."""
        with self._lock:
            return self._matrix[self._rows[key]].copy()

    def add(self, key: K, vector: np.ndarray) -> None:
        """Adds ``key``, or replaces its vector."""
        self.add_many([key], unit_rows(vector))

    def add_many(self, keys: Sequence[K], vectors: np.ndarray) -> None:
        """Adds (or replaces) many keys at once; ``vectors`` has one row per key."""
        rows = unit_rows(vectors)
        if rows.shape != (len(keys), self.dim):
            raise ValueError(f"expected {len(keys)} rows of {self.dim} values, got {rows.shape}")
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate keys in one call")
        with self._lock:
            fresh: list[int] = []
            for i, key in enumerate(keys):
                row = self._rows.get(key)
                if row is None:
                    fresh.append(i)
                else:
                    self._matrix[row] = rows[i]
            if not fresh:
                return
            start = len(self._keys)
            self._reserve(start + len(fresh))
            if len(fresh) == len(keys):
                self._matrix[start : start + len(keys)] = rows
                new_keys: list[K] = list(keys)
            else:
                self._matrix[start : start + len(fresh)] = rows[fresh]
                new_keys = [keys[i] for i in fresh]
            self._rows.update(zip(new_keys, range(start, start + len(new_keys)), strict=True))
            self._keys.extend(new_keys)

    def remove(self, key: K) -> bool:
        """Removes ``key``; False when it was not there."""
        with self._lock:
            row = self._rows.pop(key, None)
            if row is None:
                return False
            last = len(self._keys) - 1
            if row != last:
                moved = self._keys[last]
                self._matrix[row] = self._matrix[last]
                self._keys[row] = moved
                self._rows[moved] = row
            self._keys.pop()
            return True

    def remove_many(self, keys: Iterable[K]) -> int:
        return sum(self.remove(key) for key in keys)

    def scores(self, query: np.ndarray) -> tuple[list[K], np.ndarray]:
        """Every key and its cosine score against ``query`` (one matrix product)."""
        q = unit_rows(query)[0]
        with self._lock:
            return list(self._keys), self._matrix[: len(self._keys)] @ q

    def top_k(self, query: np.ndarray, k: int, *, min_score: float | None = None) -> list[Match[K]]:
        """The ``k`` best keys by cosine, best first (ties: the earlier row first); ``min_score`` drops the rest."""
        if k < 1:
            return []
        q = unit_rows(query)[0]
        with self._lock:
            n = len(self._keys)
            if n == 0:
                return []
            scores = self._matrix[:n] @ q
            best = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
            best = best[np.lexsort((best, -scores[best]))]
            if min_score is not None:
                best = best[scores[best] >= min_score]
            return [Match(self._keys[i], float(scores[i])) for i in best]

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._matrix):
            return
        grown = np.empty((max(rows, 2 * len(self._matrix)), self.dim), dtype=np.float32)
        grown[: len(self._keys)] = self._matrix[: len(self._keys)]
        self._matrix = grown
