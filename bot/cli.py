"""The `qunban` command line: migrate, seed, invite, run, digest, calendar, simulate, audit."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from bot.clock import SystemClock
from bot.config import Settings, load_settings

T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "settings"
        raise click.ClickException(f"bad setting QUNBAN_{field.upper()}: {first['msg']}") from None


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL too broken to parse is shown as its scheme only
        return url.split(":", 1)[0] + ":…"


def _run(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn database trouble into one clear line."""
    try:
        return asyncio.run(work())
    except (OperationalError, DBAPIError, OSError) as err:
        reason = str(getattr(err, "orig", err) or err).splitlines()[0][:200]
        raise click.ClickException(
            f"cannot use the database {_safe_url(settings.database_url)}: {reason}"
        ) from None


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-25") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """Qunban (群办): a Telegram bot for 1+10+N enterprise service groups."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest version."""
    from storage.migrate import upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url)
    except (OperationalError, DBAPIError, OSError) as err:
        reason = str(getattr(err, "orig", err)).splitlines()[0][:200]
        raise click.ClickException(
            f"cannot use the database {_safe_url(settings.database_url)}: {reason}"
        ) from None
    click.echo(f"database {_safe_url(settings.database_url)} is at the latest schema")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
def seed(file: Path) -> None:
    """Load an org chart (YAML); safe to run twice."""
    from storage.db import make_engine, make_session_factory
    from storage.seeding import SeedError, load_seed
    from storage.uow import UnitOfWorkFactory

    settings = _settings()
    if not file.exists():
        raise click.ClickException(f"{file}: no such file")

    async def work() -> Any:
        engine = make_engine(settings.database_url)
        try:
            return await load_seed(UnitOfWorkFactory(make_session_factory(engine)), file)
        finally:
            await engine.dispose()

    try:
        report = _run(settings, work)
    except SeedError as err:
        raise click.ClickException(str(err)) from None
    click.echo(str(report))


@main.command()
@click.argument(
    "role", type=click.Choice(["enterprise", "official", "leader", "coordinator", "admin"])
)
@click.option("--name", required=True, help="The person's name as shown to others.")
@click.option("--enterprise", help="Enterprise code (role enterprise).")
@click.option("--department", help="Department code (role official).")
@click.option("--region", help="Region code (leader, coordinator).")
@click.option("--head", is_flag=True, help="Department head (role official).")
@click.option("--lang", "language", type=click.Choice(["zh", "en"]), default="zh")
@click.option("--ttl", default="3d", help="How long the invite is valid, e.g. 12h, 3d.")
def invite(
    role: str,
    name: str,
    enterprise: str | None,
    department: str | None,
    region: str | None,
    head: bool,
    language: str,
    ttl: str,
) -> None:
    """Create a single-use, expiring invite for /start."""
    from bot.app import build_services
    from bot.config import parse_duration
    from bot.errors import QunbanError

    settings = _settings()
    try:
        lifetime = parse_duration(ttl)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None

    async def work() -> Any:
        services = build_services(settings, clock=SystemClock())
        try:
            return await services.people.create_invite(
                role=role,
                name=name,
                enterprise=enterprise,
                department=department,
                region=region,
                is_head=head,
                language=language,
                ttl=lifetime,
            )
        finally:
            await services.close()

    try:
        code = _run(settings, work)
    except QunbanError as err:
        raise click.ClickException(f"cannot create the invite: {err.code} {err.params}") from None
    click.echo(code)


@main.command()
def run() -> None:
    """Long polling: receive updates, keep them in the inbox, answer, nudge, digest."""
    from bot.runner import run_polling

    settings = _settings()
    if settings.telegram_token is None:
        raise click.ClickException("QUNBAN_TELEGRAM_TOKEN is not set (get one from @BotFather)")
    run_polling(settings)


@main.command()
def webhook() -> None:
    """Serve Telegram's webhook (ASGI), with the secret token checked."""
    from bot.runner import run_webhook

    settings = _settings()
    if settings.telegram_token is None:
        raise click.ClickException("QUNBAN_TELEGRAM_TOKEN is not set (get one from @BotFather)")
    if settings.webhook_secret is None:
        raise click.ClickException(
            "QUNBAN_WEBHOOK_SECRET is not set; Telegram's posts can't be checked"
        )
    run_webhook(settings)


@main.command()
@click.option("--region", help="Region code (default: the top region).")
@click.option("--date", "day", help="The digest's day, YYYY-MM-DD (default: today).")
@click.option("--lang", "language", type=click.Choice(["zh", "en"]), default="zh")
def digest(region: str | None, day: str | None, language: str) -> None:
    """Print a leader's digest to standard output."""
    from bot.app import build_services
    from bot.errors import QunbanError

    settings = _settings()
    when = _date(day)
    clock = SystemClock()

    async def work() -> str:
        services = build_services(settings, clock=clock)
        try:
            target = when or clock.now().astimezone(settings.tz).date()
            return await services.digests.text_for(region, target, language)
        finally:
            await services.close()

    try:
        click.echo(_plain(_run(settings, work)))
    except QunbanError as err:
        raise click.ClickException(f"no digest: {err.code} {err.params}") from None


def _plain(html: str) -> str:
    """Telegram HTML as terminal text."""
    import html as html_lib
    import re

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


@main.command()
@click.argument("year", type=int, required=False)
def calendar(year: int | None) -> None:
    """The working calendar in force: days off and make-up working days."""
    from bot.calendar import format_calendar, load_calendar

    settings = _settings()
    try:
        cal = load_calendar(settings.calendar, settings.timezone)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    year = year or SystemClock().now().astimezone(settings.tz).year
    if not cal.covers(year):
        raise click.ClickException(
            f"calendar {settings.calendar!r} has no holiday notice for {year}; "
            "only weekends are days off"
        )
    click.echo(format_calendar(cal, year))


@main.command()
@click.argument("scenario", required=False)
@click.option("--lang", "language", type=click.Choice(["zh", "en"]), default="zh")
@click.option(
    "--charts",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save the digest charts the leaders were sent into this folder.",
)
def simulate(scenario: str | None, language: str, charts: Path | None) -> None:
    """Play a scripted working week offline and print what each chat saw."""
    from bot.simulate import ScenarioError, run_scenario

    try:
        asyncio.run(run_scenario(scenario, language=language, out=sys.stdout, charts=charts))
    except ScenarioError as err:
        raise click.ClickException(str(err)) from None


# ---- the record and the backups ------------------------------------------------------------


def _with_uows(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(uows)` over an engine of its own, disposed afterwards."""
    from storage.db import make_engine, make_session_factory
    from storage.uow import UnitOfWorkFactory

    async def run() -> T:
        engine = make_engine(settings.database_url)
        try:
            return await work(UnitOfWorkFactory(make_session_factory(engine)))
        finally:
            await engine.dispose()

    return _run(settings, run)


def _check_record(settings: Settings) -> str:
    """Recompute every ticket; print each mismatch and fail with the count, or return the
    summary line."""
    from bot.audit import check as check_record

    report = _with_uows(settings, check_record)
    for mismatch in report.mismatches:
        click.echo(f"ticket #{mismatch.ticket_id}: {mismatch.problem}")
    if not report.ok:
        raise click.ClickException(report.summary())
    return report.summary()


@main.command()
def check() -> None:
    """Recompute every ticket's state from its events and report any mismatch."""
    click.echo(_check_record(_settings()))


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def export(folder: Path) -> None:
    """Write tickets.csv and events.csv into FOLDER for auditors."""
    from bot.audit import export as export_record

    settings = _settings()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f"cannot write to {folder}: {err.strerror or err}") from None
    report = _with_uows(settings, lambda uows: export_record(uows, folder))
    click.echo(
        f"wrote {report.tickets} tickets to {report.files[0]} "
        f"and {report.events} events to {report.files[1]}"
    )


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def backup(file: Path) -> None:
    """Back up the database into FILE, safely while the bot runs."""
    from storage.backup import BackupError
    from storage.backup import backup as backup_database

    settings = _settings()
    if not file.parent.is_dir():
        raise click.ClickException(f"{file.parent}: no such folder")
    try:
        report = backup_database(settings.database_url, file)
    except (BackupError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"backed up {_safe_url(settings.database_url)} to {file} ({report.size} bytes); "
        f"restore it with: qunban restore {file}"
    )


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask before replacing the database.")
def restore(file: Path, yes: bool) -> None:
    """Replace the database with a backup (stop the bot first), then check the record."""
    from storage.backup import BackupError
    from storage.backup import restore as restore_database

    settings = _settings()
    target = _safe_url(settings.database_url)
    if not file.is_file():
        raise click.ClickException(f"{file}: no such file")
    if not yes:
        click.confirm(f"Replace everything in {target} with {file}?", abort=True)
    try:
        restore_database(file, settings.database_url)
    except (BackupError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"restored {file} into {target}; {_check_record(settings)}")


if __name__ == "__main__":
    main()
