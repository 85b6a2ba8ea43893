"""A restored backup does not bring a withdrawn customer back (issue 16): ``bioident backup``, a withdrawal,
``bioident restore`` into an empty database, on SQLite and PostgreSQL, with the real model.

Within the shredding period the backup's key section still holds the withdrawn customer's data key; the
restore puts it back and the destruction ledger destroys it again before anything serves. After the
shred step, no copy of that key opens with the keyring any more, while every live customer of the same
backup is still restored and verified.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import TEST_OTHER
from tests.operations_fixtures import _cli, _deployment, _execute, _rows
from tests.service_fixtures import POSTGRES_ADMIN_URL
from tests.voice_helpers import GENUINE, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]

OTHER_SPEAKER = "2033"
OTHER_ENROL = ["2033-164914-0000.flac", "2033-164914-0001.flac", "2033-164914-0003.flac"]
OTHER_GENUINE = "2033-164914-0009.flac"


@pytest.fixture
def empty_databases(database_url, tmp_path):
    """New, empty databases on the same kind of server as ``database_url``, dropped afterwards."""
    made = []

    def new() -> str:
        name = f"bioident_restore_{uuid.uuid4().hex[:12]}"
        if database_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / f'{name}.db'}"
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        made.append(name)
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield new
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _nothing_restored(url: str) -> None:
    """A refused restore leaves no SQLite file (nor a scratch one beside it); in a PostgreSQL database, which the
    operator made, only what the migrations make (the schema, its single rows, the keyring it is bound to)."""
    from service.erasure.backup import _SINGLE_ROWS
    from service.store.models import Base

    if url.startswith("sqlite"):
        path = Path(make_url(url).database)
        assert not path.exists(), f"{path} was left behind"
        assert not path.parent.exists() or not list(path.parent.glob(f".{path.name}.*")), list(path.parent.iterdir())
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = [t for t in Base.metadata.sorted_tables if t not in _SINGLE_ROWS]
            held = {t.name: n for t in tables if (n := conn.execute(text(f"SELECT count(*) FROM {t.name}")).scalar())}
    finally:
        engine.dispose()
    assert not held, held


def _enrol_other(api, ivr_key, reference):
    files = [_audio(TEST_OTHER / OTHER_SPEAKER / name) for name in OTHER_ENROL]
    return api.http.post("/v1/voice/enrol", data={"reference": reference}, files=files, headers=api.headers(ivr_key))


def _serve(api, url):
    """A service started on ``url`` with the deployment's keyring (and the session's model)."""
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    settings = ServiceSettings(_env_file=None, data_dir=api.data_dir, database_url=url)
    return TestClient(create_app(ServiceContext(settings, embedder=api.ctx.embedder)), raise_server_exceptions=False)


def _identified(http, api, ivr_key) -> list[str]:
    probe = [_audio(TEST_OTHER / SPEAKER / GENUINE)]
    found = http.post("/v1/voice/identify", files=probe, headers=api.headers(ivr_key))
    assert found.status_code == 200, found.text
    return [c["subject_token"] for c in found.json()["candidates"]]


def _check_restored(api, url, keys, gone, kept) -> None:
    with _serve(api, url) as http:
        api_on_restored = type(api)(http=http, ctx=None, admin_key=api.admin_key, data_dir=api.data_dir)
        refused = _verify(api_on_restored, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE)
        assert refused.status_code == 403 and refused.json()["type"].endswith("/consent_required"), refused.text
        assert gone not in _identified(http, api, keys["ivr"])
        live = _verify(api_on_restored, keys["ivr"], TEST_OTHER / OTHER_SPEAKER / OTHER_GENUINE, reference="ACC-2002")
        assert live.status_code == 200 and live.json()["decision"] == "accept", live.text
        # A failure is recorded after the restored ones (their ids carry on).
        failed = _verify(api_on_restored, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE, reference="ACC-2002")
        assert failed.status_code == 200 and failed.json()["decision"] == "reject", failed.text
    assert _rows(url, "SELECT count(*) FROM verification_failures WHERE subject_token = :t", t=kept) == [(2,)]
    assert _rows(url, "SELECT count(*) FROM templates WHERE subject_token = :t", t=gone) == [(0,)]
    assert _rows(url, "SELECT count(*) FROM data_keys WHERE subject_token = :t", t=gone) == [(0,)]
    assert _rows(url, "SELECT count(*) FROM consents WHERE subject_token = :t AND withdrawn_at IS NULL", t=gone) == [
        (0,)
    ]
    assert _rows(url, "SELECT count(*) FROM data_keys WHERE subject_token = :t", t=kept) == [(1,)]


def test_a_restored_backup_does_not_bring_a_withdrawn_customer_back(
    bank, empty_databases, monkeypatch, capsys, tmp_path
):
    from service.vault import (
        DecryptionError,
        Keyring,
        KeyVersionUnavailable,
        TemplateBinding,
        WrappedKey,
        unwrap_data_key,
    )
    from service.vault.envelope import data_key_context

    api, keys = bank
    url, data_dir = api.ctx.db.url, api.data_dir

    def cli(*argv, on=url):
        return _cli(monkeypatch, capsys, data_dir, *argv, url=on)

    consent = _consent(api, keys["portal"])
    gone = consent["subject_token"]
    assert _enrol(api, keys["ivr"]).status_code == 201
    kept = _consent(api, keys["portal"], reference="ACC-2002")["subject_token"]
    assert _enrol_other(api, keys["ivr"], "ACC-2002").status_code == 201
    [(version, wrapped)] = _rows(url, "SELECT kek_version, wrapped FROM data_keys WHERE subject_token = :t", t=gone)
    [(template_id, fingerprint, sealed)] = _rows(
        url, "SELECT id, model_fingerprint, sealed FROM templates WHERE subject_token = :t", t=gone
    )

    impostor = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE, reference="ACC-2002")
    assert impostor.json()["decision"] == "reject", impostor.text  # a failed verification, backed up too
    backup = tmp_path / "backup"
    code, out, err = cli("backup", backup)
    assert code == 0 and "backup bkp_" in out, err
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["subjects"] == 2 and manifest["data_keys"] == 2 and manifest["kek_versions_in_use"] == [1]
    body = (backup / manifest["body"]).read_bytes()
    assert sealed in body or base64.b64encode(sealed) in body  # the templates are in the backup...
    assert wrapped not in body and base64.b64encode(wrapped) not in body  # ...their data keys are not
    assert not any("keyring" in p.name for p in backup.iterdir())
    section = data_dir / "backup-keys" / f"{manifest['backup_id']}.json"

    # A backup altered anywhere is refused, its manifest being signed with the deployment's keyring: a body
    # changed with its checksum updated, a count changed, an unsigned (format 1) manifest.
    tampered = tmp_path / "tampered"
    shutil.copytree(backup, tampered)
    body_file = tampered / manifest["body"]
    body_file.write_bytes(body_file.read_bytes() + b"\n")
    rehashed = {**manifest, "body_sha256": hashlib.sha256(body_file.read_bytes()).hexdigest()}
    target = empty_databases()
    for forged, says in (
        (rehashed, "the backup was altered"),
        ({**manifest, "subjects": 99}, "the backup was altered"),
        ({k: v for k, v in manifest.items() if k != "mac"} | {"format": "bioident-backup/1"}, "not signed"),
    ):
        (tampered / "manifest.json").write_text(json.dumps(forged))
        code, out, err = cli("restore", tampered, on=target)
        assert code == 2 and says in err, (out, err)
    _nothing_restored(target)

    withdrawn = api.http.post(
        f"/v1/subjects/{gone}/consents/{consent['id']}:withdraw", headers=api.headers(keys["portal"])
    )
    assert withdrawn.status_code == 200 and withdrawn.json()["destroyed"]["data_key"] is True, withdrawn.text
    ledger_file = data_dir / "destruction-ledger.jsonl"
    ledger = ledger_file.read_text().splitlines()
    assert len(ledger) == 1 and json.loads(ledger[0])["subject_token"] == gone

    # A backup made after the withdrawal knows the ledger had a line: a host that lost it restores nothing.
    code, out, err = cli("backup", tmp_path / "later")
    assert code == 0, err
    ledger_file.rename(tmp_path / "ledger-elsewhere")
    refused = empty_databases()
    code, out, err = cli("restore", tmp_path / "later", on=refused)
    assert code == 2 and "has 0 lines, but this database's withdrawals appended 1" in err, (out, err)
    _nothing_restored(refused)
    (tmp_path / "ledger-elsewhere").rename(ledger_file)

    # Within the shredding period: the restore brings the key back from the section, and the ledger
    # destroys it again (with the templates and the consent) before anything can serve.
    within = empty_databases()
    code, out, err = cli("restore", backup, on=within)
    assert code == 0 and "2 subjects, 2 data keys; 1 withdrawals re-destroyed" in out, (out, err)
    _check_restored(api, within, keys, gone, kept)
    entries = "SELECT action, subject_token FROM audit_entries WHERE action IN ('erasure.replay', 'backup.restore')"
    assert _rows(within, f"{entries} ORDER BY seq") == [("erasure.replay", gone), ("backup.restore", None)]
    code, out, err = cli("restore", backup, on=within)  # only into an empty database
    assert code == 2 and "not empty" in err, (out, err)
    keyring = Keyring.load(data_dir / "keyring.json")
    context = data_key_context(gone, "voice")
    assert unwrap_data_key(keyring, WrappedKey(version, wrapped), context=context)  # the period has not passed

    # The shred step: a new key version, the live keys (and the backup's section) re-wrapped, the
    # withdrawn customer's key dropped from the section, and version 1 destroyed.
    code, out, err = cli("keys", "shred", "--now")
    assert code == 0 and "version 2 is active" in out and "1 destroyed keys dropped" in out, (out, err)
    assert "versions 1 retired" in out, out
    keyring = Keyring.load(data_dir / "keyring.json")
    with pytest.raises(KeyVersionUnavailable):
        unwrap_data_key(keyring, WrappedKey(version, wrapped), context=context)
    in_section = json.loads(section.read_text())["keys"]
    assert [(k["subject_token"], k["kek_version"]) for k in in_section] == [(kept, 2)]
    # No copy of the withdrawn customer's data key opens now: so neither does the template in the backup.
    binding = TemplateBinding(gone, "voice", template_id, fingerprint)
    for candidate in [WrappedKey(version, wrapped)] + [
        WrappedKey(k["kek_version"], base64.b64decode(k["wrapped"])) for k in in_section
    ]:
        with pytest.raises((KeyVersionUnavailable, DecryptionError)):  # a retired version, or another key
            unwrap_data_key(keyring, candidate, context=context).open(sealed, aad=binding)

    # The same backup, restored after the rotation: every live customer comes back, the withdrawn one not.
    after = empty_databases()
    code, out, err = cli("restore", backup, on=after)
    assert code == 0 and "2 subjects, 1 data keys; 1 withdrawals re-destroyed" in out, (out, err)
    _check_restored(api, after, keys, gone, kept)


def test_a_backups_manifest_counts_customers_and_watchlist_entries_apart(database_url, tmp_path, monkeypatch, capsys):
    from service.store.models import Subject, Tenant, WatchlistEntry

    ctx = _deployment(database_url, tmp_path / "data")
    with ctx.db.session() as session:
        session.add(Tenant(id="bank", name="bank"))
        session.flush()
        for token in ("sub_a", "sub_b", "wle_1"):  # a watchlist entry is a subject row of its own (its data key)
            session.add(Subject(token=token, tenant_id="bank"))
        session.flush()
        session.add(WatchlistEntry(id="wle_1", tenant_id="bank", case_reference="CASE-1", legal_basis="fraud",
                                   added_by="cli_1", model_fingerprint="m", sample_count=1, net_speech_s=12.0,
                                   sealed=b"sealed"))  # fmt: skip
    ctx.db.engine.dispose()
    code, out, err = _cli(monkeypatch, capsys, tmp_path / "data", "backup", tmp_path / "backup", url=database_url)
    assert code == 0, err
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert (manifest["subjects"], manifest["watchlist_entries"]) == (2, 1)


def _bank(ctx, *tokens: str) -> None:
    """The tenant ``bank`` and a subject row for each of ``tokens``."""
    from service.store.models import Subject, Tenant

    with ctx.db.session() as session:
        session.add(Tenant(id="bank", name="bank"))
        session.flush()
        for token in tokens:
            session.add(Subject(token=token, tenant_id="bank"))


def test_a_backup_made_at_an_older_schema_revision_is_migrated_as_it_is_restored(
    database_url, empty_databases, tmp_path, monkeypatch, capsys
):
    import tempfile

    from alembic import command
    from alembic.script import ScriptDirectory

    from service.erasure.backup import _manifest_mac
    from service.store.db import alembic_config
    from service.vault import Keyring

    data_dir = tmp_path / "data"
    ctx = _deployment(database_url, data_dir)
    _bank(ctx, "sub_a", "sub_b")
    ctx.db.engine.dispose()
    code, out, err = _cli(monkeypatch, capsys, data_dir, "backup", tmp_path / "backup", url=database_url)
    assert code == 0, err
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert manifest["schema_revision"] == head == "0011"

    # The same backup as the release before the watchlist (0010) would have made it.
    body = tmp_path / "backup" / manifest["body"]
    if body.name == "database.sqlite":
        command.downgrade(alembic_config(f"sqlite:///{body}"), "0010")
    else:
        lines = [line for line in body.read_text().splitlines() if json.loads(line)["table"] != "watchlist_entries"]
        body.write_text("".join(f"{line}\n" for line in lines))
    keyring = Keyring.load(data_dir / "keyring.json")

    def sign(fields: dict) -> None:
        fields["mac"] = _manifest_mac(keyring, fields)
        (tmp_path / "backup" / "manifest.json").write_text(json.dumps(fields))

    older = {**manifest, "schema_revision": "0010", "body_sha256": hashlib.sha256(body.read_bytes()).hexdigest()}
    sign({**older, "schema_revision": "0012"})  # a newer release's backup: this one cannot know its tables
    refused = empty_databases()
    code, out, err = _cli(monkeypatch, capsys, data_dir, "restore", tmp_path / "backup", url=refused)
    assert code == 2 and "revision 0012, which this release (at 0011) does not know" in err, (out, err)
    _nothing_restored(refused)

    sign(older)
    scratch = set(Path(tempfile.gettempdir()).glob("bioident-restore-*"))
    target = empty_databases()
    code, out, err = _cli(monkeypatch, capsys, data_dir, "restore", tmp_path / "backup", url=target)
    assert code == 0 and "2 subjects, 0 data keys" in out and "migrated from schema revision 0010" in out, (out, err)
    assert set(Path(tempfile.gettempdir()).glob("bioident-restore-*")) == scratch  # the scratch copy is gone
    assert _rows(target, "SELECT token FROM subjects ORDER BY token") == [("sub_a",), ("sub_b",)]
    assert _rows(target, "SELECT version_num FROM alembic_version") == [(head,)]
    assert _rows(target, "SELECT count(*) FROM watchlist_entries") == [(0,)]  # the table the migration made
    [(details,)] = _rows(target, "SELECT details FROM audit_entries WHERE action = 'backup.restore'")
    assert (json.loads(details) if isinstance(details, str) else details)["migrated_from"] == "0010"
    code, out, err = _cli(monkeypatch, capsys, data_dir, "audit", "verify-chain", url=target)
    assert code == 0 and "intact" in out, (out, err)


def test_anchors_show_a_destruction_ledger_cut_back_with_the_database(
    database_url, empty_databases, tmp_path, monkeypatch, capsys
):
    """A ledger cut back to the length an older backup's database counted agrees with that database: only a
    mark kept outside (the anchor's) shows it once held more lines, and ``restore --anchors`` then refuses."""
    import datetime as dt

    from service.erasure.ledger import Destruction, DestructionLedger
    from service.trail.chain import append

    data_dir = tmp_path / "data"
    ctx = _deployment(database_url, data_dir)
    _bank(ctx, "sub_kept")
    with ctx.db.session() as session:
        append(session, actor="operator", action="keys.rotate", outcome="rotated")  # a trail to anchor
    ctx.db.engine.dispose()

    def cli(*argv, on=database_url):
        return _cli(monkeypatch, capsys, data_dir, *argv, url=on)

    code, out, err = cli("backup", tmp_path / "backup")  # before the withdrawals: its database counts no line
    assert code == 0, err
    ledger = DestructionLedger.of(ctx.settings, ctx.keyring)
    for n in (1, 2):
        ledger.append(Destruction(f"sub_gone_{n}", "voice", f"dk_{n}", 1, dt.datetime.now(dt.UTC)))
    code, out, err = cli("audit", "anchor")
    assert code == 0 and json.loads(out)["ledger"]["lines"] == 2, err
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(out)
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 0 and "agree with the trail and the destruction ledger" in out, err

    # Someone who can write the ledger cuts its tail back to what the backup's database counted.
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(lines[0])
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 1 and "destruction ledger BROKEN" in err and "has 1 lines, but an anchor shows it had 2" in err
    refused = empty_databases()
    code, out, err = cli("restore", tmp_path / "backup", "--anchors", anchors, on=refused)
    assert code == 2 and "lines were cut off: not restoring over it" in err, (out, err)
    _nothing_restored(refused)
    unchecked = empty_databases()  # without the anchors nothing can tell: the cut ledger is as long as it counted
    code, out, err = cli("restore", tmp_path / "backup", on=unchecked)
    assert code == 0 and "1 subjects" in out, (out, err)

    # The same length with another second line (a ledger put together elsewhere) is no better.
    ledger.append(Destruction("sub_other", "voice", "dk_3", 1, dt.datetime.now(dt.UTC)))
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 1 and "line 2 of destruction ledger" in err and "not the line an anchor recorded" in err, err
    ledger.path.write_bytes(b"".join(lines))
    forged = json.loads(anchors.read_text())
    forged["ledger"]["lines"] = 1  # a mark is signed: it cannot be made to ask for less
    anchors.write_text(json.dumps(forged) + "\n")
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 1 and "ledger mark (1 lines) is not signed by this deployment's keyring" in err, err
    anchors.write_text('{"seq": 1, "hash": "h", "mac": "m", "ledger": 5}\n')
    code, out, err = cli("restore", tmp_path / "backup", "--anchors", anchors, on=empty_databases())
    assert code == 2 and "line 1 is not an anchor" in err and "Traceback" not in err, err

    # An anchor taken where the ledger is not the deployment's (fewer lines than the database counts, or none)
    # carries no mark, rather than one that would vouch for an empty ledger; verify-chain without anchors does
    # not read the ledger at all.
    _execute(database_url, text("UPDATE erasure_state SET ledger_lines = 2"))
    ledger.path.rename(tmp_path / "ledger-elsewhere")
    code, out, err = cli("audit", "anchor")
    assert code == 1 and "has 0 lines; the database counts 2" in err and "no ledger mark" in err, (out, err)
    assert set(json.loads(out)) == {"seq", "hash", "mac"}
    code, out, err = cli("audit", "verify-chain")
    assert code == 0 and "intact" in out, err
    (tmp_path / "ledger-elsewhere").rename(ledger.path)
    code, out, err = cli("audit", "anchor")
    assert code == 0 and json.loads(out)["ledger"]["lines"] == 2, err
    anchors.write_text(out)
    ledger.path.write_bytes(ledger.path.read_bytes()[:-20])  # a torn last line
    code, out, err = cli("audit", "verify-chain", "--anchors", anchors)
    assert code == 1 and "destruction ledger BROKEN" in err and "incomplete" in err, err


def test_a_key_section_altered_is_refused_at_restore(database_url, empty_databases, tmp_path, monkeypatch, capsys):
    """A section key with one bit flipped had been restored (exit 0), then silently dropped by the next shred."""
    from service.protected import data_key

    data_dir = tmp_path / "data"
    ctx = _deployment(database_url, data_dir)
    _bank(ctx, "sub_kept")
    with ctx.db.session() as session:
        data_key(session, ctx.keyring, "sub_kept", "voice", create=True)
    ctx.db.engine.dispose()
    code, out, err = _cli(monkeypatch, capsys, data_dir, "backup", tmp_path / "backup", url=database_url)
    assert code == 0, err
    (section,) = (data_dir / "backup-keys").glob("bkp_*.json")
    document = json.loads(section.read_text())
    wrapped = bytearray(base64.b64decode(document["keys"][0]["wrapped"]))
    wrapped[-1] ^= 1
    document["keys"][0]["wrapped"] = base64.b64encode(bytes(wrapped)).decode()
    section.write_text(json.dumps(document))
    target = empty_databases()
    code, out, err = _cli(monkeypatch, capsys, data_dir, "restore", tmp_path / "backup", url=target)
    assert code == 2 and "1 data keys in the key section" in err and "do not open" in err, (out, err)
    _nothing_restored(target)


def test_a_refused_restore_leaves_no_database_file_behind(database_url, tmp_path, monkeypatch, capsys):
    """A refused restore into an SQLite file had left it made, migrated and bound to the keyring it was run with:
    ``serve`` took it for a deployment, and a second try (with the right keyring) was refused for that binding."""
    import datetime as dt

    from service.erasure.ledger import Destruction, DestructionLedger
    from service.vault import Keyring

    data_dir = tmp_path / "data"
    ctx = _deployment(database_url, data_dir)
    _bank(ctx, "sub_kept")
    DestructionLedger.of(ctx.settings, ctx.keyring).append(
        Destruction("sub_gone", "voice", "dk_1", 1, dt.datetime.now(dt.UTC))
    )
    ctx.db.engine.dispose()
    _execute(database_url, text("UPDATE erasure_state SET ledger_lines = 1"))  # as the withdrawal left it
    code, out, err = _cli(monkeypatch, capsys, data_dir, "backup", tmp_path / "backup", url=database_url)
    assert code == 0, err
    target = tmp_path / "restored" / "bioident.db"  # in a folder not made yet
    url = f"sqlite:///{target}"

    # Another deployment's keyring: refused before the restore's transaction (the database was bound to it).
    Keyring.load_or_create(tmp_path / "other-keyring.json")
    monkeypatch.setenv("BIOIDENT_KEYRING_FILE", str(tmp_path / "other-keyring.json"))
    code, out, err = _cli(monkeypatch, capsys, data_dir, "restore", tmp_path / "backup", url=url)
    assert code == 2 and "was made with keyring" in err, (out, err)
    _nothing_restored(url)
    assert not target.parent.exists()
    monkeypatch.delenv("BIOIDENT_KEYRING_FILE")

    # The destruction ledger missing: refused inside the restore's transaction, after the rows were loaded.
    ledger = data_dir / "destruction-ledger.jsonl"
    ledger.rename(tmp_path / "ledger-elsewhere")
    code, out, err = _cli(monkeypatch, capsys, data_dir, "restore", tmp_path / "backup", url=url)
    assert code == 2 and "has 0 lines, but this database's withdrawals appended 1" in err, (out, err)
    _nothing_restored(url)
    assert not target.parent.exists()
    (tmp_path / "ledger-elsewhere").rename(ledger)

    code, out, err = _cli(monkeypatch, capsys, data_dir, "restore", tmp_path / "backup", url=url)
    assert code == 0 and "1 subjects" in out, (out, err)
    assert [p.name for p in target.parent.iterdir()] == ["bioident.db"]  # no scratch file left beside it
    assert target.stat().st_mode & 0o777 == 0o600
    assert _rows(url, "SELECT token FROM subjects") == [("sub_kept",)]
    code, out, err = _cli(monkeypatch, capsys, data_dir, "audit", "verify-chain", url=url)
    assert code == 0 and "intact" in out, (out, err)

    # A file that exists is never replaced: refused (not empty), it is left byte for byte as it was.
    before = target.read_bytes()
    code, out, err = _cli(monkeypatch, capsys, data_dir, "restore", tmp_path / "backup", url=url)
    assert code == 2 and "not empty" in err, (out, err)
    assert target.read_bytes() == before
