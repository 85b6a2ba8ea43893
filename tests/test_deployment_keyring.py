"""Which keyring a deployment uses (service/deployment_keyring.py): the first keyring loaded against
a database is bound to it, a host with another keyring or none is refused before it writes anything,
a new keyring is made only for a database that holds nothing made with one, and the keyring file is
private (an open one is refused with a chmod hint)."""

from __future__ import annotations

import os
import stat

import pytest
from sqlalchemy import text

from service.store.db import Database
from tests.operations_fixtures import TRAIL_LENGTH, _audit_key, _build_trail, _cli, _execute, _rows

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]


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
        code, out, err = _cli(
            monkeypatch, capsys, data_dir, "clients", "create", "--tenant", "u", "--name", "b", "--role", "admin"
        )
        assert code == 2 and "only in the operators' tenant (t)" in err, (code, err)  # admins manage every tenant
        for tenant in ("", "Bänk ü", "<b>x</b>", "x" * 65):  # the ids POST /v1/tenants refuses
            code, out, err = _cli(
                monkeypatch, capsys, data_dir, "clients", "create", "--tenant", tenant, "--name", "c", "--role", "ivr"
            )
            assert code == 2 and "a tenant id is 1-64 characters" in err and not out, (tenant, code, err)
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


def test_keys_list_reads_the_keyring_and_neither_creates_nor_migrates_a_database(tmp_path, monkeypatch, capsys):
    from service.vault import Keyring

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    Keyring.load_or_create(data_dir / "keyring.json")
    code, out, err = _cli(monkeypatch, capsys, data_dir, "keys", "list")
    assert code == 0 and [line.split("\t")[:2] for line in out.splitlines()] == [["1", "active"]], err
    assert not (data_dir / "bioident.db").exists()
