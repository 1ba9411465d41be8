"""Backup and restore: SQLite's online backup API; PostgreSQL's pg_dump and pg_restore.

SQLite: `backup` copies the live database page by page inside one read transaction, so the
copy is consistent while the bot keeps writing (WAL lets writers go on meanwhile).
PostgreSQL: the same as running, with the connection taken from QUNBAN_DATABASE_URL,

    pg_dump --format=custom --no-owner --no-privileges --file=FILE DBNAME
    pg_restore --clean --if-exists --no-owner --no-privileges --single-transaction \\
        --exit-on-error --dbname=DBNAME FILE

The password goes to the tools in PGPASSWORD, never on a command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_MAGIC = b"PGDMP"
REQUIRED_TABLES = frozenset({"ticket", "ticketevent"})


class BackupError(Exception):
    """A backup or restore that cannot be done; the message is one sentence for the operator."""


@dataclass(frozen=True)
class BackupReport:
    file: Path
    engine: str
    size: int


def backup(url: str, file: Path) -> BackupReport:
    """Copy the database named by an SQLAlchemy URL into FILE (replaced when it exists)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_backup(_sqlite_path(parsed), file)
        return BackupReport(file, "sqlite", file.stat().st_size)
    if parsed.get_backend_name() == "postgresql":
        _pg_dump(parsed, file)
        return BackupReport(file, "postgresql", file.stat().st_size)
    raise BackupError(f"cannot back up a {parsed.get_backend_name()} database")


def restore(file: Path, url: str) -> BackupReport:
    """Replace the database's contents with a backup made by `backup`. Stop the bot first."""
    if not file.is_file():
        raise BackupError(f"{file}: no such file")
    parsed = make_url(url)
    head = file.read_bytes()[:16] if file.stat().st_size else b""
    if parsed.get_backend_name() == "sqlite":
        if not head.startswith(SQLITE_MAGIC):
            raise BackupError(f"{file} is not an SQLite backup")
        _sqlite_restore(file, _sqlite_path(parsed))
    elif parsed.get_backend_name() == "postgresql":
        if not head.startswith(PG_MAGIC):
            raise BackupError(f"{file} is not a pg_dump archive (made with --format=custom)")
        _pg_restore(file, parsed)
    else:
        raise BackupError(f"cannot restore into a {parsed.get_backend_name()} database")
    return BackupReport(file, parsed.get_backend_name(), file.stat().st_size)


# ---- SQLite ----------------------------------------------------------------------------------


def _sqlite_path(url: sa.URL) -> Path:
    if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(url.database)  # type: ignore[arg-type]


def _connect(path: Path) -> sqlite3.Connection:
    # the bot's writers hold the lock for milliseconds; wait for them rather than fail
    return sqlite3.connect(path, timeout=30, isolation_level=None)


def _sqlite_backup(source: Path, file: Path) -> None:
    if not source.is_file():
        raise BackupError(f"{source}: no such database file")
    partial = file.with_name(file.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with (
            contextlib.closing(_connect(source)) as src,
            contextlib.closing(_connect(partial)) as dst,
        ):
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            _verify(dst, file)
    except sqlite3.Error as error:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {source} failed: {error}") from None
    partial.replace(file)


def _sqlite_restore(file: Path, target: Path) -> None:
    try:
        with contextlib.closing(
            sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
        ) as src:
            _verify(src, file)
            with contextlib.closing(_connect(target)) as dst:
                # through the API rather than a file copy: the target's WAL is dealt with
                src.backup(dst)
    except sqlite3.Error as error:
        raise BackupError(f"restore of {file} into {target} failed: {error}") from None


def _verify(conn: sqlite3.Connection, file: Path) -> None:
    result = conn.execute("PRAGMA integrity_check").fetchone()
    if not result or result[0] != "ok":
        raise BackupError(f"{file} is damaged: {result[0] if result else 'no answer'}")
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not names >= REQUIRED_TABLES:
        raise BackupError(f"{file} holds no Qunban database (no ticket tables)")


# ---- PostgreSQL ------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not on PATH; install the PostgreSQL client tools of the server's "
            f"version (e.g. apt install postgresql-client) or run {name} yourself (see README)"
        )
    return found


def _pg_env(url: sa.URL) -> dict[str, str]:
    env = dict(os.environ)
    for var, value in (
        ("PGHOST", url.host),
        ("PGPORT", url.port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value is not None:
            env[var] = str(value)
    return env


def _pg_dump(url: sa.URL, file: Path) -> None:
    partial = file.with_name(file.name + ".partial")
    command = [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges"]
    _run([*command, f"--file={partial}"], url, "pg_dump")
    partial.replace(file)


def _pg_restore(file: Path, url: sa.URL) -> None:
    command = [_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges"]
    command += ["--single-transaction", "--exit-on-error", f"--dbname={url.database}", str(file)]
    _run(command, url, "pg_restore")


def _run(command: list[str], url: sa.URL, name: str) -> None:
    done = subprocess.run(command, env=_pg_env(url), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[0] if lines else f"exit status {done.returncode}"
        if url.password:
            reason = reason.replace(str(url.password), "***")
        raise BackupError(f"{name} failed: {reason}")
