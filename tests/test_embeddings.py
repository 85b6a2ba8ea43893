"""Embeddings, templates and scores from the real model on real speech."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from biometrics.errors import IncompatibleModel
from biometrics.scoring.scorer import Decision, Scorer, cosine_score
from biometrics.settings import CoreSettings
from biometrics.voice.audio import read_audio_file
from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.embedding import Embedding, VoiceEmbedder, load_voice_embedder
from biometrics.voice.templates import VoiceTemplate
from tests.conftest import FSDD, TEST_OTHER

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def mixed_lengths(shared_data) -> list[Waveform]:
    """Real utterances from about 1 s (spoken digits, 8 kHz) to 20 s."""
    files = sorted(TEST_OTHER.glob("*/*.flac"))
    long_and_short = sorted(files, key=lambda p: p.stat().st_size)
    chosen = [read_audio_file(p) for p in (long_and_short[0], long_and_short[len(files) // 2], long_and_short[-1])]
    digits = np.concatenate([read_audio_file(FSDD / f"{d}_jackson_1.wav").samples for d in (1, 2, 3)])
    chosen.append(Waveform(digits, 16_000, 8_000))
    cut = chosen[1]
    chosen.append(Waveform(cut.samples[: int(len(cut.samples) * 0.37)], 16_000, 16_000))
    return chosen


def test_embeddings_are_unit_length_192_dimensional_and_carry_the_model_fingerprint(embedder, clean_samples):
    vector = clean_samples[0].embedding.vector
    assert vector.shape == (192,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert clean_samples[0].embedding.model_fingerprint == embedder.fingerprint
    assert embedder.fingerprint.startswith("ecapa-voxceleb-")


def test_a_batch_of_mixed_lengths_gives_the_same_embeddings_as_one_at_a_time(embedder, mixed_lengths):
    durations = [w.duration_s for w in mixed_lengths]
    assert min(durations) < 2.0 < 10.0 < max(durations)
    one_batch = VoiceEmbedder(embedder.encoder, embedder.vad, batch_max_frames=10**6)
    batch = one_batch.analyse(mixed_lengths)
    for waveform, batched in zip(mixed_lengths, batch, strict=True):
        (alone,) = embedder.analyse([waveform])
        assert float(np.dot(alone.embedding.vector, batched.embedding.vector)) >= 0.9999


def test_concurrent_passes_give_the_embeddings_of_passes_one_after_another(embedder, mixed_lengths, monkeypatch):
    import itertools
    import threading

    import biometrics.torch_thread as torch_thread
    import biometrics.voice.model.ecapa as ecapa

    utterances = [w.samples for w in mixed_lengths]
    # 750-frame packs: the 20 s utterance goes alone, the others share packs; two passes at once.
    concurrent = VoiceEmbedder(embedder.encoder, embedder.vad, batch_max_frames=1500, concurrent_passes=2)
    one_by_one = VoiceEmbedder(embedder.encoder, embedder.vad, batch_max_frames=750, concurrent_passes=1)
    assert concurrent.concurrent_passes == 2  # the test machine has 2 cores or more
    passes_on = []
    real_pack = ecapa.pack
    both_running = threading.Barrier(2, timeout=60)  # the first two passes must be running at the same time
    calls = itertools.count(1)

    def spied_pack(*args, **kwargs):
        passes_on.append(threading.get_ident())
        if next(calls) <= 2:
            both_running.wait()
        return real_pack(*args, **kwargs)

    monkeypatch.setattr(ecapa, "pack", spied_pack)
    together = concurrent.embed_speech(utterances)
    assert len(passes_on) >= 3 and len(set(passes_on[:2])) == 2
    passes_on.clear()
    alone = one_by_one.embed_speech(utterances)
    assert len(set(passes_on)) == 1
    # With a torch call always waiting, every turn ends after its first two passes; the rest follow in later turns.
    monkeypatch.setattr(torch_thread, "_waiting_task_goes_first", lambda priority: True)
    turns = []
    real_turn = concurrent._embed_turn
    monkeypatch.setattr(concurrent, "_embed_turn", lambda *a: turns.append(real_turn(*a)) or turns[-1])
    in_turns = concurrent.embed_speech(utterances)
    assert len(turns) >= 2 and turns[:-1] == [2] * (len(turns) - 1)
    for vectors in (together, in_turns):
        for vector, reference in zip(vectors, alone, strict=True):
            assert float(np.dot(vector, reference)) >= 0.99999
    with pytest.raises(ValueError, match="concurrent_passes"):
        VoiceEmbedder(embedder.encoder, embedder.vad, concurrent_passes=0)


def test_packs_hold_every_utterance_once_within_their_frame_budget_widest_first(embedder):
    rng = np.random.default_rng(5)
    utterances = [np.zeros(int(rng.uniform(1, 9) * 16_000), np.float32) for _ in range(40)]
    utterances.append(np.zeros(16_000 * 20, np.float32))  # over the budget: goes alone
    packer = VoiceEmbedder(embedder.encoder, embedder.vad, batch_max_frames=2000, concurrent_passes=2)
    packs = packer.packs(utterances)
    assert sorted(i for pack in packs for i in pack) == list(range(len(utterances)))
    gap = embedder.encoder.pack_gap
    widths = [sum(len(utterances[i]) // 160 + 1 + gap for i in pack) - gap for pack in packs]
    assert all(width <= 1000 or len(pack) == 1 for pack, width in zip(packs, widths, strict=True))
    assert widths == sorted(widths, reverse=True) and packs[0] == [len(utterances) - 1]
    assert len(packs) < len(utterances) - 10  # short utterances share packs


def test_our_encoder_gives_speechbrains_own_embeddings(embedder, fp32_embedder, mixed_lengths):
    """The faster CPU kernels and exact batching change nothing against SpeechBrain's EncoderClassifier.

    In fp32 to float rounding; in bf16 (BIOIDENT_PRECISION=auto on a CPU with native bf16) to the
    cosine that keeps templates interchangeable.
    """
    import torch

    from biometrics.voice.model.ecapa import build_speechbrain_classifier

    plain = build_speechbrain_classifier(embedder.encoder.weights)
    utterances = [w.samples for w in mixed_lengths]
    with torch.inference_mode():
        expected = [
            torch.nn.functional.normalize(plain.encode_batch(torch.from_numpy(u)[None], normalize=True)[0, 0], dim=-1)
            for u in utterances
        ]
    for ours, min_cosine in ((fp32_embedder, 0.99999), (embedder, 0.99999 if embedder.precision == "fp32" else 0.9999)):
        got = ours.encoder.embed(utterances)
        for vector, reference in zip(got, expected, strict=True):
            assert float(np.dot(vector, reference.numpy())) >= min_cosine
        assert ours.encoder.kernel_changes["pooling"] == 1


def test_the_malloc_setting_can_be_left_alone(embedder, monkeypatch):
    """BIOIDENT_MALLOC_KEEP_FREED=0: an application embedding the core keeps its own malloc settings."""
    from biometrics.voice.model import ecapa

    assert embedder.encoder.kernel_changes["malloc_keeps_freed_memory"] == 1
    monkeypatch.setattr(ecapa, "keep_freed_memory", lambda: pytest.fail("mallopt was called"))
    monkeypatch.setenv("BIOIDENT_MALLOC_KEEP_FREED", "0")
    encoder = load_voice_embedder(CoreSettings(_env_file=None)).encoder
    assert encoder.kernel_changes["malloc_keeps_freed_memory"] == 0
    assert encoder.kernel_changes["gemm_convolutions"] == embedder.encoder.kernel_changes["gemm_convolutions"]


def test_batch_rows_a_frame_or_two_apart_are_exact(embedder, mixed_lengths):
    features = embedder.encoder.features(mixed_lengths[1].samples[: 16_000 * 3])
    rows = [features, features[:-1], features[:-3], features[:-1]]
    batched = embedder.encoder.embed_features(rows)
    for row, vector in zip(rows, batched, strict=True):
        assert float(np.dot(embedder.encoder.embed_features([row])[0], vector)) >= 0.9999


def test_embeddings_of_speech_only_ignore_added_silence(embedder, mixed_lengths):
    speech = mixed_lengths[1]
    padded = Waveform(
        np.concatenate([np.zeros(16_000 * 2, np.float32), speech.samples, np.zeros(16_000 * 3, np.float32)]),
        16_000,
        16_000,
    )
    a, b = embedder.analyse([speech, padded])
    assert float(np.dot(a.embedding.vector, b.embedding.vector)) > 0.99


def test_template_is_the_renormalised_mean_and_absorbs_more_samples(clean_samples):
    first, second, third = (s.embedding for s in clean_samples[:3])
    template = VoiceTemplate.from_embeddings([first, second])
    grown = template.absorb([third])
    expected = (first.vector + second.vector + third.vector) / 3
    np.testing.assert_allclose(grown.vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert grown.count == 3
    restored = VoiceTemplate.from_bytes(grown.to_bytes())
    np.testing.assert_array_equal(restored.vector, grown.vector)
    assert restored.model_fingerprint == grown.model_fingerprint


def test_comparing_across_model_fingerprints_is_refused(clean_samples):
    ours = clean_samples[0].embedding
    other = Embedding(clean_samples[1].embedding.vector, "ecapa-voxceleb-some-other-model")
    with pytest.raises(IncompatibleModel):
        cosine_score(ours, other)
    with pytest.raises(IncompatibleModel):
        VoiceTemplate.from_embeddings([ours]).absorb([other])


def test_same_speaker_is_accepted_and_another_rejected(test_other_files, clean_samples, clean_cohort):
    by_file = dict(zip(test_other_files, clean_samples, strict=True))
    speaker_a = [by_file[p].embedding for p in test_other_files if p.parent.name == "1688"]
    speaker_b = [by_file[p].embedding for p in test_other_files if p.parent.name == "2033"]
    template = VoiceTemplate.from_embeddings(speaker_a[:3]).as_embedding()
    scorer = Scorer(clean_cohort)
    assert scorer.verdict(template, speaker_a[5], []).decision is Decision.ACCEPT
    assert scorer.verdict(template, speaker_b[0], []).decision is Decision.REJECT


def test_one_to_many_scores_equal_the_scores_of_each_pair(clean_samples, clean_cohort):
    templates = [s.embedding for s in clean_samples[:12]]
    probe = clean_samples[20].embedding
    for scorer in (Scorer(clean_cohort), Scorer()):
        expected = [scorer.score(t, probe) for t in templates]
        np.testing.assert_allclose(scorer.scores_against(templates, probe), expected, rtol=1e-5, atol=1e-5)
        assert len(scorer.scores_against([], probe)) == 0
    other = Embedding(templates[0].vector, "ecapa-voxceleb-some-other-model")
    with pytest.raises(IncompatibleModel):
        Scorer().scores_against([templates[1], other], probe)


def test_quality_reasons_always_reject(clean_samples):
    from biometrics.voice.quality.gates import QualityReason, ReasonCode

    a, b = clean_samples[0].embedding, clean_samples[1].embedding
    verdict = Scorer().verdict(a, a, [QualityReason(ReasonCode.TOO_SHORT, 1.0, 3.0)])
    assert verdict.decision is Decision.REJECT and verdict.score == pytest.approx(1.0)
    assert Scorer().verdict(None, b, []).score is None


def test_cohort_file_round_trips_and_records_its_source(clean_cohort, tmp_path):
    from biometrics.voice.cohort import Cohort

    path = tmp_path / "cohort.npz"
    clean_cohort.save(path)
    loaded = Cohort.load(path)
    np.testing.assert_array_equal(loaded.embeddings, clean_cohort.embeddings)
    assert loaded.model_fingerprint == clean_cohort.model_fingerprint and loaded.channel == "clean"
    assert loaded.meta["source_files"] == 251 and len(loaded.meta["source_sha256"]) == 64
    assert dataclasses.replace(loaded, meta={}).embeddings.shape[1] == 192
