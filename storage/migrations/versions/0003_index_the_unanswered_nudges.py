"""index the unanswered nudges

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 17:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the digest counts the nudges nobody answered: a partial index holds only those, so
    # PostgreSQL no longer scans every nudge ever sent to find them
    with op.batch_alter_table("nudge", schema=None) as batch_op:
        batch_op.create_index(
            "ix_nudge_unanswered",
            ["ticket_id", "person_id", "rung"],
            unique=False,
            sqlite_where=sa.text("NOT acted"),
            postgresql_where=sa.text("NOT acted"),
        )


def downgrade() -> None:
    with op.batch_alter_table("nudge", schema=None) as batch_op:
        batch_op.drop_index("ix_nudge_unanswered")
