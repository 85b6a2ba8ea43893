"""audit job headline results, so status polls need not load the whole report

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 11:30:00
"""

import json

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

RESULT_KEYS = (
    "eer", "min_dcf", "fnmr_at_fmr", "fte", "fta", "genuine_trials", "impostor_trials", "model_fingerprint",
    "dataset_sha256",
)
REPORTS_PER_BATCH = 20


def upgrade() -> None:
    with op.batch_alter_table('audit_jobs') as batch:
        batch.add_column(sa.Column('results', sa.JSON(), nullable=True))
    jobs = sa.table('audit_jobs', sa.column('id', sa.String), sa.column('report', sa.JSON), sa.column('results', sa.JSON))
    connection = op.get_bind()
    finished = connection.execute(
        sa.select(jobs.c.id).where(jobs.c.report.is_not(None)).order_by(jobs.c.id)
    ).scalars().all()
    # A few reports at a time: each holds its DET curve and per-threshold tables.
    for start in range(0, len(finished), REPORTS_PER_BATCH):
        batch = finished[start : start + REPORTS_PER_BATCH]
        reports = connection.execute(sa.select(jobs.c.id, jobs.c.report).where(jobs.c.id.in_(batch))).all()
        for job_id, report in reports:
            report = json.loads(report) if isinstance(report, str) else report
            if not isinstance(report, dict):  # a JSON null: the job failed
                continue
            results = {key: report.get(key) for key in RESULT_KEYS}
            connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(results=results))


def downgrade() -> None:
    with op.batch_alter_table('audit_jobs') as batch:
        batch.drop_column('results')
