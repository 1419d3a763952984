"""conversations, advisor requests, audit log

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 08:02:34.955498
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('token_id', sa.Integer(), nullable=True),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_at'), ['at'], unique=False)

    op.create_table('conversation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('clerk_id', sa.Integer(), nullable=True),
    sa.Column('store_id', sa.Integer(), nullable=True),
    sa.Column('started_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('first_reply_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('reminded_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('escalated_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['clerk_id'], ['clerk.id'], ),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.ForeignKeyConstraint(['store_id'], ['store.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.create_index('ix_conversation_clerk', ['clerk_id', 'started_at'], unique=False)
        batch_op.create_index('ix_conversation_waiting', ['first_reply_at', 'started_at'], unique=False)
        batch_op.create_index('uq_conversation_open', ['customer_id'], unique=True, sqlite_where=sa.text('first_reply_at IS NULL'), postgresql_where=sa.text('first_reply_at IS NULL'))

    op.create_table('advisor_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('clerk_id', sa.Integer(), nullable=False),
    sa.Column('invite_id', sa.Integer(), nullable=True),
    sa.Column('created_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', gateway.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.ForeignKeyConstraint(['clerk_id'], ['clerk.id'], ),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.ForeignKeyConstraint(['invite_id'], ['invite.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('advisor_request', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_advisor_request_customer_id'), ['customer_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('advisor_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_advisor_request_customer_id'))

    op.drop_table('advisor_request')
    with op.batch_alter_table('conversation', schema=None) as batch_op:
        batch_op.drop_index('uq_conversation_open', sqlite_where=sa.text('first_reply_at IS NULL'), postgresql_where=sa.text('first_reply_at IS NULL'))
        batch_op.drop_index('ix_conversation_waiting')
        batch_op.drop_index('ix_conversation_clerk')

    op.drop_table('conversation')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_at'))

    op.drop_table('audit')
