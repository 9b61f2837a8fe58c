"""The hosts' locks move to the hosts themselves (every operator shares them, whatever store
they use): the store's table of them goes.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.drop_table("host_locks")
