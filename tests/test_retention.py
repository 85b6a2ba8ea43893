"""Retention on SQLite and PostgreSQL: a customer with no interaction for the retention period is purged
(consents closed, data keys destroyed, templates deleted), audited, with a signed receipt stored; a purge
happens once per subject whichever replica runs it; a purged customer is enrolled again only after fresh
consent.

No model: the sealed data is made as enrolment makes it, through the same service functions.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import text

from service.auth import Principal, Role
from tests.operations_fixtures import _cli, _deployment, _execute, _rows

pytestmark = pytest.mark.usefixtures("clean_service_environment")

PORTAL = Principal("cli_portal", "bank", Role.PORTAL)
STALE = "sub_" + "a" * 64
RECENT = "sub_" + "b" * 64


def _enrolled(ctx, token: str) -> None:
    """A customer with voice consent, a data key and a sealed template, as enrolment leaves them."""
    from service.consent.records import ConsentChannel, ConsentTerms, record_consent
    from service.modality import Modality
    from service.protected import data_key, seal_into
    from service.store.models import Template, Tenant

    with ctx.db.session() as session:
        if session.get(Tenant, "bank") is None:
            session.add(Tenant(id="bank", name="bank"))
            session.flush()
        terms = ConsentTerms(Modality.VOICE, "authentication", "v1", "0" * 64, ConsentChannel.PORTAL, "call-1")
        record_consent(session, PORTAL, token, terms)
        template = Template(
            subject_token=token, tenant_id="bank", modality="voice", model_fingerprint="m", sample_count=1, sealed=b""
        )
        session.add(template)
        session.flush()
        seal_into(template, data_key(session, ctx.keyring, token, "voice", create=True), b"template bytes")


def _last_active(url: str, token: str, days_ago: int) -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    _execute(url, (text("UPDATE subjects SET last_active_at = :t WHERE token = :s"), {"t": when, "s": token}))


def _count(url: str, sql: str, **params) -> int:
    return _rows(url, sql, **params)[0][0]


def test_a_customer_inactive_past_the_retention_period_is_purged_once(database_url, tmp_path, monkeypatch, capsys):
    ctx = _deployment(database_url, tmp_path / "data")
    _enrolled(ctx, STALE)
    _enrolled(ctx, RECENT)
    _last_active(database_url, STALE, days_ago=3 * 365 + 1)  # the default period: 1095 days
    _last_active(database_url, RECENT, days_ago=3 * 365 - 1)

    code, out, err = _cli(monkeypatch, capsys, tmp_path / "data", "retention", "run", "--dry-run", url=database_url)
    assert code == 0 and STALE in out and RECENT not in out and "1 subjects due" in out
    assert _count(database_url, "SELECT COUNT(*) FROM data_keys WHERE subject_token = :s", s=STALE) == 1

    code, out, err = _cli(monkeypatch, capsys, tmp_path / "data", "retention", "run", url=database_url)
    assert code == 0, err
    assert STALE in out and RECENT not in out and "1 subjects purged" in out
    for table in ("data_keys", "templates"):
        assert _count(database_url, f"SELECT COUNT(*) FROM {table} WHERE subject_token = :s", s=STALE) == 0
        assert _count(database_url, f"SELECT COUNT(*) FROM {table} WHERE subject_token = :s", s=RECENT) == 1
    assert _count(database_url, "SELECT COUNT(*) FROM consents WHERE subject_token = :s AND withdrawn_at IS NULL",
                  s=STALE) == 0  # fmt: skip
    purges = _rows(database_url, "SELECT actor, subject_token FROM audit_entries WHERE action = 'retention.purge'")
    assert purges == [("retention", STALE)]
    kinds = [r[0] for r in _rows(database_url, "SELECT kind FROM receipts WHERE subject_token = :s", s=STALE)]
    assert sorted(kinds) == ["consent.grant", "consent.withdraw", "retention.purge"]
    ledger = (tmp_path / "data" / "destruction-ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 1 and STALE in ledger[0]

    code, out, err = _cli(monkeypatch, capsys, tmp_path / "data", "retention", "run", url=database_url)
    assert code == 0 and "0 subjects purged" in out  # nothing left to purge: no second purge
    code, out, err = _cli(monkeypatch, capsys, tmp_path / "data", "audit", "verify-chain", url=database_url)
    assert code == 0, err


def test_the_purge_receipt_is_signed_and_names_what_was_destroyed(database_url, tmp_path):
    from service.consent.receipts import SigningKey, verify_receipt
    from service.consent.retention import purge_inactive

    ctx = _deployment(database_url, tmp_path / "data")
    _enrolled(ctx, STALE)
    _last_active(database_url, STALE, days_ago=40)
    ctx.settings.retention_days = 30
    (purge,) = purge_inactive(ctx.db, ctx.settings, ctx.keyring)
    (jws,) = _rows(database_url, "SELECT jws FROM receipts WHERE id = :r", r=purge.receipt_id)[0]
    receipt = verify_receipt(jws, SigningKey.from_audit_key(ctx.db.audit_key).jwk())
    assert receipt["event"]["type"] == "retention.purge" and receipt["event"]["retention_days"] == 30
    assert receipt["event"]["destroyed"]["voice"]["data_key"] is True
    assert receipt["piiPrincipalId"] == STALE and receipt["services"][0]["purposes"][0]["purpose"] == "authentication"


def test_replicas_purging_at_once_purge_each_subject_once(database_url, tmp_path):
    from service.consent.retention import run_retention
    from service.erasure.ledger import DestructionLedger

    ctx = _deployment(database_url, tmp_path / "data")
    _enrolled(ctx, STALE)
    _last_active(database_url, STALE, days_ago=2000)
    replicas = [_deployment(database_url, tmp_path / "data") for _ in range(3)]
    barrier = threading.Barrier(len(replicas))
    results: list[int] = []

    def replica(rctx) -> None:
        barrier.wait()
        results.append(len(run_retention(rctx.db, DestructionLedger.of(rctx.settings, rctx.keyring), 1095)))

    threads = [threading.Thread(target=replica, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [0, 0, 1]
    assert _count(database_url, "SELECT COUNT(*) FROM audit_entries WHERE action = 'retention.purge'") == 1
    assert _count(database_url, "SELECT COUNT(*) FROM receipts WHERE kind = 'retention.purge'") == 1


def test_a_purged_customer_is_enrolled_again_only_after_fresh_consent(database_url, tmp_path):
    from service.consent.records import (
        ConsentChannel,
        ConsentTerms,
        record_consent,
        require_consent_to_enrol,
    )
    from service.consent.retention import purge_inactive
    from service.errors import ConsentRequired
    from service.modality import Modality

    ctx = _deployment(database_url, tmp_path / "data")
    _enrolled(ctx, STALE)
    _last_active(database_url, STALE, days_ago=5000)
    assert len(purge_inactive(ctx.db, ctx.settings, ctx.keyring)) == 1
    with ctx.db.session() as session, pytest.raises(ConsentRequired):
        require_consent_to_enrol(session, "bank", STALE, Modality.VOICE, "authentication")
    with ctx.db.session() as session:
        terms = ConsentTerms(Modality.VOICE, "authentication", "v2", "1" * 64, ConsentChannel.PORTAL, "call-2")
        record_consent(session, PORTAL, STALE, terms)
    with ctx.db.session() as session:
        assert require_consent_to_enrol(session, "bank", STALE, Modality.VOICE, "authentication").notice_version == "v2"
    assert purge_inactive(ctx.db, ctx.settings, ctx.keyring) == []  # fresh consent is fresh activity


def test_the_schedule_inside_serve_purges_by_itself(database_url, tmp_path):
    import time

    from service.consent.retention import RetentionSchedule, purge_inactive

    ctx = _deployment(database_url, tmp_path / "data")
    _enrolled(ctx, STALE)
    _last_active(database_url, STALE, days_ago=4000)
    schedule = RetentionSchedule(lambda: purge_inactive(ctx.db, ctx.settings, ctx.keyring), interval_s=3600).start()
    try:
        deadline = time.monotonic() + 60
        while _count(database_url, "SELECT COUNT(*) FROM audit_entries WHERE action = 'retention.purge'") == 0:
            assert time.monotonic() < deadline, "the schedule did not purge"
            time.sleep(0.1)
    finally:
        schedule.stop()
    assert _count(database_url, "SELECT COUNT(*) FROM data_keys WHERE subject_token = :s", s=STALE) == 0


def test_an_upgraded_deployment_counts_retention_from_the_trail_not_from_the_upgrade(database_url):
    from alembic import command

    from service.store.db import alembic_config, upgrade

    command.downgrade(alembic_config(database_url), "0007")
    old, verified, recent = (dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2022, 6, 1, tzinfo=dt.UTC),
                             dt.datetime(2026, 11, 1, tzinfo=dt.UTC))  # fmt: skip
    entry = ("INSERT INTO audit_entries (seq, at, actor, action, subject_token, outcome, details, prev_hash,"
             " entry_hash) VALUES (:seq, :at, 'cli', :action, :s, :outcome, '{}', 'x', 'y')")  # fmt: skip
    _execute(
        database_url,
        text("INSERT INTO tenants (id, name, created_at) VALUES ('bank', 'bank', CURRENT_TIMESTAMP)"),
        *[(text("INSERT INTO subjects (token, tenant_id, created_at) VALUES (:s, 'bank', :at)"), {"s": s, "at": old})
          for s in (STALE, RECENT)],
        (text(entry), {"seq": 1, "at": verified, "action": "consent.grant", "s": STALE, "outcome": "granted"}),
        (text(entry), {"seq": 2, "at": recent, "action": "voice.verify", "s": RECENT, "outcome": "accept"}),
        (text(entry), {"seq": 3, "at": recent, "action": "voice.verify", "s": STALE, "outcome": "reject"}),
    )  # fmt: skip
    upgrade(database_url)
    rows = dict(_rows(database_url, "SELECT token, last_active_at FROM subjects"))
    as_utc = {k: (v if isinstance(v, dt.datetime) else dt.datetime.fromisoformat(v)) for k, v in rows.items()}
    assert as_utc[STALE].replace(tzinfo=dt.UTC) == verified  # a rejected verification is no interaction
    assert as_utc[RECENT].replace(tzinfo=dt.UTC) == recent


def test_a_fraudster_watchlist_entry_is_no_customer_to_purge_or_to_show(database_url, tmp_path, monkeypatch, capsys):
    """A watchlist entry's subject row owns its data key and is never active: retention had shredded entries
    silently, and the portal client could read one as a customer."""
    from service.consent.records import subject_in_tenant
    from service.errors import NotFound
    from service.protected import data_key
    from service.store.models import Subject, WatchlistEntry

    ctx = _deployment(database_url, tmp_path / "data")
    _enrolled(ctx, STALE)
    entry = "wle_" + "c" * 32
    with ctx.db.session() as session:
        session.add(Subject(token=entry, tenant_id="bank"))
        session.flush()
        session.add(WatchlistEntry(id=entry, tenant_id="bank", case_reference="CASE-1", legal_basis="fraud",
                                   added_by="cli_fraud", model_fingerprint="m", sample_count=1, net_speech_s=12.0,
                                   sealed=b"sealed"))  # fmt: skip
        data_key(session, ctx.keyring, entry, "voice", create=True)
    for token in (STALE, entry):
        _last_active(database_url, token, days_ago=3 * 365 + 1)
    code, out, err = _cli(monkeypatch, capsys, tmp_path / "data", "retention", "run", url=database_url)
    assert code == 0 and "1 subjects purged" in out and entry not in out, (out, err)
    assert _count(database_url, "SELECT COUNT(*) FROM data_keys WHERE subject_token = :s", s=entry) == 1
    with ctx.db.session() as session, pytest.raises(NotFound):
        subject_in_tenant(session, "bank", entry)
