"""DingTalk robot signs are bound to the message they first came with (replay protection)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('callback_signature',
    sa.Column('account', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sign', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('msg_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('expires_at', gateway.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account', 'sign')
    )
    with op.batch_alter_table('callback_signature', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_callback_signature_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('callback_signature', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_callback_signature_expires_at'))

    op.drop_table('callback_signature')
