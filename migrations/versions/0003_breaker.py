"""circuit breaker columns on callbacks (synchronous invocations)

Revision ID: 0003_breaker
Revises: 0001
Create Date: 2026-12-04 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0003_breaker"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("breaker_state", sa.String(length=16), nullable=False, server_default="closed")
        )
        batch_op.add_column(sa.Column("breaker_since", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("breaker_reason", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("breaker_failures", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("breaker_window_start", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("breaker_trial_until", sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.drop_column("breaker_trial_until")
        batch_op.drop_column("breaker_window_start")
        batch_op.drop_column("breaker_failures")
        batch_op.drop_column("breaker_reason")
        batch_op.drop_column("breaker_since")
        batch_op.drop_column("breaker_state")
