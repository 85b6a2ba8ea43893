"""Accuracy on real read speech: 10 LibriSpeech test-other speakers x 10 utterances, all pairs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from biometrics.evaluation.metrics import equal_error_rate
from biometrics.scoring.scorer import Scorer
from tests.conftest import speaker_of

pytestmark = pytest.mark.model


def _all_pair_scores(files, samples, scorer):
    genuine, impostor = [], []
    for (fa, sa), (fb, sb) in itertools.combinations(zip(files, samples, strict=True), 2):
        score = scorer.score(sa.embedding, sb.embedding)
        (genuine if speaker_of(fa) == speaker_of(fb) else impostor).append(score)
    return np.array(genuine), np.array(impostor)


def test_every_test_utterance_has_enough_speech_to_embed(clean_samples, telephone_samples):
    assert all(s.embedding is not None for s in clean_samples)
    assert all(s.embedding is not None for s in telephone_samples)


def test_clean_speech_eer_is_at_most_one_percent_with_cosine(test_other_files, clean_samples):
    genuine, impostor = _all_pair_scores(test_other_files, clean_samples, Scorer())
    assert len(genuine) == 450 and len(impostor) == 4500
    assert equal_error_rate(genuine, impostor) <= 0.01


def test_clean_speech_eer_is_at_most_one_percent_with_as_norm(test_other_files, clean_samples, clean_cohort):
    genuine, impostor = _all_pair_scores(test_other_files, clean_samples, Scorer(clean_cohort))
    assert equal_error_rate(genuine, impostor) <= 0.01


def test_telephone_channel_eer_is_at_most_three_percent(test_other_files, telephone_samples, telephone_cohort):
    for scorer in (Scorer(), Scorer(telephone_cohort)):
        genuine, impostor = _all_pair_scores(test_other_files, telephone_samples, scorer)
        assert equal_error_rate(genuine, impostor) <= 0.03, scorer.method


def test_as_norm_puts_impostor_scores_near_standard_normal(test_other_files, clean_samples, clean_cohort):
    _, impostor = _all_pair_scores(test_other_files, clean_samples, Scorer(clean_cohort))
    assert abs(float(np.mean(impostor))) < 1.0
    assert 0.5 < float(np.std(impostor)) < 2.0
