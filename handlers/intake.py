"""Filing in a bound group: `/report TEXT`, `/report` replying to a message, a photo or file
with a `/report` caption, and messages tagged #问题.

A ticket is keyed by the message it was filed from, so a repeated update, or a second
`/report` on the same message, finds the ticket already there and says nothing more.
"""

from __future__ import annotations

from telegram import Message, Update

from bot.context import BotContext
from bot.errors import UsageError
from handlers.common import Args, actor, attachments, changed, command, said
from storage.tables import Role

TAG = "#问题"
CAPTION_COMMAND = r"^/report(@\w+)?(\s|$)"


@command("report")
async def report(update: Update, context: BotContext, args: Args) -> None:
    """The replied message (its text and its author's enterprise), else the command's text."""
    message = update.effective_message
    assert message is not None
    source = message.reply_to_message or message
    said = _words_of(source) if source is not message else ""
    text = "\n\n".join(part for part in (said, args.text.strip()) if part)
    reporter = await _reporter(context, source, actor(update))
    await _file(context, reporter, text, source, attachments(message, message.reply_to_message))


@command("report")
async def tagged(update: Update, context: BotContext, args: Args) -> None:
    """A message tagged #问题 is a report by its author."""
    message = update.effective_message
    assert message is not None
    text = _words_of(message).replace(TAG, " ").strip()
    await _file(context, actor(update), text, message, attachments(message))


async def _file(
    context: BotContext, reporter: int, text: str, source: Message, files: list
) -> None:
    if not text and not files:
        raise UsageError()
    outcome = await context.services.tickets.report(
        reporter,
        text or "📎",
        chat_id=source.chat.id,
        message_id=source.message_id,
        attachments=files,
    )
    if outcome.created:
        changed(context)


async def _reporter(context: BotContext, source: Message, replier: int) -> int:
    """The author of the replied message when they belong to an enterprise, else the replier."""
    author = source.from_user
    if author is None or author.id == replier or author.is_bot:
        return replier
    person = await context.services.queries.whoami(author.id)
    return author.id if person is not None and person.role is Role.ENTERPRISE else replier


def _words_of(message: Message) -> str:
    return said(message)
