"""The admins' commands: /status, and /retry N or /drop N of a parked update.

They run before the guard (the ops chat need not be a bound service group), answer every
asker, and stop the update there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, tzinfo
from typing import Any

from telegram import Chat, Update
from telegram.ext import Application, ApplicationHandlerStop, CommandHandler, filters

from bot.context import BotContext
from bot.deadman import span
from bot.errors import UsageError
from bot.i18n import gettext
from bot.markup import escape
from bot.services.admin import ParkedAction, StatusView, WrongChatError
from handlers import replies
from handlers.common import Args, actor, command, language, reply

ADMIN_GROUP = -2  # before the guard's group -1

Body = Callable[[Update, BotContext, Args], Awaitable[Any]]


def register(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    new = filters.UpdateType.MESSAGE
    for name, handler in (("status", status), ("retry", retry), ("drop", drop)):
        app.add_handler(CommandHandler(name, handler, filters=new), group=ADMIN_GROUP)


def _final(name: str) -> Callable[[Body], Callable[[Update, BotContext], Awaitable[None]]]:
    """The shared refusals of `command`, then nothing else sees the update."""

    def wrap(body: Body) -> Callable[[Update, BotContext], Awaitable[None]]:
        inner = command(name)(body)

        async def handler(update: Update, context: BotContext) -> None:
            await inner(update, context)
            raise ApplicationHandlerStop

        return handler

    return wrap


@_final("status")
async def status(update: Update, context: BotContext, args: Args) -> None:
    chat = update.effective_chat
    assert chat is not None
    try:
        view = await context.services.admin.status(
            actor(update), chat_id=chat.id, private=chat.type == Chat.PRIVATE
        )
    except WrongChatError:
        return await reply(update, context, replies.private_only(await language(update, context)))
    lang = await language(update, context)
    await reply(update, context, status_text(lang, context.services.settings.tz, view))
    return None


@_final("retry")
async def retry(update: Update, context: BotContext, args: Args) -> None:
    done = await context.services.admin.retry(actor(update), _update_id(args))
    await reply(update, context, done_text(await language(update, context), done))


@_final("drop")
async def drop(update: Update, context: BotContext, args: Args) -> None:
    done = await context.services.admin.drop(actor(update), _update_id(args))
    await reply(update, context, done_text(await language(update, context), done))


def _update_id(args: Args) -> int:
    word = (args.word(0) or "").lstrip("#")
    if not (word.isascii() and word.isdigit()) or len(word) > 19 or len(args.words) != 1:
        raise UsageError()
    return int(word)


# ---- what the admin reads ------------------------------------------------------------------


def _(lang: str, message: str, **params: Any) -> str:
    text = gettext(lang, message)
    return text.format(**{k: escape(str(v)) for k, v in params.items()}) if params else text


def _when(lang: str, tz: tzinfo, at: datetime | None, now: datetime) -> str:
    if at is None:
        return _(lang, "never")
    local = at.astimezone(tz).strftime("%m-%d %H:%M:%S")
    return _(lang, "{time} ({ago} ago)", time=local, ago=span(now - at))


def _age(lang: str, age: timedelta | None) -> str:
    return span(age) if age is not None else "—"


def status_text(lang: str, tz: tzinfo, v: StatusView) -> str:
    lines = [
        _(
            lang,
            "<b>Qunban {version}</b> · up {uptime} · {engine}",
            version=v.version,
            uptime=span(v.uptime),
            engine=v.engine,
        ),
        _(lang, "Database: {state}", state=v.database or _(lang, "answers")),
        _(lang, "Inbox: {n} waiting, lag {lag}", n=v.inbox_pending, lag=_age(lang, v.inbox_lag)),
        _(lang, "Parked updates: {n}", n=v.parked_total),
    ]
    for p in v.parked:
        lines.append(f"  • <code>{p.update_id}</code> ×{p.attempts} {escape(p.error[:80])}")
    if v.parked:
        lines.append(_(lang, "  /retry N · /drop N"))
    lines += [
        _(
            lang,
            "Outbox: {n} waiting, oldest {age}",
            n=v.outbox_depth,
            age=_age(lang, v.outbox_oldest),
        ),
        _(lang, "Last sweep: {when}", when=_when(lang, tz, v.last_scan, v.now)),
        _(lang, "Last digest check: {when}", when=_when(lang, tz, v.last_digest, v.now)),
    ]
    others = [n for n in v.beats if n not in ("scan", "digest")]
    for name in others:
        lines.append(f"{escape(name)}: {_when(lang, tz, v.beats[name], v.now)}")
    if v.late:
        lines.append("⚠️ " + _(lang, "Late: {parts}", parts=", ".join(v.late)))
    return "\n".join(lines)


def done_text(lang: str, done: ParkedAction) -> str:
    if done.action == "retry":
        return _(lang, "Update {id} will be tried again.", id=done.update_id)
    return _(lang, "Update {id} is dropped; it stays on record.", id=done.update_id)
