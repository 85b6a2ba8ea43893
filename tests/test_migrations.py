"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from service.store.models import Base


def test_migrated_schema_matches_the_models(database_url):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_finished_audit_jobs_get_their_headline_results_when_migrated(database_url):
    from alembic import command
    from sqlalchemy import text

    from service.store.db import alembic_config, upgrade

    command.downgrade(alembic_config(database_url), "0005")
    report = {"eer": 0.01, "fte": 0.0, "dataset_sha256": "d" * 64, "scores": {"genuine": [0.9], "impostor": [0.1]}}
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('bank', 'bank', CURRENT_TIMESTAMP)"))
            # More finished jobs than the migration reads in one batch (20)
            many = [(f"aud_{i:02d}", json.dumps({**report, "eer": i / 100})) for i in range(45)]
            for job_id, body in (("aud_done", json.dumps(report)), ("aud_failed", "null"), *many):
                conn.execute(
                    text(
                        "INSERT INTO audit_jobs (id, tenant_id, requested_by, params, status, report, created_at) "
                        "VALUES (:id, 'bank', 'cli_x', '{}', 'done', :report, CURRENT_TIMESTAMP)"
                    ),
                    {"id": job_id, "report": body},
                )
        upgrade(database_url)
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, results FROM audit_jobs")).all())
    finally:
        engine.dispose()
    done = json.loads(rows["aud_done"]) if isinstance(rows["aud_done"], str) else rows["aud_done"]
    assert done["eer"] == 0.01 and done["dataset_sha256"] == "d" * 64 and "scores" not in done
    assert rows["aud_failed"] in (None, "null")
    for i in range(45):
        results = rows[f"aud_{i:02d}"]
        assert (json.loads(results) if isinstance(results, str) else results)["eer"] == i / 100
