"""The inline buttons: 领办 Claim and the ratings. Anyone in a group can press any button,
and clients can forge the data, so each press is checked by the service like a command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from telegram import CallbackQuery, Update
from telegram.error import Forbidden

from bot import callback_data, texts
from bot.callback_data import RATINGS, ButtonData
from bot.context import BotContext
from bot.errors import QunbanError
from bot.i18n import normalize
from bot.markup import clip, visible_text
from bot.notify import Origin
from handlers import replies
from handlers.common import changed, language

# Telegram shows a press as pending until it is answered, and gives up after some seconds:
# a slow moment gets a neutral answer in time, and the outcome follows as a message.
ANSWER_WITHIN = 2.0
ALERT_LIMIT = 200

Action = Callable[[BotContext, int, ButtonData, Origin], Awaitable[object]]


async def _claim(context: BotContext, who: int, data: ButtonData, where: Origin) -> object:
    return await context.services.tickets.claim(who, data.ticket, origin=where)


async def _rate(context: BotContext, who: int, data: ButtonData, where: Origin) -> object:
    rating = RATINGS[data.arg or ""]
    return await context.services.tickets.rate(who, data.ticket, rating, origin=where)


async def _show(context: BotContext, who: int, data: ButtonData, where: Origin) -> object:
    return await context.services.queries.ticket(who, data.ticket)


ACTIONS: dict[str, Action] = {"claim": _claim, "rate": _rate, "ticket": _show}


async def claim_button(update: Update, context: BotContext) -> None:
    await _press(update, context, "claim")


async def rate_button(update: Update, context: BotContext) -> None:
    await _press(update, context, "rate")


async def ticket_button(update: Update, context: BotContext) -> None:
    await _press(update, context, "ticket")


async def bad_button(update: Update, context: BotContext) -> None:
    """Anything else: forged, stale or malformed data."""
    await _press(update, context, None)


async def _press(update: Update, context: BotContext, expected: str | None) -> None:
    query = update.callback_query
    assert query is not None
    data = callback_data.parse(query.data)
    # only data we could have made ourselves: "t1:claim:01" or "t1:claim:1:x" are forged
    if data is None or data.action != expected or _made(data) != query.data:
        lang = normalize(query.from_user.language_code)
        await query.answer(replies.bad_button(lang), show_alert=True)
        return None
    shown = query.message  # None for a button on an inline message
    where = Origin(shown.chat.id, shown.message_id) if shown else Origin(query.from_user.id)
    work = asyncio.ensure_future(_outcome(update, context, data, where))
    done, _ = await asyncio.wait({work}, timeout=ANSWER_WITHIN)
    if not done:
        return await _answer_late(query, context, work)
    text, alert = work.result()
    await query.answer(text, show_alert=alert)
    return None


async def _answer_late(
    query: CallbackQuery, context: BotContext, work: asyncio.Future[tuple[str, bool]]
) -> None:
    """Answer now with a neutral word; a refusal then follows privately."""
    await query.answer(replies.working(normalize(query.from_user.language_code)))
    text, alert = await work
    if alert:
        with contextlib.suppress(Forbidden):
            await context.bot.send_message(query.from_user.id, text)


async def _outcome(
    update: Update, context: BotContext, data: ButtonData, where: Origin
) -> tuple[str, bool]:
    """(what to tell the presser, whether it is a refusal)."""
    query: CallbackQuery = update.callback_query  # type: ignore[assignment]
    lang = await language(update, context)
    try:
        result = await ACTIONS[data.action](context, query.from_user.id, data, where)
    except QunbanError as error:
        return _plain(replies.refusal(lang, error)), True
    if data.action == "ticket":
        view, _reveal = result  # type: ignore[misc]
        return _plain(texts.ticket_line(lang, context.services.settings.tz, view)), True
    changed(context)
    return _plain(replies.done_toast(lang, data.ticket)), False


def _made(data: ButtonData) -> str | None:
    """The data we would have put on this button; None for a shape we never make."""
    if (data.arg is not None) != (data.action == "rate"):
        return None
    try:
        return callback_data.build(data.action, data.ticket, data.arg)
    except ValueError:
        return None


def _plain(html: str) -> str:
    """Answers to a press are plain text of at most 200 characters."""
    return clip(visible_text(html), ALERT_LIMIT)
