"""Identification answers from an in-memory gallery, and never from a stale one: two service processes
(contexts) on one database, the second enrolling and withdrawing behind the first one's back."""

from __future__ import annotations

import pytest

from tests.conftest import TEST_OTHER
from tests.voice_helpers import GENUINE, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = pytest.mark.model

OTHER = TEST_OTHER / "3005"
OTHER_ENROL = ["3005-163389-0000.flac", "3005-163389-0003.flac", "3005-163389-0006.flac"]
OTHER_PROBE = OTHER / "3005-163389-0009.flac"


def _identify(http, key, path):
    response = http.post("/v1/voice/identify", files=[_audio(path)], headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_withdrawal_on_another_replica_is_never_answered_from_a_stale_gallery(api, replica):
    from service.voice.identification import voice_gallery

    other_http, _ = replica
    api.tenant("bank")
    ivr, portal = api.client("bank", "ivr"), api.client("bank", "portal")
    consent = _consent(api, portal)
    assert _enrol(api, ivr).status_code == 201

    found = _identify(api.http, ivr, TEST_OTHER / SPEAKER / GENUINE)
    assert [c["subject_token"] for c in found["candidates"]] == [consent["subject_token"]]
    verified = _verify(api, ivr, TEST_OTHER / SPEAKER / GENUINE).json()
    assert found["candidates"][0]["score"] == pytest.approx(verified["score"], abs=1e-5)  # the 1:1 score
    assert voice_gallery(api.ctx).size("bank") == 1

    # The other replica enrols a second customer: this one's gallery picks it up at its next query.
    second = _consent(api, portal, reference="ACC-2002")
    enrolled = other_http.post(
        "/v1/voice/enrol",
        data={"reference": "ACC-2002"},
        files=[_audio(OTHER / name) for name in OTHER_ENROL],
        headers=api.headers(ivr),
    )
    assert enrolled.status_code == 201, enrolled.text
    found = _identify(api.http, ivr, OTHER_PROBE)
    assert [c["subject_token"] for c in found["candidates"]] == [second["subject_token"]]
    assert voice_gallery(api.ctx).size("bank") == 2

    # The other replica withdraws the first customer: this one still holds the template in memory, but
    # re-checks the database before answering, and forgets it.
    withdrawn = other_http.post(
        f"/v1/subjects/{consent['subject_token']}/consents/{consent['id']}:withdraw", headers=api.headers(portal)
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert voice_gallery(api.ctx).size("bank") == 2  # stale, as a cache may be
    found = _identify(api.http, ivr, TEST_OTHER / SPEAKER / GENUINE)
    assert found["candidates"] == [] and found["decision"] == "reject"
    assert voice_gallery(api.ctx).size("bank") == 1


@pytest.mark.parametrize("how", ["withdrawal", "erasure"])
def test_a_withdrawal_or_erasure_on_this_replica_leaves_its_gallery_at_once(api, how):
    from service.auth import Principal, Role
    from service.consent.withdrawal import erase_subject
    from service.voice.identification import voice_gallery

    api.tenant("bank")
    ivr, portal = api.client("bank", "ivr"), api.client("bank", "portal")
    consent = _consent(api, portal)
    assert _enrol(api, ivr).status_code == 201
    assert len(_identify(api.http, ivr, TEST_OTHER / SPEAKER / GENUINE)["candidates"]) == 1
    if how == "withdrawal":
        withdrawn = api.http.post(
            f"/v1/subjects/{consent['subject_token']}/consents/{consent['id']}:withdraw", headers=api.headers(portal)
        )
        assert withdrawn.status_code == 200
    else:  # the customer's "erase everything" in the portal
        erase_subject(api.ctx, Principal("cli_portal", "bank", Role.PORTAL), consent["subject_token"])
    assert voice_gallery(api.ctx).size("bank") == 0
    assert _identify(api.http, ivr, TEST_OTHER / SPEAKER / GENUINE)["candidates"] == []
