"""Safe on the telephone out of the box: every input is classed by channel, each pair of channels
(enrolment x probe) has its own operating point set by a target false-match rate, and templates keep
a mean per channel."""

from __future__ import annotations

import io
import json
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf

from biometrics.errors import CohortError, IncompatibleModel
from biometrics.scoring.operating_points import ChannelScoring, cohort_impostor_scores, threshold_at_fmr
from biometrics.settings import CoreSettings
from biometrics.voice import default_cohorts
from biometrics.voice.audio import AudioChannel, RawCodec, decode_audio, encode_raw, read_audio_file, resample
from biometrics.voice.audio.telephone import simulate_telephone_channel
from biometrics.voice.templates import VoiceTemplate
from biometrics.voice.verification import VoiceVerifier
from tests.conftest import TEST_OTHER
from tests.voice_helpers import ENROL, GENUINE, IMPOSTOR, SPEAKER, _consent, _enrol, _verify

SPEECH = TEST_OTHER / SPEAKER / GENUINE


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_audio_file(SPEECH).samples[: 16_000 * 3]


def test_every_input_kind_is_classed_by_what_the_front_end_knows(speech, shared_data):
    narrow = resample(speech, 16_000, 8_000)
    kinds = {
        "WAV 16 kHz": decode_audio(_wav(speech, 16_000)),
        "FLAC 16 kHz": read_audio_file(SPEECH),
        "WAV 8 kHz": decode_audio(_wav(narrow, 8_000)),
        "WAV mu-law 16 kHz": decode_audio(_wav(speech, 16_000, "ULAW")),
        "raw mu-law": decode_audio(encode_raw(narrow, 8_000, RawCodec.MULAW), raw_codec="mulaw", declared_rate=8000),
        "raw A-law": decode_audio(encode_raw(narrow, 8_000, RawCodec.ALAW), raw_codec="alaw", declared_rate=8000),
        "raw PCM16 8 kHz": decode_audio(
            encode_raw(narrow, 8_000, RawCodec.PCM16), raw_codec="pcm16", declared_rate=8000
        ),
        "raw PCM16 16 kHz": decode_audio(
            encode_raw(speech, 16_000, RawCodec.PCM16), raw_codec="pcm16", declared_rate=16000
        ),
    }
    channels = {kind: str(waveform.channel) for kind, waveform in kinds.items()}
    assert channels == {
        "WAV 16 kHz": "wideband",
        "FLAC 16 kHz": "wideband",
        "WAV 8 kHz": "telephone",
        "WAV mu-law 16 kHz": "telephone",
        "raw mu-law": "telephone",
        "raw A-law": "telephone",
        "raw PCM16 8 kHz": "telephone",
        "raw PCM16 16 kHz": "wideband",
    }
    assert simulate_telephone_channel(kinds["WAV 16 kHz"]).channel is AudioChannel.TELEPHONE


def test_the_packaged_cohorts_match_their_recorded_hashes_model_and_thresholds(embedder):
    manifest = default_cohorts.manifest()
    assert manifest["model_fingerprint"] == embedder.fingerprint
    cohorts = default_cohorts.load_default_cohorts(embedder.fingerprint)
    assert {c: len(cohorts[c].embeddings) for c in AudioChannel} == {"wideband": 251, "telephone": 251}
    scoring = ChannelScoring.for_model(CoreSettings(_env_file=None), embedder.fingerprint)
    recorded = manifest["default_thresholds"]
    assert recorded["target_fmr"] == CoreSettings(_env_file=None).target_fmr
    assert {name: p["threshold"] for name, p in scoring.summary().items()} == recorded["cosine"]  # the default
    as_norm = ChannelScoring.for_model(CoreSettings(_env_file=None, scoring="as-norm"), embedder.fingerprint)
    assert {name: p["threshold"] for name, p in as_norm.summary().items()} == recorded["as-norm"]
    with pytest.raises(IncompatibleModel):
        default_cohorts.load_default_cohorts("ecapa-voxceleb-another-model")


def test_a_packaged_cohort_that_was_changed_is_refused(embedder, tmp_path, monkeypatch):
    shutil.copytree(default_cohorts.COHORTS_DIR, tmp_path / "cohorts")
    data = np.load(tmp_path / "cohorts" / "telephone.npz")
    embeddings, meta = data["embeddings"].copy(), data["meta"]
    embeddings[0] = embeddings[1]  # one speaker swapped for another: same size, same format
    with open(tmp_path / "cohorts" / "telephone.npz", "wb") as handle:
        np.savez(handle, embeddings=embeddings, meta=meta)
    monkeypatch.setattr(default_cohorts, "COHORTS_DIR", tmp_path / "cohorts")
    with pytest.raises(CohortError, match="SHA-256"):
        default_cohorts.load_default_cohorts(embedder.fingerprint)


def test_each_pair_of_channels_has_a_threshold_for_the_target_fmr(embedder):
    cohorts = default_cohorts.load_default_cohorts(embedder.fingerprint)
    settings = CoreSettings(_env_file=None)
    scoring = ChannelScoring.for_model(settings, embedder.fingerprint)
    for (enrol, probe), point in scoring.points.items():
        impostor = cohort_impostor_scores(cohorts[enrol], cohorts[probe], "cosine", settings.asnorm_top_k)
        assert point.source == "cohort" and point.impostor_trials == len(impostor) == 251 * 250
        assert np.mean(impostor >= point.threshold) <= settings.target_fmr  # met on the cohort itself
        assert point.threshold == pytest.approx(threshold_at_fmr(impostor, settings.target_fmr), abs=1e-6)
    stricter = ChannelScoring.for_model(settings.model_copy(update={"target_fmr": 1e-4}), embedder.fingerprint)
    assert all(stricter.points[p].threshold > scoring.points[p].threshold for p in scoring.points)
    cosine = ChannelScoring.for_model(settings.model_copy(update={"cosine_threshold": 0.3}), embedder.fingerprint)
    assert {p.method for p in cosine.points.values()} == {"cosine"} and cosine.scorer(
        None, "telephone"
    ).threshold == 0.3


def test_a_telephone_impostor_above_the_old_raw_cosine_threshold_is_rejected(embedder, shared_data):
    verifier = VoiceVerifier.from_settings(CoreSettings(_env_file=None), embedder=embedder)
    enrolment = [read_audio_file(TEST_OTHER / SPEAKER / name) for name in ENROL]
    call = lambda path: simulate_telephone_channel(read_audio_file(path))  # noqa: E731
    # speaker 1998 sounds closest to 1688 over the phone among the test speakers
    impostors = [call(TEST_OTHER / "1998" / f"1998-15444-000{n}.flac") for n in (0, 3, 5)]
    from biometrics.voice.pipeline import analyse_for_enrolment

    template = VoiceTemplate.from_captures([s.capture() for s in analyse_for_enrolment(embedder, enrolment)])
    raw = template.for_probe(AudioChannel.TELEPHONE)[0].vector  # the wideband mean: scored directly
    probes = verifier.probes(impostors)
    cosines = [float(raw @ p.embedding.vector) for p in probes]
    assert max(cosines) > 0.25, cosines  # the old default would have let this one in
    verdicts = [verifier.decide(template, p) for p in probes if not p.reasons]
    assert verdicts and {v.decision for v in verdicts} == {"reject"}
    assert {v.channels for v in verdicts} == {"wideband/telephone"}  # at that pair's threshold
    genuine = verifier.decide(template, verifier.probe(call(SPEECH)))
    assert genuine.decision == "accept" and genuine.channels == "wideband/telephone"


@pytest.mark.parametrize(
    "header",
    [
        b'{"count": Infinity, "dim": 1, "slots": [], "fingerprint": "f"}',
        b'{"count": 1, "dim": 1, "slots": [], "fingerprint": "f"}',
        b'{"count": 1, "dim": 1, "slots": [{"channel": "radio", "count": 1}], "fingerprint": "f"}',
        b'{"count": 1, "dim": 1, "slots": [{"channel": "wideband", "count": 1}, {"channel": "wideband", "count": 1}],'
        b' "fingerprint": "f"}',
        b"[" * 5000 + b"]" * 5000,
        b"[1, 2]",
    ],
)
def test_a_damaged_template_is_a_template_error_not_a_crash(header):
    from biometrics.voice.templates import TemplateFormatError

    data = b"BIVT2" + struct.pack("<I", len(header)) + header + np.ones(2).astype("<f8").tobytes()
    with pytest.raises(TemplateFormatError):
        VoiceTemplate.from_bytes(data)


def _format_1(mean: np.ndarray, count: int, fingerprint: str) -> bytes:
    """A template as it was written before channels were recorded: one mean."""
    head = json.dumps({"fingerprint": fingerprint, "count": count, "dim": len(mean)}).encode()
    return b"BIVT1" + struct.pack("<I", len(head)) + head + mean.astype("<f8").tobytes()


def _call(api, ivr_key, path):
    """``path`` as a call centre sends it: 8 kHz mu-law, raw."""
    narrow = encode_raw(resample(read_audio_file(path).samples, 16_000, 8_000), 8_000, RawCodec.MULAW)
    return api.http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001", "codec": "mulaw", "sample_rate": "8000"},
        files=[("audio", ("call.ulaw", narrow, "application/octet-stream"))],
        headers=api.headers(ivr_key),
    ).json()


@pytest.mark.model
def test_a_template_enrolled_before_channels_still_verifies(bank):
    from service.protected import data_key, seal_into
    from service.voice.templates import VOICE, find_voice_template_row, open_voice_template

    api, keys = bank
    token = _consent(api, keys["portal"])["subject_token"]
    assert _enrol(api, keys["ivr"]).status_code == 201
    with api.ctx.db.session() as session:
        row = find_voice_template_row(session, token)
        new = open_voice_template(session, api.ctx.keyring, row)
        legacy = _format_1(new.means["wideband"], new.count, new.model_fingerprint)
        seal_into(row, data_key(session, api.ctx.keyring, token, VOICE, create=False), legacy)
    assert VoiceTemplate.from_bytes(legacy).means.keys() == {"unknown"}
    genuine = _verify(api, keys["ivr"], SPEECH).json()
    assert genuine["decision"] == "accept", genuine
    assert _verify(api, keys["ivr"], IMPOSTOR).json()["decision"] == "reject"
    over_the_phone = _call(api, keys["ivr"], SPEECH)
    # a template of unknown channel is held to the stricter of the two pairs that end in the caller's
    assert over_the_phone["channels"].endswith("/telephone") and over_the_phone["threshold"] == max(
        api.ctx.scoring.scorer(c, AudioChannel.TELEPHONE).threshold for c in AudioChannel
    )


@pytest.mark.model
def test_a_wideband_enrolment_verifies_a_caller_on_the_phone_at_that_pairs_threshold(bank):
    api, keys = bank
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    call = _call(api, keys["ivr"], SPEECH)
    assert call["decision"] == "accept" and call["channels"] == "wideband/telephone", call
    wideband = _verify(api, keys["ivr"], SPEECH).json()
    assert wideband["decision"] == "accept" and wideband["channels"] == "wideband/wideband"
    trail = api.http.get("/v1/audit/entries?limit=1000", headers=api.headers(keys["auditor"])).json()["entries"]
    assert [e["details"]["channels"] for e in trail if e["action"] == "voice.verify"] == [
        "wideband/telephone",
        "wideband/wideband",
    ]
    deployment = api.http.get("/v1/audit/deployment", headers=api.headers(keys["auditor"])).json()
    points = deployment["operating_points"]["by_channels"]
    assert set(points) == {"wideband/wideband", "wideband/telephone", "telephone/wideband", "telephone/telephone"}
    assert {p["source"] for p in points.values()} == {"cohort"}
    assert call["threshold"] == points["wideband/telephone"]["threshold"]


def test_a_telephone_mean_of_the_older_front_end_loads_as_of_unknown_channel():
    """Telephone embeddings changed with the band floor (front end 2): an older template's telephone mean is
    no longer like a caller's today, so it is held to the stricter threshold, as a format-1 template is."""
    wide, phone = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    head = json.dumps(
        {
            "fingerprint": "f",
            "count": 3,
            "dim": 2,
            "slots": [{"channel": "wideband", "count": 2}, {"channel": "telephone", "count": 1}],
        }
    ).encode()
    older = b"BIVT2" + struct.pack("<I", len(head)) + head + np.concatenate([wide, phone]).astype("<f8").tobytes()
    loaded = VoiceTemplate.from_bytes(older)
    assert loaded.means.keys() == {"wideband", "unknown"} and loaded.counts == {"wideband": 2, "unknown": 1}
    assert np.array_equal(loaded.means["unknown"], phone) and loaded.count == 3
    # Made today, the same template keeps its telephone mean.
    today = VoiceTemplate({"wideband": wide, "telephone": phone}, {"wideband": 2, "telephone": 1}, 3, "f")
    again = VoiceTemplate.from_bytes(today.to_bytes())
    assert again.means.keys() == {"wideband", "telephone"} and np.array_equal(again.means["telephone"], phone)


def test_the_model_hears_a_fixed_floor_in_the_band_narrowband_audio_cannot_carry():
    from biometrics.voice.audio.telephone import BAND_FLOOR_RMS, with_band_floor

    speech = np.random.default_rng(7).standard_normal(40_000).astype(np.float32) * 0.05
    assert with_band_floor(speech, 16_000, 16_000) is speech  # wideband audio: as it is
    assert with_band_floor(speech, 11_025, 16_000) is speech  # classed wideband too: as it is
    added = with_band_floor(speech, 8_000, 16_000) - speech
    assert np.array_equal(added, with_band_floor(speech, 8_000, 16_000) - speech)  # the same floor every time
    assert np.sqrt(np.mean(added**2)) == pytest.approx(BAND_FLOOR_RMS, rel=0.01)
    power = np.abs(np.fft.rfft(added)) ** 2
    freqs = np.fft.rfftfreq(len(added), 1 / 16_000)
    assert power[freqs < 3_900].sum() < 1e-4 * power.sum()  # nothing where the caller's voice is (float32 rounding)
