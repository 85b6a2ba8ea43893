"""audit entries and head signed with HMAC

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 06:45:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_entries') as batch:
        batch.add_column(sa.Column('entry_mac', sa.String(length=64), nullable=True))
    with op.batch_alter_table('audit_head') as batch:
        batch.add_column(sa.Column('last_mac', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_head') as batch:
        batch.drop_column('last_mac')
    with op.batch_alter_table('audit_entries') as batch:
        batch.drop_column('entry_mac')
