"""The in-memory 1:N gallery ranks exactly as scoring every template one by one does, through additions,
replacements and removals (real speaker embeddings: the packaged LibriSpeech cohorts)."""

from __future__ import annotations

import numpy as np
import pytest

from biometrics.scoring.gallery import Gallery
from biometrics.scoring.scorer import cosine_score
from biometrics.voice.cohort import Cohort
from biometrics.voice.default_cohorts import COHORTS_DIR
from biometrics.voice.embedding import Embedding


@pytest.fixture(scope="module")
def speakers() -> tuple[np.ndarray, np.ndarray, str]:
    """Real embeddings: 251 speakers heard wideband (the gallery) and the same speakers over the phone (probes)."""
    wideband, telephone = Cohort.load(COHORTS_DIR / "wideband.npz"), Cohort.load(COHORTS_DIR / "telephone.npz")
    return wideband.embeddings, telephone.embeddings, wideband.model_fingerprint


def brute_force(enrolled: dict[str, np.ndarray], probe: np.ndarray, fingerprint: str) -> list[tuple[str, float]]:
    scores = [
        (key, cosine_score(Embedding(v, fingerprint), Embedding(probe, fingerprint))) for key, v in enrolled.items()
    ]
    return sorted(scores, key=lambda kv: -kv[1])


def assert_same_ranking(gallery: Gallery, enrolled: dict, probe: np.ndarray, fingerprint: str, k: int) -> None:
    expected = brute_force(enrolled, probe, fingerprint)[:k]
    got = gallery.top_k(probe, k)
    assert [m.key for m in got] == [key for key, _ in expected]
    assert np.allclose([m.score for m in got], [s for _, s in expected], atol=1e-5)


def test_gallery_ranks_as_brute_force_through_adds_replacements_and_removals(speakers):
    wideband, telephone, fingerprint = speakers
    gallery: Gallery[str] = Gallery(wideband.shape[1], capacity=8)  # grows as it goes
    enrolled = {f"spk{i}": wideband[i] for i in range(200)}
    gallery.add_many(list(enrolled), np.stack(list(enrolled.values())))
    for i in range(200, 230):
        enrolled[f"spk{i}"] = wideband[i]
        gallery.add(f"spk{i}", wideband[i])
    for probe in telephone[:40]:
        assert_same_ranking(gallery, enrolled, probe, fingerprint, k=10)

    for i in range(0, 60, 3):  # withdrawals: the row moved into the hole must keep its key
        del enrolled[f"spk{i}"]
        assert gallery.remove(f"spk{i}")
    assert not gallery.remove("spk0") and "spk0" not in gallery
    enrolled["spk5"] = wideband[240]  # a re-enrolment replaces the vector, in place
    gallery.add("spk5", wideband[240])
    assert len(gallery) == len(enrolled)
    for probe in telephone[:60]:
        assert_same_ranking(gallery, enrolled, probe, fingerprint, k=25)
    assert_same_ranking(gallery, enrolled, telephone[7], fingerprint, k=len(enrolled) + 5)  # k past the end


def test_the_same_speaker_over_the_phone_ranks_first_for_most_speakers(speakers):
    wideband, telephone, _ = speakers
    gallery: Gallery[int] = Gallery(wideband.shape[1])
    gallery.add_many(list(range(len(wideband))), wideband)
    rank1 = np.mean([gallery.top_k(probe, 1)[0].key == i for i, probe in enumerate(telephone)])
    assert rank1 > 0.9  # the same utterance through a simulated phone line


def test_min_score_and_bad_vectors(speakers):
    wideband, telephone, _ = speakers
    gallery: Gallery[int] = Gallery(wideband.shape[1])
    assert gallery.top_k(telephone[0], 3) == []
    gallery.add_many([0, 1, 2], wideband[:3])
    assert [m.key for m in gallery.top_k(telephone[1], 3, min_score=0.99)] == []
    assert gallery.top_k(telephone[1], 3, min_score=-1.0)[0].key == 1
    with pytest.raises(ValueError):
        gallery.add(3, np.zeros(wideband.shape[1]))
    with pytest.raises(ValueError):
        gallery.add(3, np.full(wideband.shape[1], np.nan))
    with pytest.raises(ValueError):
        gallery.add_many([4, 4], wideband[:2])
    with pytest.raises(ValueError):
        gallery.add_many([5], wideband[:2])
    assert len(gallery) == 3 and gallery.keys() == [0, 1, 2]
