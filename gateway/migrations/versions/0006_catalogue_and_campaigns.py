"""catalogue and campaigns

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 08:37:53.592080
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('coupon',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('value', gateway.db.Money(precision=14, scale=2), nullable=False),
    sa.Column('valid_from', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('valid_to', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('product',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sku', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('price', gateway.db.Money(precision=14, scale=2), nullable=False),
    sa.Column('image_url', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('store_ids', sa.JSON(), nullable=True),
    sa.Column('created_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sku')
    )
    op.create_table('tracked_link',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('customer_id', sa.Integer(), nullable=True),
    sa.Column('clerk_id', sa.Integer(), nullable=True),
    sa.Column('created_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('clicked_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token')
    )
    op.create_table('campaign',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.Column('coupon_id', sa.Integer(), nullable=True),
    sa.Column('audience', sa.JSON(), nullable=False),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('schedule', sa.JSON(), nullable=True),
    sa.Column('holdout_pct', sa.Integer(), nullable=False),
    sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('next_run_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('skipped_runs', sa.Integer(), nullable=False),
    sa.Column('created_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupon.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.create_index('ix_campaign_due', ['status', 'next_run_at'], unique=False)

    op.create_table('campaign_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('scheduled_for', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('cursor', sa.Integer(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('lease_until', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('started_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('campaign_id', 'scheduled_for', name='uq_run_time')
    )
    with op.batch_alter_table('campaign_run', schema=None) as batch_op:
        batch_op.create_index('ix_run_status', ['status'], unique=False)

    op.create_table('coupon_code',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('coupon_id', sa.Integer(), nullable=False),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=True),
    sa.Column('issued_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('redeemed_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.ForeignKeyConstraint(['coupon_id'], ['coupon.id'], ),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('coupon_id', 'code', name='uq_coupon_code')
    )
    with op.batch_alter_table('coupon_code', schema=None) as batch_op:
        batch_op.create_index('ix_coupon_free', ['coupon_id', 'customer_id', 'id'], unique=False)
        batch_op.create_index('uq_coupon_customer', ['coupon_id', 'customer_id'], unique=True, sqlite_where=sa.text('customer_id IS NOT NULL'), postgresql_where=sa.text('customer_id IS NOT NULL'))

    op.create_table('delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('clerk_id', sa.Integer(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('outbox_id', sa.Integer(), nullable=True),
    sa.Column('created_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['campaign_run.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'customer_id', name='uq_delivery')
    )
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_outbox', ['outbox_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_outbox')

    op.drop_table('delivery')
    with op.batch_alter_table('coupon_code', schema=None) as batch_op:
        batch_op.drop_index('uq_coupon_customer', sqlite_where=sa.text('customer_id IS NOT NULL'), postgresql_where=sa.text('customer_id IS NOT NULL'))
        batch_op.drop_index('ix_coupon_free')

    op.drop_table('coupon_code')
    with op.batch_alter_table('campaign_run', schema=None) as batch_op:
        batch_op.drop_index('ix_run_status')

    op.drop_table('campaign_run')
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_due')

    op.drop_table('campaign')
    op.drop_table('tracked_link')
    op.drop_table('product')
    op.drop_table('coupon')
