"""key-encryption key fence against replicas with an outdated keyring

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 11:05:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    fence = op.create_table(
        'kek_fence',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('min_wrap_version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    # Version 0: every keyring passes until the first rotation recorded here.
    op.bulk_insert(fence, [{'id': 1, 'min_wrap_version': 0}])


def downgrade() -> None:
    op.drop_table('kek_fence')
