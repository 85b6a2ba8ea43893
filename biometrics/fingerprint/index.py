"""1:N search over enrolled fingers: a hashed first stage, then full MCC comparison of a shortlist.

First stage (after MCC-LSH, R. Cappelli, M. Ferrara, D. Maltoni, "Fingerprint indexing based on
Minutia Cylinder-Code", IEEE TPAMI 33(5), 2011, which hashes smaller cylinders than matching uses):
every cylinder is pooled to an 8 x 8 grid (a coarse cell is set when any of its 2 x 2 fine cells
is), which makes its bits steadier across impressions; those bits are sampled by ``HASHES`` fixed
random functions of ``HASH_BITS`` bits each; the keys of all enrolled cylinders sit in one
sorted array per function. A probe looks its cylinders' keys up (binary search), every collision is
a vote for the finger, weighted by how rare the key is, and a finger's votes are divided by the
square root of its number of cylinders (large templates would otherwise collect votes by size).
The best ``shortlist`` fingers by votes are then compared in full. Cost is thus a few searches
plus a fixed number of full comparisons; the lookups grow with the gallery only through the sizes
of the buckets hit. The hash size and count were chosen on the benchmark's distractor gallery
(benchmarks/fingerprint_speed.py), not on the audit sets' trials. Keys with fewer than
``MIN_KEY_BITS`` set bits (mostly empty or invalid cells) say nothing about a finger and are not
indexed.

New fingers go to a small unsorted segment that is merged into the sorted one when it grows past
5 % of it, so enrolment never rebuilds the whole index. Removal is immediate (the finger is no
longer returned) and its keys are dropped at the next merge.
"""

from __future__ import annotations

import threading

import numpy as np

from biometrics.errors import FingerprintTemplateError
from biometrics.fingerprint.mcc import _IN_DISC, ND, NS
from biometrics.fingerprint.similarity import global_similarity
from biometrics.fingerprint.templates import FingerprintTemplate

HASHES = 32
HASH_BITS = 20
MIN_KEY_BITS = 2
POOL = 2  # fine cells per coarse cell along each side
SEED = 19794  # fixed: the hash functions must be the same in every process
DEFAULT_SHORTLIST = 24


COARSE = NS // POOL
_COARSE_DISC = _IN_DISC.reshape(COARSE, POOL, COARSE, POOL).any(axis=(1, 3)).ravel()


def _hash_functions() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    cells = np.flatnonzero(np.repeat(_COARSE_DISC, ND))  # coarse bits inside the disc (cell-major)
    return np.stack([rng.choice(cells, HASH_BITS, replace=False) for _ in range(HASHES)])


_FUNCTIONS = _hash_functions()
_WEIGHTS = (1 << np.arange(HASH_BITS)).astype(np.int64)
assert _FUNCTIONS.max() <= NS * NS * ND


def cylinder_keys(template: FingerprintTemplate) -> np.ndarray:
    """(n_cylinders, HASHES) int64 keys of all impressions' cylinders; -1 where a key is uninformative."""
    blocks = []
    for cyl in template.cylinders():
        if len(cyl) == 0:
            continue
        fine = cyl.unpacked_bits().reshape(len(cyl), COARSE, POOL, COARSE, POOL, ND)
        coarse = fine.any(axis=(2, 4)).reshape(len(cyl), -1)
        sampled = coarse[:, _FUNCTIONS]  # (n, HASHES, HASH_BITS)
        keys = sampled.astype(np.int64) @ _WEIGHTS
        keys[sampled.sum(axis=2) < MIN_KEY_BITS] = -1
        blocks.append(keys)
    return np.concatenate(blocks) if blocks else np.zeros((0, HASHES), np.int64)


class FingerprintIndex:
    """In-memory 1:N index of fingerprint templates by key (thread-safe)."""

    def __init__(self, *, shortlist: int = DEFAULT_SHORTLIST) -> None:
        self.shortlist = shortlist
        self._lock = threading.RLock()
        self._templates: dict[str, FingerprintTemplate] = {}
        self._slot_of: dict[str, int] = {}
        self._keys_of_slot: list[str | None] = []
        self._cylinders_of_slot: list[int] = []
        self._fingerprint: str | None = None
        # Sorted segment, one sorted key array and slot array per hash function.
        self._sorted_keys: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(HASHES)]
        self._sorted_slots: list[np.ndarray] = [np.zeros(0, np.int32) for _ in range(HASHES)]
        self._pending_keys: list[np.ndarray] = []
        self._pending_slots: list[np.ndarray] = []
        self._pending_count = 0

    def __len__(self) -> int:
        return len(self._templates)

    def __contains__(self, key: object) -> bool:
        return key in self._templates

    def add(self, key: str, template: FingerprintTemplate) -> None:
        """Enrol (or replace) a finger under ``key``."""
        with self._lock:
            if self._fingerprint is not None and template.fingerprint != self._fingerprint and self._templates:
                raise FingerprintTemplateError(
                    "fingerprint template comes from another extractor or matcher than this index holds"
                )
            self._fingerprint = template.fingerprint
            if key in self._templates:
                self.remove(key)
            keys = cylinder_keys(template)
            slot = len(self._keys_of_slot)
            self._keys_of_slot.append(key)
            self._cylinders_of_slot.append(max(1, len(keys)))
            self._slot_of[key] = slot
            self._templates[key] = template
            if len(keys):
                self._pending_keys.append(keys)
                self._pending_slots.append(np.full(len(keys), slot, np.int32))
                self._pending_count += len(keys)
            if self._pending_count > max(2000, 0.05 * len(self._sorted_keys[0])):
                self._merge()

    def remove(self, key: str) -> None:
        with self._lock:
            if key not in self._templates:
                return
            del self._templates[key]
            self._keys_of_slot[self._slot_of.pop(key)] = None

    def _merge(self) -> None:
        if not self._pending_keys:
            return
        new_keys = np.concatenate(self._pending_keys)
        new_slots = np.concatenate(self._pending_slots)
        alive = np.array([k is not None for k in self._keys_of_slot], bool)
        for h in range(HASHES):
            keys = np.concatenate([self._sorted_keys[h], new_keys[:, h]])
            slots = np.concatenate([self._sorted_slots[h], new_slots])
            keep = (keys >= 0) & alive[slots]
            keys, slots = keys[keep], slots[keep]
            order = np.argsort(keys, kind="stable")
            self._sorted_keys[h], self._sorted_slots[h] = keys[order], slots[order]
        self._pending_keys, self._pending_slots, self._pending_count = [], [], 0

    def _votes(self, probe_keys: np.ndarray) -> np.ndarray:
        votes = np.zeros(len(self._keys_of_slot), np.float64)
        if len(probe_keys) == 0:
            return votes
        pend_keys = np.concatenate(self._pending_keys) if self._pending_keys else np.zeros((0, HASHES), np.int64)
        pend_slots = np.concatenate(self._pending_slots) if self._pending_slots else np.zeros(0, np.int32)
        for h in range(HASHES):
            q = probe_keys[:, h]
            q = q[q >= 0]
            if len(q) == 0:
                continue
            keys, slots = self._sorted_keys[h], self._sorted_slots[h]
            total = len(keys) + len(pend_keys)
            lo = np.searchsorted(keys, q, side="left")
            hi = np.searchsorted(keys, q, side="right")
            sizes = hi - lo
            if len(pend_keys):
                match = pend_keys[:, h][None, :] == q[:, None]
                sizes = sizes + match.sum(axis=1)
            cap = max(64, int(0.01 * total))
            take = (sizes > 0) & (sizes <= cap)
            weight = np.log1p(total / np.maximum(sizes, 1))
            lo, hi, w = lo[take], hi[take], weight[take]
            counts = hi - lo
            if counts.sum():
                starts = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
                np.add.at(votes, slots[starts], np.repeat(w, counts))
            if len(pend_keys):
                rows, cols = np.nonzero(match)
                ok = take[rows]
                np.add.at(votes, pend_slots[cols[ok]], weight[rows[ok]])
        return votes

    def search(self, probe: FingerprintTemplate, *, limit: int = 5) -> list[tuple[str, float]]:
        """The best ``limit`` enrolled fingers for ``probe``, best first, with their full scores."""
        with self._lock:
            if not self._templates:
                return []
            if self._fingerprint is not None and probe.fingerprint != self._fingerprint:
                raise FingerprintTemplateError(
                    "probe template comes from another extractor or matcher than this index holds"
                )
            sizes = np.asarray(self._cylinders_of_slot, np.float64)
            votes = self._votes(cylinder_keys(probe)) / np.sqrt(sizes)
            alive = np.array([k is not None for k in self._keys_of_slot], bool)
            votes[~alive] = -1.0
            n = min(max(self.shortlist, limit), int(alive.sum()))
            if n <= 0:
                return []
            candidates = np.argpartition(-votes, n - 1)[:n] if n < len(votes) else np.flatnonzero(alive)
            candidates = [int(c) for c in candidates if alive[c]]
            scored = []
            probe_cyl = probe.cylinders()
            for slot in candidates:
                key = self._keys_of_slot[slot]
                assert key is not None
                ref = self._templates[key]
                score = max(
                    (global_similarity(a, b) for a in probe_cyl for b in ref.cylinders()), default=0.0
                )
                scored.append((key, score))
            scored.sort(key=lambda kv: (-kv[1], kv[0]))
            return scored[:limit]
