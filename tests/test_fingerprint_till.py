"""Paying by finger at the till, over HTTP, on SQLite and PostgreSQL, with real FVC2002 impressions:
enrol two fingers from impressions 1-2, pay with impression 5."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from tests.till_helpers import consent, enrol, impression, pay

ALICE, BOB = "LOYALTY-0001", "LOYALTY-0002"
ALICE_TOKEN, BOB_TOKEN = "tok_visa_net_A7F3K2", "tok_mc_net_Q9W1Z8"


def _enrolled(till, reference, finger, token, pin=None):
    consent(till, reference)
    response = enrol(till, reference, impression(finger, 1), impression(finger, 1, "DB2_B"), token, pin)
    assert response.status_code == 201, response.text
    return response.json()


def _rows(till, sql, **params):
    engine = create_engine(till.api.ctx.db.url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).all()
    finally:
        engine.dispose()


def test_two_fingers_enrolled_pay_with_card_and_finger(till):
    enrolled = _enrolled(till, ALICE, "101", ALICE_TOKEN)
    assert enrolled["finger_positions"] == [2, 7] and enrolled["impressions"] == [2, 2]
    assert all(c["accepted"] for c in enrolled["captures"]) and len(enrolled["captures"]) == 4
    _enrolled(till, BOB, "102", BOB_TOKEN)

    paid = pay(till, impression("101", 5), payment_token=ALICE_TOKEN, finger_position=2)
    assert paid.status_code == 200, paid.text
    body = paid.json()
    assert body["decision"] == "accept" and body["payment_token"] == ALICE_TOKEN and body["mode"] == "card"
    assert body["score"] >= body["threshold"]
    assert set(body) == {"mode", "decision", "payment_token", "score", "threshold", "model", "reasons"}

    both = pay(till, impression("101", 5), second=impression("101", 5, "DB2_B"), payment_token=ALICE_TOKEN)
    assert both.json()["decision"] == "accept" and both.json()["payment_token"] == ALICE_TOKEN

    fused = pay(
        till, impression("101", 5), finger_position=2, second=impression("101", 5, "DB2_B"), second_finger_position=7
    ).json()  # finger only, both fingers
    assert fused["decision"] == "accept" and fused["payment_token"] == ALICE_TOKEN and fused["mode"] == "finger"
    for wrong in (  # one finger twice, claimed as two; a second position with no second finger
        {"finger_position": 2, "second": impression("101", 5, "DB2_B"), "second_finger_position": 2},
        {"second_finger_position": 7},
    ):
        refused = pay(till, impression("101", 5), **wrong)
        assert refused.status_code == 400 and refused.headers["content-type"] == "application/problem+json"

    impostor = pay(till, impression("102", 5), payment_token=ALICE_TOKEN).json()
    assert impostor["decision"] == "reject" and impostor["payment_token"] is None and impostor["score"] is None

    stranger = pay(till, impression("108", 5)).json()  # a finger nobody enrolled, finger only
    assert stranger["decision"] == "reject" and stranger["payment_token"] is None

    audited = _rows(till, "SELECT action, outcome FROM audit_entries WHERE action LIKE 'fingerprint.%' ORDER BY seq")
    assert [tuple(r) for r in audited] == [
        ("fingerprint.enrol", "enrolled"),
        ("fingerprint.enrol", "enrolled"),
        ("fingerprint.pay", "accept"),
        ("fingerprint.pay", "accept"),
        ("fingerprint.pay", "accept"),
        ("fingerprint.pay", "reject"),
        ("fingerprint.pay", "reject"),
    ]
    everything = str(_rows(till, "SELECT * FROM audit_entries")) + str(_rows(till, "SELECT * FROM payment_links"))
    assert ALICE_TOKEN not in everything and ALICE not in everything

    metrics = till.http.get("/metrics").text  # payments by mode and outcome, fingers held; never whose
    for line in (
        'bioident_decisions_total{action="fingerprint.pay.card",outcome="accept"} 2.0',
        'bioident_decisions_total{action="fingerprint.pay.card",outcome="reject"} 1.0',
        'bioident_decisions_total{action="fingerprint.pay.finger",outcome="accept"} 1.0',
        'bioident_decisions_total{action="fingerprint.pay.finger",outcome="reject"} 1.0',
        'bioident_gallery_entries{gallery="fingerprint"} 4.0',
    ):
        assert line in metrics.splitlines(), line
    assert ALICE_TOKEN not in metrics and ALICE not in metrics


def test_finger_only_with_ten_customers_answers_the_right_one_or_none(till):
    fingers = [str(101 + i) for i in range(10)]
    for i, finger in enumerate(fingers):
        _enrolled(till, f"CUST-{i}", finger, f"tok_customer_{i}")
    right = 0
    for i, finger in enumerate(fingers):
        body = pay(till, impression(finger, 5)).json()
        assert body["payment_token"] in (None, f"tok_customer_{i}"), body
        assert (body["decision"] == "accept") == (body["payment_token"] is not None)
        right += body["payment_token"] is not None
    assert right >= 7, f"only {right} of 10 customers recognised by finger alone"
    for finger in fingers[:5]:  # fingers of the third sensor: nobody here
        assert pay(till, impression(finger, 5, "DB3_B")).json()["payment_token"] is None


def test_a_card_number_is_refused_and_never_stored_or_logged(till, caplog):
    caplog.set_level("DEBUG")
    consent(till, ALICE)
    pans = ("4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005")
    for pan in pans:
        refused = enrol(till, ALICE, impression("101", 1), impression("101", 1, "DB2_B"), pan)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("/card_number_refused") and pan not in refused.text
        paid = pay(till, impression("101", 5), payment_token=pan)
        assert paid.status_code == 422 and paid.json()["type"].endswith("/card_number_refused")
    assert _rows(till, "SELECT id FROM payment_links") == []
    assert _rows(till, "SELECT id FROM templates") == []
    everything = str(_rows(till, "SELECT * FROM audit_entries"))
    # Each number as sent, as digits only, and its first six digits: four digits alone also turn up by chance
    # in the entries' hashes and timestamps (a failed run found "4111" there).
    forms = {form for pan in pans for digits in [re.sub(r"\D", "", pan)] for form in (pan, digits, digits[:6])}
    assert not [form for form in forms if form in everything] and "card_number_refused" in everything
    assert not [form for form in forms if form in caplog.text]


def test_a_wrong_pin_is_refused_and_counts_towards_the_lockout(till):
    _enrolled(till, ALICE, "101", ALICE_TOKEN, pin="4821")
    _enrolled(till, BOB, "102", BOB_TOKEN, pin="4821")  # the same PIN: the finger tells them apart

    right = pay(till, impression("101", 5), pin="4821").json()
    assert right["decision"] == "accept" and right["payment_token"] == ALICE_TOKEN and right["mode"] == "pin"
    assert pay(till, impression("102", 5), pin="4821").json()["payment_token"] == BOB_TOKEN

    for _ in range(3):  # BIOIDENT_LOCKOUT_MAX_FAILURES is 3 here
        wrong = pay(till, impression("101", 5), pin="1111")
        assert wrong.status_code == 200 and wrong.json()["decision"] == "reject"
        assert wrong.json()["payment_token"] is None and wrong.json()["score"] is None  # no hint the finger is known
    locked = pay(till, impression("101", 5), pin="4821")
    assert locked.status_code == 423 and int(locked.headers["Retry-After"]) >= 1
    # Locked out, the PIN is not checked: a wrong one gets the very same answer as the right one, so the
    # lockout tells nothing about the PIN.
    for guess in ("1111", "4822", "000000"):
        refused = pay(till, impression("101", 5), pin=guess)
        assert (refused.status_code, refused.json()["type"]) == (423, locked.json()["type"])
    assert pay(till, impression("101", 5), payment_token=ALICE_TOKEN).status_code == 423
    finger_only = pay(till, impression("101", 5)).json()  # finger only: not answered, and no score says why
    assert finger_only["payment_token"] is None and finger_only["score"] is None
    assert pay(till, impression("102", 5), pin="4821").json()["payment_token"] == BOB_TOKEN  # others unaffected

    bad = pay(till, impression("101", 5), pin="12a4")
    assert bad.status_code == 422 and bad.json()["type"].endswith("/invalid_pin")
    hashes = [r[0] for r in _rows(till, "SELECT pin_hash FROM payment_links")]
    assert all(h.startswith("$argon2id$") for h in hashes) and not any("4821" in h for h in hashes)
    outcomes = _rows(till, "SELECT outcome FROM audit_entries WHERE action = 'fingerprint.lockout'")
    assert [r[0] for r in outcomes] == ["locked"]


def test_a_locked_runner_up_neither_shields_the_named_customer_nor_pays_for_anyone(till, monkeypatch):
    """With every enrolled customer a candidate (the PIN threshold at zero), a locked-out runner-up is passed
    over: the customer the finger names still pays with their PIN, and their wrong PINs still count (not a 423
    that would stop them counting); the runner-up's own PIN, sent with the other's finger, pays for nobody."""
    import service.fingerprint.decisions

    _enrolled(till, ALICE, "101", ALICE_TOKEN, pin="4821")
    _enrolled(till, BOB, "102", BOB_TOKEN, pin="7777")
    for _ in range(3):  # Bob locks himself out
        assert pay(till, impression("102", 5), pin="1234").json()["decision"] == "reject"
    assert pay(till, impression("102", 5), pin="7777").status_code == 423
    monkeypatch.setattr(service.fingerprint.decisions, "pin_threshold", lambda *args: 0.0)

    assert pay(till, impression("101", 5), pin="4821").json()["payment_token"] == ALICE_TOKEN
    assert pay(till, impression("101", 5), pin="7777").json()["payment_token"] is None  # Bob's PIN: not checked
    for _ in range(2):
        wrong = pay(till, impression("101", 5), pin="1111")
        assert wrong.status_code == 200 and wrong.json()["decision"] == "reject"
    assert pay(till, impression("101", 5), pin="4821").status_code == 423  # Alice's wrong PINs counted: 3 now


def test_wrong_pins_count_for_every_customer_they_were_tried_on_when_the_finger_names_no_one(till, monkeypatch):
    """Alice's finger enrolled by Eve too: the finger alone names neither, and PINs tried on Alice's account had
    gone uncounted, until the right one paid from it. (Enrolment now refuses a finger enrolled elsewhere; the
    two enrolments are let through here, as two at the same moment on two replicas would be.)"""
    import service.fingerprint.enrolment

    consent(till, ALICE)
    assert enrol(till, ALICE, impression("101", 1), impression("102", 1), ALICE_TOKEN, "4821").status_code == 201
    consent(till, "EVE")
    refused = enrol(till, "EVE", impression("101", 1), impression("103", 1), "tok_eve_1", "9999")
    assert refused.status_code == 409 and refused.json()["type"].endswith("/finger_enrolled_elsewhere"), refused.text
    assert refused.json()["reasons"] == [{"code": "FINGER_ENROLLED_ELSEWHERE", "finger_position": 2}]
    assert ALICE not in refused.text and ALICE_TOKEN not in refused.text  # whose finger it is, is not said
    monkeypatch.setattr(service.fingerprint.enrolment, "_refuse_if_enrolled_elsewhere", lambda *args: None)
    assert enrol(till, "EVE", impression("101", 1), impression("103", 1), "tok_eve_1", "9999").status_code == 201
    assert pay(till, impression("101", 5)).json()["decision"] == "reject"  # finger only: no clear lead
    for guess in ("0001", "0002", "0003"):  # BIOIDENT_LOCKOUT_MAX_FAILURES is 3 here
        wrong = pay(till, impression("101", 5), pin=guess)
        assert wrong.status_code == 200 and wrong.json()["decision"] == "reject", wrong.text
    counted = _rows(till, "SELECT subject_token, count(*) FROM verification_failures GROUP BY subject_token")
    assert sorted(n for _, n in counted) == [3, 3]  # Alice and Eve, each tried three times
    right = pay(till, impression("101", 5), pin="4821")
    assert right.status_code in (200, 423) and right.json().get("payment_token") is None, right.text


def test_a_customer_locked_out_by_a_concurrent_attempt_gets_423_for_any_pin(till, monkeypatch):
    """The lockout read before the PIN check can be stale; the decision's own transaction reads it again."""
    import service.fingerprint.payment

    _enrolled(till, ALICE, "101", ALICE_TOKEN, pin="4821")
    for _ in range(3):
        pay(till, impression("101", 5), pin="1111")
    monkeypatch.setattr(service.fingerprint.payment, "_locked", lambda *args: set())  # as if read just before
    for pin in ("4821", "1111"):
        assert pay(till, impression("101", 5), pin=pin).status_code == 423, pin
    failures = _rows(till, "SELECT count(*) FROM verification_failures")
    assert failures == [(3,)]  # none past the limit


def test_withdrawal_makes_the_finger_unpayable_and_the_token_unrecoverable(till):
    given = consent(till, ALICE)
    enrol(till, ALICE, impression("101", 1), impression("101", 1, "DB2_B"), ALICE_TOKEN)
    assert pay(till, impression("101", 5)).json()["payment_token"] == ALICE_TOKEN
    sealed = [bytes(r[0]) for r in _rows(till, "SELECT sealed FROM payment_links")]
    held = till.http.get(f"/v1/subjects/{given['subject_token']}", headers=till.headers(till.portal)).json()
    assert [link["pin"] for link in held["payment_links"]] == [False] and len(held["templates"]) == 2
    assert ALICE_TOKEN not in str(held) and "sealed" not in str(held)

    receipt = till.http.post(
        f"/v1/subjects/{given['subject_token']}/consents/{given['id']}:withdraw", headers=till.headers(till.portal)
    )
    assert receipt.status_code == 200, receipt.text
    destroyed = receipt.json()["destroyed"]
    assert destroyed["data_key"] is True and len(destroyed["templates"]) == 2 and len(destroyed["payment_links"]) == 1

    assert pay(till, impression("101", 5)).json()["payment_token"] is None
    assert pay(till, impression("101", 5), payment_token=ALICE_TOKEN).status_code == 404
    assert _rows(till, "SELECT id FROM payment_links") == [] and _rows(till, "SELECT id FROM templates") == []
    assert _rows(till, "SELECT id FROM data_keys WHERE subject_token = :t", t=given["subject_token"]) == []
    if till.api.ctx.db.url.startswith("sqlite"):  # the file itself no longer holds the sealed token
        raw = (till.api.data_dir / "bioident.db").read_bytes()
        assert sealed[0] not in raw


@pytest.mark.parametrize("sync", [True, False], ids=["synced", "stale-cache"])
def test_the_gallery_never_answers_a_customer_withdrawn_elsewhere(till, second_replica, sync, monkeypatch):
    given = consent(till, ALICE)
    enrol(till, ALICE, impression("101", 1), impression("101", 1, "DB2_B"), ALICE_TOKEN)
    assert pay(till, impression("101", 5)).json()["payment_token"] == ALICE_TOKEN  # in this replica's gallery

    receipt = second_replica.post(
        f"/v1/subjects/{given['subject_token']}/consents/{given['id']}:withdraw", headers=till.headers(till.portal)
    )
    assert receipt.status_code == 200, receipt.text
    if not sync:  # the cache is not even told: the database re-check alone must stop the answer
        monkeypatch.setattr(type(till.api.ctx.fingerprint_gallery), "sync", lambda *args, **kwargs: None)
    after = pay(till, impression("101", 5)).json()
    assert after["decision"] == "reject" and after["payment_token"] is None
    after_pin = pay(till, impression("101", 5), pin="4821").json()
    assert after_pin["payment_token"] is None


def test_customers_enrolled_or_re_enrolled_elsewhere_are_found_and_their_old_fingers_leave(till, second_replica):
    """Each search looks at the customers with rows stamped since the gallery's last look, all of their rows:
    a re-enrolment elsewhere with other fingers pays at once, and the old fingers leave this replica's memory."""
    gallery = till.api.ctx.fingerprint_gallery
    _enrolled(till, BOB, "102", BOB_TOKEN)
    assert pay(till, impression("102", 5)).json()["payment_token"] == BOB_TOKEN
    consent(till, ALICE)
    first = impression("101", 1), impression("101", 1, "DB2_B")
    assert enrol(till, ALICE, *first, ALICE_TOKEN, http=second_replica).status_code == 201
    assert pay(till, impression("101", 5)).json()["payment_token"] == ALICE_TOKEN  # enrolled on the other replica

    consent(till, ALICE)  # a replacement needs consent given again
    other = impression("103", 1), impression("103", 1, "DB2_B")
    replaced = enrol(
        till, ALICE, *other, "tok_new_5", http=second_replica, replace="true",
        first_finger_position=3, second_finger_position=8,
    )
    assert replaced.status_code == 201, replaced.text
    assert pay(till, impression("103", 5)).json()["payment_token"] == "tok_new_5"  # the new finger, at once
    assert pay(till, impression("101", 5)).json()["payment_token"] is None  # the old one is gone here too
    assert gallery.size("shop") == 4  # Bob's two fingers and Alice's two new ones: her old ones left memory


def _as_png(path) -> bytes:
    png = io.BytesIO()
    Image.open(path).save(png, format="PNG")
    return png.getvalue()


def test_enrolment_rules_at_the_till(till):
    consent(till, ALICE)
    same = enrol(till, ALICE, impression("101", 1), impression("101", 3), ALICE_TOKEN)  # one finger twice
    assert same.status_code == 422 and "SAME_FINGER" in {r["code"] for r in same.json()["reasons"]}
    mixed = till.http.post(
        "/v1/fingerprint/enrol",
        data={"reference": ALICE, "first_finger_position": 2, "second_finger_position": 7, "payment_token": "tok_x1"},
        files=[
            ("first_finger", ("a.tif", impression("101", 1).read_bytes(), "image/tiff")),
            ("first_finger", ("b.tif", impression("104", 1).read_bytes(), "image/tiff")),  # another finger
            ("second_finger", ("c.tif", impression("101", 1, "DB2_B").read_bytes(), "image/tiff")),
            ("second_finger", ("d.tif", impression("101", 2, "DB2_B").read_bytes(), "image/tiff")),
        ],
        headers=till.headers(),
    )
    assert mixed.status_code == 422 and "CAPTURES_DO_NOT_MATCH" in {r["code"] for r in mixed.json()["reasons"]}
    blank = io.BytesIO()
    Image.new("L", (300, 300), 200).save(blank, format="PNG")
    smudged = till.http.post(
        "/v1/fingerprint/enrol",
        data={"reference": ALICE, "first_finger_position": 2, "second_finger_position": 7, "payment_token": "tok_x1"},
        files=[
            ("first_finger", ("a.tif", impression("101", 1).read_bytes(), "image/tiff")),
            ("first_finger", ("blank.png", blank.getvalue(), "image/png")),  # nothing on the scanner
            ("second_finger", ("c.tif", impression("101", 1, "DB2_B").read_bytes(), "image/tiff")),
            ("second_finger", ("d.tif", impression("101", 2, "DB2_B").read_bytes(), "image/tiff")),
        ],
        headers=till.headers(),
    )
    assert smudged.status_code == 422, smudged.text
    reasons = smudged.json()["reasons"]
    assert {"code": "TOO_FEW_GOOD_CAPTURES", "measured": 1.0, "limit": 2.0, "finger_position": 2} in reasons
    assert any(r.get("capture") == 1 and r["finger_position"] == 2 for r in reasons)  # which capture, and why
    twice = till.http.post(  # one image sent twice per finger (once as PNG): one capture each, not two
        "/v1/fingerprint/enrol",
        data={"reference": ALICE, "first_finger_position": 2, "second_finger_position": 7, "payment_token": "tok_x1"},
        files=[
            ("first_finger", ("a.tif", impression("101", 1).read_bytes(), "image/tiff")),
            ("first_finger", ("a.png", _as_png(impression("101", 1)), "image/png")),
            ("second_finger", ("c.tif", impression("101", 1, "DB2_B").read_bytes(), "image/tiff")),
            ("second_finger", ("c2.tif", impression("101", 1, "DB2_B").read_bytes(), "image/tiff")),
        ],
        headers=till.headers(),
    )
    assert twice.status_code == 422, twice.text
    reasons = twice.json()["reasons"]
    for position in (2, 7):
        assert {"code": "TOO_FEW_GOOD_CAPTURES", "measured": 1.0, "limit": 2.0, "finger_position": position} in reasons
        same_as = {"finger_position": position, "capture": 0}
        assert {"code": "DUPLICATE_CAPTURE", "same_as": same_as, "finger_position": position, "capture": 1} in reasons
    nobody = enrol(till, "NEVER-CONSENTED", impression("101", 1), impression("101", 1, "DB2_B"), ALICE_TOKEN)
    assert nobody.status_code == 403 and nobody.json()["type"].endswith("/consent_required")
    assert _rows(till, "SELECT id FROM templates") == [] and _rows(till, "SELECT id FROM payment_links") == []

    assert enrol(till, ALICE, impression("101", 1), impression("101", 1, "DB2_B"), ALICE_TOKEN).status_code == 201
    again = enrol(till, ALICE, impression("101", 1), impression("101", 1, "DB2_B"), ALICE_TOKEN)
    assert again.status_code == 409 and again.json()["type"].endswith("/already_enrolled")
    stale = enrol(till, ALICE, impression("101", 1), impression("101", 1, "DB2_B"), ALICE_TOKEN, replace="true")
    assert stale.status_code == 403 and stale.json()["type"].endswith("/reconsent_required")
    consent(till, ALICE)
    assert (
        enrol(till, ALICE, impression("102", 1), impression("102", 1, "DB2_B"), "tok_new_9", replace="true").status_code
        == 201
    )
    assert pay(till, impression("102", 5), payment_token="tok_new_9").json()["decision"] == "accept"


def test_only_terminals_use_the_till(till):
    ivr = till.api.client("shop", "ivr")
    refused = pay(till, impression("101", 5), http=None, payment_token=ALICE_TOKEN)
    assert refused.status_code == 404  # nobody linked it yet
    as_ivr = till.http.post(
        "/v1/fingerprint/pay",
        files=[("finger", ("f.tif", impression("101", 5).read_bytes(), "image/tiff"))],
        headers=till.headers(ivr),
    )
    assert as_ivr.status_code == 403
    not_an_image = till.http.post(
        "/v1/fingerprint/pay",
        files=[("finger", ("f.tif", b"not an image at all", "image/tiff"))],
        headers=till.headers(),
    )
    assert 400 <= not_an_image.status_code < 500 and not_an_image.headers["content-type"].startswith(
        "application/problem+json"
    )


def test_while_the_gallery_loads_finger_only_waits_and_the_rest_is_served(till, monkeypatch):
    from service.fingerprint import payment
    from service.fingerprint.gallery import FingerprintGallery

    _enrolled(till, ALICE, "101", ALICE_TOKEN)
    monkeypatch.setattr(payment, "GALLERY_WAIT_S", 0.1)
    ctx = till.api.ctx
    ctx._fingerprint_gallery = FingerprintGallery()  # as at a start with many fingers still being indexed
    loading = pay(till, impression("101", 5))
    assert loading.status_code == 503 and loading.json()["type"].endswith("/gallery_loading")
    assert int(loading.headers["Retry-After"]) >= 1
    pin = pay(till, impression("101", 5), pin="4821")
    assert pin.status_code == 503
    refused = _rows(
        till, "SELECT details FROM audit_entries WHERE action = 'fingerprint.pay' AND outcome = 'refused' ORDER BY seq"
    )
    details = [json.loads(d) if isinstance(d, str) else d for (d,) in refused]  # JSON text on SQLite
    assert [(d["mode"], d["reason"], d["status"]) for d in details] == [
        ("finger", "gallery_loading", 503),
        ("pin", "gallery_loading", 503),
    ]  # an attempt the service said "not yet" to is an attempt all the same
    assert pay(till, impression("101", 5), payment_token=ALICE_TOKEN).json()["decision"] == "accept"
    ctx.start_fingerprint_gallery().join()
    assert pay(till, impression("101", 5)).json()["payment_token"] == ALICE_TOKEN
