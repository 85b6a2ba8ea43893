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


def _trail(api, action: str) -> list:
    """The entries of ``action``, in order."""
    from sqlalchemy import select

    from service.store.models import AuditEntry

    with api.ctx.db.session() as session:
        query = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        return list(session.execute(query).scalars())


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

    # Each customer an identification named sees it in their own trail; one it did not name, nothing.
    named = [(e.subject_token, e.details) for e in _trail(api, "voice.identified")]
    assert named == [(consent["subject_token"], {"purpose": "authentication", "rank": 1}),
                     (second["subject_token"], {"purpose": "authentication", "rank": 1})]  # fmt: skip


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


def test_an_identification_is_recorded_against_each_customer_it_named_and_only_theirs(api):
    import json

    from service.portal.views import export, overview
    from service.trail.chain import verify_chain

    api.tenant("bank")
    ivr, portal = api.client("bank", "ivr"), api.client("bank", "portal")
    tokens = []
    for reference in ("ACC-1001", "ACC-1002"):  # one voice enrolled by two customers: both are candidates
        tokens.append(_consent(api, portal, reference=reference)["subject_token"])
        assert _enrol(api, ivr, reference=reference).status_code == 201
    bystander = _consent(api, portal, reference="ACC-1003")["subject_token"]  # consented, never enrolled

    found = _identify(api.http, ivr, TEST_OTHER / SPEAKER / GENUINE)
    ranked = [c["subject_token"] for c in found["candidates"]]
    assert sorted(ranked) == sorted(tokens)
    (identify,) = _trail(api, "voice.identify")  # for the security team, as it was
    assert identify.subject_token is None and identify.outcome == "match" and identify.details["candidates"] == ranked
    named = _trail(api, "voice.identified")
    assert [(e.subject_token, e.outcome, e.score, e.details) for e in named] == [
        (token, "match", None, {"purpose": "authentication", "rank": rank}) for rank, token in enumerate(ranked, 1)
    ]
    with api.ctx.db.session() as session:
        assert verify_chain(session).ok
        for token, other in ((ranked[0], ranked[1]), (ranked[1], ranked[0])):
            shown = export(session, "bank", token)
            assert [e["action"] for e in shown["events"]] == ["consent.grant", "voice.enrol", "voice.identified"]
            assert other not in json.dumps(shown) and "score" not in json.dumps(shown["events"])
            (voice,) = [m for m in overview(session, "bank", token, ()).modalities if m.modality == "voice"]
            assert voice.last_use == next(e.at for e in named if e.subject_token == token)
        assert [e["action"] for e in export(session, "bank", bystander)["events"]] == ["consent.grant"]
