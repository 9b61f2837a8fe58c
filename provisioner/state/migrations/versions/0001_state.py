"""The first schema: runs, batches, changes; rollouts with their waves, tenants and units.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("manifests", sa.Text, nullable=False),
        sa.Column("targets", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("wave", sa.Integer),
        sa.Column("worker", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("sent_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
    )
    op.create_index("batches_by_run", "batches", ["run_id", "host"])
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("address", sa.String(1000), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.UniqueConstraint("batch_id", "address", name="one_result_per_change"),
    )
    op.create_index("changes_by_run", "changes", ["run_id", "address"])
    op.create_table(
        "rollouts",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("waves", sa.String(200), nullable=False),
        sa.Column("max_failures", sa.String(20), nullable=False),
        sa.Column("pause_s", sa.Float, nullable=False),
        sa.Column("confirm_each_wave", sa.Boolean, nullable=False),
        sa.Column("lease_s", sa.Float, nullable=False),
        sa.Column("current_wave", sa.Integer, nullable=False),
    )
    op.create_table(
        "rollout_waves",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opens_at", sa.DateTime),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_table(
        "rollout_tenants",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("tenant", sa.String(255), primary_key=True),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("finished_at", sa.DateTime),
    )
    op.create_table(
        "rollout_units",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(300)),
        sa.Column("lease_until", sa.DateTime),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("message", sa.Text, nullable=False),
        sa.UniqueConstraint("run_id", "wave", "host", name="one_unit_per_host_and_wave"),
    )
