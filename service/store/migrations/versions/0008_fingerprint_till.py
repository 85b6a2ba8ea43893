"""fingerprint at the till: a finger position per fingerprint template, and payment links (sealed
payment tokens, a keyed digest to find a presented card's link, an optional argon2id PIN hash)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 22:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('templates') as batch:
        batch.add_column(sa.Column('finger_position', sa.Integer(), nullable=True))
    op.create_table(
        'payment_links',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('subject_token', sa.String(length=80), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('modality', sa.String(length=20), nullable=False),
        sa.Column('token_digest', sa.String(length=64), nullable=False),
        sa.Column('sealed', sa.LargeBinary(), nullable=False),
        sa.Column('pin_hash', sa.String(length=200), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['subject_token'], ['subjects.token']),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('subject_token'),
        sa.UniqueConstraint('tenant_id', 'token_digest'),
    )
    op.create_index(op.f('ix_payment_links_tenant_id'), 'payment_links', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_payment_links_tenant_id'), table_name='payment_links')
    op.drop_table('payment_links')
    with op.batch_alter_table('templates') as batch:
        batch.drop_column('finger_position')
