"""How long a retention run takes: N customers, each with voice consent, a data key and a sealed template,
all inactive past the retention period, purged by the product's own ``purge_inactive`` (each purge: lock,
withdrawal with crypto-shredding, destruction ledger line synced, audit entries, two signed receipts).

    python -m benchmarks.retention_purge [--subjects 200] [--database-url postgresql+psycopg2://...]

Prints a small table and writes JSON to benchmarks/results/retention_purge.json. Never asserts on time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

from sqlalchemy import update

from benchmarks.host import ForeignLoad, cpu_model


def _populate(ctx, subjects: int) -> None:
    from service.auth import Principal, Role
    from service.consent.records import ConsentChannel, ConsentTerms, record_consent
    from service.modality import Modality
    from service.protected import data_key, seal_into
    from service.store.models import Subject, Template, Tenant

    actor = Principal("cli_bench", "bank", Role.PORTAL)
    with ctx.db.session() as session:
        session.add(Tenant(id="bank", name="bank"))
    for i in range(subjects):
        token = f"sub_{i:064x}"
        with ctx.db.session() as session:
            terms = ConsentTerms(Modality.VOICE, "authentication", "v1", "0" * 64, ConsentChannel.PORTAL, "b")
            record_consent(session, actor, token, terms)
            template = Template(subject_token=token, tenant_id="bank", modality="voice", model_fingerprint="m",
                                sample_count=3, sealed=b"")  # fmt: skip
            session.add(template)
            session.flush()
            seal_into(template, data_key(session, ctx.keyring, token, "voice", create=True), bytes(192 * 4 * 2))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=4000)
    with ctx.db.session() as session:
        session.execute(update(Subject).values(last_active_at=long_ago))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--database-url", help="an empty, migrated PostgreSQL database (default: SQLite)")
    args = parser.parse_args()

    from service.consent.retention import purge_inactive
    from service.context import ServiceContext
    from service.settings import ServiceSettings
    from service.store.db import upgrade

    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'bioident.db'}"
        upgrade(url)
        settings = ServiceSettings(_env_file=None, data_dir=Path(folder), database_url=url)
        ctx = ServiceContext(settings, create_keyring=True)
        _populate(ctx, args.subjects)
        with ForeignLoad() as load:
            start = time.perf_counter()
            purged = purge_inactive(ctx.db, settings, ctx.keyring)
            wall = time.perf_counter() - start
        ctx.db.engine.dispose()
    backend = url.split(":", 1)[0].split("+")[0]
    result = {
        "date": dt.date.today().isoformat(), "host": cpu_model(), "backend": backend, "subjects": args.subjects,
        "purged": len(purged), "wall_s": round(wall, 3), "ms_per_subject": round(1000 * wall / max(1, len(purged)), 2),
        "subjects_per_s": round(len(purged) / wall, 1), "foreign_load_cores": round(load.cores, 2),
    }  # fmt: skip
    print("| backend | subjects purged | wall s | ms / subject | subjects / s | other load (cores) |")
    print("|---|---|---|---|---|---|")
    print(f"| {backend} | {result['purged']} | {result['wall_s']} | {result['ms_per_subject']} | "
          f"{result['subjects_per_s']} | {result['foreign_load_cores']} |")  # fmt: skip
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "retention_purge.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
