"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
% if not down_revision:

from storage.db import guard_statements
% endif
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}
% if not down_revision:
    # ticket events are an append-only record: the database itself refuses to change them
    for statement in guard_statements(op.get_bind().dialect.name):
        op.execute(statement)
% endif


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
% if not down_revision:
    # dropping the table took its triggers; PostgreSQL keeps the function they called
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ticketevent_immutable()")
% endif
