"""The door, before any handler: groups that moved, groups nobody bound, people nobody knows.

Nothing passes it that a handler could act on without a known person in a bound group (or
a private chat); `/start` passes so that an invite can be redeemed.
"""

from __future__ import annotations

from telegram import Chat, Message, Update
from telegram.ext import ApplicationHandlerStop

from bot.context import BotContext
from bot.markup import visible_text
from handlers import replies
from handlers.common import language, reply, viewer
from handlers.intake import TAG
from handlers.tickets import WORD_PATTERN


async def guard(update: Update, context: BotContext) -> None:
    message, chat, user = update.effective_message, update.effective_chat, update.effective_user
    if message is not None and (message.migrate_to_chat_id or message.migrate_from_chat_id):
        await _migrated(context, message)
        raise ApplicationHandlerStop
    if chat is None or user is None or user.is_bot:
        raise ApplicationHandlerStop
    if chat.type != Chat.PRIVATE and await context.services.people.group(chat.id) is None:
        await _unbound(update, context, chat)
        raise ApplicationHandlerStop
    if await viewer(update, context) is None and not _starting(update):
        await _stranger(update, context)
        raise ApplicationHandlerStop


async def _migrated(context: BotContext, message: Message) -> None:
    """Both service messages of an upgrade arrive; moving the binding twice is harmless."""
    if message.migrate_to_chat_id:
        await context.services.people.migrate_group(message.chat.id, message.migrate_to_chat_id)
    elif message.migrate_from_chat_id:
        await context.services.people.migrate_group(message.migrate_from_chat_id, message.chat.id)


async def _unbound(update: Update, context: BotContext, chat: Chat) -> None:
    """Silence, except one polite line the first time someone gives the bot a command."""
    query = update.callback_query
    lang = await language(update, context)
    if query is not None:
        await query.answer(visible_text(replies.unbound_group(lang)), show_alert=True)
    elif _addressed(update, context) and await context.services.people.hint_once(chat.id):
        await reply(update, context, replies.unbound_group(lang))


async def _stranger(update: Update, context: BotContext) -> None:
    lang = await language(update, context)
    if update.callback_query is not None:
        await update.callback_query.answer(visible_text(replies.stranger(lang)), show_alert=True)
    elif _addressed(update, context):
        await reply(update, context, replies.stranger(lang))


def _addressed(update: Update, context: BotContext) -> bool:
    """A new message meant for the bot: anything in private; in a group a command of ours,
    a Chinese verb with a number, or the #问题 tag. Chatter and edits are not."""
    message = update.message
    if message is None:
        return False
    if message.chat.type == Chat.PRIVATE:
        return True
    said = (message.text or message.caption or "").strip()
    first = said.split(maxsplit=1)[0] if said else ""
    if first.startswith("/"):
        _, _, bot_name = first.partition("@")
        return not bot_name or bot_name.casefold() == (context.bot.username or "").casefold()
    return bool(WORD_PATTERN.match(said)) or TAG in said


def _starting(update: Update) -> bool:
    message = update.message
    if message is None or message.chat.type != Chat.PRIVATE:
        return False
    first = (message.text or "").split(maxsplit=1)
    return bool(first) and first[0].split("@")[0] == "/start"
