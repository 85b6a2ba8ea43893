"""Key rotation and retirement (service/keys.py, service/protected.py): ``bioident keys rotate``
re-wraps data keys without re-encrypting templates, a version still in use cannot be retired, a
replica with an outdated keyring is fenced off, keys held in a secret store, and a rotation waiting
for a data key being wrapped on another replica, and a rotation that cannot rewrite the backups' key
sections, which changes nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from service.store.db import Database
from tests.conftest import TEST_OTHER
from tests.operations_fixtures import _audit_key, _cli, _deployment, _execute, _problem, _rows
from tests.voice_helpers import ENROL, GENUINE, IMPOSTOR, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]


def _keyring_document(data_dir: Path) -> dict[int, dict]:
    document = json.loads((data_dir / "keyring.json").read_text())
    return {entry["version"]: entry for entry in document["keks"]}


def _with_backups(database_url: str, data_dir: Path, monkeypatch, capsys) -> Path:
    """A deployment with one customer's data key and two backups; the folder of their key sections."""
    from service.protected import data_key

    ctx = _deployment(database_url, data_dir)
    _execute(
        database_url,
        text("INSERT INTO tenants (id, name, created_at) VALUES ('bank', 'bank', CURRENT_TIMESTAMP)"),
        text("INSERT INTO subjects (token, tenant_id, created_at) VALUES ('sub_1', 'bank', CURRENT_TIMESTAMP)"),
    )
    with ctx.db.session() as session:
        data_key(session, ctx.keyring, "sub_1", "voice", create=True)
    ctx.db.engine.dispose()
    for name in ("backup-1", "backup-2"):
        code, out, err = _cli(monkeypatch, capsys, data_dir, "backup", data_dir / name, url=database_url)
        assert code == 0, err
    return data_dir / "backup-keys"


def _rotation_state(database_url: str, data_dir: Path) -> tuple:
    """What a rotation changes: the keyring file's versions, the data keys, the key sections' files (all of them)."""
    versions = {v: e["status"] for v, e in _keyring_document(data_dir).items()}
    data_keys = _rows(database_url, "SELECT subject_token, kek_version, wrapped FROM data_keys ORDER BY id")
    sections = {p.name: p.read_bytes() for p in sorted((data_dir / "backup-keys").iterdir())}
    return versions, data_keys, sections


def _section_versions(sections: Path) -> set[int]:
    return {key["kek_version"] for path in sections.glob("bkp_*.json") for key in json.loads(path.read_text())["keys"]}


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
    code, out, err = cli("keys", "retire", "1")  # again: it says nothing changed, and audits nothing
    assert code == 0 and "version 1 was retired already" in out and "retired:" not in out, (out, err)
    assert _keyring_document(data_dir) == document
    after_retirement = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE)
    assert after_retirement.status_code == 200 and after_retirement.json()["decision"] == "accept"
    # Served from a database copied before the retirement, the customer's key is under version 1: as good as
    # erased, said as such (409), not a server error.
    ((token, _, rewrapped),) = _rows(url, data_keys_sql)
    set_key = text("UPDATE data_keys SET kek_version = :v, wrapped = :w WHERE subject_token = :t")
    _execute(url, (set_key, {"v": 1, "w": keys_before[0][2], "t": token}))
    unrecoverable = _problem(_verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE), 409)
    assert unrecoverable["type"].endswith("/data_unrecoverable") and "enrol again" in unrecoverable["detail"]
    _execute(url, (set_key, {"v": 2, "w": rewrapped, "t": token}))
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
    stale_copy = data_dir / "stale-keyring.json"
    shutil.copy2(data_dir / "keyring.json", stale_copy)
    code, out, err = cli("keys", "rotate")
    assert code == 0 and "0 data keys re-wrapped" in out, err
    monkeypatch.setenv("BIOIDENT_KEYRING_FILE", str(stale_copy))  # an operator looking at an old copy is told so
    code, out, err = cli("keys", "list")
    assert code == 1 and [line.split("\t")[:2] for line in out.splitlines()] == [["1", "active"]], (out, err)
    assert f"{stale_copy} is an outdated copy" in err and "the deployment's is 2" in err, err
    monkeypatch.delenv("BIOIDENT_KEYRING_FILE")
    code, out, err = cli("keys", "list")
    assert code == 0 and not err, err

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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_rotation_skips_a_data_key_a_withdrawal_destroys_while_it_runs(database_url, monkeypatch):
    from service import protected
    from service.protected import data_key, rewrap_all
    from service.vault import Keyring

    keyring = Keyring.ephemeral()
    db, withdrawing = Database(database_url), Database(database_url)
    tokens = ["sub_stays", "sub_goes"]
    try:
        with db.session() as session:
            session.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('bank', 'bank', CURRENT_TIMESTAMP)")
            )
            for token in tokens:
                session.execute(
                    text("INSERT INTO subjects (token, tenant_id, created_at) VALUES (:t, 'bank', CURRENT_TIMESTAMP)"),
                    {"t": token},
                )
            kept = {token: data_key(session, keyring, token, "voice", create=True) for token in tokens}
        keyring.add_version()
        real_rewrap = protected.rewrap

        def rewrap_while_withdrawn(*args, **kwargs):  # the other key goes (and commits) as the first is re-wrapped
            with withdrawing.session() as other:
                other.execute(text("DELETE FROM data_keys WHERE subject_token = 'sub_goes'"))
            monkeypatch.setattr(protected, "rewrap", real_rewrap)
            return real_rewrap(*args, **kwargs)

        monkeypatch.setattr(protected, "rewrap", rewrap_while_withdrawn)
        with db.session() as session:
            assert rewrap_all(session, keyring) == 1
        assert _rows(database_url, "SELECT subject_token, kek_version FROM data_keys") == [("sub_stays", 2)]
        with db.session() as session:
            assert data_key(session, keyring, "sub_stays", "voice", create=False) == kept["sub_stays"]
            assert data_key(session, keyring, "sub_goes", "voice", create=False) is None
    finally:
        db.engine.dispose()
        withdrawing.engine.dispose()


def _refuse_new_files(monkeypatch, folder: Path, error: int, named: str = "") -> Callable[..., int]:
    """``folder`` takes no new file (whose name holds ``named``), as a read-only folder or a full disk answer (as
    root, a chmod would not do it); returns the real ``os.open``."""
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == folder and named in Path(path).name:
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    return real_open


def test_a_rotation_that_cannot_rewrite_the_backups_key_sections_changes_nothing(
    database_url, tmp_path, monkeypatch, capsys
):
    """It had added a key version to the keyring file before failing (one more at every retry)."""
    sections = _with_backups(database_url, tmp_path, monkeypatch, capsys)
    before = _rotation_state(database_url, tmp_path)
    assert before[0] == {1: "active"} and len(before[2]) == 2 and _section_versions(sections) == {1}

    real_open = _refuse_new_files(monkeypatch, sections, errno.EROFS)
    for _ in range(2):  # a retry adds nothing either
        code, out, err = _cli(monkeypatch, capsys, tmp_path, "keys", "rotate", url=database_url)
        assert _rotation_state(database_url, tmp_path) == before
        assert code == 2 and not out and "Traceback" not in err, (out, err)
        assert f"key sections in {sections} cannot be rewritten (Read-only file system)" in err, err
        assert "the rotation changed nothing" in err, err

    monkeypatch.setattr(os, "open", real_open)
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "keys", "rotate", url=database_url)
    assert code == 0 and "version 2 is active; 1 data keys re-wrapped; 2 backups' key sections re-wrapped" in out, err
    versions, data_keys, _ = _rotation_state(database_url, tmp_path)
    assert versions == {1: "decrypt_only", 2: "active"} and [v for _, v, _ in data_keys] == [2]
    assert _section_versions(sections) == {2}
    assert sorted(p.name for p in sections.iterdir()) == sorted(before[2])  # no temporary file left behind


def test_a_section_that_fails_once_the_version_is_added_leaves_the_data_keys_and_sections_as_they_were(
    database_url, tmp_path, monkeypatch, capsys
):
    """A failure past the checks (the disk filling up meanwhile): the version added stays, as a replica may be
    wrapping under it already, and the message says so; nothing is wrapped under it."""
    sections = _with_backups(database_url, tmp_path, monkeypatch, capsys)
    before = _rotation_state(database_url, tmp_path)
    second = sorted(before[2])[1]

    real_open = _refuse_new_files(monkeypatch, sections, errno.ENOSPC, named=second)
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "keys", "rotate", url=database_url)
    versions, data_keys, section_files = _rotation_state(database_url, tmp_path)
    assert (data_keys, section_files) == before[1:]  # the first section's staged file is gone too
    assert versions == {1: "decrypt_only", 2: "active"}
    assert code == 2 and not out and "Traceback" not in err, (out, err)
    assert "(No space left on device): they are as they were; no data key was re-wrapped" in err, err
    assert "key version 2, added to the keyring file, wraps nothing yet" in err, err

    monkeypatch.setattr(os, "open", real_open)
    code, out, err = _cli(monkeypatch, capsys, tmp_path, "keys", "rotate", url=database_url)
    assert code == 0 and "version 3 is active; 1 data keys re-wrapped; 2 backups' key sections re-wrapped" in out, err
    assert _section_versions(sections) == {3}
    assert sorted(p.name for p in sections.iterdir()) == sorted(before[2])
