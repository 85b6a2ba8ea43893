"""audit job heartbeat

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 07:15:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_jobs') as batch:
        batch.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_jobs') as batch:
        batch.drop_column('heartbeat_at')
