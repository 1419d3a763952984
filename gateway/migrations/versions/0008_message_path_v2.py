"""message path v2: the clerk's focus as an append-only log, outbox lanes per account, shared send caps

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 16:00:00
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('clerk_focus',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('clerk_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=True),
    sa.Column('previous_customer_id', sa.Integer(), nullable=True),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('held', sa.JSON(), nullable=True),
    sa.Column('relay_key', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.ForeignKeyConstraint(['clerk_id'], ['clerk.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_clerk_focus_latest', 'clerk_focus', ['clerk_id', 'id'], unique=False)
    # Each clerk's current customer carries over as a row the clerk chose.
    op.execute("INSERT INTO clerk_focus (clerk_id, customer_id, kind, at) "
               "SELECT id, current_customer_id, 'chosen', created_at FROM clerk WHERE current_customer_id IS NOT NULL")
    with op.batch_alter_table('clerk', schema=None) as batch_op:
        batch_op.drop_column('current_customer_id')

    op.create_table('rate_slot',
    sa.Column('account', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('tat', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account')
    )
    op.create_table('send_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_send_log_key', 'send_log', ['key', 'at'], unique=False)

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('peer', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))
        batch_op.drop_index('ix_outbox_due')
        batch_op.create_index('ix_outbox_due', ['status', 'account', 'priority', 'next_attempt_at', 'id'], unique=False)
        batch_op.create_index('ix_outbox_peer', ['account', 'peer', 'priority', 'status', 'id'], unique=False)
        batch_op.create_index('ix_outbox_conversation', ['status', 'account', 'priority', 'id'], unique=False)
    # Rows still to send learn their peer (the rest never take part in the per-peer order).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE outbox SET peer = target->'identity'->>'external_id' WHERE status IN ('pending', 'sending')")
    else:
        op.execute("UPDATE outbox SET peer = json_extract(target, '$.identity.external_id') "
                   "WHERE status IN ('pending', 'sending')")


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_conversation')
        batch_op.drop_index('ix_outbox_peer')
        batch_op.drop_column('peer')
        batch_op.drop_index('ix_outbox_due')
        batch_op.create_index('ix_outbox_due', ['status', 'priority', 'next_attempt_at', 'id'], unique=False)
    op.drop_index('ix_send_log_key', table_name='send_log')
    op.drop_table('send_log')
    op.drop_table('rate_slot')
    with op.batch_alter_table('clerk', schema=None) as batch_op:
        batch_op.add_column(sa.Column('current_customer_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_clerk_current_customer', 'customer', ['current_customer_id'], ['id'])
    op.execute("UPDATE clerk SET current_customer_id = (SELECT f.customer_id FROM clerk_focus f "
               "WHERE f.clerk_id = clerk.id ORDER BY f.id DESC LIMIT 1)")
    op.drop_index('ix_clerk_focus_latest', table_name='clerk_focus')
    op.drop_table('clerk_focus')
