"""A pytest plugin: the whole test run's logs are searched for secrets at the end.

Every record that reaches the root logger during the run is written to a file, with the
redaction production installs (bot.logs) in place; the bot processes the end-to-end tests
start write their own log files under the run's temporary folder. When the run ends, all of
it is searched for the secrets the suite uses and for anything shaped like a bot token; one
is enough to fail the run.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.logs import install_redaction

# The tokens and webhook secrets the tests hand to the bot (tests/opskit.py, tests/e2e,
# tests/test_webhook.py, tests/test_logs.py, the Bot API double's default).
SECRETS = (
    "123456789:AAH-qunban-secret-token-for-the-tests",
    "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabc",
    "123456789:TEST-double-token",
    "s3cr3t-Token_value",
    "hook-secret_0123456789",
    "wh-secret-Zq81xx",
    "db-pass-9Kq#2",
)
TOKEN_SHAPE = re.compile(r"\b\d{5,12}:[A-Za-z0-9_-]{15,}")
SUMMARY = pytest.StashKey[str]()


def _secrets() -> list[str]:
    found = list(SECRETS)
    for secret in list(found):
        found.append(secret.partition(":")[2])
    password = make_url(os.environ["QUNBAN_TEST_PG_URL"]).password if _pg() else None
    return [s for s in found if s] + ([str(password)] if password else [])


def _pg() -> bool:
    return bool(os.environ.get("QUNBAN_TEST_PG_URL"))


@pytest.fixture(scope="session", autouse=True)
def _logs_hold_no_secret(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[None]:
    install_redaction(_secrets())
    handle, name = tempfile.mkstemp(prefix="qunban-test-logs-", suffix=".log")
    os.close(handle)
    capture = logging.FileHandler(name, encoding="utf-8")
    capture.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(capture)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(capture)
        capture.close()
    files = [Path(name), *sorted(tmp_path_factory.getbasetemp().rglob("*.log"))]
    leaks = [leak for path in files for leak in _leaks(path)]
    lines = sum(len(p.read_text(encoding="utf-8", errors="replace").splitlines()) for p in files)
    summary = f"log check: {lines} log lines in {len(files)} files, {len(leaks)} secrets found"
    pytestconfig.stash[SUMMARY] = summary
    if leaks:
        pytest.fail("secrets in the test run's logs (kept in " + name + "):\n" + "\n".join(leaks))
    Path(name).unlink()


def _leaks(path: Path) -> Iterator[str]:
    secrets = _secrets()
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        hits = [s for s in secrets if s in line] + TOKEN_SHAPE.findall(line)
        if hits:
            yield f"{path}:{number}: {hits[0]!r} in {line[:200]}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figure the reliability notes ask for (E11): secrets found in the run's logs."""
    summary = terminalreporter.config.stash.get(SUMMARY, None)
    if summary is not None:
        terminalreporter.write_line(summary)
