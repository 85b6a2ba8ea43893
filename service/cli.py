"""``bioident`` with the service verbs added to the core's: serve, db, keys, erasure, backup, restore, audit,
clients."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from biometrics import cli as core_cli
from biometrics.errors import BiometricsError
from biometrics.evaluation.cli import add_audit_commands
from service.auth import Role
from service.errors import ServiceError
from service.trail.anchors import AnchorFileError
from service.vault.errors import VaultError


def _settings():  # noqa: ANN202
    from service.settings import ServiceSettings

    settings = ServiceSettings()
    # A fresh install has no data directory yet: the keyring file and the SQLite database go there.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return settings


def _migrated_database(settings):  # noqa: ANN001, ANN202
    from service.store.db import Database, upgrade

    db = Database(settings.resolved_database_url)  # first: it creates an SQLite file's directory
    upgrade(settings.resolved_database_url)
    return db


def _open_store(settings, *, create_keyring: bool = False):  # noqa: ANN001, ANN202
    """The migrated database and the keyring; its sessions sign audit entries with the keyring's audit key.

    Only the commands that set a deployment up (``serve``, ``clients create``) may create the keyring,
    and only for a database that holds nothing made with one; the others need the existing keyring.
    """
    from service.deployment_keyring import load_keyring

    db = _migrated_database(settings)
    keyring = load_keyring(settings, db, create=create_keyring)
    db.audit_key = keyring.audit_key()
    return db, keyring


def _backup_keys(settings, keyring):  # noqa: ANN001, ANN202
    """The backups' key sections, cleaned of what the destruction ledger names."""
    from service.erasure.ledger import DestructionLedger
    from service.erasure.sections import BackupKeys

    return BackupKeys.of(settings, DestructionLedger.of(settings, keyring))


def _replay_ledger(settings, db, keyring) -> None:  # noqa: ANN001
    """Before serving: what the destruction ledger says is destroyed is destroyed in this database too."""
    from service.erasure.destruction import replay_ledger
    from service.erasure.ledger import DestructionLedger

    replay = replay_ledger(db, DestructionLedger.of(settings, keyring))
    if replay.completed:
        print(
            f"destruction ledger: {len(replay.completed)} withdrawals this database did not show were completed",
            file=sys.stderr,
            flush=True,
        )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app
    from service.consent.retention import RetentionSchedule, purge_inactive
    from service.context import ServiceContext
    from service.erasure.shred import ShreddingSchedule
    from service.portal.links import prune as prune_portal
    from service.voice.streams.log_redaction import uvicorn_log_config

    settings = _settings()
    if args.audiosocket:
        settings.audiosocket = args.audiosocket
    db, keyring = _open_store(settings, create_keyring=True)
    _replay_ledger(settings, db, keyring)
    ctx = ServiceContext(settings, database=db, keyring=keyring)
    key = bootstrap_admin(ctx.db)
    if key is not None:
        print(f"first admin API key (shown once, store it now): {key}", flush=True)
    ctx.embedder  # noqa: B018 - load and verify the model before taking traffic
    from service.galleries import warm_galleries

    print(f"1:N galleries warmed: {warm_galleries(ctx)} templates in memory", flush=True)
    schedule = ShreddingSchedule(db, settings).start()
    def housekeeping() -> list:
        prune_portal(db)  # expired portal links and sessions
        return purge_inactive(db, settings, ctx.keyring)

    retention = RetentionSchedule(housekeeping, settings.retention_check_interval_s).start()
    try:
        uvicorn.run(
            create_app(ctx),
            host=args.host or settings.host,
            port=args.port or settings.port,
            log_level="info",
            access_log=False,
            log_config=uvicorn_log_config(),  # uvicorn's own, stream ids left out of what it logs
        )
    finally:
        retention.stop()
        schedule.stop()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    _migrated_database(_settings())
    print("database is at the latest schema")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from service.keys import rotate_keys

    settings = _settings()
    db, keyring = _open_store(settings)
    rotation = rotate_keys(db, keyring, _backup_keys(settings, keyring))
    print(
        f"key-encryption key version {rotation.active_version} is active; {rotation.rewrapped} data keys re-wrapped"
        + _backup_keys_line(rotation.backups)
    )
    return 0


def _backup_keys_line(sections) -> str:  # noqa: ANN001
    if sections is None or not sections.sections:
        return ""
    return (
        f"; {sections.sections} backups' key sections re-wrapped ({sections.rewrapped} keys), "
        f"{sections.dropped} destroyed keys dropped from them"
    )


def _key_version(text: str) -> int:
    from service.vault.keyring import MAX_KEY_VERSION

    try:
        version = int(text)
    except ValueError:
        version = 0
    if not 1 <= version <= MAX_KEY_VERSION:
        raise argparse.ArgumentTypeError(f"a key version is an integer from 1 to {MAX_KEY_VERSION}, not {text!r}")
    return version


def cmd_keys_retire(args: argparse.Namespace) -> int:
    from service.keys import Retirement, retire_key

    settings = _settings()
    db, keyring = _open_store(settings)
    outcome = retire_key(db, keyring, args.version, _backup_keys(settings, keyring))
    if outcome is Retirement.RETIRED:
        print(f"key-encryption key version {args.version} retired: its material is gone")
    elif outcome is Retirement.ALREADY_RETIRED:
        print(f"key-encryption key version {args.version} was retired already: nothing changed")
    else:
        print(f"no data key is wrapped by version {args.version}: destroy it in the secret store and redeploy")
    return 0


def cmd_keys_shred(args: argparse.Namespace) -> int:
    from service.erasure.shred import shred

    settings = _settings()
    db, _ = _open_store(settings)
    outcome = shred(db, settings, now=args.now)
    if outcome.rotation is not None:
        print(
            f"key-encryption key version {outcome.active_version} is active ({outcome.reason}); "
            f"{outcome.rotation.rewrapped} data keys re-wrapped" + _backup_keys_line(outcome.rotation.backups)
        )
    if outcome.retired:
        print(f"key-encryption key versions {', '.join(map(str, outcome.retired))} retired: their material is gone")
    if outcome.operator_action:
        print(f"bioident: erasure needs the operator: {outcome.operator_action}", file=sys.stderr)
        return 1
    if outcome.rotation is None and not outcome.retired:
        print(f"nothing to shred: key version {outcome.active_version} is within its shredding period")
    return 0


def _report(*parts) -> dict:  # noqa: ANN002
    """The reports ``parts`` (each ``part(session, keyring, settings) -> dict``) merged, from one session."""
    settings = _settings()
    db, keyring = _open_store(settings)
    with db.session() as session:
        return {key: value for part in parts for key, value in part(session, keyring, settings).items()}


def cmd_erasure_status(args: argparse.Namespace) -> int:
    import json

    from service.erasure.status import erasure_status

    status = _report(erasure_status)
    print(json.dumps(status, indent=2))
    return 1 if status["problems"] else 0


def cmd_backup(args: argparse.Namespace) -> int:
    from service.erasure.backup import make_backup

    settings = _settings()
    made = make_backup(*_open_store(settings), settings, args.out)
    print(
        f"backup {made.backup_id} written to {args.out}: {made.subjects} subjects; the {made.data_keys} data keys "
        f"are in its key section in {settings.resolved_backup_keys_dir}, not in the backup"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from service.erasure.backup import restore_backup, restoring_into

    settings = _settings()
    marks = [anchor.ledger for anchor in _anchors(args.anchors) if anchor.ledger is not None]
    # A new SQLite file is made beside the target and moved there once restored: a refusal leaves none.
    with restoring_into(settings.resolved_database_url) as url:
        target = settings.model_copy(update={"database_url": url})
        db, keyring = _open_store(target)
        try:
            restored = restore_backup(db, keyring, target, args.source, marks)
        finally:
            db.engine.dispose()  # before the file is moved into place (or removed)
    print(
        f"restored backup {restored.backup_id} (made {restored.created_at}): {restored.subjects} subjects, "
        f"{restored.data_keys} data keys; {len(restored.replay.completed)} withdrawals re-destroyed "
        f"from the destruction ledger ({restored.replay.ledger_lines} lines)"
        + ("" if restored.migrated_from is None else f"; migrated from schema revision {restored.migrated_from}")
    )
    return 0


def cmd_retention_run(args: argparse.Namespace) -> int:
    from service.consent.retention import purge_inactive
    from service.portal.links import prune as prune_portal

    settings = _settings()
    db, keyring = _open_store(settings)
    purged = purge_inactive(db, settings, keyring, dry_run=args.dry_run)
    if not args.dry_run:
        prune_portal(db)
    verb = "due for purging" if args.dry_run else "purged"
    for purge in purged:
        if args.dry_run:
            print(f"{purge.subject_token}\tdue")
        else:
            modalities = ", ".join(sorted(purge.destroyed)) or "no biometric data"
            closed = f"{len(purge.consents_closed)} consents closed"
            print(f"{purge.subject_token}\t{closed}\t{modalities}\treceipt {purge.receipt_id}")
    print(f"{len(purged)} subjects {verb} (no interaction for {settings.retention_days} days)")
    return 0


def cmd_templates_report(args: argparse.Namespace) -> int:
    from service.voice.template_report import voice_template_report

    settings = _settings()
    db, keyring = _open_store(settings)
    report = voice_template_report(db, keyring, args.tenant)
    scored = ", ".join(f"{slot} {n}" for slot, n in report.scored_as.items()) or "none"
    print(f"{report.templates} voice templates, scored as: {scored}; {report.unreadable} unreadable")
    if report.unknown_channel:
        print(
            f"{len(report.unknown_channel)} are held to the unknown-channel threshold until the customer enrols "
            "again (made over the phone before front end 2, or before channels were recorded)"
            + ("" if args.list else "; --list names them")
        )
    if args.list:
        for tenant, token in report.unknown_channel:
            print(f"{tenant}\t{token}")
    return 0


def _deployment_wrap_version(settings) -> int | None:  # noqa: ANN001
    """The database's key-version fence, read without migrating or creating anything; None where there is none."""
    from sqlalchemy.engine import make_url

    from service.keys import deployment_wrap_version
    from service.store.db import Database

    url = settings.resolved_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).is_file()):
        return None
    db = Database(url)
    try:
        return deployment_wrap_version(db)
    except (SQLAlchemyError, AttributeError):  # no such table yet (not migrated), or no fence row
        return None
    finally:
        db.engine.dispose()


def cmd_keys_list(args: argparse.Namespace) -> int:
    from service.deployment_keyring import keyring_origin, load_keyring

    settings = _settings()
    keyring = load_keyring(settings)  # the keyring alone: listing it changes nothing in the database
    for info in keyring.versions():
        print(f"{info.version}\t{info.status}\tcreated {info.created_at.isoformat(timespec='seconds')}")
    deployment = _deployment_wrap_version(settings)
    if deployment is not None and keyring.active_version < deployment:
        print(
            f"bioident: warning: {keyring_origin(settings)} is an outdated copy of the deployment's keyring: its "
            f"active version is {keyring.active_version}, the deployment's is {deployment} (after 'bioident keys "
            "rotate'); use the current keyring",
            file=sys.stderr,
        )
        return 1
    return 0


def _anchors(path: Path | None) -> list:
    """The anchors in ``path`` (none without one); an unreadable file is an input error."""
    from service.trail.anchors import parse_anchors

    if path is None:
        return []
    try:
        return parse_anchors(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise AnchorFileError(f"{path} is not a text file of anchors") from None


def cmd_audit_verify_chain(args: argparse.Namespace) -> int:
    from service.erasure.errors import LedgerError
    from service.erasure.ledger import DestructionLedger
    from service.trail.anchors import check_anchors
    from service.trail.chain import verify_chain

    anchors = _anchors(args.anchors)
    settings = _settings()
    db, keyring = _open_store(settings)
    with db.session() as session:
        report = check_anchors(session, verify_chain(session, settings.audit_unsigned_up_to), anchors)
    if not report.ok:
        print(f"audit chain BROKEN at entry {report.first_bad_seq}: {report.problem}", file=sys.stderr)
        return 1
    marks = [anchor.ledger for anchor in anchors if anchor.ledger is not None]
    try:
        problem = DestructionLedger.of(settings, keyring).contradiction(marks)
    except LedgerError as exc:  # a line altered, forged or torn
        problem = exc.detail
    if problem:
        print(f"destruction ledger BROKEN: {problem}", file=sys.stderr)
        return 1
    if anchors:
        print(f"{len(anchors)} anchors agree with the trail" + (" and the destruction ledger" if marks else ""))
    signed = "all signed" if not report.unsigned else f"{report.unsigned} unsigned, from before signing began"
    print(f"audit chain intact: {report.entries} entries ({signed})")
    return 0


def cmd_audit_anchor(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from service.erasure.errors import LedgerError
    from service.erasure.ledger import DestructionLedger
    from service.store.models import ERASURE_STATE_ID, ErasureState
    from service.trail.anchors import current_anchor
    from service.trail.chain import verify_chain

    settings = _settings()
    db, keyring = _open_store(settings)
    with db.session() as session:
        report = verify_chain(session, settings.audit_unsigned_up_to)
        anchor = current_anchor(session) if report.ok else None
        counted = session.get(ErasureState, ERASURE_STATE_ID).ledger_lines
    if not report.ok:
        print(
            f"bioident: error: the audit chain is BROKEN at entry {report.first_bad_seq}; not anchoring it",
            file=sys.stderr,
        )
        return 1
    if anchor is None:
        print("bioident: error: the trail has no signed entries to anchor yet", file=sys.stderr)
        return core_cli.EXIT_INPUT_ERROR
    ledger = DestructionLedger.of(settings, keyring)
    try:
        mark = ledger.mark()
        if mark.lines < counted:  # not the deployment's ledger (BIOIDENT_LEDGER_FILE unset here?), or cut
            found = f"destruction ledger {ledger.path} has {mark.lines} lines"
            raise LedgerError(f"{found}; the database counts {counted}")
    except (LedgerError, OSError) as exc:
        # The trail's anchor is still worth keeping; a mark of the wrong ledger would vouch for nothing.
        print(anchor.to_json())
        why = exc.detail if isinstance(exc, LedgerError) else f"{exc.filename}: {exc.strerror}"
        print(f"bioident: warning: this anchor carries no ledger mark: {why}", file=sys.stderr)
        return 1
    print(replace(anchor, ledger=mark).to_json())
    return 0


def cmd_audit_deployment(args: argparse.Namespace) -> int:
    import json

    from service.accuracy.deployment import deployment_report
    from service.erasure.status import erasure_status

    report = _report(deployment_report, lambda *store: {"erasure": erasure_status(*store)})
    print(json.dumps(report, indent=2))
    return 0 if report["audit_chain"]["ok"] else 1


def cmd_clients_create(args: argparse.Namespace) -> int:
    from service.admin.clients import create_client
    from service.auth import Role

    db, _ = _open_store(_settings(), create_keyring=True)
    _, key = create_client(
        db, actor="operator", tenant_id=args.tenant, name=args.name, role=Role(args.role), new_tenant_name=args.tenant
    )
    print(key)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = core_cli.build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = verbs.add_parser("serve", help="start the API (OpenAPI at /docs)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--audiosocket", metavar="HOST:PORT", help="also listen for Asterisk AudioSocket streams")
    serve.set_defaults(run=cmd_serve)

    db = verbs.add_parser("db", help="database").add_subparsers(dest="action", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(run=cmd_db_upgrade)

    keys = verbs.add_parser("keys", help="key-encryption keys").add_subparsers(dest="action", required=True)
    keys.add_parser("rotate", help="add a key version and re-wrap every data key").set_defaults(run=cmd_keys_rotate)
    keys.add_parser("list", help="key versions and their status").set_defaults(run=cmd_keys_list)
    retire = keys.add_parser("retire", help="destroy an old key version no data key uses")
    retire.add_argument("version", type=_key_version)
    retire.set_defaults(run=cmd_keys_retire)
    shred = keys.add_parser(
        "shred", help="when the shredding period is up: a new key version, data keys re-wrapped, older ones destroyed"
    )
    shred.add_argument("--now", action="store_true", help="rotate and retire now, whatever the period says")
    shred.set_defaults(run=cmd_keys_shred)

    erasure = verbs.add_parser("erasure", help="what withdrawals destroyed and what may still be readable")
    erasure.add_subparsers(dest="action", required=True).add_parser(
        "status", help="the shredding epoch, the destruction ledger, the backups' key sections (JSON)"
    ).set_defaults(run=cmd_erasure_status)
    backup = verbs.add_parser("backup", help="a consistent copy of the database; its data keys stay beside the ledger")
    backup.add_argument("out", type=Path, help="a new (or empty) directory")
    backup.set_defaults(run=cmd_backup)
    restore = verbs.add_parser("restore", help="load a backup into an empty database, then replay the ledger")
    restore.add_argument("source", type=Path, help="a directory written by 'bioident backup'")
    restore.add_argument(
        "--anchors", type=Path, help="anchors file ('audit anchor'): refuse a destruction ledger they show was cut"
    )
    restore.set_defaults(run=cmd_restore)

    audit = verbs.add_parser("audit", help="accuracy audits and the audit trail").add_subparsers(
        dest="action", required=True
    )
    add_audit_commands(audit)
    audit.add_parser(
        "deployment", help="enrolments, consents, lockouts, key versions and the audit chain of this deployment"
    ).set_defaults(run=cmd_audit_deployment)
    verify = audit.add_parser("verify-chain", help="detect edited, inserted, deleted or re-hashed entries")
    verify.add_argument(
        "--anchors",
        type=Path,
        help="file of anchors from 'audit anchor' (one per line): also detect a cut tail behind an old head",
    )
    verify.set_defaults(run=cmd_audit_verify_chain)
    audit.add_parser(
        "anchor", help="print the signed head as one JSON line, to keep where the database's writers cannot"
    ).set_defaults(run=cmd_audit_anchor)

    templates = verbs.add_parser("templates", help="what the enrolled templates are").add_subparsers(
        dest="action", required=True
    )
    report = templates.add_parser(
        "report", help="voice templates by the channel callers are scored against (opens each; audited)"
    )
    report.add_argument("--tenant", help="only this tenant's templates")
    report.add_argument("--list", action="store_true", help="name the subjects whose templates to re-enrol")
    report.set_defaults(run=cmd_templates_report)

    retention = verbs.add_parser("retention", help="purge subjects inactive for the retention period")
    run = retention.add_subparsers(dest="action", required=True).add_parser(
        "run", help="purge every subject with no interaction for BIOIDENT_RETENTION_DAYS (audited, with receipts)"
    )
    run.add_argument("--dry-run", action="store_true", help="only list who is due")
    run.set_defaults(run=cmd_retention_run)

    clients = verbs.add_parser("clients", help="API clients").add_subparsers(dest="action", required=True)
    create = clients.add_parser("create", help="create a client and print its API key once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=[str(r) for r in Role])
    create.set_defaults(run=cmd_clients_create)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (BiometricsError, VaultError) as exc:
        print(f"bioident: error: {exc.message}", file=sys.stderr)
        return core_cli.EXIT_INPUT_ERROR
    except ServiceError as exc:
        print(f"bioident: error: {exc.detail}", file=sys.stderr)
        return core_cli.EXIT_INPUT_ERROR
    except AnchorFileError as exc:
        print(f"bioident: error: {exc}", file=sys.stderr)
        return core_cli.EXIT_INPUT_ERROR
    except OSError as exc:
        print(f"bioident: error: {exc.filename or 'input'}: {exc.strerror}", file=sys.stderr)
        return core_cli.EXIT_INPUT_ERROR
    except ValidationError as exc:
        if not exc.title.endswith("Settings"):  # not a BIOIDENT_* setting: a real fault, not the user's input
            raise
        core_cli.print_settings_error(exc)
        return core_cli.EXIT_INPUT_ERROR
    except SQLAlchemyError as exc:
        print(
            f"bioident: error: the database is not usable ({type(exc).__name__}); "
            "check BIOIDENT_DATABASE_URL and that the server is up",
            file=sys.stderr,
        )
        return core_cli.EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
