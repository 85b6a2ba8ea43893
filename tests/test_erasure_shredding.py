"""What a withdrawal leaves behind, and how it goes (service/erasure): the destruction ledger and its replay
at every start, the shred step that retires the key versions residue is wrapped under, and that residue
in PostgreSQL's dead rows and WAL, read from the disk.

No model: the sealed data is made as enrolment makes it, through the same service functions.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from service.auth import Principal, Role
from tests.operations_fixtures import _cli, _deployment, _execute, _rows

pytestmark = pytest.mark.usefixtures("clean_service_environment")

PORTAL = Principal("cli_portal", "bank", Role.PORTAL)
TOKEN = "sub_" + "e" * 64
STAYS = "sub_" + "f" * 64


def _enrolled(ctx, token: str = TOKEN) -> str:
    """A customer with voice consent, a data key and a sealed template, as enrolment leaves them; the consent id."""
    from service.consent.records import ConsentChannel, ConsentTerms, record_consent
    from service.modality import Modality
    from service.protected import data_key, seal_into
    from service.store.models import Template, Tenant

    with ctx.db.session() as session:
        if session.get(Tenant, "bank") is None:
            session.add(Tenant(id="bank", name="bank"))
            session.flush()
        terms = ConsentTerms(Modality.VOICE, "authentication", "v1", "0" * 64, ConsentChannel.PORTAL, "call-1")
        consent = record_consent(session, PORTAL, token, terms)
        template = Template(
            subject_token=token, tenant_id="bank", modality="voice", model_fingerprint="m", sample_count=1, sealed=b""
        )
        session.add(template)
        session.flush()
        seal_into(template, data_key(session, ctx.keyring, token, "voice", create=True), b"template bytes")
    return consent.id


def _withdraw(ctx, consent_id: str, token: str = TOKEN) -> dict:
    from service.consent.withdrawal import withdraw

    return withdraw(ctx, PORTAL, token, consent_id).destroyed


def _held(url: str, token: str = TOKEN) -> tuple:
    """Data keys, templates and active consents the database holds for the customer."""
    return tuple(
        _rows(url, f"SELECT count(*) FROM {table} WHERE subject_token = :t{extra}", t=token)[0][0]
        for table, extra in (("data_keys", ""), ("templates", ""), ("consents", " AND withdrawn_at IS NULL"))
    )


def _no_model(monkeypatch) -> list:
    """``bioident serve`` up to where it would take traffic: no model is loaded (so no 1:N gallery is
    warmed), no server started."""
    import uvicorn

    import service.context
    import service.galleries

    served = []
    monkeypatch.setattr(service.context.ServiceContext, "embedder", property(lambda ctx: None))
    monkeypatch.setattr(service.galleries, "warm_galleries", lambda ctx: 0)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    return served


# --- the ledger --------------------------------------------------------------------------------


def test_a_withdrawal_interrupted_before_it_committed_is_completed_on_the_next_start(
    database_url, tmp_path, monkeypatch, capsys
):
    import service.consent.withdrawal

    ctx = _deployment(database_url, tmp_path)
    consent_id = _enrolled(ctx)

    class Crash(BaseException):
        """The process stops: after the ledger line was synced, before the transaction committed."""

    def crash(*args, **kwargs):
        raise Crash

    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(service.consent.withdrawal, "record_event", crash)
        _withdraw(ctx, consent_id)
    ctx.db.engine.dispose()
    lines = (tmp_path / "destruction-ledger.jsonl").read_text().splitlines()
    assert [json.loads(line)["subject_token"] for line in lines] == [TOKEN]
    assert _held(database_url) == (1, 1, 1)  # the transaction rolled back: the database shows no withdrawal

    served = _no_model(monkeypatch)
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "serve", url=database_url)
    assert code == 0 and served, err
    assert "1 withdrawals this database did not show were completed" in err
    assert _held(database_url) == (0, 0, 0)
    assert _rows(database_url, "SELECT action, subject_token FROM audit_entries WHERE action = 'erasure.replay'") == [
        ("erasure.replay", TOKEN)
    ]
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "audit", "verify-chain", url=database_url)
    assert code == 0, err

    code, out, err = _cli(monkeypatch, capsys, tmp_path, "serve", url=database_url)  # nothing left to complete
    assert code == 0 and "completed" not in err, err
    assert _rows(database_url, "SELECT count(*) FROM audit_entries WHERE action = 'erasure.replay'") == [(1,)]


def test_a_tampered_or_cut_ledger_refuses_the_start(database_url, tmp_path, monkeypatch, capsys):
    from service.erasure.ledger import Destruction, DestructionLedger
    from service.store.models import utcnow

    ctx = _deployment(database_url, tmp_path)
    _withdraw(ctx, _enrolled(ctx))
    _withdraw(ctx, _enrolled(ctx, STAYS), STAYS)
    ledger_file = tmp_path / "destruction-ledger.jsonl"
    honest = ledger_file.read_text()
    served = _no_model(monkeypatch)

    def start() -> tuple[int, str]:
        code, _, err = _cli(monkeypatch, capsys, tmp_path, "serve", url=database_url)
        return code, err

    first, second = honest.splitlines()
    record = json.loads(second)
    for tampered, why in (
        (first + "\n" + second.replace(record["key_id"], "dk_" + "0" * 32) + "\n", "line 2 is not signed"),
        (first + "\n" + json.dumps({**record, "mac": "0" * 64}) + "\n", "line 2 is not signed"),
        (first + "\n" + "{not json\n", "line 2 is not a ledger line"),
        (honest + second[:40], "line 3 is incomplete"),
        (first + "\n", "has 1 lines, but this database's withdrawals appended 2"),
    ):
        ledger_file.write_text(tampered)
        code, err = start()
        assert code == 2 and why in err and str(ledger_file) in err, (why, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # A line signed with another deployment's keyring is not one of ours either.
    from service.vault import Keyring

    foreign = DestructionLedger(ledger_file, Keyring.ephemeral().ledger_key())
    ledger_file.write_text(honest)
    foreign.append(Destruction(TOKEN, "voice", "dk_" + "1" * 32, 1, utcnow()))
    code, err = start()
    assert code == 2 and "line 3 is not signed by this deployment's keyring" in err, err
    assert not served

    ledger_file.write_text(honest)
    code, err = start()
    assert code == 0 and served, err


# --- the shred step ----------------------------------------------------------------------------


def test_with_a_period_of_zero_a_withdrawal_retires_the_key_version_its_residue_is_under(database_url, tmp_path):
    from service.vault import Keyring, KeyStatus

    ctx = _deployment(database_url, tmp_path, shredding_period_s=0)
    _enrolled(ctx, STAYS)
    destroyed = _withdraw(ctx, _enrolled(ctx))
    assert destroyed["data_key"] is True and destroyed["data_key_kek_version"] == 1
    keyring = Keyring.load(tmp_path / "keyring.json")
    assert {v.version: v.status for v in keyring.versions()} == {1: KeyStatus.RETIRED, 2: KeyStatus.ACTIVE}
    assert _rows(database_url, "SELECT subject_token, kek_version FROM data_keys") == [(STAYS, 2)]
    assert _rows(database_url, "SELECT destroyed_since_shred FROM erasure_state") == [(0,)]
    shreds = "SELECT actor, action, outcome FROM audit_entries WHERE action LIKE 'keys.%' ORDER BY seq"
    assert _rows(database_url, shreds) == [
        ("shredding-schedule", "keys.shred", "rotated"),
        ("shredding-schedule", "keys.retire", "retired"),
    ]


def test_a_damaged_backup_key_section_holds_up_no_shred(database_url, tmp_path, monkeypatch, capsys):
    """A section file holding null, a list, or a folder in its place had stopped every shred (a traceback, one
    new key version a minute and none retired)."""
    from service.vault import Keyring, KeyStatus

    ctx = _deployment(database_url, tmp_path)
    _enrolled(ctx, STAYS)
    sections = tmp_path / "backup-keys"
    sections.mkdir(mode=0o700)
    for n, damage in enumerate(("null", "[1, 2]", None)):
        section = sections / f"bkp_{n:032x}.json"
        section.mkdir() if damage is None else section.write_text(damage)
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "keys", "shred", "--now", url=database_url)
    assert code == 0 and "version 2 is active" in out and "versions 1 retired" in out, (out, err)
    assert "Traceback" not in err
    assert {v.version: v.status for v in Keyring.load(tmp_path / "keyring.json").versions()} == {
        1: KeyStatus.RETIRED,
        2: KeyStatus.ACTIVE,
    }
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "erasure", "status", url=database_url)
    problems = json.loads(out)["problems"]
    assert code == 1 and sum("is not the key section of backup" in p for p in problems) == 3, (out, err)


def test_replicas_on_one_database_rotate_once_per_period(database_url, tmp_path):
    """Two replicas (one keyring file, one ledger) find the shred due at once: one rotates, the other sees it."""
    from service.erasure.shred import shred
    from service.store.db import Database
    from service.vault import Keyring, KeyStatus

    ctx = _deployment(database_url, tmp_path)  # a day's period: the withdrawal leaves the shred to the schedule
    _enrolled(ctx, STAYS)
    _withdraw(ctx, _enrolled(ctx))
    settings = ctx.settings.model_copy(update={"shredding_period_s": 0})
    replicas = [Database(database_url, audit_key=ctx.keyring.audit_key()) for _ in range(3)]
    start = threading.Barrier(len(replicas), timeout=60)
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            start.wait()
            outcomes[i] = shred(replicas[i], settings, actor=f"replica-{i}")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for replica in replicas:
        replica.engine.dispose()
    assert not [o for o in outcomes.values() if isinstance(o, Exception)], outcomes
    assert sum(o.rotation is not None for o in outcomes.values()) == 1, outcomes
    keyring = Keyring.load(tmp_path / "keyring.json")
    assert {v.version: v.status for v in keyring.versions()} == {1: KeyStatus.RETIRED, 2: KeyStatus.ACTIVE}
    assert _rows(database_url, "SELECT count(*) FROM audit_entries WHERE action = 'keys.shred'") == [(1,)]
    assert _rows(database_url, "SELECT kek_version FROM data_keys") == [(2,)]


def test_the_schedule_inside_serve_completes_and_shreds_by_itself(database_url, tmp_path):
    import time

    from service.erasure.shred import ShreddingSchedule
    from service.vault import Keyring, KeyStatus

    ctx = _deployment(database_url, tmp_path, shredding_period_s=3600)
    _enrolled(ctx, STAYS)
    _withdraw(ctx, _enrolled(ctx))  # within the period: nothing rotates yet
    assert Keyring.load(tmp_path / "keyring.json").active_version == 1
    # The keyring is older than the period now (as it will be an hour later).
    document = json.loads((tmp_path / "keyring.json").read_text())
    document["keks"][0]["created_at"] = "2020-01-01T00:00:00+00:00"
    (tmp_path / "keyring.json").write_text(json.dumps(document))
    schedule = ShreddingSchedule(ctx.db, ctx.settings, interval_s=0.05).start()
    try:
        deadline = time.monotonic() + 20
        while Keyring.load(tmp_path / "keyring.json").versions()[0].status is not KeyStatus.RETIRED:
            assert time.monotonic() < deadline, "the schedule did not shred"
            time.sleep(0.05)
    finally:
        schedule.stop()
    assert _rows(database_url, "SELECT kek_version FROM data_keys") == [(2,)]
    reasons = _rows(database_url, "SELECT details FROM audit_entries WHERE action = 'keys.shred'")
    assert len(reasons) == 1 and "the shredding period is 3600 s" in str(reasons), reasons


def test_with_keys_in_a_secret_store_the_operator_is_told_what_to_rotate_and_destroy(
    database_url, tmp_path, monkeypatch, capsys
):
    from service.vault import Keyring

    ctx = _deployment(database_url, tmp_path / "setup")
    _enrolled(ctx, STAYS)
    _withdraw(ctx, _enrolled(ctx))
    secret_store = Keyring.load(tmp_path / "setup" / "keyring.json")
    monkeypatch.setenv("BIOIDENT_KEYRING", (tmp_path / "setup" / "keyring.json").read_text())
    monkeypatch.setenv("BIOIDENT_LEDGER_FILE", str(tmp_path / "setup" / "destruction-ledger.jsonl"))
    monkeypatch.setenv("BIOIDENT_SHREDDING_PERIOD_S", "0")
    replica = tmp_path / "replica"

    def cli(*argv):
        return _cli(monkeypatch, capsys, replica, *argv, url=database_url)

    code, out, err = cli("keys", "shred")
    assert code == 1 and "add a key version in the secret store and redeploy" in err, (out, err)
    code, out, err = cli("erasure", "status")
    status = json.loads(out)
    assert code == 0 and status["residue_may_be_readable"] and status["shred_due"], out
    assert "secret store" in status["operator_action"] and status["ledger"]["lines"] == 1

    secret_store.add_version()  # the operator adds a version there and redeploys
    monkeypatch.setenv("BIOIDENT_KEYRING", (tmp_path / "setup" / "keyring.json").read_text())
    code, out, err = cli("keys", "shred")
    assert "version 2 is active" in out and "1 data keys re-wrapped" in out, (out, err)
    assert code == 1 and "destroy key versions 1 in the secret store" in err, err
    secret_store.retire(1)
    monkeypatch.setenv("BIOIDENT_KEYRING", (tmp_path / "setup" / "keyring.json").read_text())
    code, out, err = cli("erasure", "status")
    status = json.loads(out)
    assert status["operator_action"] is None and not status["residue_may_be_readable"], out
    assert not replica.joinpath("keyring.json").exists()


# --- residue in PostgreSQL ---------------------------------------------------------------------


def _wrapped_keys_near(data: bytes, token: str) -> list[bytes]:
    """Every 60-byte window near an occurrence of the customer's token: where a wrapped data key would be."""
    windows, anchor, at = [], token.encode(), data.find(token.encode())
    while at != -1:
        windows += [data[i : i + 60] for i in range(max(0, at - 200), at + 300)]
        at = data.find(anchor, at + 1)
    return windows


def _openable(keyring, windows: list[bytes], token: str) -> list[bytes]:
    """The windows that unwrap, as the customer's voice data key, under any key version the keyring holds."""
    from service.vault import VaultError, WrappedKey, data_key_context, unwrap_data_key

    opened = []
    for version in (v.version for v in keyring.versions() if v.status != "retired"):
        for window in windows:
            try:
                unwrap_data_key(keyring, WrappedKey(version, window), context=data_key_context(token, "voice"))
            except VaultError:
                continue
            opened.append(window)
    return opened


def _residue(url: str, token: str, since_lsn: str) -> tuple[list[bytes], list[bytes]]:
    """Windows near the token in the raw pages of data_keys (dead rows included) and in the WAL on disk."""
    _execute(url, text("CREATE EXTENSION IF NOT EXISTS pageinspect"))
    pages = _rows(url, "SELECT pg_relation_size('data_keys') / current_setting('block_size')::int")[0][0]
    tuples = b"".join(
        bytes(data or b"")
        for n in range(pages)
        for (data,) in _rows(url, "SELECT t_data FROM heap_page_items(get_raw_page('data_keys', :n))", n=n)
    )
    data_directory = Path(_rows(url, "SHOW data_directory")[0][0])
    first = _rows(url, "SELECT pg_walfile_name(CAST(:lsn AS pg_lsn))", lsn=since_lsn)[0][0]
    wal_dir = data_directory / "pg_wal"
    if not wal_dir.is_dir():
        pytest.fail(f"the WAL at {wal_dir} cannot be read: run the suite as a user who can (root, on this host)")
    wal = b"".join(p.read_bytes() for p in sorted(wal_dir.iterdir()) if len(p.name) == 24 and p.name >= first)
    return _wrapped_keys_near(tuples, token), _wrapped_keys_near(wal, token)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_residue_in_dead_rows_and_the_wal_no_longer_opens_once_shredded(database_url, tmp_path, monkeypatch, capsys):
    from service.vault import Keyring, KeyVersionUnavailable, WrappedKey, data_key_context, unwrap_data_key

    # Vacuum would clean the dead row up some time; here it stays, as on a busy server until vacuum comes.
    _execute(database_url, text("ALTER TABLE data_keys SET (autovacuum_enabled = false)"))
    since = _rows(database_url, "SELECT pg_current_wal_lsn()::text")[0][0]
    ctx = _deployment(database_url, tmp_path)
    _enrolled(ctx, STAYS)
    consent_id = _enrolled(ctx)
    keys_of = "SELECT kek_version, wrapped FROM data_keys WHERE subject_token = :t"
    [(version, wrapped)] = _rows(database_url, keys_of, t=TOKEN)
    _withdraw(ctx, consent_id)
    _execute(database_url, text("CHECKPOINT"))
    assert _held(database_url) == (0, 0, 0)

    # The row is gone from the table, not from its pages nor from the WAL: with the keyring, it opens.
    in_pages, in_wal = _residue(database_url, TOKEN, since)
    keyring = Keyring.load(tmp_path / "keyring.json")
    assert wrapped in in_pages and wrapped in in_wal
    assert _openable(keyring, in_pages, TOKEN) and _openable(keyring, in_wal, TOKEN)

    monkeypatch.setenv("BIOIDENT_SHREDDING_PERIOD_S", "0")
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "keys", "shred", url=database_url)
    assert code == 0 and "version 2 is active" in out and "versions 1 retired" in out, (out, err)

    # The residue is still there (no vacuum ran), and none of it opens with the keyring any more.
    in_pages, in_wal = _residue(database_url, TOKEN, since)
    keyring = Keyring.load(tmp_path / "keyring.json")
    assert wrapped in in_pages and wrapped in in_wal
    with pytest.raises(KeyVersionUnavailable):
        unwrap_data_key(keyring, WrappedKey(version, wrapped), context=data_key_context(TOKEN, "voice"))
    assert _openable(keyring, in_pages, TOKEN) == [] and _openable(keyring, in_wal, TOKEN) == []
    # The customer who stays is re-wrapped under version 2 and opens.
    [(stays_version, stays_wrapped)] = _rows(database_url, keys_of, t=STAYS)
    assert stays_version == 2
    assert unwrap_data_key(keyring, WrappedKey(2, stays_wrapped), context=data_key_context(STAYS, "voice"))


# --- an existing deployment --------------------------------------------------------------------


def test_an_existing_deployment_keeps_its_data_keys_and_shreds_earlier_residue_first(database_url):
    from alembic import command

    from service.protected import data_key
    from service.store.db import Database, alembic_config, upgrade
    from service.vault import Keyring, data_key_context, new_data_key, wrap_data_key

    command.downgrade(alembic_config(database_url), "0006")  # as the release before erasure left it
    keyring = Keyring.ephemeral()
    key = new_data_key()
    rows = []
    for token in (TOKEN, STAYS):
        wrapped = wrap_data_key(keyring, key, context=data_key_context(token, "voice"))
        rows.append({"t": token, "v": wrapped.kek_version, "w": wrapped.blob})
    _execute(
        database_url,
        text("INSERT INTO tenants (id, name, created_at) VALUES ('bank', 'bank', CURRENT_TIMESTAMP)"),
        *[
            (text("INSERT INTO subjects (token, tenant_id, created_at) VALUES (:t, 'bank', CURRENT_TIMESTAMP)"), row)
            for row in rows
        ],
        *[
            (
                text(
                    "INSERT INTO data_keys (subject_token, modality, kek_version, wrapped, created_at) "
                    "VALUES (:t, 'voice', :v, :w, CURRENT_TIMESTAMP)"
                ),
                row,
            )
            for row in rows
        ],
        text(
            "INSERT INTO consents (id, subject_token, modality, purpose, notice_version, notice_sha256, channel, "
            f"evidence_ref, recorded_by, granted_at, withdrawn_at) VALUES ('con_1', '{STAYS}', 'voice', 'a', 'v1', "
            "'0', 'portal', 'e', 'cli_1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        ),
    )
    upgrade(database_url)

    key_ids = [key_id for (key_id,) in _rows(database_url, "SELECT key_id FROM data_keys")]
    assert len(set(key_ids)) == 2 and all(key_id.startswith("dk_") for key_id in key_ids)
    # A withdrawal before this release may have left residue: the first shred rotates even with a period of 0.
    assert _rows(database_url, "SELECT ledger_lines, destroyed_since_shred FROM erasure_state") == [(0, 1)]
    db = Database(database_url)
    try:
        with db.session() as session:
            assert data_key(session, keyring, TOKEN, "voice", create=False) == key
    finally:
        db.engine.dispose()
