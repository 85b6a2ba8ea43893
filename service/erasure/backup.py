"""Backups that keep erasures: ``bioident backup OUT`` and ``bioident restore IN``.

A backup is a directory that holds the database without its data keys:

- ``manifest.json``: backup id, when, the schema revision, the keyring's id, the key versions its data
  keys were under, the body's SHA-256;
- ``database.sqlite`` (SQLite: a copy made with SQLite's backup API, data keys deleted, vacuumed) or
  ``tables.jsonl`` (PostgreSQL: every table's rows, one JSON line each, read in one snapshot).

Its data keys go to its key section beside the ledger (``service.erasure.sections``), which every
rotation re-wraps and cleans of destroyed subjects. So the backup directory itself may go anywhere: the
templates in it open only with a section key, and only while that key's version exists. The keyring is
never copied into a backup.

``restore`` loads a backup into an empty database, puts the live subjects' data keys back from the
section, and replays the destruction ledger before anything can serve on it. A backup made at an older
schema revision is first brought to this release's in a private scratch SQLite file, by the same
migrations a live database takes (``_at_head``). A restore into an SQLite file that does not exist yet is made
in a new file beside it, moved into place only once restored (``restoring_into``): a refused one leaves no file.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, Table, create_engine, delete, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.types import DateTime, Integer, LargeBinary

from service.erasure.destruction import Replay, replay_in
from service.erasure.errors import BackupError
from service.erasure.ledger import DestructionLedger
from service.erasure.sections import BackupKeys, Section, SectionKey
from service.protected import lock_fence
from service.settings import ServiceSettings
from service.store.db import Database, alembic_config
from service.store.models import (
    AuditHead,
    Base,
    DataKey,
    ErasureState,
    KeyringState,
    Subject,
    Timestamp,
    WatchlistEntry,
    utcnow,
)
from service.trail.anchors import LedgerMark
from service.trail.chain import append
from service.vault import Keyring, KeyringMismatch, KeyStatus
from service.vault.keyring import write_private_file

BACKUP_FORMAT = "bioident-backup/2"  # 2: the manifest signed (1 was not: refused)
MANIFEST = "manifest.json"
SQLITE_BODY = "database.sqlite"
ROWS_BODY = "tables.jsonl"
_SINGLE_ROWS = (KeyringState.__table__, AuditHead.__table__, ErasureState.__table__)  # made by the migrations
_BATCH = 500


@dataclass(frozen=True)
class BackupMade:
    backup_id: str
    created_at: str
    subjects: int
    data_keys: int


@dataclass(frozen=True)
class Restored:
    backup_id: str
    created_at: str
    subjects: int
    data_keys: int
    replay: Replay
    migrated_from: str | None = None  # the backup's schema revision, when older than this release's


def make_backup(db: Database, keyring: Keyring, settings: ServiceSettings, out: Path) -> BackupMade:
    """Writes a consistent copy of the database (without data keys) to ``out`` and its key section beside the ledger."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} exists and is not an empty directory")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    backups = BackupKeys.of(settings, DestructionLedger.of(settings, keyring))
    backup_id, created_at = f"bkp_{uuid.uuid4().hex}", utcnow().isoformat(timespec="seconds")
    sqlite = db.engine.dialect.name == "sqlite"
    body = out / (SQLITE_BODY if sqlite else ROWS_BODY)
    try:
        with db.session() as session:
            if not sqlite:  # one snapshot for every table and the data keys
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            # Held until the end: no rotation (or retirement) runs between reading the data keys and
            # storing them in the section, under the versions they are wrapped by now.
            lock_fence(session, exclusive=False)
            section = backups.write(Section(backup_id, keyring.identity(), tuple(_data_keys(session))))
            if sqlite:  # SQLite: the session holds the write lock, so the copy is consistent
                _copy_sqlite(Path(db.engine.url.database), body)
            else:
                _dump_rows(session, body)
            subjects, entries = _customers(session), _watchlist_entries(session)
            revision = MigrationContext.configure(session.connection()).get_current_revision()
    except BaseException:
        backups.path(backup_id).unlink(missing_ok=True)
        body.unlink(missing_ok=True)
        raise
    manifest = {
        "format": BACKUP_FORMAT,
        "backup_id": backup_id,
        "created_at": created_at,
        "database": db.engine.dialect.name,
        "schema_revision": revision,
        "keyring_id": keyring.identity(),
        "kek_versions_in_use": sorted({key.kek_version for key in section.keys}),
        "subjects": subjects,
        "watchlist_entries": entries,
        "data_keys": len(section.keys),
        "body": body.name,
        "body_sha256": _sha256(body),
    }
    manifest["mac"] = _manifest_mac(keyring, manifest)
    write_private_file(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return BackupMade(backup_id, created_at, subjects, len(section.keys))


def restore_backup(
    db: Database, keyring: Keyring, settings: ServiceSettings, source: Path, marks: Sequence[LedgerMark] = ()
) -> Restored:
    """Loads a backup into an empty database, its live data keys from its section, then replays the ledger.

    ``marks`` (from anchors kept outside) show how long the ledger once was: a ledger cut since is refused.
    """
    manifest = _manifest(source)
    body = source / manifest["body"]
    if manifest.get("keyring_id") != keyring.identity():
        raise KeyringMismatch(
            f"backup {manifest.get('backup_id')} was made with keyring {str(manifest.get('keyring_id'))[:12]}, not "
            f"with this one ({keyring.identity()[:12]}): point BIOIDENT_KEYRING_FILE or BIOIDENT_KEYRING at that "
            "deployment's"
        )
    if not hmac.compare_digest(str(manifest.get("mac", "")), _manifest_mac(keyring, manifest)):
        raise BackupError(f"{source / MANIFEST} does not carry this deployment's signature: the backup was altered")
    _check_body(body, manifest)
    scripts = ScriptDirectory.from_config(alembic_config(db.url))
    head, revision = scripts.get_current_head(), manifest["schema_revision"]
    if revision not in {script.revision for script in scripts.iterate_revisions(head, "base")}:
        raise BackupError(
            f"backup {manifest['backup_id']} is at schema revision {revision}, which this release (at {head}) does "
            "not know: a newer release made it; restore it with that release"
        )
    ledger = DestructionLedger.of(settings, keyring)
    if problem := ledger.contradiction(marks):
        raise BackupError(f"{problem}: not restoring over it (restore the ledger from where it is kept safe)")
    section = BackupKeys.of(settings, ledger).read(manifest["backup_id"])
    usable = {info.version for info in keyring.versions() if info.status is not KeyStatus.RETIRED}
    if stale := [key for key in section.keys if key.kek_version not in usable]:
        raise BackupError(
            f"{len(stale)} data keys in the key section of backup {section.backup_id} are under key versions this "
            "keyring no longer holds: the section missed a rotation, and those subjects cannot be restored"
        )
    if altered := [key for key in section.keys if not key.opens(keyring)]:
        raise BackupError(
            f"{len(altered)} data keys in the key section of backup {section.backup_id} do not open with this keyring "
            "(the section was altered or damaged): restore the section from where it is kept safe; nothing restored"
        )
    migrated_from = None if revision == head else revision
    with db.session() as session:  # before a scratch migration that may take minutes
        _require_empty(session)
    with _at_head(body, revision, head) as rows, db.session() as session:
        _require_empty(session)
        for table in _SINGLE_ROWS:
            session.execute(delete(table))
        for table, batch in _batches(_backup_rows(rows)):
            session.execute(insert(table), batch)
        keys = [{**key.to_row(), "created_at": utcnow()} for key in section.keys]  # restored now
        for start in range(0, len(keys), _BATCH):
            session.execute(insert(DataKey.__table__), keys[start : start + _BATCH])
        fence = lock_fence(session, exclusive=True)  # replicas with a keyring older than ours may not wrap
        fence.min_wrap_version = max(fence.min_wrap_version, keyring.active_version)
        _continue_sequences(session)
        session.flush()
        subjects = _customers(session)
        # In the same transaction: a database the ledger cannot be replayed over is not restored at all.
        replay = replay_in(session, ledger, adopt=True)  # older than the ledger: it takes the ledger's count
        append(
            session,
            actor="operator",
            action="backup.restore",
            outcome="restored",
            details={
                "backup_id": manifest["backup_id"],
                "backup_created_at": manifest["created_at"],
                "data_keys": len(section.keys),
                "destroyed_again": len(replay.completed),
                "migrated_from": migrated_from,
            },
        )
    return Restored(manifest["backup_id"], manifest["created_at"], subjects, len(section.keys), replay, migrated_from)


@contextmanager
def restoring_into(url: str) -> Iterator[str]:
    """The database URL to restore into for ``url``: for an SQLite file not there yet, a new file beside it.

    That file becomes ``url``'s when the block ends without an error, and is removed when it raises, with any
    folder made for it: a refused restore leaves no database that looks set up. A file (or server database)
    that exists is restored into as it is, in the restore's one transaction; it is never removed or replaced.
    """
    target = _new_sqlite_file(url)
    if target is None:
        yield url
        return
    made = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".restoring", dir=target.parent)
    os.close(fd)
    scratch = Path(name)
    try:
        yield make_url(url).set(database=str(scratch)).render_as_string(hide_password=False)
        _move_into_place(scratch, target)
    except BaseException:
        for leftover in (scratch, *(scratch.with_name(scratch.name + end) for end in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
        for folder in made:  # deepest first; one that holds something now stays
            with suppress(OSError):
                folder.rmdir()
        raise


def _new_sqlite_file(url: str) -> Path | None:
    """The file of an SQLite ``url`` that does not exist yet; ``None`` for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:") or "uri" in parsed.query:
        return None
    path = Path(parsed.database).resolve()
    return None if path.exists() else path


def _move_into_place(restored: Path, target: Path) -> None:
    """``restored`` becomes ``target``, which must still not exist (another process may have made it since)."""
    taken = BackupError(
        f"{target} was created by something else while the backup was being restored: it is left as it is, and "
        "nothing was restored (run the restore again, into a database nothing else uses)"
    )
    try:
        os.link(restored, target)  # unlike a rename, never replaces a file
    except FileExistsError:
        raise taken from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise taken from None
        os.rename(restored, target)
    else:
        restored.unlink()
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the new name survives a crash
    finally:
        os.close(folder)


# --- writing -----------------------------------------------------------------------------------


def _customers(session: Session) -> int:
    """Subjects that are customers: a watchlist entry is a subject row of its own (for its data key), not one."""
    entries = select(WatchlistEntry.id)
    return session.execute(select(func.count()).select_from(Subject).where(Subject.token.not_in(entries))).scalar_one()


def _watchlist_entries(session: Session) -> int:
    return session.execute(select(func.count()).select_from(WatchlistEntry)).scalar_one()


def _data_keys(session: Session) -> Iterator[SectionKey]:
    for row in session.execute(select(DataKey)).scalars():
        yield SectionKey(row.key_id, row.subject_token, row.modality, row.kek_version, row.wrapped)


def _copy_sqlite(database: Path, body: Path) -> None:
    os.close(os.open(body, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    with closing(source), closing(sqlite3.connect(body)) as copy:
        source.backup(copy)
        # The copy must not hold the wrapped data keys, not even in free pages.
        copy.execute("PRAGMA secure_delete=ON")
        copy.execute("DELETE FROM data_keys")
        copy.commit()
        copy.execute("VACUUM")


def _dump_rows(session: Session, body: Path) -> None:
    fd = os.open(body, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        for table in _tables():
            for row in session.execute(select(table)).mappings():
                values = {c.name: _to_json(c.type, row[c.name]) for c in table.columns}
                out.write(json.dumps({"table": table.name, "row": values}, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _to_json(kind: object, value: object) -> object:
    if value is None:
        return None
    if isinstance(kind, LargeBinary):
        return base64.b64encode(value).decode("ascii")
    if isinstance(kind, Timestamp):
        return value.isoformat()
    return value


def _from_json(kind: object, value: object) -> object:
    """A value of ``tables.jsonl`` for a column of this release's tables, or of one reflected from SQLite."""
    if value is None:
        return None
    if isinstance(kind, LargeBinary):
        return base64.b64decode(value, validate=True)
    if isinstance(kind, (Timestamp, DateTime)):
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC)  # as ``Timestamp`` stores it
    return value


def _tables() -> list[Table]:
    """Every table but the data keys, parents before children."""
    return [t for t in Base.metadata.sorted_tables if t.name != DataKey.__tablename__]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reading -----------------------------------------------------------------------------------


def _manifest(source: Path) -> dict:
    manifest = None
    try:
        manifest = json.loads((source / MANIFEST).read_bytes())
        if manifest.get("format") != BACKUP_FORMAT or manifest.get("body") not in (SQLITE_BODY, ROWS_BODY):
            raise ValueError
    except FileNotFoundError:
        raise BackupError(f"{source} holds no {MANIFEST}: not a backup made with 'bioident backup'") from None
    except (ValueError, AttributeError):
        if isinstance(manifest, dict) and manifest.get("format") == "bioident-backup/1":
            raise BackupError(
                f"{source} is a backup of format 1, whose manifest is not signed (a change to it could not be "
                "told): make a new backup with this release"
            ) from None
        raise BackupError(f"{source / MANIFEST} is not a bioident backup manifest") from None
    return manifest


def _manifest_mac(keyring: Keyring, manifest: dict) -> str:
    """HMAC-SHA256 of the manifest (all but its ``mac``) as canonical JSON, under the keyring's backup key."""
    signed = {k: v for k, v in manifest.items() if k != "mac"}
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hmac.new(keyring.backup_key(), canonical, hashlib.sha256).hexdigest()


def _check_body(body: Path, manifest: dict) -> None:
    if not body.is_file() or _sha256(body) != manifest.get("body_sha256"):
        raise BackupError(f"{body} is missing or is not the file its manifest describes (SHA-256 differs)")


def _backup_rows(body: Path) -> Iterator[tuple[Table, dict]]:
    if body.name == SQLITE_BODY:
        engine = create_engine(f"sqlite:///file:{body}?mode=ro&uri=true")
        try:
            with engine.connect() as connection:
                yield from _rows_of(connection)
        finally:
            engine.dispose()
        return
    yield from _jsonl_rows(body, {t.name: t for t in _tables()}, "this release's tables")


def _jsonl_rows(body: Path, tables: Mapping[str, Table], of: str) -> Iterator[tuple[Table, dict]]:
    """The rows of ``tables.jsonl``, typed by ``tables`` (``of``: whose tables, for the error on a bad line)."""
    with body.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                table = tables[record["table"]]
                yield table, {c.name: _from_json(c.type, record["row"][c.name]) for c in table.columns}
            except (ValueError, KeyError, TypeError):
                raise BackupError(f"{body} line {number} is not a row of {of}") from None


@contextmanager
def _at_head(body: Path, revision: str, head: str) -> Iterator[Path]:
    """``body`` itself at this release's revision, else a scratch SQLite copy of it migrated to ``head``.

    The copy lies in a private temporary folder, removed afterwards; like the backup, it holds sealed templates
    and no data keys. Rows of a PostgreSQL backup are loaded at their own revision first: the migrations run on
    SQLite and PostgreSQL alike.
    """
    if revision == head:
        yield body
        return
    with tempfile.TemporaryDirectory(prefix="bioident-restore-") as folder:
        copy = Path(folder) / SQLITE_BODY
        config = alembic_config(f"sqlite:///{copy}")
        if body.name == SQLITE_BODY:
            shutil.copyfile(body, copy)
        else:
            command.upgrade(config, revision)
            _load_rows(copy, body)
        command.upgrade(config, "head")
        yield copy


def _load_rows(database: Path, body: Path) -> None:
    """The rows of ``tables.jsonl`` into an SQLite database at the body's own schema revision."""
    engine = create_engine(f"sqlite:///{database}")
    try:
        tables = MetaData()
        tables.reflect(engine)
        with engine.begin() as connection:
            for table in reversed(tables.sorted_tables):  # the rows the migrations made come from the backup
                if table.name != "alembic_version":
                    connection.execute(delete(table))
            for table, batch in _batches(_jsonl_rows(body, tables.tables, "its schema revision")):
                connection.execute(insert(table), batch)
    finally:
        engine.dispose()


def _rows_of(connection: Connection) -> Iterator[tuple[Table, dict]]:
    for table in _tables():
        for row in connection.execute(select(table)).mappings():
            yield table, dict(row)


def _batches(rows: Iterator[tuple[Table, dict]]) -> Iterator[tuple[Table, list[dict]]]:
    table, batch = None, []
    for row_table, row in rows:
        if batch and (row_table is not table or len(batch) >= _BATCH):
            yield table, batch
            batch = []
        table = row_table
        batch.append(row)
    if batch:
        yield table, batch


def _require_empty(session: Session) -> None:
    held = {
        table.name: n
        for table in Base.metadata.sorted_tables
        if table not in _SINGLE_ROWS and (n := session.execute(select(func.count()).select_from(table)).scalar_one())
    }
    if held:
        listed = ", ".join(f"{n} {name}" for name, n in held.items())
        raise BackupError(
            f"the database is not empty ({listed}): a backup is restored only into an empty database "
            "(a new one; 'bioident db upgrade' prepares it)"
        )


def _continue_sequences(session: Session) -> None:
    """PostgreSQL: the id sequences carry on after the restored rows' ids."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for table in Base.metadata.sorted_tables:
        columns = list(table.primary_key.columns)
        if len(columns) != 1 or not isinstance(columns[0].type, Integer) or columns[0].autoincrement is False:
            continue
        column = columns[0]
        session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
            )
        )
