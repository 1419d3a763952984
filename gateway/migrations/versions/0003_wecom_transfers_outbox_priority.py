"""WeCom transfers, invite channel refs, outbox priority

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 07:38:29.471525
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('transfer',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('from_clerk_id', sa.Integer(), nullable=False),
    sa.Column('to_clerk_id', sa.Integer(), nullable=False),
    sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('external_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('handover_user', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('takeover_user', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('resigned', sa.Boolean(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('requested_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.ForeignKeyConstraint(['from_clerk_id'], ['clerk.id'], ),
    sa.ForeignKeyConstraint(['to_clerk_id'], ['clerk.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('transfer', schema=None) as batch_op:
        batch_op.create_index('ix_transfer_customer', ['customer_id', 'requested_at'], unique=False)
        batch_op.create_index('ix_transfer_open', ['account', 'status'], unique=False)

    with op.batch_alter_table('invite', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel_refs', sa.JSON(), nullable=True))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), nullable=False, server_default='2'))
        batch_op.drop_index('ix_outbox_due')
        batch_op.create_index('ix_outbox_due', ['status', 'priority', 'next_attempt_at', 'id'], unique=False)
        batch_op.create_index('ix_outbox_customer_kind', ['customer_id', 'kind', 'created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_customer_kind')
        batch_op.drop_index('ix_outbox_due')
        batch_op.create_index('ix_outbox_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.drop_column('priority')

    with op.batch_alter_table('invite', schema=None) as batch_op:
        batch_op.drop_column('channel_refs')

    with op.batch_alter_table('transfer', schema=None) as batch_op:
        batch_op.drop_index('ix_transfer_open')
        batch_op.drop_index('ix_transfer_customer')

    op.drop_table('transfer')
