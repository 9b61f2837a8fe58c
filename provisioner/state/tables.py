"""The state store's tables (SQLAlchemy Core): runs, the batches they sent and each change's
result, the rollouts' waves, tenants and host claims. (The hosts' locks live on the hosts.)

The schema is versioned by the migrations in ``migrations/versions`` (Alembic); a test checks
that upgrading an empty database to :data:`SCHEMA_REVISION` gives exactly these tables.
Nothing here ever holds a secret: changes are kept by address, action and outcome, never by
their values.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_REVISION = "0003"  # the newest migration; a database at another one is upgraded first

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # plan | apply | rollout
    Column("status", String(16), nullable=False),  # running | complete | incomplete | ...
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("owner", String(300), nullable=False),  # "alice@ws17 pid 4711"
    Column("manifests", Text, nullable=False),  # JSON list of the paths as given
    Column("targets", Text, nullable=False),  # JSON list of selectors
    Column("summary", Text, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("host", String(255), nullable=False),
    Column("wave", Integer),  # a rollout's wave; none for apply
    Column("worker", String(300), nullable=False),
    Column("status", String(16), nullable=False),  # sent | ok | failed | locked | unreachable
    Column("message", Text, nullable=False),
    Column("sent_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Index("batches_by_run", "run_id", "host"),
)

changes = Table(
    "changes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("batch_id", Integer, ForeignKey("batches.id"), nullable=False),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("address", String(1000), nullable=False),
    Column("action", String(32), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("tenant", String(255)),
    Column("status", String(16), nullable=False),  # sent | ok | failed | not-run | unknown
    Column("message", Text, nullable=False),
    UniqueConstraint("batch_id", "address", name="one_result_per_change"),
    Index("changes_by_run", "run_id", "address"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("waves", String(200), nullable=False),  # as given: "1,10%,50%,100%"
    Column("max_failures", String(20), nullable=False),  # "0", "3" or "10%"
    Column("pause_s", Float, nullable=False),
    Column("confirm_each_wave", Boolean, nullable=False),
    Column("lease_s", Float, nullable=False),
    Column("current_wave", Integer, nullable=False),
)

rollout_waves = Table(
    "rollout_waves",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("number", Integer, primary_key=True),  # 0: the servers; tenants from 1
    Column("status", String(16), nullable=False),  # waiting | running | done | halted
    Column("opens_at", DateTime),  # after --pause; none while waiting for a confirmation
    Column("started_at", DateTime),
    Column("finished_at", DateTime),
    Column("message", Text, nullable=False),
)

rollout_tenants = Table(
    "rollout_tenants",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("tenant", String(255), primary_key=True),
    Column("server", String(255), nullable=False),
    Column("wave", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # waiting | done | failed
    Column("message", Text, nullable=False),
    Column("finished_at", DateTime),
)

rollout_units = Table(
    "rollout_units",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("wave", Integer, nullable=False),
    Column("host", String(255), nullable=False),  # a host key: server/tapi01, client/ws-0101
    Column("status", String(16), nullable=False),  # waiting | claimed | done | failed
    Column("worker", String(300)),
    Column("lease_until", DateTime),
    Column("started_at", DateTime),
    Column("finished_at", DateTime),
    Column("message", Text, nullable=False),
    UniqueConstraint("run_id", "wave", "host", name="one_unit_per_host_and_wave"),
)
