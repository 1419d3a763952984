"""A counter per clerk for customer handles (#n), taken outside the batch transaction; the
outbox's per-peer index with its priority column (0008 created it without, before it was changed)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'handle_counter',
        sa.Column('clerk_id', sa.Integer(), nullable=False),
        sa.Column('last_n', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['clerk_id'], ['clerk.id']),
        sa.PrimaryKeyConstraint('clerk_id'),
    )
    # Clerks with handles start from their highest number.
    op.execute("INSERT INTO handle_counter (clerk_id, last_n) SELECT clerk_id, max(n) FROM handle GROUP BY clerk_id")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_peer')
        batch_op.create_index('ix_outbox_peer', ['account', 'peer', 'priority', 'status', 'id'], unique=False)


def downgrade() -> None:
    op.drop_table('handle_counter')
