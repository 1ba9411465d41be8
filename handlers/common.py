"""Shared handler pieces: who is asking, reading arguments, replying, wording refusals."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from telegram import (
    Chat,
    LinkPreviewOptions,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    ReplyParameters,
    Update,
)
from telegram.constants import ParseMode

from bot.context import BotContext
from bot.errors import QunbanError, UsageError
from bot.i18n import normalize
from bot.markup import split_html
from bot.notify import Origin
from bot.services.tickets import NewAttachment
from bot.services.views import PersonView
from handlers import replies

_NUMBER = re.compile(r"^[#＃]?(\d{1,12})$")
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
RATINGS = {
    "satisfied": "satisfied",
    "s": "satisfied",
    "满意": "satisfied",
    "非常满意": "satisfied",
    "basic": "basic",
    "b": "basic",
    "基本满意": "basic",
    "unsatisfied": "unsatisfied",
    "u": "unsatisfied",
    "不满意": "unsatisfied",
    "unsolved": "unsolved",
    "n": "unsolved",
    "未解决": "unsolved",
}

Markup = ReplyKeyboardMarkup | ReplyKeyboardRemove | None


@dataclass(frozen=True)
class Args:
    """The words after a command (or a Chinese verb), and the raw text they came from."""

    text: str

    @property
    def words(self) -> list[str]:
        return self.text.split()

    def word(self, index: int) -> str | None:
        words = self.words
        return words[index] if index < len(words) else None

    def rest(self, after: int) -> str:
        """The text after the first `after` words, spacing and lines kept."""
        parts = re.split(r"\s+", self.text.strip(), maxsplit=after)
        return parts[after].strip() if len(parts) > after else ""


def parse_number(word: str | None) -> int:
    """A ticket number written `#12` or `12`."""
    match = _NUMBER.match((word or "").strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError()
    return int(match.group(1))


def parse_day(word: str | None) -> date | None:
    if word is None:
        return None
    try:
        return date.fromisoformat(word.strip())
    except ValueError:
        raise UsageError() from None


def parse_rating(word: str | None) -> str:
    rating = RATINGS.get((word or "").strip().casefold())
    if rating is None:
        raise UsageError()
    return rating


# control characters no message needs (tabs and line breaks stay); PostgreSQL refuses NUL
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def said(message: Message | None) -> str:
    """The text or caption of a message, without control characters, trimmed."""
    if message is None:
        return ""
    return _CONTROLS.sub("", message.text or message.caption or "").strip()


def command_args(update: Update, context: BotContext) -> Args:
    """What follows the command word, in a text or a caption; for a Chinese verb, its match."""
    match = context.matches[0] if context.matches else None
    if match is not None and "rest" in match.re.groupindex:
        return Args(_CONTROLS.sub("", match.group("rest") or ""))
    parts = said(update.effective_message).split(maxsplit=1)
    return Args(parts[1] if len(parts) > 1 else "")


def actor(update: Update) -> int:
    assert update.effective_user is not None
    return update.effective_user.id


def origin(update: Update) -> Origin:
    message = update.effective_message
    assert update.effective_chat is not None
    return Origin(update.effective_chat.id, message.message_id if message else None)


def attachments(*messages: Message | None) -> list[NewAttachment]:
    """The photos, files and places in these messages, as Telegram file ids and coordinates."""
    found: list[NewAttachment] = []
    for message in messages:
        if message is None:
            continue
        if message.photo:
            found.append(NewAttachment("photo", message.photo[-1].file_id))
        if message.document:
            found.append(NewAttachment("document", message.document.file_id))
        if message.location:
            place = message.location
            found.append(NewAttachment("location", None, place.latitude, place.longitude))
    return found


async def viewer(update: Update, context: BotContext) -> PersonView | None:
    """The person of the org chart behind this update, looked up once per update."""
    cache = vars(context)
    if "viewer" not in cache:
        user = update.effective_user
        cache["viewer"] = await context.services.queries.whoami(user.id) if user else None
    return cache["viewer"]  # type: ignore[no-any-return]


async def language(update: Update, context: BotContext) -> str:
    """The person's own language; for strangers what Telegram says, Chinese by default."""
    person = await viewer(update, context)
    if person is not None:
        return person.language
    user = update.effective_user
    return normalize(user.language_code if user else None)


async def reply(update: Update, context: BotContext, html: str, markup: Markup = None) -> None:
    """Answer in the chat the update came from, split to Telegram's length; in a group the
    answer quotes the message it answers."""
    chat, message = update.effective_chat, update.effective_message
    assert chat is not None
    quote = None
    if message is not None and chat.type != Chat.PRIVATE:
        quote = ReplyParameters(message.message_id, allow_sending_without_reply=True)
    chunks = split_html(html)
    for index, chunk in enumerate(chunks):
        await context.bot.send_message(
            chat.id,
            chunk,
            parse_mode=ParseMode.HTML,
            reply_parameters=quote if index == 0 else None,
            reply_markup=markup if index == len(chunks) - 1 else None,
            link_preview_options=_NO_PREVIEW,
        )


def changed(context: BotContext) -> None:
    """A change was committed with its messages queued: let the sender go now."""
    context.services.sender.wake(look=False)


Body = Callable[[Update, BotContext, Args], Awaitable[Any]]
Handler = Callable[[Update, BotContext], Awaitable[Any]]


def command(name: str) -> Callable[[Body], Handler]:
    """Wrap a handler body: hand it its arguments; answer wrong usage with the command's usage
    line, and any refusal with one sentence, in the asker's language. Refusals change nothing."""

    def wrap(body: Body) -> Handler:
        @functools.wraps(body)
        async def handler(update: Update, context: BotContext) -> Any:
            try:
                return await body(update, context, command_args(update, context))
            except UsageError:
                await reply(update, context, replies.usage(await language(update, context), name))
            except QunbanError as error:
                lang = await language(update, context)
                await reply(update, context, replies.refusal(lang, error))
            return None

        handler.command = name  # type: ignore[attr-defined]
        return handler

    return wrap
