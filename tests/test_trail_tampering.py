"""The audit trail (service/trail/) under tampering: direct SQL edits, deletions, insertions and
rehashing are named by ``bioident audit verify-chain``; rows given values of another type are
reported as tampering by the CLI and the API, not as a crash; entries from before signing; anchors
that expose a tail cut behind an older head, and anchor lines not written by ``bioident audit anchor``
refused; no entry appended without the audit key."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.orm import Session

from service.store.db import Database
from service.store.models import AuditEntry
from service.trail.chain import append, compute_hash
from tests.operations_fixtures import (
    TRAIL_LENGTH,
    _audit_key,
    _build_trail,
    _cli,
    _deployment,
    _execute,
    _problem,
    _rows,
)
from tests.service_fixtures import Api

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]


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


def _signature_replaced_with_text_not_ascii(url):
    _execute(url, (text("UPDATE audit_entries SET entry_mac = :m WHERE seq = 4"), {"m": "é" * 64}))
    return 4


def _head_signature_replaced_with_text_not_ascii(url):
    _execute(url, (text("UPDATE audit_head SET last_mac = :m"), {"m": "é" * 64}))
    return TRAIL_LENGTH


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
    "signature-replaced-with-text-not-ascii": _signature_replaced_with_text_not_ascii,
    "head-signature-replaced-with-text-not-ascii": _head_signature_replaced_with_text_not_ascii,
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


DAMAGED = 4  # the entry whose row is given a value of another type


def _retype(url: str, table: str, column: str, sql_type: str, using: str) -> bool:
    """PostgreSQL keeps a column's type: whoever writes a value of another type changes the column first
    (SQLite stores any value in any column as it is). Whether it was changed."""
    if not url.startswith("postgresql"):
        return False
    _execute(url, text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} USING {using}"))
    return True


# Each gives entry DAMAGED a value of another type and returns the entry verify-chain must name: where the
# column's type was changed, every row holds a value of another type, so entry 1 is.
def _details_not_json(url):
    _retype(url, "audit_entries", "details", "text", "details::text")  # JSON is read as text: rows still are
    _execute(url, text(f"UPDATE audit_entries SET details = 'not json' WHERE seq = {DAMAGED}"))
    return DAMAGED


def _details_not_an_object(url):  # JSON, so PostgreSQL takes it as it is
    _execute(url, text(f"UPDATE audit_entries SET details = '[1, 2]' WHERE seq = {DAMAGED}"))
    return DAMAGED


def _time_not_a_time(url):
    retyped = _retype(url, "audit_entries", "at", "text", "at::text")
    _execute(url, text(f"UPDATE audit_entries SET at = 'garbage' WHERE seq = {DAMAGED}"))
    return 1 if retyped else DAMAGED


def _time_a_number(url):
    retyped = _retype(url, "audit_entries", "at", "bigint", "extract(epoch from at)::bigint")
    _execute(url, text(f"UPDATE audit_entries SET at = 12345 WHERE seq = {DAMAGED}"))
    return 1 if retyped else DAMAGED


def _score_not_a_number(url):
    retyped = _retype(url, "audit_entries", "score", "text", "score::text")
    _execute(url, text(f"UPDATE audit_entries SET score = 'abc' WHERE seq = {DAMAGED}"))
    return 1 if retyped else DAMAGED


def _text_not_utf8(url):
    """Bytes that are not UTF-8 where text belongs (SQLite's driver fails a whole query on them)."""
    retyped = _retype(url, "audit_entries", "actor", "bytea", "convert_to(actor, 'UTF8')")
    value = "'\\xff'::bytea" if retyped else "CAST(X'FF' AS TEXT)"
    _execute(url, text(f"UPDATE audit_entries SET actor = {value} WHERE seq = {DAMAGED}"))
    return 1 if retyped else DAMAGED


UNREADABLE = {
    "details-not-json": _details_not_json,
    "details-not-an-object": _details_not_an_object,
    "time-not-a-time": _time_not_a_time,
    "time-a-number": _time_a_number,
    "score-not-a-number": _score_not_a_number,
    "text-not-utf8": _text_not_utf8,
}


@contextmanager
def _service(url: str, data_dir: Path) -> Iterator[tuple[TestClient, dict]]:
    """The API on the trail's database, with an auditor of the trail's tenant; no model is loaded."""
    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app

    ctx = _deployment(url, data_dir)
    try:
        with TestClient(create_app(ctx), raise_server_exceptions=False) as http:
            api = Api(http=http, ctx=ctx, admin_key=bootstrap_admin(ctx.db), data_dir=data_dir)
            api.tenant("bank")
            yield http, api.headers(api.client("bank", "auditor"))
    finally:
        ctx.db.engine.dispose()


@pytest.mark.parametrize("damage", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_row_given_a_value_of_another_type_is_reported_as_tampering_not_a_crash(
    damage, database_url, tmp_path, monkeypatch, capsys
):
    def cli(*argv):
        return _cli(monkeypatch, capsys, tmp_path, *argv, url=database_url)

    _build_trail(database_url, tmp_path)
    with _service(database_url, tmp_path) as (http, auditor):  # the service's own entries follow the trail's
        bad = damage(database_url)

        code, out, err = cli("audit", "verify-chain")
        assert code == 1 and "Traceback" not in err, err
        assert f"audit chain BROKEN at entry {bad}: entry {bad} cannot be read as an audit entry: " in err, err
        code, out, err = cli("audit", "anchor")
        assert code == 1 and f"BROKEN at entry {bad}; not anchoring it" in err, err
        code, out, err = cli("audit", "deployment")
        assert code == 1 and "Traceback" not in err, err
        assert json.loads(out)["audit_chain"]["first_bad_seq"] == bad

        chain = http.get("/v1/audit/chain", headers=auditor)
        assert chain.status_code == 200, chain.text
        assert chain.json()["ok"] is False and chain.json()["first_bad_seq"] == bad
        assert "cannot be read" in chain.json()["problem"]

        # The damaged row is not shown as if it were an entry: the page holding it says where the trail is
        # damaged and how to list past it; a page before it lists as before.
        problem = _problem(http.get("/v1/audit/entries", headers=auditor), 409)
        assert problem["type"].endswith("/audit_trail_damaged"), problem
        assert f"entry {bad} cannot be read" in problem["detail"] and "verify-chain" in problem["detail"]
        assert f"after_seq={bad}" in problem["detail"], problem
        if bad == DAMAGED:
            before = http.get("/v1/audit/entries", params={"limit": DAMAGED - 1}, headers=auditor)
            assert [e["seq"] for e in before.json()["entries"]] == list(range(1, DAMAGED)), before.text
            after = http.get("/v1/audit/entries", params={"after_seq": DAMAGED}, headers=auditor)
            assert after.status_code == 200, after.text
            assert [e["seq"] for e in after.json()["entries"]][:2] == [DAMAGED + 1, DAMAGED + 2]


def test_a_head_row_given_a_value_of_another_type_is_reported_as_tampering_not_a_crash(
    database_url, tmp_path, monkeypatch, capsys
):
    def cli(*argv):
        return _cli(monkeypatch, capsys, tmp_path, *argv, url=database_url)

    _build_trail(database_url, tmp_path)
    with _service(database_url, tmp_path) as (http, auditor):
        _retype(database_url, "audit_head", "last_seq", "text", "last_seq::text")
        _execute(database_url, text("UPDATE audit_head SET last_seq = 'zz'"))

        code, out, err = cli("audit", "verify-chain")
        assert code == 1 and "Traceback" not in err, err
        assert re.search(r"audit chain BROKEN at entry \d+: the head row cannot be read", err), err
        code, out, err = cli("audit", "anchor")
        assert code == 1 and "not anchoring it" in err, err
        code, out, err = cli("audit", "deployment")
        assert code == 1 and json.loads(out)["audit_chain"]["ok"] is False, err

        chain = http.get("/v1/audit/chain", headers=auditor)
        assert chain.status_code == 200 and chain.json()["ok"] is False, chain.text
        assert "head row cannot be read" in chain.json()["problem"]
        entries = http.get("/v1/audit/entries", headers=auditor)  # the entries themselves are intact
        assert entries.status_code == 200 and entries.json()["entries"][0]["seq"] == 1, entries.text


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
    assert anchor["seq"] == TRAIL_LENGTH + 1 and set(anchor) == {"seq", "hash", "mac", "ledger"}
    assert anchor["ledger"]["lines"] == 0 and anchor["ledger"]["last"] == ""  # no withdrawal has destroyed a key
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(out)
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 0 and "1 anchors agree with the trail and the destruction ledger" in out and "intact" in out, err
    anchors.write_text(json.dumps({k: v for k, v in anchor.items() if k != "ledger"}) + "\n")  # an older anchor
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 0 and "1 anchors agree with the trail\n" in out, err

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


def test_anchor_lines_not_written_by_audit_anchor_are_refused_and_the_line_named(
    database_url, tmp_path, monkeypatch, capsys
):
    def cli(*argv):
        return _cli(monkeypatch, capsys, tmp_path, *argv, url=database_url)

    _build_trail(database_url, tmp_path)
    code, out, err = cli("audit", "anchor")
    assert code == 0, err
    anchor = json.loads(out)
    line = out.strip()
    anchors = tmp_path / "anchors.jsonl"

    def overflowing(field: str) -> str:  # a number JSON writes but no float holds
        return json.dumps(dict(anchor, **{field: 999})).replace("999", "1e400")

    bad = {
        "mac not ASCII": json.dumps(dict(anchor, mac="é")),
        "mac of letters not ASCII": json.dumps(dict(anchor, mac="é" * 64)),
        "seq overflowing": overflowing("seq"),
        "seq with a fraction": json.dumps(dict(anchor, seq=TRAIL_LENGTH + 0.7)),
        "seq a whole float": json.dumps(dict(anchor, seq=float(TRAIL_LENGTH))),
        "seq as text": json.dumps(dict(anchor, seq=str(TRAIL_LENGTH))),
        "seq true": json.dumps(dict(anchor, seq=True)),
        "seq zero": json.dumps(dict(anchor, seq=0)),
        "hash in capitals": json.dumps(dict(anchor, hash=anchor["hash"].upper())),
        "hash short": json.dumps(dict(anchor, hash=anchor["hash"][:-1])),
        "mac a number": json.dumps(dict(anchor, mac=5)),
        "field unknown": json.dumps(dict(anchor, note="x")),
        "ledger lines negative": json.dumps(dict(anchor, ledger=dict(anchor["ledger"], lines=-1))),
        "ledger lines with a fraction": json.dumps(dict(anchor, ledger=dict(anchor["ledger"], lines=0.5))),
        "ledger lines overflowing": json.dumps(dict(anchor, ledger=dict(anchor["ledger"], lines=999))).replace(
            "999", "1e400"
        ),
        "ledger last not hex": json.dumps(dict(anchor, ledger=dict(anchor["ledger"], last="é"))),
        "ledger mac not ASCII": json.dumps(dict(anchor, ledger=dict(anchor["ledger"], mac="é"))),
        "ledger without mac": json.dumps(dict(anchor, ledger={"lines": 0, "last": ""})),
        "ledger not an object": json.dumps(dict(anchor, ledger=5)),
        "not an object": json.dumps([anchor]),
        "nested too deep": "[" * 100_000,
        "not JSON": "seq=1",
    }
    for case, text_ in bad.items():
        anchors.write_text(f"{line}\n\n{text_}\n", encoding="utf-8")
        code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
        assert code == 2, (case, out, err)
        assert "bioident: error:" in err and "line 3 is not an anchor" in err and "Traceback" not in err, (case, err)

    anchors.write_text(f"{line}\n")  # what ``audit anchor`` wrote is still taken
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 0 and "1 anchors agree with the trail and the destruction ledger" in out, err
