"""monitoring at size: latency min/max per histogram bucket; indexes for the delivery log and monitoring

Revision ID: 0006_monitoring_speed
Revises: 0005_rollups
Create Date: 2026-12-04 18:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0006_monitoring_speed"
down_revision = "0005_rollups"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("latency_rollups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("min_ms", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("max_ms", sa.Double(), nullable=True))
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.create_index("ix_callbacks_attention", ["consecutive_failures", "last_attempt_at"], unique=False)
        batch_op.create_index("ix_callbacks_deleted_active", ["deleted_at", "active"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_status_created", ["status", "created_at", "id"], unique=False)
        batch_op.create_index("ix_deliveries_kind_created", ["kind", "created_at", "id"], unique=False)


def downgrade():
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_kind_created")
        batch_op.drop_index("ix_deliveries_status_created")
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.drop_index("ix_callbacks_deleted_active")
        batch_op.drop_index("ix_callbacks_attention")
    with op.batch_alter_table("latency_rollups", schema=None) as batch_op:
        batch_op.drop_column("max_ms")
        batch_op.drop_column("min_ms")
