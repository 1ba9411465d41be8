"""Onboarding, help, language, and what a person may look at: lists, a ticket, the digest."""

from __future__ import annotations

import re
from typing import Any

from telegram import Chat, Update

from bot import texts
from bot.context import BotContext
from bot.errors import UsageError
from handlers import replies
from handlers.common import Args, actor, command, language, parse_number, reply, viewer

_DAYS = re.compile(r"^(\d{1,3})d?$")


@command("start")
async def start(update: Update, context: BotContext, args: Args) -> None:
    """`/start CODE` redeems an invite; `/start` alone greets a known person."""
    user, chat = update.effective_user, update.effective_chat
    assert user is not None
    if chat is None or chat.type != Chat.PRIVATE:
        return await reply(update, context, replies.private_only(await language(update, context)))
    person = await context.services.people.start(
        user.id, args.word(0), user.username, user.language_code
    )
    await reply(update, context, replies.welcome(person.language, person))
    return None


@command("help")
async def help_(update: Update, context: BotContext, args: Args) -> None:
    person = await viewer(update, context)
    await reply(update, context, replies.help_text(await language(update, context), person))


async def anything_else(update: Update, context: BotContext) -> None:
    """A private message no handler took: say what the person can do."""
    person = await viewer(update, context)
    await reply(update, context, replies.help_text(await language(update, context), person))


@command("lang")
async def lang(update: Update, context: BotContext, args: Args) -> None:
    if args.word(0) is None:
        raise UsageError()
    person = await context.services.people.set_language(actor(update), args.word(0) or "")
    await reply(update, context, replies.language_set(person.language))


async def _listing(update: Update, context: BotContext, which: str) -> None:
    views = await getattr(context.services.queries, which)(actor(update))
    lang, tz = await language(update, context), context.services.settings.tz
    title = replies.list_title(lang, which)
    await reply(update, context, texts.ticket_list(lang, tz, title, views))


@command("mine")
async def mine(update: Update, context: BotContext, args: Args) -> None:
    await _listing(update, context, "mine")


@command("open")
async def open_(update: Update, context: BotContext, args: Args) -> None:
    await _listing(update, context, "open")


@command("overdue")
async def overdue(update: Update, context: BotContext, args: Args) -> None:
    await _listing(update, context, "overdue")


@command("ticket")
async def ticket(update: Update, context: BotContext, args: Args) -> None:
    """The card and its timeline; who reported an anonymous ticket is never told in a group."""
    view, reveal = await context.services.queries.ticket(actor(update), parse_number(args.word(0)))
    private = update.effective_chat is not None and update.effective_chat.type == Chat.PRIVATE
    lang, tz = await language(update, context), context.services.settings.tz
    await reply(update, context, texts.timeline(lang, tz, view, reveal=reveal and private))


def _days(word: str | None, default: int = 7) -> int:
    match = _DAYS.match((word or f"{default}d").strip().casefold())
    if not match or not 1 <= int(match.group(1)) <= 366:
        raise UsageError()
    return int(match.group(1))


async def _scheduler(update: Update, context: BotContext, name: str) -> Any:
    """The digest and the records are the scheduler's services; None when not installed."""
    found = getattr(context.services, name, None)
    if found is None:
        await reply(update, context, replies.not_available(await language(update, context)))
    return found


async def _chart(update: Update, context: BotContext, png: bytes | None) -> None:
    if png is not None and update.effective_chat is not None:
        await context.bot.send_photo(update.effective_chat.id, photo=png)


@command("digest")
async def digest(update: Update, context: BotContext, args: Args) -> None:
    """The leader's digest now, with its chart of the three rates."""
    if (digests := await _scheduler(update, context, "digests")) is None:
        return
    found = await digests.for_leader(actor(update))
    await reply(update, context, found.html)
    await _chart(update, context, found.chart_png)


@command("stats")
async def stats(update: Update, context: BotContext, args: Args) -> None:
    days = _days(args.word(0))
    if (records := await _scheduler(update, context, "records")) is None:
        return
    await reply(update, context, await records.ranking(actor(update), days))


@command("record")
async def record(update: Update, context: BotContext, args: Args) -> None:
    """`/record tax`, `/record @wang`, `/record` (the ranking); a trailing `30d` sets the span."""
    words = args.words
    days = _days(words.pop(), 30) if words and _DAYS.match(words[-1].casefold()) else 30
    if (records := await _scheduler(update, context, "records")) is None:
        return
    await reply(update, context, await records.record(actor(update), " ".join(words), days))


COMMANDS = {
    "start": start,
    "help": help_,
    "lang": lang,
    "mine": mine,
    "open": open_,
    "overdue": overdue,
    "ticket": ticket,
    "digest": digest,
    "stats": stats,
    "record": record,
}
