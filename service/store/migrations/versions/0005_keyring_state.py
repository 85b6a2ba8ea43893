"""keyring state: the deployment's keyring id, and the key-version fence against outdated replicas

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
    state = op.create_table(
        'keyring_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('keyring_id', sa.String(length=64), nullable=True),
        sa.Column('min_wrap_version', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    # No keyring yet (the first one loaded binds it), and version 0: every keyring passes until the
    # first rotation recorded here.
    op.bulk_insert(state, [{'id': 1, 'keyring_id': None, 'min_wrap_version': 0}])


def downgrade() -> None:
    op.drop_table('keyring_state')
