"""erasure: a stable id per data key (the destruction ledger and backups name keys by it), and the
shredding schedule's state

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 09:00:00
"""

import uuid

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('data_keys') as batch:
        batch.add_column(sa.Column('key_id', sa.String(length=40), nullable=True))
    keys = sa.table('data_keys', sa.column('id', sa.Integer), sa.column('key_id', sa.String))
    connection = op.get_bind()
    for (row_id,) in connection.execute(sa.select(keys.c.id)).all():
        connection.execute(sa.update(keys).where(keys.c.id == row_id).values(key_id=f"dk_{uuid.uuid4().hex}"))
    with op.batch_alter_table('data_keys') as batch:
        batch.alter_column('key_id', existing_type=sa.String(length=40), nullable=False)
        batch.create_index(batch.f('ix_data_keys_key_id'), ['key_id'], unique=True)

    state = op.create_table(
        'erasure_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ledger_lines', sa.Integer(), nullable=False),
        sa.Column('destroyed_since_shred', sa.Integer(), nullable=False),
        sa.Column('last_shred_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    # A deployment that withdrew consents before this release may hold their residue (PostgreSQL's
    # dead rows and WAL): the first shred must rotate, even with a shredding period of 0.
    consents = sa.table('consents', sa.column('withdrawn_at', sa.DateTime))
    withdrawn = connection.execute(
        sa.select(sa.func.count()).select_from(consents).where(consents.c.withdrawn_at.is_not(None))
    ).scalar_one()
    op.bulk_insert(
        state, [{'id': 1, 'ledger_lines': 0, 'destroyed_since_shred': 1 if withdrawn else 0, 'last_shred_at': None}]
    )


def downgrade() -> None:
    op.drop_table('erasure_state')
    with op.batch_alter_table('data_keys') as batch:
        batch.drop_index(batch.f('ix_data_keys_key_id'))
        batch.drop_column('key_id')
