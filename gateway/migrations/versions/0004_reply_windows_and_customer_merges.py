"""reply windows and customer merges

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:47:56.743712
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('customer', schema=None) as batch_op:
        batch_op.add_column(sa.Column('merged_into_id', sa.Integer(), nullable=True))

    with op.batch_alter_table('identity', schema=None) as batch_op:
        batch_op.add_column(sa.Column('window_at', gateway.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('window_kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('identity', schema=None) as batch_op:
        batch_op.drop_column('window_kind')
        batch_op.drop_column('window_at')

    with op.batch_alter_table('customer', schema=None) as batch_op:
        batch_op.drop_column('merged_into_id')

