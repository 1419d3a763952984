"""Queue entries remember when the customer was told an advisor is coming

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import gateway.db


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('unassigned_queue', schema=None) as batch_op:
        batch_op.add_column(sa.Column('notified_at', gateway.db.UTCDateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('unassigned_queue', schema=None) as batch_op:
        batch_op.drop_column('notified_at')

