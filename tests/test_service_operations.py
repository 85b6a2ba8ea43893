"""Operating the service: the audit chain under tampering, key rotation and retirement, keyring file
hygiene, ``bioident serve`` as an operator starts it, and bad requests that must never become a 5xx.

The CLI runs in process through ``service.cli.main`` with ``BIOIDENT_*`` variables, against the same
databases (SQLite file and PostgreSQL) as the HTTP tests.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.orm import Session

from service.store.db import Database
from service.store.models import AuditEntry
from service.trail.chain import append, compute_hash
from tests.conftest import REPO, TEST_OTHER
from tests.operations_fixtures import (
    SERVICE_VARIABLES,
    TRAIL_LENGTH,
    _audit_key,
    _build_trail,
    _cli,
    _execute,
    _problem,
    _rows,
)
from tests.voice_helpers import ENROL, GENUINE, IMPOSTOR, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]


# --- the audit chain under tampering ------------------------------------------------------------


def _entry(url: str, seq: int) -> AuditEntry:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            entry = session.execute(select(AuditEntry).where(AuditEntry.seq == seq)).scalar_one()
            session.expunge(entry)
            return entry
    finally:
        engine.dispose()


def _forged(seq: int, prev_hash: str, *, hashed: bool) -> dict:
    """A made-up entry; with ``hashed`` its own hash is computed correctly, as a careful forger would."""
    entry = AuditEntry(
        seq=seq,
        at=dt.datetime.now(dt.UTC),
        tenant_id="bank",
        actor="cli_0",
        action="voice.verify",
        subject_token=f"sub_{999:064x}",
        outcome="accept",
        score=0.99,
        model_fingerprint="ecapa-voxceleb-test",
        details={"forged": True},
        prev_hash=prev_hash,
    )
    entry.entry_hash = compute_hash(entry) if hashed else "f" * 64
    return {column.name: getattr(entry, column.name) for column in AuditEntry.__table__.columns}


def _edit_outcome(url):
    _execute(url, text("UPDATE audit_entries SET outcome = 'accept' WHERE seq = 2"))
    return 2


def _edit_score(url):
    _execute(url, text("UPDATE audit_entries SET score = 0.99 WHERE seq = 4"))
    return 4


def _backdate(url):
    earlier = _entry(url, 3).at - dt.timedelta(days=1)
    _execute(url, (text("UPDATE audit_entries SET at = :at WHERE seq = 3"), {"at": earlier}))
    return 3


def _delete_middle(url):
    _execute(url, text("DELETE FROM audit_entries WHERE seq = 3"))
    return 3


def _delete_last(url):
    _execute(url, text(f"DELETE FROM audit_entries WHERE seq = {TRAIL_LENGTH}"))
    return TRAIL_LENGTH


def _append_made_up_hash_and_move_head(url):
    forged = _forged(TRAIL_LENGTH + 1, _entry(url, TRAIL_LENGTH).entry_hash, hashed=False)
    _execute(
        url,
        insert(AuditEntry.__table__).values(**forged),
        (text("UPDATE audit_head SET last_seq = :s, last_hash = :h"), {"s": forged["seq"], "h": forged["entry_hash"]}),
    )
    return TRAIL_LENGTH + 1


def _append_correctly_hashed(url):
    # The forger chains the new entry properly but cannot move the head without being noticed elsewhere.
    _execute(
        url,
        insert(AuditEntry.__table__).values(
            **_forged(TRAIL_LENGTH + 1, _entry(url, TRAIL_LENGTH).entry_hash, hashed=True)
        ),
    )
    return TRAIL_LENGTH + 1


def _insert_in_the_middle(url):
    # Entries 3.. move up one place (through negative numbers, so no key collides on the way) and a
    # correctly hashed forgery linked to entry 2 takes place 3: it cannot be signed.
    forged = _forged(3, _entry(url, 2).entry_hash, hashed=True)
    _execute(
        url,
        text("UPDATE audit_entries SET seq = -seq WHERE seq >= 3"),
        text("UPDATE audit_entries SET seq = 1 - seq WHERE seq < 0"),
        insert(AuditEntry.__table__).values(**forged),
        text("UPDATE audit_head SET last_seq = last_seq + 1"),
    )
    return 3


def _rewrite_last_with_its_hash(url):
    last = _entry(url, TRAIL_LENGTH)
    last.outcome = "accept" if last.outcome == "reject" else "reject"
    _execute(
        url,
        (
            text("UPDATE audit_entries SET outcome = :o, entry_hash = :h WHERE seq = :s"),
            {"o": last.outcome, "h": compute_hash(last), "s": TRAIL_LENGTH},
        ),
    )
    return TRAIL_LENGTH


def _rehash_from(url: str, seq: int) -> None:
    """What someone with write access to the database can do: recompute every hash from ``seq`` and the head."""
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            entries = session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars().all()
            prev = entries[seq - 2].entry_hash if seq > 1 else "0" * 64
            for entry in entries[seq - 1 :]:
                entry.prev_hash = prev
                entry.entry_hash = prev = compute_hash(entry)
            session.execute(text("UPDATE audit_head SET last_hash = :h"), {"h": prev})
    finally:
        engine.dispose()


def _edit_and_rehash_everything_after(url):
    _execute(url, text("UPDATE audit_entries SET outcome = 'accept' WHERE seq = 2"))
    _rehash_from(url, 2)
    return 2


def _rewrite_last_and_the_head(url):
    _execute(url, text(f"UPDATE audit_entries SET score = 0.5 WHERE seq = {TRAIL_LENGTH}"))
    _rehash_from(url, TRAIL_LENGTH)
    return TRAIL_LENGTH


def _strip_signatures_and_rehash(url):
    _execute(url, text("UPDATE audit_entries SET entry_mac = NULL, outcome = 'accept' WHERE seq >= 4"))
    _rehash_from(url, 4)
    return 4


def _cut_tail_and_move_head(url):
    _execute(
        url,
        text(f"DELETE FROM audit_entries WHERE seq = {TRAIL_LENGTH}"),
        (
            text("UPDATE audit_head SET last_seq = :s, last_hash = :h"),
            {"s": TRAIL_LENGTH - 1, "h": _entry(url, TRAIL_LENGTH - 1).entry_hash},
        ),
    )
    return TRAIL_LENGTH - 1  # the head's signature no longer matches: the last entry left is named


def _delete_head(url):
    _execute(url, text("DELETE FROM audit_head"))
    return None  # nothing but the head is wrong: no entry to name, but the trail must not pass


TAMPERING = {
    "edited-outcome": _edit_outcome,
    "edited-score": _edit_score,
    "backdated": _backdate,
    "deleted-middle-entry": _delete_middle,
    "deleted-last-entry": _delete_last,
    "appended-with-made-up-hash-and-head-moved": _append_made_up_hash_and_move_head,
    "appended-with-correct-hash": _append_correctly_hashed,
    "inserted-in-the-middle": _insert_in_the_middle,
    "last-entry-rewritten-with-its-hash": _rewrite_last_with_its_hash,
    "head-row-deleted": _delete_head,
    "edited-and-every-later-hash-recomputed": _edit_and_rehash_everything_after,
    "last-entry-and-head-rewritten-with-hashes": _rewrite_last_and_the_head,
    "signatures-stripped-and-rehashed": _strip_signatures_and_rehash,
    "tail-cut-and-head-moved": _cut_tail_and_move_head,
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_verify_chain_passes_an_intact_trail_and_names_the_entry_after_direct_sql_tampering(
    tamper, database_url, tmp_path, monkeypatch, capsys
):
    _build_trail(database_url, tmp_path)
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "audit", "verify-chain", url=database_url)
    assert code == 0, err
    assert "intact" in out and f"{TRAIL_LENGTH} entries (all signed)" in out

    bad_seq = tamper(database_url)

    code, out, err = _cli(monkeypatch, capsys, tmp_path, "audit", "verify-chain", url=database_url)
    assert code == 1, (out, err)
    assert "intact" not in out
    named = re.search(r"BROKEN at entry (\d+)", err)
    assert named, err
    if bad_seq is not None:
        assert int(named.group(1)) == bad_seq, err


def test_entries_from_before_signing_are_counted_and_every_later_entry_must_be_signed(
    database_url, tmp_path, monkeypatch, capsys
):
    _build_trail(database_url, tmp_path)
    # A trail begun before entries were signed (or one whose signatures someone stripped).
    _execute(
        database_url, text("UPDATE audit_entries SET entry_mac = NULL"), text("UPDATE audit_head SET last_mac = NULL")
    )
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "audit", "verify-chain", url=database_url)
    assert code == 1 and "BROKEN at entry 1: entry 1 is not signed" in err

    monkeypatch.setenv("BIOIDENT_AUDIT_UNSIGNED_UP_TO", str(TRAIL_LENGTH))  # the operator vouches for them
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "audit", "verify-chain", url=database_url)
    assert code == 0, err
    assert f"{TRAIL_LENGTH} entries ({TRAIL_LENGTH} unsigned, from before signing began)" in out

    db = Database(database_url, audit_key=_audit_key(tmp_path))
    with db.session() as session:
        append(session, actor="operator", action="keys.rotate", outcome="rotated")
    db.engine.dispose()
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "audit", "verify-chain", url=database_url)
    assert code == 0 and f"{TRAIL_LENGTH + 1} entries ({TRAIL_LENGTH} unsigned" in out, err

    _execute(database_url, text(f"UPDATE audit_entries SET entry_mac = NULL WHERE seq = {TRAIL_LENGTH + 1}"))
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "audit", "verify-chain", url=database_url)
    assert code == 1 and f"BROKEN at entry {TRAIL_LENGTH + 1}: entry {TRAIL_LENGTH + 1} is not signed" in err


def test_another_keyring_cannot_vouch_for_the_trail(database_url, tmp_path, monkeypatch, capsys):
    for name in ("ours", "theirs"):
        (tmp_path / name).mkdir(mode=0o700)
    _build_trail(database_url, tmp_path / "ours")
    # The trail was written before any keyring was bound to the database (as in one made before
    # binding existed): another deployment's keyring is refused, since it cannot verify the head.
    _audit_key(tmp_path / "theirs")
    code, out, err = _cli(monkeypatch, capsys, tmp_path / "theirs", "audit", "verify-chain", url=database_url)
    assert code == 2 and "does not open this database's data" in err, err
    assert _rows(database_url, "SELECT keyring_id FROM keyring_state") == [(None,)]
    code, out, err = _cli(monkeypatch, capsys, tmp_path / "ours", "audit", "verify-chain", url=database_url)
    assert code == 0 and "intact" in out, err
    assert _rows(database_url, "SELECT keyring_id FROM keyring_state") != [(None,)]


def test_a_host_without_the_keyring_is_told_so_and_no_keyring_is_made(database_url, tmp_path, monkeypatch, capsys):
    import uvicorn

    (tmp_path / "ours").mkdir(mode=0o700)
    _build_trail(database_url, tmp_path / "ours")
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("serve started without the keyring"))
    commands = [
        ("audit", "verify-chain"),
        ("audit", "deployment"),
        ("keys", "list"),
        ("keys", "rotate"),
        ("keys", "retire", "1"),
        # These two may create a keyring, but not for a database whose audit entries another one signed.
        ("clients", "create", "--tenant", "bank", "--name", "ivr-2", "--role", "ivr"),
        ("serve", "--port", "1"),
    ]
    for argv in commands:
        code, out, err = _cli(monkeypatch, capsys, elsewhere, *argv, url=database_url)
        assert code == 2, (argv, out, err)
        assert f"no keyring at {elsewhere / 'keyring.json'}" in err and "BROKEN" not in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (elsewhere / "keyring.json").exists(), argv
    assert _rows(database_url, "SELECT count(*) FROM audit_entries") == [(TRAIL_LENGTH,)]
    assert _rows(database_url, "SELECT count(*) FROM clients") == [(0,)]

    code, out, err = _cli(monkeypatch, capsys, tmp_path / "ours", "audit", "verify-chain", url=database_url)
    assert code == 0 and "intact" in out, err


def test_a_database_belongs_to_the_first_keyring_loaded_against_it(database_url, tmp_path, monkeypatch, capsys):
    from service.vault import Keyring

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    code, out, err = _cli(monkeypatch, capsys, ours, "audit", "verify-chain", url=database_url)
    assert code == 2 and "no keyring at" in err, err
    _audit_key(ours)  # our keyring exists; the first command to load it binds it to the database
    code, out, err = _cli(monkeypatch, capsys, ours, "audit", "verify-chain", url=database_url)
    assert code == 0 and "intact: 0 entries" in out, err

    # Another host that made its own keyring file is refused by every command, before it writes anything.
    theirs.mkdir(mode=0o700)
    foreign = Keyring.load_or_create(theirs / "keyring.json")
    for argv in (
        ("audit", "verify-chain"),
        ("keys", "rotate"),
        ("clients", "create", "--tenant", "t", "--name", "a", "--role", "ivr"),
    ):
        code, out, err = _cli(monkeypatch, capsys, theirs, *argv, url=database_url)
        assert code == 2 and "is not the one this database was set up with" in err, (argv, err)
        assert foreign.identity()[:12] in err and "Traceback" not in err
    assert _rows(database_url, "SELECT count(*) FROM clients") == [(0,)]
    assert _rows(database_url, "SELECT count(*) FROM audit_entries") == [(0,)]
    monkeypatch.setenv("BIOIDENT_KEYRING", (theirs / "keyring.json").read_text())  # from a secret store
    code, out, err = _cli(monkeypatch, capsys, ours, "audit", "verify-chain", url=database_url)
    assert code == 2 and "the keyring from BIOIDENT_KEYRING" in err and "set up with" in err, err
    monkeypatch.delenv("BIOIDENT_KEYRING")


def test_hosts_setting_up_one_new_database_at_once_leave_exactly_one_keyring_bound(database_url, tmp_path):
    import threading

    from service.deployment_keyring import load_keyring
    from service.settings import ServiceSettings
    from service.vault import KeyringMismatch

    hosts = [tmp_path / f"host{i}" for i in range(4)]
    start = threading.Barrier(len(hosts), timeout=60)  # a host failing before it would break it, not hang
    outcomes: dict[int, object] = {}

    def set_up(i: int) -> None:
        hosts[i].mkdir(mode=0o700)
        db = Database(database_url)
        try:
            start.wait()
            outcomes[i] = load_keyring(ServiceSettings(data_dir=hosts[i], database_url=database_url), db, create=True)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc
        finally:
            db.engine.dispose()

    threads = [threading.Thread(target=set_up, args=(i,)) for i in range(len(hosts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    assert len(winners) == 1, outcomes
    losers = {i: outcome for i, outcome in outcomes.items() if i not in winners}
    assert all(isinstance(outcome, KeyringMismatch) for outcome in losers.values()), losers
    assert [host.name for host in hosts if (host / "keyring.json").exists()] == [hosts[winners[0]].name]
    assert _rows(database_url, "SELECT keyring_id FROM keyring_state") == [(outcomes[winners[0]].identity(),)]


def test_a_new_keyring_is_refused_for_a_database_holding_subjects_or_data_keys(
    database_url, tmp_path, monkeypatch, capsys
):
    _execute(
        database_url,
        text("INSERT INTO tenants (id, name, created_at) VALUES ('bank', 'bank', CURRENT_TIMESTAMP)"),
        text("INSERT INTO subjects (token, tenant_id, created_at) VALUES ('sub_1', 'bank', CURRENT_TIMESTAMP)"),
    )
    code, out, err = _cli(
        monkeypatch,
        capsys,
        tmp_path / "new",
        "clients",
        "create",
        "--tenant",
        "bank",
        "--name",
        "a",
        "--role",
        "ivr",
        url=database_url,
    )
    assert code == 2 and "the database holds data made with one" in err, err
    assert not (tmp_path / "new" / "keyring.json").exists()


def test_an_anchor_exposes_a_tail_cut_behind_an_older_head_put_back(database_url, tmp_path, monkeypatch, capsys):
    def cli(*argv):
        return _cli(monkeypatch, capsys, tmp_path, *argv, url=database_url)

    _audit_key(tmp_path)  # the deployment's keyring
    code, out, err = cli("audit", "anchor")
    assert code == 2 and "no signed entries" in err, err
    _build_trail(database_url, tmp_path)
    old_head = _rows(database_url, "SELECT last_seq, last_hash, last_mac FROM audit_head")[0]
    db = Database(database_url, audit_key=_audit_key(tmp_path))
    with db.session() as session:
        append(session, actor="operator", action="keys.rotate", outcome="rotated")
    db.engine.dispose()
    code, out, err = cli("audit", "anchor")
    assert code == 0, err
    anchor = json.loads(out)
    assert anchor["seq"] == TRAIL_LENGTH + 1 and set(anchor) == {"seq", "hash", "mac"}
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(out)
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 0 and "1 anchors agree" in out and "intact" in out, err

    # Someone with write access removes the last entry and puts back the head row as it was before it.
    _execute(
        database_url,
        text(f"DELETE FROM audit_entries WHERE seq = {TRAIL_LENGTH + 1}"),
        (
            text("UPDATE audit_head SET last_seq = :s, last_hash = :h, last_mac = :m"),
            dict(zip("shm", old_head, strict=True)),
        ),
    )
    code, out, err = cli("audit", "verify-chain")
    assert code == 0, err  # the trail alone cannot tell
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 1 and f"BROKEN at entry {TRAIL_LENGTH + 1}" in err and "cut off" in err, err

    forged = dict(anchor, mac="0" * 64)
    anchors.write_text(json.dumps(forged) + "\n")
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 1 and "not signed by this deployment's keyring" in err, err
    anchors.write_text("{}\n")
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 2 and "line 1 is not an anchor" in err and "Traceback" not in err, err
    code, out, err = cli("audit", "verify-chain", "--anchors", tmp_path / "missing.jsonl")
    assert code == 2 and "missing.jsonl" in err, err


def test_appending_without_the_audit_key_is_refused(database_url):
    from service.trail.chain import AuditKeyMissing

    db = Database(database_url)
    with pytest.raises(AuditKeyMissing), db.session() as session:
        append(session, actor="operator", action="keys.rotate", outcome="rotated")
    db.engine.dispose()


# --- key rotation and retirement ---------------------------------------------------------------


def _keyring_document(data_dir: Path) -> dict[int, dict]:
    document = json.loads((data_dir / "keyring.json").read_text())
    return {entry["version"]: entry for entry in document["keks"]}


def _reload_keyring(api) -> None:
    """What a restart (or a reload) of the running service does after an operator rotated keys."""
    from service.vault import Keyring

    api.ctx.keyring = Keyring.load_or_create(api.data_dir / "keyring.json")


def test_rotation_rewraps_data_keys_without_reencrypting_templates_and_old_versions_can_be_retired(
    bank, monkeypatch, capsys
):
    api, keys = bank
    url, data_dir = api.ctx.db.url, api.data_dir

    def cli(*argv):
        return _cli(monkeypatch, capsys, data_dir, *argv, url=url)

    consent = _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    assert _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()["decision"] == "accept"
    data_keys_sql = "SELECT subject_token, kek_version, wrapped FROM data_keys ORDER BY id"
    templates_sql = "SELECT id, sealed, updated_at FROM templates ORDER BY id"
    keys_before, templates_before = _rows(url, data_keys_sql), _rows(url, templates_sql)
    assert [(t, v) for t, v, _ in keys_before] == [(consent["subject_token"], 1)]
    assert len(templates_before) == 1

    code, out, err = cli("keys", "retire", "1")  # active, and wrapping the subject's data key
    assert code != 0 and "version 1" in err, (out, err)
    assert _keyring_document(data_dir)[1]["status"] == "active" and "key" in _keyring_document(data_dir)[1]

    code, out, err = cli("keys", "rotate")
    assert code == 0, err
    assert "version 2 is active" in out and "1 data keys re-wrapped" in out

    keys_after, templates_after = _rows(url, data_keys_sql), _rows(url, templates_sql)
    assert [(t, v) for t, v, _ in keys_after] == [(consent["subject_token"], 2)]
    assert keys_after[0][2] != keys_before[0][2]  # re-wrapped under the new key-encryption key
    assert templates_after == templates_before  # the template itself was not decrypted or re-sealed
    document = _keyring_document(data_dir)
    assert {v: e["status"] for v, e in document.items()} == {1: "decrypt_only", 2: "active"}
    assert stat.S_IMODE((data_dir / "keyring.json").stat().st_mode) == 0o600

    # No restart: the running service notices the rotated keyring file by itself.
    after_rotation = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE)
    assert after_rotation.status_code == 200 and after_rotation.json()["decision"] == "accept", after_rotation.text

    code, out, err = cli("keys", "retire", "1")
    assert code == 0, err
    assert "version 1 retired" in out
    document = _keyring_document(data_dir)
    assert document[1]["status"] == "retired" and "key" not in document[1]  # the material is gone
    after_retirement = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE)
    assert after_retirement.status_code == 200 and after_retirement.json()["decision"] == "accept"
    assert _verify(api, keys["ivr"], IMPOSTOR).json()["decision"] == "reject"

    code, out, err = cli("keys", "retire", "2")  # the active version
    assert code != 0, out
    assert "version 2" in err and ("active" in err or "rotate" in err), err
    assert _keyring_document(data_dir)[2]["status"] == "active" and "key" in _keyring_document(data_dir)[2]

    code, out, _ = cli("keys", "list")
    assert code == 0
    assert [line.split("\t")[:2] for line in out.splitlines()] == [["1", "retired"], ["2", "active"]]

    code, out, err = cli("audit", "verify-chain")  # real scores, and the operator's own entries, round-trip
    assert code == 0, err
    actions = _rows(url, "SELECT action, outcome FROM audit_entries WHERE actor = 'operator' ORDER BY seq")
    assert actions == [("keys.rotate", "rotated"), ("keys.retire", "retired")]


def test_a_replica_with_an_outdated_keyring_is_fenced_off_and_a_version_in_use_cannot_be_retired(
    bank, monkeypatch, capsys
):
    api, keys = bank
    url, data_dir = api.ctx.db.url, api.data_dir

    def cli(*argv):
        return _cli(monkeypatch, capsys, data_dir, *argv, url=url)

    def add_sample(enrolment_id: str, name: str):
        return api.http.post(
            f"/v1/voice/enrolments/{enrolment_id}/samples",
            files=[_audio(TEST_OTHER / SPEAKER / name)],
            headers=api.headers(keys["ivr"]),
        )

    _consent(api, keys["portal"])
    from service.vault import Keyring

    stale = Keyring.load(data_dir / "keyring.json")
    code, out, err = cli("keys", "rotate")
    assert code == 0 and "0 data keys re-wrapped" in out, err

    # A replica that has not seen the rotation yet may not wrap a data key under version 1, which
    # the operator may retire next: its request fails and leaves nothing behind.
    api.ctx.keyring = stale
    started = api.http.post("/v1/voice/enrolments", json={"reference": "ACC-1001"}, headers=api.headers(keys["ivr"]))
    assert started.status_code == 201, started.text
    refused = add_sample(started.json()["id"], ENROL[0])
    body = _problem(refused, 503)
    assert body["type"].endswith("/keyring_outdated") and "retry" in body["detail"] and "version" not in body["detail"]
    assert refused.headers["Retry-After"] == "5"
    assert _rows(url, "SELECT count(*) FROM data_keys") == [(0,)]
    _reload_keyring(api)
    sample = add_sample(started.json()["id"], ENROL[0])
    assert sample.status_code == 201 and sample.json()["accepted"] is True, sample.text
    assert _rows(url, "SELECT kek_version FROM data_keys") == [(2,)]

    # A version added to the keyring file without 'keys rotate' leaves the data key under version 2.
    Keyring.load(data_dir / "keyring.json").add_version()
    code, out, err = cli("keys", "retire", "2")
    assert code != 0, out
    assert "still wrapped by version 2" in err and "rotate" in err, err
    document = _keyring_document(data_dir)
    assert document[2]["status"] == "decrypt_only" and "key" in document[2]  # nothing was destroyed

    code, out, err = cli("keys", "rotate")
    assert code == 0 and "version 4 is active; 1 data keys re-wrapped" in out, err
    assert _rows(url, "SELECT kek_version FROM data_keys") == [(4,)]
    for version in ("1", "2", "3"):
        code, out, err = cli("keys", "retire", version)
        assert code == 0, err
    _reload_keyring(api)
    completed_later = add_sample(started.json()["id"], ENROL[1])
    assert completed_later.status_code == 201, completed_later.text  # the data key opens under version 4


def test_keys_from_a_secret_store_are_rewrapped_and_cleared_for_retirement(database_url, tmp_path, monkeypatch, capsys):
    from service.protected import data_key
    from service.vault import Keyring, KeyringOutdated

    secret_store = tmp_path / "secret-store"
    secret_store.mkdir(mode=0o700)
    keyring = Keyring.load_or_create(secret_store / "keyring.json")
    _execute(
        database_url,
        text("INSERT INTO tenants (id, name, created_at) VALUES ('bank', 'bank', CURRENT_TIMESTAMP)"),
        text("INSERT INTO subjects (token, tenant_id, created_at) VALUES ('sub_1', 'bank', CURRENT_TIMESTAMP)"),
    )
    db = Database(database_url, audit_key=keyring.audit_key())
    with db.session() as session:
        data_key(session, keyring, "sub_1", "voice", create=True)
    db.engine.dispose()
    (tmp_path / "foreign").mkdir(mode=0o700)
    _audit_key(tmp_path / "foreign")  # a keyring that cannot unwrap the data key is not bound
    code, out, err = _cli(monkeypatch, capsys, tmp_path / "foreign", "audit", "verify-chain", url=database_url)
    assert code == 2 and "does not open this database's data" in err, err
    monkeypatch.setenv("BIOIDENT_KEYRING", (secret_store / "keyring.json").read_text())

    def cli(*argv):
        return _cli(monkeypatch, capsys, tmp_path / "replica", *argv, url=database_url)

    code, out, err = cli("keys", "rotate")  # the secret store holds version 1 only: nothing to rotate to
    assert code == 2 and "no version newer than 1" in err, err
    before_rotation = (secret_store / "keyring.json").read_text()
    keyring.add_version()  # the secret store's new version; replicas are redeployed with it
    monkeypatch.setenv("BIOIDENT_KEYRING", (secret_store / "keyring.json").read_text())
    code, out, err = cli("keys", "retire", "1")
    assert code == 2 and "still wrapped by version 1" in err, err
    code, out, err = cli("keys", "rotate")
    assert code == 0 and "version 2 is active; 1 data keys re-wrapped" in out, err
    assert _rows(database_url, "SELECT kek_version FROM data_keys") == [(2,)]
    code, out, err = cli("keys", "rotate")
    assert code == 2 and "no version newer than 2" in err, err
    # A replica still deployed with the old secret cannot reload it: its refusal asks for no retry.
    db = Database(database_url, audit_key=keyring.audit_key())
    try:
        with db.session() as session, pytest.raises(KeyringOutdated) as refused:
            data_key(
                session, Keyring.from_env({"BIOIDENT_KEYRING": before_rotation}), "sub_1", "fingerprint", create=True
            )
    finally:
        db.engine.dispose()
    assert refused.value.retry_after_s is None and "redeploy" in refused.value.public_detail
    keyring.add_version()  # version 3 in the secret store, not yet rotated to: replicas may wrap under it
    monkeypatch.setenv("BIOIDENT_KEYRING", (secret_store / "keyring.json").read_text())
    for version, why in (("3", "still one replicas may wrap under"), ("7", "not in BIOIDENT_KEYRING")):
        code, out, err = cli("keys", "retire", version)
        assert code == 2 and why in err, (version, err)
    code, out, err = cli("keys", "retire", "1")
    assert code == 0 and "destroy it in the secret store" in out, err
    actions = _rows(database_url, "SELECT action, outcome FROM audit_entries WHERE actor = 'operator' ORDER BY seq")
    assert actions == [("keys.rotate", "rotated"), ("keys.retire", "cleared")]
    assert not (tmp_path / "replica" / "keyring.json").exists()


def test_a_running_service_picks_up_a_rotation_inside_a_request_and_refuses_a_foreign_keyring(
    bank, monkeypatch, capsys
):
    api, keys = bank
    url, data_dir = api.ctx.db.url, api.data_dir
    _consent(api, keys["portal"])
    started = api.http.post("/v1/voice/enrolments", json={"reference": "ACC-1001"}, headers=api.headers(keys["ivr"]))
    code, out, err = _cli(monkeypatch, capsys, data_dir, "keys", "rotate", url=url)
    assert code == 0, err
    # The first use of the keyring after the rotation comes inside the sample's database session.
    sample = api.http.post(
        f"/v1/voice/enrolments/{started.json()['id']}/samples",
        files=[_audio(TEST_OTHER / SPEAKER / ENROL[0])],
        headers=api.headers(keys["ivr"]),
    )
    assert sample.status_code == 201, sample.text
    assert _rows(url, "SELECT kek_version FROM data_keys") == [(2,)]

    from service.vault import Keyring, KeyringMismatch

    (data_dir / "keyring.json").unlink()
    Keyring.load_or_create(data_dir / "keyring.json")  # someone puts another keyring in its place
    with pytest.raises(KeyringMismatch):
        api.ctx.keyring  # noqa: B018


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_rotation_waits_for_a_data_key_being_wrapped_on_another_replica(database_url):
    from sqlalchemy.exc import OperationalError

    from service.protected import lock_fence, rewrap_all
    from service.vault import Keyring

    keyring = Keyring.ephemeral()
    keyring.add_version()
    wrapping, rotating = Database(database_url), Database(database_url)
    try:
        with wrapping.session() as in_flight:
            assert lock_fence(in_flight, exclusive=False).min_wrap_version == 0  # a wrap's shared lock, held
            with pytest.raises(OperationalError, match="lock timeout"), rotating.session() as session:
                session.execute(text("SET LOCAL lock_timeout = '300ms'"))
                rewrap_all(session, keyring)
        with rotating.session() as session:  # the wrap committed: the rotation goes through
            assert rewrap_all(session, keyring) == 0
        with wrapping.session() as session:
            assert lock_fence(session, exclusive=False).min_wrap_version == 2
    finally:
        wrapping.engine.dispose()
        rotating.engine.dispose()


# --- the keyring file --------------------------------------------------------------------------


def test_the_keyring_file_is_private_and_an_open_one_is_refused_with_a_chmod_hint(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"
    keyring_file = data_dir / "keyring.json"
    previous_umask = os.umask(0)  # the file must be private whatever the operator's umask
    try:
        code, out, err = _cli(monkeypatch, capsys, data_dir, "db", "upgrade")
        assert code == 0 and "latest schema" in out, err
        assert not keyring_file.exists()  # migrating needs no keyring
        code, out, err = _cli(monkeypatch, capsys, data_dir, "keys", "list")
        assert code == 2 and "no keyring at" in err, (out, err)
        code, out, err = _cli(
            monkeypatch, capsys, data_dir, "clients", "create", "--tenant", "t", "--name", "a", "--role", "admin"
        )
        assert code == 0, err  # a new deployment: its first client creates the keyring
        code, out, err = _cli(monkeypatch, capsys, data_dir, "keys", "list")
        assert code == 0, err
        assert [line.split("\t")[:2] for line in out.splitlines()] == [["1", "active"]]
        assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600

        code, out, err = _cli(monkeypatch, capsys, data_dir, "keys", "rotate")
        assert code == 0, err
        assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600  # rewritten, still private
        assert sorted(p.name for p in data_dir.iterdir() if "keyring" in p.name) == ["keyring.json"]
    finally:
        os.umask(previous_umask)

    saved = keyring_file.read_bytes()
    for mode in (0o644, 0o640, 0o604):
        keyring_file.chmod(mode)
        for argv in (("keys", "list"), ("keys", "rotate"), ("keys", "retire", "1")):
            code, out, err = _cli(monkeypatch, capsys, data_dir, *argv)
            assert code == 2, (argv, out, err)
            assert "chmod 600" in err and f"{mode:04o}" in err, err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert keyring_file.read_bytes() == saved  # a refused rotation added no version

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("serve started with an open keyring"))
    code, out, err = _cli(monkeypatch, capsys, data_dir, "serve", "--port", "1")
    assert code == 2 and "chmod 600" in err, (out, err)
    assert "first admin API key" not in out


# --- bioident serve ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path, logs: Path) -> tuple[subprocess.Popen, str, Path, Path]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env["BIOIDENT_DATA_DIR"] = str(data_dir)
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{port}.out", logs / f"{port}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}: {err_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).json() == {"status": "ok"}:
                return process, base, out_path, err_path
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"serve did not answer /health in 90 s: {err_path.read_text()[-3000:]}")
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def test_bioident_serve_prints_the_first_admin_key_once_and_answers_over_http(tmp_path):
    data_dir, logs = tmp_path / "data", tmp_path / "logs"
    process = None
    try:
        process, base, out_path, err_path = _serve(data_dir, logs)
        lines = out_path.read_text().splitlines()
        assert lines and "first admin API key" in lines[0], lines
        assert sum("first admin API key" in line for line in lines) == 1, lines
        admin_key = lines[0].rsplit(":", 1)[1].strip()
        assert admin_key.startswith("bik.")
        assert err_path.read_text().count(admin_key) == 0  # shown on stdout only, and not logged

        with httpx.Client(base_url=base, timeout=30) as http:
            docs = http.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            spec = http.get("/openapi.json")
            assert spec.status_code == 200 and "/v1/voice/verify" in spec.json()["paths"]
            clients = http.get("/v1/clients", headers={"Authorization": f"Bearer {admin_key}"})
            assert clients.status_code == 200, clients.text
            assert [(c["role"], c["tenant_id"]) for c in clients.json()] == [("admin", "default")]
            assert all(c["api_key"] is None for c in clients.json())  # never shown again
            anonymous = http.get("/v1/clients")
            _problem(anonymous, 401)
        assert stat.S_IMODE((data_dir / "keyring.json").stat().st_mode) == 0o600
        _stop(process)

        # A restart on the same data directory finds the admin: no new key is printed, the old one works.
        process, base, out_path, _ = _serve(data_dir, logs)
        assert "first admin API key" not in out_path.read_text()
        again = httpx.get(f"{base}/v1/clients", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        assert again.status_code == 200 and len(again.json()) == 1
    finally:
        if process is not None:
            _stop(process)


# --- bad requests never become a 5xx -----------------------------------------------------------

CONSENT = {
    "reference": "ACC-SECRET-4711",
    "modality": "voice",
    "purpose": "authentication",
    "notice_version": "2026-11",
    "notice_text": "We use your voice to recognise you when you call.",
    "channel": "portal",
    "evidence_ref": "portal-session-77",
}


def test_bad_requests_get_4xx_problems_that_do_not_echo_what_was_sent(bank):
    api, keys = bank
    portal, ivr = api.headers(keys["portal"]), api.headers(keys["ivr"])

    malformed = json.dumps(CONSENT)[:-20].encode()  # cut off mid-object
    response = api.http.post("/v1/consents", content=malformed, headers={**portal, "content-type": "application/json"})
    body = _problem(response, 422)
    assert CONSENT["reference"] not in response.text and body["errors"]

    response = api.http.post("/v1/consents", json={**CONSENT, "modality": "face"}, headers=portal)
    body = _problem(response, 422)
    assert [e["field"] for e in body["errors"]] == ["modality"]
    assert CONSENT["reference"] not in response.text and "face" not in response.text

    blank = {**CONSENT, "reference": "   "}  # passes the schema; the tokenizer refuses it
    for wrong in ([CONSENT], None, "text", {**CONSENT, "reference": ""}, {**CONSENT, "reference": 4711}, blank):
        response = api.http.post("/v1/consents", json=wrong, headers=portal)
        _problem(response, 422)
        assert CONSENT["reference"] not in response.text

    _problem(api.http.post("/v1/consents", json=CONSENT), 401)
    _problem(api.http.post("/v1/consents", json=CONSENT, headers={"Authorization": "Bearer bik.cli_x.nope"}), 401)
    _problem(api.http.get("/v1/clients", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    _problem(api.http.get("/v1/clients", headers=ivr), 403)
    _problem(api.http.post("/v1/tenants", json={"id": "shop", "name": "Shop"}, headers=portal), 403)
    genuine = [_audio(TEST_OTHER / SPEAKER / GENUINE)]
    _problem(api.http.post("/v1/voice/verify", data={"reference": "ACC-1001"}, files=genuine, headers=portal), 403)

    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    flac = (TEST_OTHER / SPEAKER / GENUINE).read_bytes()
    not_audio = {
        "text": ("notes.txt", b"this is a text file, not a recording\n" * 40, "text/plain"),
        "empty": ("empty.wav", b"", "audio/wav"),
        "truncated-flac": ("cut.flac", flac[:3000], "audio/flac"),
        "riff-garbage": ("bad.wav", b"RIFF\x00\x10\x00\x00WAVEfmt " + bytes(range(256)) * 4, "audio/wav"),
    }
    for name, upload in not_audio.items():
        for path, form in (
            ("/v1/voice/verify", {"reference": "ACC-1001"}),
            ("/v1/voice/identify", {}),
            ("/v1/voice/enrol", {"reference": "ACC-1001"}),
        ):
            response = api.http.post(path, data=form, files=[("audio", upload)], headers=ivr)
            assert 400 <= response.status_code < 500, (name, path, response.status_code, response.text)
            _problem(response)
    odd_raw = api.http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001", "codec": "pcm16", "sample_rate": "8000"},
        files=[("audio", ("raw.pcm", b"\x01" * 8001, "application/octet-stream"))],
        headers=ivr,
    )
    _problem(odd_raw, 422)
    no_file = api.http.post("/v1/voice/verify", data={"reference": "ACC-1001"}, headers=ivr)
    _problem(no_file, 422)
    assert _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()["decision"] == "accept"  # still serving


def test_text_with_nul_characters_is_refused_not_a_server_error(bank):
    api, keys = bank
    portal, admin = api.headers(keys["portal"]), api.headers(api.admin_key)
    attempts = [
        api.http.post("/v1/consents", json={**CONSENT, "evidence_ref": "portal\u0000session"}, headers=portal),
        api.http.post("/v1/tenants", json={"id": "shop", "name": "Sh\u0000op"}, headers=admin),
        api.http.post("/v1/clients", json={"tenant_id": "ba\u0000nk", "name": "x", "role": "ivr"}, headers=admin),
        api.http.get("/v1/subjects/sub_%00", headers=portal),
    ]
    for response in attempts:
        assert response.status_code < 500, (response.request.url, response.text)
        if response.status_code >= 400:
            _problem(response)


@pytest.fixture
def small_limit_app(database_url, embedder, tmp_path):
    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, database_url=database_url, max_body_bytes=2048)
    ctx = ServiceContext(settings, embedder=embedder, create_keyring=True)
    admin_key = bootstrap_admin(ctx.db)
    with TestClient(create_app(ctx), raise_server_exceptions=False) as http:
        yield http, {"Authorization": f"Bearer {admin_key}"}
    ctx.db.engine.dispose()


def test_a_body_over_the_limit_gets_413_and_is_not_acted_on(small_limit_app):
    http, admin = small_limit_app
    big = http.post("/v1/tenants", json={"id": "shop", "name": "S" * 4000}, headers=admin)
    body = _problem(big, 413)
    assert "2048" in body["detail"]
    audio = http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001"},
        files=[_audio(TEST_OTHER / SPEAKER / GENUINE)],
        headers=admin,
    )
    _problem(audio, 413)

    # Without a Content-Length the limit is enforced while reading: refused (4xx), never processed.
    chunked = http.post(
        "/v1/tenants",
        content=(b"{" + b" " * 1000 for _ in range(5)),
        headers={**admin, "content-type": "application/json"},
    )
    assert 400 <= chunked.status_code < 500, chunked.text
    _problem(chunked)
    taken = http.post("/v1/tenants", json={"id": "shop", "name": "Shop"}, headers=admin)
    assert taken.status_code == 201, taken.text  # neither refused request created the tenant
    small = http.post("/v1/tenants", json={"id": "cafe", "name": "Cafe"}, headers=admin)
    assert small.status_code == 201


def test_an_oversized_chunked_body_gets_413_like_one_with_a_content_length(small_limit_app):
    http, admin = small_limit_app
    chunked = http.post(
        "/v1/tenants", content=(b" " * 1000 for _ in range(5)), headers={**admin, "content-type": "application/json"}
    )
    _problem(chunked, 413)


def test_a_new_sqlite_database_file_is_owner_only(tmp_path):
    from service.store.db import Database, upgrade

    url = f"sqlite:///{tmp_path / 'fresh' / 'bioident.db'}"
    Database(url)
    upgrade(url)
    assert stat.S_IMODE((tmp_path / "fresh" / "bioident.db").stat().st_mode) == 0o600
