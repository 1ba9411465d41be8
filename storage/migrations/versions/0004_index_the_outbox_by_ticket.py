"""index the outbox by ticket

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 17:55:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # every new ticket asks whether its card is already queued: without an index that read
    # every message ever queued, a cost that grew with the years
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_ticket", ["ticket_id", "is_card"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_ticket")
