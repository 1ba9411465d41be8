#!/bin/sh
# Rewrite the initial migration from storage/tables.py. Nothing is deployed yet, so the schema's
# history stays one step until the first release; after that, add migrations instead (env.py).
# Run from anywhere, with the project's virtual environment active:
#   storage/migrations/regenerate.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

rm -f "$here"/versions/*.py
cd "$root"
# an empty database, so autogenerate writes every table
QUNBAN_DATABASE_URL="sqlite+aiosqlite:///$scratch/empty.db" \
    python -m alembic -c storage/alembic.ini revision --autogenerate \
    --rev-id 0001 -m "initial schema"
ruff format --quiet "$here"/versions/*.py 2>/dev/null || true
echo "now run: pytest tests/storage/test_migrations.py"
