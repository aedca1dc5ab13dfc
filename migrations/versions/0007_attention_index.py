"""monitoring's callback order: the attention index leads with deleted_at

Revision ID: 0007_attention_index
Revises: 0006_monitoring_speed
Create Date: 2026-12-04 19:00:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = "0007_attention_index"
down_revision = "0006_monitoring_speed"
branch_labels = None
depends_on = None


def upgrade():
    # With ix_callbacks_deleted_active present, "deleted_at IS NULL ORDER BY failures, last
    # attempt" sorted every callback; leading with deleted_at lets the index give the order.
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.drop_index("ix_callbacks_attention")
        batch_op.create_index(
            "ix_callbacks_attention", ["deleted_at", "consecutive_failures", "last_attempt_at"], unique=False
        )


def downgrade():
    with op.batch_alter_table("callbacks", schema=None) as batch_op:
        batch_op.drop_index("ix_callbacks_attention")
        batch_op.create_index("ix_callbacks_attention", ["consecutive_failures", "last_attempt_at"], unique=False)
