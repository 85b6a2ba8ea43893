"""voice streams: the claim and outcome of real-time verification streams, shared by every replica

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 22:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'voice_streams',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('subject_token', sa.String(length=80), nullable=True),
        sa.Column('purpose', sa.String(length=64), nullable=False),
        sa.Column('codec', sa.String(length=10), nullable=False),
        sa.Column('sample_rate', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('decision', sa.String(length=20), nullable=True),
        sa.Column('latest_event', sa.JSON(), nullable=False),
        sa.Column('close_reason', sa.String(length=40), nullable=True),
        sa.Column('transport', sa.String(length=20), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('connect_by', sa.DateTime(timezone=True), nullable=False),
        sa.Column('connected_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('voice_streams') as batch:
        batch.create_index(batch.f('ix_voice_streams_tenant_id'), ['tenant_id'], unique=False)
        batch.create_index(batch.f('ix_voice_streams_subject_token'), ['subject_token'], unique=False)


def downgrade() -> None:
    op.drop_table('voice_streams')
