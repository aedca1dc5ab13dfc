"""inbound webhooks: sources and the messages they receive (SPEC 6a)

Revision ID: 0004_inbound
Revises: 0003_breaker
Create Date: 2026-12-04 12:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0004_inbound"
down_revision = "0003_breaker"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "inbound_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=24), nullable=False),
        sa.Column("preset", sa.String(length=24), nullable=False),
        sa.Column("secret", sa.String(length=255), nullable=False),
        sa.Column("previous_secret", sa.String(length=255), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(), nullable=True),
        sa.Column("token_header", sa.String(length=100), nullable=False),
        sa.Column("definition", sa.String(length=100), nullable=False),
        sa.Column("dedupe_header", sa.String(length=100), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("tolerance", sa.Integer(), nullable=False),
        sa.Column("rate_limit", sa.Integer(), nullable=False),
        sa.Column("rate_window", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body_excerpt", sa.Text(), nullable=True),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.Column("payload_is_text", sa.Boolean(), nullable=False),
        sa.Column("debug", sa.JSON(), nullable=True),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["source_id"], ["inbound_sources.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ux_inbound_messages_source_dedupe", ["source_id", "dedupe_key"], unique=True
        )
        batch_op.create_index("ix_inbound_messages_source_outcome", ["source_id", "outcome"], unique=False)
        batch_op.create_index("ix_inbound_messages_received", ["received_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_inbound_messages_event_id"), ["event_id"], unique=False)


def downgrade():
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_messages_event_id"))
        batch_op.drop_index("ix_inbound_messages_received")
        batch_op.drop_index("ix_inbound_messages_source_outcome")
        batch_op.drop_index("ux_inbound_messages_source_dedupe")
    op.drop_table("inbound_messages")
    op.drop_table("inbound_sources")
