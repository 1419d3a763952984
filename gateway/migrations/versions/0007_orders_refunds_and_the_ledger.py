"""orders, refunds and the ledger

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 08:44:59.081457
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('interaction', schema=None) as batch_op:
        batch_op.drop_index('ix_interaction_type')
        batch_op.create_index('ix_interaction_type', ['type', 'occurred_at', 'clerk_id', 'store_id', 'customer_id'],
                              unique=False)

    op.create_table('orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=True),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('amount', gateway.db.Money(precision=14, scale=2), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=True),
    sa.Column('placed_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('body_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('clerk_id', sa.Integer(), nullable=True),
    sa.Column('attributed_store_id', sa.Integer(), nullable=True),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('unattributed', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('rule_version', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.ForeignKeyConstraint(['store_id'], ['store.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_id')
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_order_customer', ['customer_id', 'placed_at'], unique=False)

    op.create_table('ledger_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('clerk_id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=True),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('amount', gateway.db.Money(precision=14, scale=2), nullable=False),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('binding_id', sa.Integer(), nullable=True),
    sa.Column('rule_version', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['clerk_id'], ['clerk.id'], ),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source')
    )
    with op.batch_alter_table('ledger_entry', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_clerk', ['clerk_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entry_customer_id'), ['customer_id'], unique=False)

    op.create_table('refund',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_pk', sa.Integer(), nullable=False),
    sa.Column('amount', gateway.db.Money(precision=14, scale=2), nullable=False),
    sa.Column('refunded_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_pk'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_pk', 'refunded_at', 'amount', name='uq_refund')
    )
    with op.batch_alter_table('refund', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refund_order_pk'), ['order_pk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('interaction', schema=None) as batch_op:
        batch_op.drop_index('ix_interaction_type')
        batch_op.create_index('ix_interaction_type', ['type', 'occurred_at'], unique=False)

    with op.batch_alter_table('refund', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refund_order_pk'))

    op.drop_table('refund')
    with op.batch_alter_table('ledger_entry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_entry_customer_id'))
        batch_op.drop_index('ix_ledger_clerk')

    op.drop_table('ledger_entry')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_order_customer')

    op.drop_table('orders')
