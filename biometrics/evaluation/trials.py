"""Audit datasets and their trials: who is enrolled from which sample, and tested with which.

A dataset is a folder with one sub-folder per subject holding that subject's WAV/FLAC files (at
any depth below it). Trials come from a VoxCeleb-style list (``label enrol test`` per line, label
1 for the same subject and 0 for different ones, paths relative to the dataset folder) or, with no
list, from the folder: every same-subject pair and every different-subject pair, each a seeded sample
when there are more than its cap (``max_genuine``, ``max_impostors``); a sample is drawn without
listing every pair first, so memory follows the caps, not the square of the files. Each trial enrols
from one sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biometrics.errors import BiometricsError
from biometrics.voice.cohort import AUDIO_SUFFIXES

DEFAULT_MAX_IMPOSTORS = 100_000
# Same-subject pairs grow with the square of each subject's files: a whole LibriSpeech test set (~60-90 files
# a speaker, ~0.1 M pairs) stays exhaustive below this, and so does a set several times its size.
DEFAULT_MAX_GENUINE = 500_000
_HASH_CHUNK = 1 << 20
_ENUMERATE_PAIRS_UP_TO = 5_000_000  # above this many pairs, samples are drawn by rejection instead
_DECODE_CHUNK = 1 << 20


class DatasetError(BiometricsError):
    """The audit dataset or its trial list cannot be used; the message says why."""

    code = "audit_dataset_invalid"


@dataclass(frozen=True)
class Trials:
    """Trials over ``files`` (paths relative to ``root``); ``enrol``/``test`` index into ``files``."""

    root: Path
    files: tuple[str, ...]  # relative POSIX paths, sorted
    enrol: np.ndarray  # int64 [n_trials]
    test: np.ndarray  # int64 [n_trials]
    genuine: np.ndarray  # bool [n_trials]
    source: dict  # how the trials were made: list file and its hash, or pairs, cap, seed

    @property
    def n_genuine(self) -> int:
        return int(self.genuine.sum())

    @property
    def n_impostor(self) -> int:
        return int(len(self.genuine) - self.genuine.sum())

    def path(self, index: int) -> Path:
        return self.root / self.files[index]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_sha256(relative_paths: Sequence[str], content_sha256: Sequence[str]) -> str:
    """sha256 over the sorted relative paths, each followed by the sha256 of its content."""
    digest = hashlib.sha256()
    for rel, content in sorted(zip(relative_paths, content_sha256, strict=True)):
        digest.update(rel.encode("utf-8") + b"\0" + content.encode("ascii") + b"\n")
    return digest.hexdigest()


def subject_files(root: Path) -> dict[str, list[str]]:
    """Relative paths of each subject's audio files: one sub-folder of ``root`` per subject."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    subjects: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p.relative_to(root).as_posix()
            for p in folder.rglob("*")
            if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
        )
        if files:
            subjects[folder.name] = files
    if len(subjects) < 2:
        raise DatasetError(f"{root} needs at least two subject folders with WAV/FLAC files")
    if not any(len(files) >= 2 for files in subjects.values()):
        raise DatasetError(f"no subject in {root} has two files, so there is no genuine trial")
    return subjects


def _sample_impostor_pairs(
    subject: np.ndarray, n_wanted: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n_wanted`` distinct unordered different-subject pairs (i < j), drawn uniformly without replacement."""
    n = len(subject)
    if n * (n - 1) // 2 <= _ENUMERATE_PAIRS_UP_TO:
        a, b = np.triu_indices(n, 1)
        keep = np.flatnonzero(subject[a] != subject[b])
        pick = np.sort(rng.choice(keep, size=n_wanted, replace=False))
        return a[pick], b[pick]
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < n_wanted:
        a = rng.integers(0, n, size=2 * n_wanted)
        b = rng.integers(0, n, size=2 * n_wanted)
        keep = subject[a] != subject[b]
        lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
        codes = lo * n + hi
        # keep the first draw of each pair, in draw order, so the sample depends only on the seed
        _, first = np.unique(np.concatenate([chosen, codes]), return_index=True)
        chosen = np.concatenate([chosen, codes])[np.sort(first)]
    chosen = np.sort(chosen[:n_wanted])
    return chosen // n, chosen % n


def check_sampling(seed: int, **caps: int) -> None:
    """Refuses a cap under 1 or a negative seed (numpy's generators take none)."""
    for name, cap in caps.items():
        if cap < 1:
            raise DatasetError(f"{name} must be at least 1")
    if seed < 0:
        raise DatasetError("the seed must be a non-negative integer")


def _sample_codes(population: int, n_wanted: int, rng: np.random.Generator) -> np.ndarray:
    """``n_wanted`` distinct integers of ``range(population)``, sorted, drawn uniformly without replacement.

    Memory is O(``n_wanted``): the population is listed only when it is small or under twice the sample.
    """
    if population <= max(_ENUMERATE_PAIRS_UP_TO, 2 * n_wanted):
        return np.sort(rng.choice(population, size=n_wanted, replace=False)).astype(np.int64)
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < n_wanted:  # fewer than half are wanted: each round keeps most of its draws
        draws = rng.integers(0, population, size=2 * (n_wanted - len(chosen)), dtype=np.int64)
        # keep the first draw of each code, in draw order, so the sample depends only on the seed
        both = np.concatenate([chosen, draws])
        _, first = np.unique(both, return_index=True)
        chosen = both[np.sort(first)]
    return np.sort(chosen[:n_wanted])


def _pairs_before(row: np.ndarray, size: np.ndarray) -> np.ndarray:
    """How many pairs (a < b) of ``size`` items have a < ``row``."""
    return row * (2 * size - row - 1) // 2


def group_pairs(
    groups: Sequence[np.ndarray], max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs of items of the same group, the earlier one of its group first: every pair, or ``max_pairs`` of
    them drawn uniformly without replacement when there are more; and how many pairs there are.

    ``groups`` hold item indices. Pairs come out group by group, and within a group in the order
    (0, 1), (0, 2) ... (1, 2) ...; a sample keeps that order. Memory follows the pairs returned.
    """
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    counts = sizes * (sizes - 1) // 2
    available = int(counts.sum())
    if available <= max_pairs:
        local = [np.triu_indices(len(g), 1) for g in groups]
        first = [np.asarray(g, dtype=np.int64)[a] for g, (a, _) in zip(groups, local, strict=True)]
        second = [np.asarray(g, dtype=np.int64)[b] for g, (_, b) in zip(groups, local, strict=True)]
        empty = [np.empty(0, dtype=np.int64)]
        return np.concatenate(first or empty), np.concatenate(second or empty), available
    codes = _sample_codes(available, max_pairs, rng)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    members = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups])
    member_starts = np.concatenate([[0], np.cumsum(sizes)])
    first, second = np.empty(len(codes), dtype=np.int64), np.empty(len(codes), dtype=np.int64)
    for start in range(0, len(codes), _DECODE_CHUNK):  # in chunks: the arithmetic's arrays stay small
        chunk = codes[start : start + _DECODE_CHUNK]
        group = np.searchsorted(offsets, chunk, side="right") - 1  # groups without pairs are skipped
        rank, size = chunk - offsets[group], sizes[group]
        # the row a of pair number ``rank``: the largest a with _pairs_before(a) <= rank (float guess, then fixed)
        span = 2 * size - 1
        row = np.floor((span - np.sqrt(np.maximum(span.astype(np.float64) ** 2 - 8.0 * rank, 0.0))) / 2)
        row = np.clip(row.astype(np.int64), 0, size - 2)
        for _ in range(2):
            row = np.where(_pairs_before(row, size) > rank, row - 1, row)
            row = np.where((row < size - 2) & (_pairs_before(row + 1, size) <= rank), row + 1, row)
        column = row + 1 + rank - _pairs_before(row, size)
        first[start : start + len(chunk)] = members[member_starts[group] + row]
        second[start : start + len(chunk)] = members[member_starts[group] + column]
    return first, second, available


def _different_subject_pairs(subject: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every different-subject pair (i < j), block by block: memory follows those pairs, not all pairs."""
    order = np.argsort(subject, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(subject))])
    enrol, test = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for s in range(len(bounds) - 2):
        members, later = order[bounds[s] : bounds[s + 1]], order[bounds[s + 1] :]
        a, b = np.repeat(members, len(later)), np.tile(later, len(members))
        enrol.append(np.minimum(a, b))
        test.append(np.maximum(a, b))
    return np.concatenate(enrol), np.concatenate(test)


def trials_from_folders(
    root: Path,
    max_impostors: int = DEFAULT_MAX_IMPOSTORS,
    seed: int = 0,
    max_genuine: int = DEFAULT_MAX_GENUINE,
) -> Trials:
    """Every same-subject pair (or a seeded sample of ``max_genuine``), and every different-subject pair (or a
    seeded sample of ``max_impostors``).

    Files are sorted by relative path; in each pair the earlier file enrols and the later one tests.
    """
    check_sampling(seed, max_impostors=max_impostors, max_genuine=max_genuine)
    subjects = subject_files(root)
    files = [f for names in subjects.values() for f in names]
    order = np.argsort(files, kind="stable")
    files = [files[i] for i in order]
    subject = np.repeat(np.arange(len(subjects)), [len(v) for v in subjects.values()])[order]
    n = len(files)
    same = [np.flatnonzero(subject == s) for s in range(len(subjects))]
    # Its own stream, so that a genuine sample leaves the impostor sample of the same seed as it was.
    g_enrol, g_test, n_genuine_all = group_pairs(same, max_genuine, np.random.default_rng([1, seed]))
    n_impostor_all = n * (n - 1) // 2 - n_genuine_all
    impostors_sampled = n_impostor_all > max_impostors
    if impostors_sampled:
        i_enrol, i_test = _sample_impostor_pairs(subject, max_impostors, np.random.default_rng(seed))
    else:
        i_enrol, i_test = _different_subject_pairs(subject)
    enrol = np.concatenate([g_enrol, i_enrol]).astype(np.int64)
    test = np.concatenate([g_test, i_test]).astype(np.int64)
    pair_order = np.lexsort((test, enrol))
    enrol, test = enrol[pair_order], test[pair_order]
    return Trials(
        root=root,
        files=tuple(files),
        enrol=enrol,
        test=test,
        genuine=subject[enrol] == subject[test],
        source={
            "kind": "all-pairs",
            "subjects": len(subjects),
            "impostor_pairs_available": n_impostor_all,
            "impostors_sampled": impostors_sampled,
            "max_impostors": max_impostors,
            "genuine_pairs_available": n_genuine_all,
            "genuine_sampled": n_genuine_all > max_genuine,
            "max_genuine": max_genuine,
            "seed": seed,
        },
    )


def trials_from_list(root: Path, list_file: Path) -> Trials:
    """Trials from a ``label enrol test`` list; paths relative to ``root``, label 1 (same) or 0 (different)."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"trial list {list_file} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read trial list {list_file}: {exc}") from None
    rows: list[tuple[bool, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise DatasetError(f"{list_file}:{number}: expected 'label enrol test' with label 0 or 1")
        rows.append((fields[0] == "1", _relative(root, fields[1]), _relative(root, fields[2])))
    if not rows:
        raise DatasetError(f"trial list {list_file} holds no trials")
    files = sorted({p for _, e, t in rows for p in (e, t)})
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} files of the trial list are not in {root}, e.g. {missing[0]}")
    index = {f: i for i, f in enumerate(files)}
    genuine = np.array([g for g, _, _ in rows], dtype=bool)
    if genuine.all() or not genuine.any():
        raise DatasetError(f"trial list {list_file} needs both genuine (1) and impostor (0) trials")
    return Trials(
        root=root,
        files=tuple(files),
        enrol=np.array([index[e] for _, e, _ in rows], dtype=np.int64),
        test=np.array([index[t] for _, _, t in rows], dtype=np.int64),
        genuine=genuine,
        source={"kind": "list", "list_file": str(list_file), "list_sha256": file_sha256(list_file)},
    )


def _relative(root: Path, name: str) -> str:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(f"trial list paths must be relative to the dataset folder: {name}")
    return path.as_posix()


def load_trials(
    root: Path,
    list_file: Path | None = None,
    max_impostors: int = DEFAULT_MAX_IMPOSTORS,
    seed: int = 0,
    max_genuine: int = DEFAULT_MAX_GENUINE,
) -> Trials:
    if list_file is not None:
        return trials_from_list(root, list_file)
    return trials_from_folders(root, max_impostors, seed, max_genuine)
