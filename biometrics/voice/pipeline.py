"""The one voice pipeline every caller shares (CLI, service, audits, benchmarks):
file or bytes -> waveform -> optional channel simulation -> quality measures + embedding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from biometrics.errors import AudioError, CohortError
from biometrics.settings import CoreSettings
from biometrics.voice.audio import RawCodec, read_audio_file, simulate_telephone_channel
from biometrics.voice.audio.waveform import AudioChannel, Waveform
from biometrics.voice.cohort import Cohort, ProgressFn, audio_files, new_cohort_meta
from biometrics.voice.embedding import AnalysedSample, VoiceEmbedder
from biometrics.voice.templates import Capture

COHORT_BATCH_FILES = 16


class Channel(StrEnum):
    CLEAN = "clean"
    TELEPHONE = "telephone"  # 8 kHz G.711 mu-law, as an IVR hears the caller


def through_channel(waveform: Waveform, channel: Channel) -> Waveform:
    if channel is Channel.TELEPHONE:
        return simulate_telephone_channel(waveform, RawCodec.MULAW)
    return waveform


def load_waveform(
    path: Path,
    settings: CoreSettings,
    channel: Channel = Channel.CLEAN,
    raw_codec: RawCodec | None = None,
    declared_rate: int | None = None,
) -> Waveform:
    waveform = read_audio_file(
        path, raw_codec=raw_codec, declared_rate=declared_rate, max_seconds=settings.max_audio_seconds
    )
    return through_channel(waveform, channel)


def analyse_files(
    embedder: VoiceEmbedder, paths: Sequence[Path], settings: CoreSettings, channel: Channel = Channel.CLEAN
) -> list[AnalysedSample]:
    return embedder.analyse([load_waveform(p, settings, channel) for p in paths])


@dataclass(frozen=True)
class EnrolmentSample:
    """A sample given to enrol, analysed as it arrived, and the channel it came through."""

    sample: AnalysedSample
    channel: AudioChannel

    def capture(self) -> Capture:
        if self.sample.embedding is None:
            raise ValueError("a sample without an embedding cannot be enrolled")
        return Capture(self.sample.embedding, self.channel)


def analyse_for_enrolment(embedder: VoiceEmbedder, waveforms: Sequence[Waveform]) -> list[EnrolmentSample]:
    return [EnrolmentSample(a, w.channel) for a, w in zip(embedder.analyse(waveforms), waveforms, strict=True)]


def build_cohort(
    embedder: VoiceEmbedder,
    folder: Path,
    settings: CoreSettings,
    channel: Channel = Channel.CLEAN,
    max_speech_s: float | None = None,
    progress: ProgressFn | None = None,
) -> Cohort:
    """Embeds every WAV/FLAC file under ``folder`` (one impostor each); unusable files are skipped and listed."""
    files = audio_files(folder)
    vectors, skipped = [], []
    for start in range(0, len(files), COHORT_BATCH_FILES):
        chunk = files[start : start + COHORT_BATCH_FILES]
        waveforms, names = [], []
        for path in chunk:
            try:
                waveforms.append(load_waveform(path, settings, channel))
                names.append(path.name)
            except AudioError:
                skipped.append(path.name)
        for name, sample in zip(names, embedder.analyse(waveforms, max_speech_s=max_speech_s), strict=True):
            if sample.embedding is None:
                skipped.append(name)
            else:
                vectors.append(sample.embedding.vector)
        if progress is not None:
            progress(min(start + COHORT_BATCH_FILES, len(files)), len(files))
    if len(vectors) < 2:
        raise CohortError(f"fewer than two usable speech files in {folder}")
    return Cohort(
        embeddings=np.stack(vectors),
        model_fingerprint=embedder.fingerprint,
        channel=str(channel),
        meta=new_cohort_meta(folder, files, skipped, max_speech_s),
    )
