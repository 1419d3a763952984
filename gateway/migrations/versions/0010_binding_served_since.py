"""Bindings opened by a merge remember since when their advisor has served the person

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa
import gateway.db


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('binding', schema=None) as batch_op:
        batch_op.add_column(sa.Column('served_since', gateway.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('binding', schema=None) as batch_op:
        batch_op.drop_column('served_since')
