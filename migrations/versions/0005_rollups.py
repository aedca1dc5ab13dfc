"""monitoring rollups: per-minute, per-hour and all-time counts and latency histograms

Revision ID: 0005_rollups
Revises: 0004_inbound
Create Date: 2026-12-04 14:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0005_rollups"
down_revision = "0004_inbound"
branch_labels = None
depends_on = None

COUNTS = (
    "attempts",
    "attempts_ok",
    "fail_timeout",
    "fail_connect",
    "fail_tls",
    "fail_dns",
    "fail_blocked",
    "fail_redirect",
    "fail_4xx",
    "fail_5xx",
    "fail_other",
)


def upgrade():
    op.create_table(
        "stats_rollups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("callback_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.DateTime(), nullable=False),
        *[sa.Column(name, sa.Integer(), nullable=False, server_default="0") for name in COUNTS],
        sa.Column("duration_ms_sum", sa.Double(), nullable=False, server_default="0"),
        sa.Column("deliveries_succeeded", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("deliveries_failed", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_stats_rollups_key", "stats_rollups", ["resolution", "callback_id", "bucket"], unique=True
    )
    op.create_table(
        "latency_rollups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("callback_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.DateTime(), nullable=False),
        sa.Column("le_index", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_latency_rollups_key",
        "latency_rollups",
        ["resolution", "callback_id", "bucket", "le_index"],
        unique=True,
    )


def downgrade():
    op.drop_index("ux_latency_rollups_key", table_name="latency_rollups")
    op.drop_table("latency_rollups")
    op.drop_index("ux_stats_rollups_key", table_name="stats_rollups")
    op.drop_table("stats_rollups")
