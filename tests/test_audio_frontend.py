"""The audio front end on real speech: FSDD (8 kHz WAV) and LibriSpeech test-other (16 kHz FLAC).

Variants (other codecs, rates, damage) are made in memory with soundfile; nothing is copied
into the repository.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from biometrics.errors import (
    AudioTooLong,
    EmptyAudio,
    NonFiniteSamples,
    NotAudio,
    SampleRateMismatch,
    TruncatedAudio,
    UnsupportedCodec,
    UnsupportedSampleRate,
)
from biometrics.voice.audio import (
    MODEL_SAMPLE_RATE,
    RawCodec,
    Waveform,
    decode_audio,
    encode_raw,
    read_audio_file,
    resample,
    simulate_telephone_channel,
)
from tests.conftest import FSDD, TEST_OTHER

# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def george_path(shared_data: Path) -> Path:
    return FSDD / "0_george_0.wav"


@pytest.fixture(scope="module")
def george(george_path: Path) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(george_path, dtype="float32")
    assert rate == 8000
    return samples, rate


@pytest.fixture(scope="module")
def flac_path(shared_data: Path) -> Path:
    return sorted(TEST_OTHER.glob("*/*.flac"))[0]


@pytest.fixture(scope="module")
def flac_bytes(flac_path: Path) -> bytes:
    return flac_path.read_bytes()


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def assert_model_ready(waveform: Waveform, source_rate: int, source_frames: int) -> None:
    assert waveform.sample_rate == MODEL_SAMPLE_RATE
    assert waveform.source_rate == source_rate
    assert waveform.samples.dtype == np.float32
    assert waveform.samples.ndim == 1
    one_sample = 1 / min(source_rate, MODEL_SAMPLE_RATE)
    assert waveform.duration_s == pytest.approx(source_frames / source_rate, abs=one_sample)


def flac_metadata_end(data: bytes) -> int:
    pos = 4
    while True:
        header = data[pos]
        pos += 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
        if header & 0x80:
            return pos


# --- decoding what customers send ----------------------------------------------------------


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"])
def test_wav_in_every_accepted_codec_decodes_to_16k_mono(george: tuple[np.ndarray, int], subtype: str) -> None:
    samples, rate = george
    waveform = decode_audio(encode(samples, rate, "WAV", subtype))
    assert_model_ready(waveform, 8000, len(samples))
    assert correlation(waveform.samples, resample(samples, 8000, 16000)) > 0.99


def test_telephone_wav_from_disk_is_read_and_upsampled(george_path: Path, george: tuple[np.ndarray, int]) -> None:
    waveform = read_audio_file(george_path)
    assert_model_ready(waveform, 8000, len(george[0]))


def test_librispeech_flac_at_16k_is_passed_through_unchanged(flac_path: Path, flac_bytes: bytes) -> None:
    expected, rate = sf.read(flac_path, dtype="float32")
    waveform = decode_audio(flac_bytes, declared_rate=16000)
    assert_model_ready(waveform, 16000, len(expected))
    np.testing.assert_array_equal(waveform.samples, expected)


@pytest.mark.parametrize("subtype", ["PCM_S8", "PCM_16", "PCM_24"])
def test_flac_in_every_accepted_depth_decodes(george: tuple[np.ndarray, int], subtype: str) -> None:
    samples, rate = george
    waveform = decode_audio(encode(samples, rate, "FLAC", subtype))
    assert_model_ready(waveform, 8000, len(samples))
    assert correlation(waveform.samples, resample(samples, 8000, 16000)) > 0.99


def test_wav_extensible_at_48k_is_downsampled(george: tuple[np.ndarray, int]) -> None:
    samples = resample(george[0], 8000, 48000)
    waveform = decode_audio(encode(samples, 48000, "WAVEX", "PCM_24"))
    assert_model_ready(waveform, 48000, len(samples))
    assert correlation(waveform.samples, resample(george[0], 8000, 16000)) > 0.99


def test_cd_quality_44k1_wav_is_downsampled(george: tuple[np.ndarray, int]) -> None:
    samples = resample(george[0], 8000, 44100)
    waveform = decode_audio(encode(samples, 44100))
    assert_model_ready(waveform, 44100, len(samples))


def test_stereo_is_mixed_to_mono(george: tuple[np.ndarray, int]) -> None:
    samples, rate = george
    stereo = np.stack([samples, 0.5 * samples], axis=1)
    waveform = decode_audio(encode(stereo, rate, "WAV", "FLOAT"))
    assert_model_ready(waveform, 8000, len(samples))
    expected = resample(0.75 * samples, 8000, 16000)
    np.testing.assert_allclose(waveform.samples, expected, atol=1e-5)


@pytest.mark.parametrize("codec", list(RawCodec))
def test_raw_telephone_audio_round_trips(george: tuple[np.ndarray, int], codec: RawCodec) -> None:
    samples, rate = george
    data = encode_raw(samples, rate, codec)
    assert len(data) == len(samples) * (2 if codec is RawCodec.PCM16 else 1)
    waveform = decode_audio(data, raw_codec=codec, declared_rate=8000)
    assert_model_ready(waveform, 8000, len(samples))
    assert correlation(waveform.samples, resample(samples, 8000, 16000)) > 0.99


def test_raw_pcm16_at_16k_is_accepted(flac_path: Path) -> None:
    samples, _ = sf.read(flac_path, dtype="float32")
    waveform = decode_audio(encode_raw(samples, 16000, RawCodec.PCM16), raw_codec="pcm16", declared_rate=16000)
    assert_model_ready(waveform, 16000, len(samples))
    assert correlation(waveform.samples, samples) > 0.999


def test_raw_codec_may_be_named_by_its_string(george: tuple[np.ndarray, int]) -> None:
    data = encode_raw(george[0], 8000, RawCodec.ALAW)
    assert decode_audio(data, raw_codec="alaw", declared_rate=8000).source_rate == 8000


# --- refusing what cannot be used ----------------------------------------------------------


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(EmptyAudio):
        decode_audio(b"")
    with pytest.raises(EmptyAudio):
        decode_audio(b"", raw_codec=RawCodec.MULAW, declared_rate=8000)


def test_wav_header_without_frames_is_empty(george: tuple[np.ndarray, int]) -> None:
    with pytest.raises(EmptyAudio, match="no audio frames"):
        decode_audio(encode(george[0][:0], 8000))


def without_total_samples(flac: bytes) -> bytes:
    """The FLAC as a streaming encoder writes it: STREAMINFO's total samples 0, meaning unknown."""
    data = bytearray(flac)
    data[21] &= 0xF0  # total samples: low 4 bits of byte 21 and bytes 22..25
    data[22:26] = bytes(4)
    return bytes(data)


def test_flac_header_without_frames_is_empty(flac_bytes: bytes) -> None:
    # A FLAC encoder given no input writes STREAMINFO with total samples 0 and no frames.
    streaminfo = bytearray(without_total_samples(flac_bytes[:42]))
    streaminfo[4] |= 0x80  # last metadata block
    with pytest.raises(EmptyAudio):
        decode_audio(bytes(streaminfo))


def test_streamed_flac_of_unknown_length_decodes_all_but_its_last_moment(flac_path: Path, flac_bytes: bytes) -> None:
    # libsndfile fails on the read that reaches the end of such a stream, losing that read's frames.
    expected, _ = sf.read(flac_path, dtype="float32")
    waveform = decode_audio(without_total_samples(flac_bytes))
    assert len(expected) - 0.5 * 16000 <= len(waveform.samples) <= len(expected)
    np.testing.assert_array_equal(waveform.samples, expected[: len(waveform.samples)])


def test_streamed_flac_cut_before_its_first_frame_is_truncated(flac_bytes: bytes) -> None:
    with pytest.raises(TruncatedAudio):
        decode_audio(without_total_samples(flac_bytes[: flac_metadata_end(flac_bytes) + 100]))


def test_streamed_flac_longer_than_the_limit_is_refused_while_reading(flac_bytes: bytes) -> None:
    with pytest.raises(AudioTooLong, match="5 s"):
        decode_audio(without_total_samples(flac_bytes), max_seconds=5)


@pytest.mark.parametrize(
    "data",
    [
        b"Hello, this is a plain text upload and certainly not a recording.\n" * 20,
        b'{"customer": "1234", "audio": null}',
        np.random.default_rng(7).bytes(4096),
        b"\x00" * 1000,
    ],
    ids=["text", "json", "random", "zeros"],
)
def test_bytes_that_are_not_audio_are_refused(data: bytes) -> None:
    with pytest.raises(NotAudio):
        decode_audio(data)


@pytest.mark.parametrize("length", [4, 11, 20, 40])
def test_truncated_wav_header_is_refused(george_path: Path, length: int) -> None:
    with pytest.raises(TruncatedAudio, match="WAV header"):
        decode_audio(george_path.read_bytes()[:length])


@pytest.mark.parametrize("length", [8, 20, 41])
def test_flac_cut_inside_its_streaminfo_is_refused(flac_bytes: bytes, length: int) -> None:
    with pytest.raises(TruncatedAudio, match="FLAC header"):
        decode_audio(flac_bytes[:length])


def test_flac_cut_right_after_its_header_is_truncated(flac_bytes: bytes) -> None:
    with pytest.raises(TruncatedAudio):
        decode_audio(flac_bytes[: flac_metadata_end(flac_bytes)])


def test_flac_cut_in_the_middle_of_its_audio_is_truncated(flac_bytes: bytes) -> None:
    with pytest.raises(TruncatedAudio, match="truncated or corrupt"):
        decode_audio(flac_bytes[: flac_metadata_end(flac_bytes) + 100])


def _unsupported_variants() -> list[tuple[str, str]]:
    wanted = [
        ("WAV", "IMA_ADPCM"),
        ("WAV", "MS_ADPCM"),
        ("WAV", "GSM610"),
        ("OGG", "VORBIS"),
        ("AIFF", "PCM_16"),
    ]
    wanted.append(("MP3", "MPEG_LAYER_III"))
    return [(fmt, sub) for fmt, sub in wanted if sub in sf.available_subtypes(fmt)]


@pytest.mark.parametrize(("fmt", "subtype"), _unsupported_variants())
def test_audio_in_an_unsupported_codec_is_refused(george: tuple[np.ndarray, int], fmt: str, subtype: str) -> None:
    samples = resample(george[0], 8000, 16000)
    with pytest.raises(UnsupportedCodec) as caught:
        decode_audio(encode(samples, 16000, fmt, subtype))
    assert fmt in caught.value.message and subtype in caught.value.message


def test_unknown_raw_codec_is_refused() -> None:
    with pytest.raises(UnsupportedCodec):
        decode_audio(b"\x00\x01", raw_codec="opus", declared_rate=8000)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_samples_in_a_float_wav_are_refused(george: tuple[np.ndarray, int], bad: float) -> None:
    samples = george[0].copy()
    samples[len(samples) // 2] = bad
    with pytest.raises(NonFiniteSamples):
        decode_audio(encode(samples, 8000, "WAV", "FLOAT"))


def test_declared_rate_that_contradicts_the_header_is_refused(george_path: Path) -> None:
    with pytest.raises(SampleRateMismatch) as caught:
        decode_audio(george_path.read_bytes(), declared_rate=16000)
    assert "16000" in caught.value.message and "8000" in caught.value.message


@pytest.mark.parametrize("rate", [4000, 7999, 200_000])
def test_sample_rate_outside_8k_to_192k_is_refused(rate: int) -> None:
    tone = 0.1 * np.sin(np.arange(rate // 10) * 0.3)
    with pytest.raises(UnsupportedSampleRate, match=str(rate)):
        decode_audio(encode(tone, rate))


def test_odd_rate_that_would_need_a_huge_resampling_kernel_is_refused() -> None:
    # 8001 and 16000 Hz are coprime: torchaudio would build a 16000 x 8015 kernel (~2 GB on the way).
    tone = 0.1 * np.sin(np.arange(800) * 0.3)
    with pytest.raises(UnsupportedSampleRate, match="8001"):
        decode_audio(encode(tone, 8001))


def test_audio_longer_than_the_limit_is_refused(flac_bytes: bytes) -> None:
    with pytest.raises(AudioTooLong) as caught:
        decode_audio(flac_bytes, max_seconds=5)
    assert "15.0 s" in caught.value.message and "5 s" in caught.value.message


def test_too_long_audio_is_refused_from_its_header_without_decoding(flac_bytes: bytes) -> None:
    # Only the header is present: had the samples been decoded, this would be TruncatedAudio.
    with pytest.raises(AudioTooLong):
        decode_audio(flac_bytes[: flac_metadata_end(flac_bytes)], max_seconds=5)


def test_too_long_raw_audio_is_refused(george: tuple[np.ndarray, int]) -> None:
    data = encode_raw(george[0], 8000, RawCodec.MULAW)
    with pytest.raises(AudioTooLong):
        decode_audio(data, raw_codec=RawCodec.MULAW, declared_rate=8000, max_seconds=0.1)


def test_raw_audio_without_a_declared_rate_is_refused() -> None:
    with pytest.raises(UnsupportedSampleRate, match="declared"):
        decode_audio(b"\xff" * 800, raw_codec=RawCodec.MULAW)


def test_raw_pcm16_with_an_odd_byte_count_is_truncated(george: tuple[np.ndarray, int]) -> None:
    data = encode_raw(george[0], 8000, RawCodec.PCM16)
    with pytest.raises(TruncatedAudio):
        decode_audio(data[:-1], raw_codec=RawCodec.PCM16, declared_rate=8000)


@pytest.mark.parametrize("codec", [RawCodec.MULAW, RawCodec.ALAW])
def test_g711_declared_at_16k_is_refused(george: tuple[np.ndarray, int], codec: RawCodec) -> None:
    data = encode_raw(george[0], 8000, codec)
    with pytest.raises(UnsupportedSampleRate, match="16000"):
        decode_audio(data, raw_codec=codec, declared_rate=16000)


def test_raw_pcm16_at_an_unusual_rate_is_refused(george: tuple[np.ndarray, int]) -> None:
    data = encode_raw(george[0], 8000, RawCodec.PCM16)
    with pytest.raises(UnsupportedSampleRate):
        decode_audio(data, raw_codec=RawCodec.PCM16, declared_rate=11025)


# --- clipping ------------------------------------------------------------------------------


def test_normal_speech_shows_no_clipping(george_path: Path, flac_bytes: bytes) -> None:
    assert read_audio_file(george_path).clipping_ratio < 0.001
    assert decode_audio(flac_bytes).clipping_ratio < 0.001


def _clipped_speech(samples: np.ndarray) -> np.ndarray:
    return np.clip(samples / np.abs(samples).max() * 10.0, -1.0, 1.0)


def test_speech_amplified_ten_times_shows_heavy_clipping(flac_path: Path) -> None:
    samples, rate = sf.read(flac_path, dtype="float32")
    waveform = decode_audio(encode(_clipped_speech(samples), rate))
    assert waveform.clipping_ratio > 0.05


@pytest.mark.parametrize("codec", [RawCodec.MULAW, RawCodec.ALAW])
def test_clipped_g711_telephone_audio_is_detected(george: tuple[np.ndarray, int], codec: RawCodec) -> None:
    clipped = _clipped_speech(george[0])
    data = encode_raw(clipped, 8000, codec)
    waveform = decode_audio(data, raw_codec=codec, declared_rate=8000)
    expected = np.mean(np.abs(clipped) >= 0.99)
    assert waveform.clipping_ratio > 0.05
    assert waveform.clipping_ratio == pytest.approx(expected, abs=0.02)


def test_clipping_in_one_stereo_channel_is_not_diluted_by_the_other(george: tuple[np.ndarray, int]) -> None:
    samples = george[0]
    clipped = _clipped_speech(samples)
    mono_ratio = decode_audio(encode(clipped, 8000)).clipping_ratio
    stereo = np.stack([clipped, 0.1 * samples], axis=1)
    assert decode_audio(encode(stereo, 8000)).clipping_ratio == pytest.approx(mono_ratio)


# --- telephone channel ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", [RawCodec.MULAW, RawCodec.ALAW])
def test_simulated_telephone_channel_keeps_duration_and_reports_8k(flac_bytes: bytes, codec: RawCodec) -> None:
    wideband = decode_audio(flac_bytes)
    phone = simulate_telephone_channel(wideband, codec)
    assert phone.sample_rate == MODEL_SAMPLE_RATE
    assert phone.source_rate == 8000
    assert phone.samples.dtype == np.float32
    assert abs(phone.duration_s - wideband.duration_s) <= 0.010
    narrowband = resample(resample(wideband.samples, 16000, 8000), 8000, 16000)
    assert correlation(phone.samples, narrowband) > 0.98


def test_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_audio_file(tmp_path / "missing.wav")
