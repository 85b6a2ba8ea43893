"""the customer portal: one-time links and sessions, stored signed receipts, retention's last activity
and the "never enrol me" flag

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 22:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('subjects') as batch:
        batch.add_column(sa.Column('last_active_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('never_enrol_at', sa.DateTime(timezone=True), nullable=True))
        batch.create_index(batch.f('ix_subjects_last_active_at'), ['last_active_at'], unique=False)
    # Retention counts from the last interaction: take it from the trail (consents given, successful
    # verifications), else from when the subject was created, so an upgrade purges nobody early.
    op.execute(
        "UPDATE subjects SET last_active_at = COALESCE(("
        "SELECT MAX(audit_entries.at) FROM audit_entries WHERE audit_entries.subject_token = subjects.token "
        "AND (audit_entries.action = 'consent.grant' "
        "OR (audit_entries.action LIKE '%.verify' AND audit_entries.outcome = 'accept'))), subjects.created_at)"
    )

    op.create_table(
        'receipts',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('subject_token', sa.String(length=80), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('jws', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['subject_token'], ['subjects.token']),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('receipts') as batch:
        batch.create_index('ix_receipts_subject_at', ['subject_token', 'created_at'], unique=False)
        batch.create_index(batch.f('ix_receipts_tenant_id'), ['tenant_id'], unique=False)

    op.create_table(
        'portal_links',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('subject_token', sa.String(length=80), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['subject_token'], ['subjects.token']),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('portal_links') as batch:
        batch.create_index(batch.f('ix_portal_links_subject_token'), ['subject_token'], unique=False)

    op.create_table(
        'portal_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('subject_token', sa.String(length=80), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('link_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['subject_token'], ['subjects.token']),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('portal_sessions') as batch:
        batch.create_index(batch.f('ix_portal_sessions_subject_token'), ['subject_token'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('portal_sessions') as batch:
        batch.drop_index(batch.f('ix_portal_sessions_subject_token'))
    op.drop_table('portal_sessions')
    with op.batch_alter_table('portal_links') as batch:
        batch.drop_index(batch.f('ix_portal_links_subject_token'))
    op.drop_table('portal_links')
    with op.batch_alter_table('receipts') as batch:
        batch.drop_index(batch.f('ix_receipts_tenant_id'))
        batch.drop_index('ix_receipts_subject_at')
    op.drop_table('receipts')
    with op.batch_alter_table('subjects') as batch:
        batch.drop_index(batch.f('ix_subjects_last_active_at'))
        batch.drop_column('never_enrol_at')
        batch.drop_column('last_active_at')
