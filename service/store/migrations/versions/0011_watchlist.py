"""watchlist: known fraudsters' voices per tenant, each sealed under a data key of its own

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 22:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'watchlist_entries',
        sa.Column('id', sa.String(length=80), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('case_reference', sa.String(length=200), nullable=False),
        sa.Column('legal_basis', sa.String(length=2000), nullable=False),
        sa.Column('added_by', sa.String(length=64), nullable=False),
        sa.Column('model_fingerprint', sa.String(length=80), nullable=False),
        sa.Column('sample_count', sa.Integer(), nullable=False),
        sa.Column('net_speech_s', sa.Float(), nullable=False),
        sa.Column('sealed', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['id'], ['subjects.token']),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_watchlist_entries_tenant_id'), 'watchlist_entries', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_watchlist_entries_tenant_id'), table_name='watchlist_entries')
    op.drop_table('watchlist_entries')
