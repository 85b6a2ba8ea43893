"""The voice flow's building blocks for the service tests: one enrolled speaker's recordings, an
impostor's, and consent, enrolment and verification as a customer's bank calls them over HTTP."""

from __future__ import annotations

from tests.conftest import TEST_OTHER

SPEAKER = "1688"
ENROL = ["1688-142285-0000.flac", "1688-142285-0001.flac", "1688-142285-0002.flac"]
GENUINE = "1688-142285-0005.flac"
IMPOSTOR = TEST_OTHER / "2033" / "2033-164914-0002.flac"
NOTICE = "We use your voice to recognise you when you call. You can withdraw at any time."


def _audio(path):
    return ("audio", (path.name, path.read_bytes(), "audio/flac"))


def _consent(api, portal_key, reference="ACC-1001", purpose="authentication"):
    response = api.http.post(
        "/v1/consents",
        json={
            "reference": reference,
            "modality": "voice",
            "purpose": purpose,
            "notice_version": "2026-11",
            "notice_text": NOTICE,
            "channel": "portal",
            "evidence_ref": "portal-session-77",
        },
        headers=api.headers(portal_key),
    )
    assert response.status_code == 201, response.text
    return response.json()


def _enrol(api, ivr_key, reference="ACC-1001"):
    files = [_audio(TEST_OTHER / SPEAKER / name) for name in ENROL]
    return api.http.post("/v1/voice/enrol", data={"reference": reference}, files=files, headers=api.headers(ivr_key))


def _verify(api, ivr_key, path, reference="ACC-1001"):
    return api.http.post(
        "/v1/voice/verify", data={"reference": reference}, files=[_audio(path)], headers=api.headers(ivr_key)
    )
