"""The private `/report`: department, description, photos, anonymity, confirm.

The steps and the draft are kept by the database-backed persistence, so a restart in the
middle of a conversation picks it up where the person left it.
"""

from __future__ import annotations

from typing import Any

from telegram import Chat, ReplyKeyboardMarkup, ReplyKeyboardRemove, Update
from telegram.ext import CommandHandler, ConversationHandler, MessageHandler, filters

from bot.context import BotContext
from bot.errors import InvalidTransitionError
from bot.i18n import gettext
from bot.markup import clip
from bot.services.tickets import NewAttachment
from handlers import replies
from handlers.common import (
    Args,
    actor,
    attachments,
    changed,
    command,
    language,
    reply,
    said,
    viewer,
)
from storage.tables import Role

CATEGORY, DESCRIPTION, PHOTOS, ANONYMOUS, CONFIRM = (
    "category",
    "description",
    "photos",
    "anonymous",
    "confirm",
)
END = ConversationHandler.END
MAX_FILES = 10
DRAFT = "report"


def _keyboard(rows: list[list[str]]) -> ReplyKeyboardMarkup:
    return ReplyKeyboardMarkup(rows, one_time_keyboard=True, resize_keyboard=True)


def _draft(context: BotContext) -> dict[str, Any]:
    return context.user_data.setdefault(DRAFT, {})  # type: ignore[union-attr, no-any-return]


def _answer(update: Update) -> str:
    message = update.effective_message
    return said(message) if message is not None and message.text is not None else ""


def _is(lang: str, said: str, label: str) -> bool:
    return said.casefold() in {gettext(lang, label).casefold(), label.casefold()}


@command("report")
async def begin(update: Update, context: BotContext, args: Args) -> str | int:
    person = await viewer(update, context)
    if person is None or person.role is not Role.ENTERPRISE:
        raise InvalidTransitionError("role", number="—", action="report")
    lang, names = person.language, await context.services.people.categories(actor(update))
    context.user_data[DRAFT] = {"text": args.text.strip()} if args.text.strip() else {}  # type: ignore[index]
    rows = [[name] for name in names] + [[gettext(lang, replies.OTHER)]]
    await reply(update, context, replies.ask_category(lang), _keyboard(rows))
    return CATEGORY


async def category(update: Update, context: BotContext) -> str:
    lang, said = await language(update, context), _answer(update)
    other = _is(lang, said, replies.OTHER)
    _draft(context)["category"] = None if other else clip(said, 64)
    if _draft(context).get("text"):
        await reply(update, context, replies.ask_photos(lang), ReplyKeyboardRemove())
        return PHOTOS
    await reply(update, context, replies.ask_description(lang), ReplyKeyboardRemove())
    return DESCRIPTION


async def description(update: Update, context: BotContext) -> str:
    _draft(context)["text"] = _answer(update)
    await reply(update, context, replies.ask_photos(await language(update, context)))
    return PHOTOS


async def photo(update: Update, context: BotContext) -> str:
    files = _draft(context).setdefault("files", [])
    for item in attachments(update.effective_message)[: MAX_FILES - len(files)]:
        files.append([item.kind, item.file_id])
    lang = await language(update, context)
    await reply(update, context, replies.photo_added(lang, len(files)))
    return PHOTOS


async def photos_done(update: Update, context: BotContext) -> str:
    lang = await language(update, context)
    rows = [[gettext(lang, replies.SHOW_NAME), gettext(lang, replies.ANONYMOUS)]]
    await reply(update, context, replies.ask_anonymous(lang), _keyboard(rows))
    return ANONYMOUS


async def anonymity(update: Update, context: BotContext) -> str:
    lang, said = await language(update, context), _answer(update)
    _draft(context)["anonymous"] = _is(lang, said, replies.ANONYMOUS)
    rows = [[gettext(lang, replies.SEND), gettext(lang, replies.CANCEL)]]
    await reply(update, context, replies.confirm(lang, _draft(context)), _keyboard(rows))
    return CONFIRM


async def decide(update: Update, context: BotContext) -> str | int:
    lang, said = await language(update, context), _answer(update)
    if _is(lang, said, replies.CANCEL):
        return await cancel(update, context)
    if not _is(lang, said, replies.SEND):
        await reply(update, context, replies.need_words(lang))
        return CONFIRM
    return await send(update, context)


@command("report")
async def send(update: Update, context: BotContext, args: Args) -> int:
    draft, message = _draft(context), update.effective_message
    assert message is not None
    await context.services.tickets.report(
        actor(update),
        draft.get("text") or "—",
        chat_id=message.chat.id,
        message_id=message.message_id,
        private=True,
        anonymous=bool(draft.get("anonymous")),
        category=draft.get("category"),
        attachments=[NewAttachment(kind, file_id) for kind, file_id in draft.get("files", [])],
    )
    context.user_data.pop(DRAFT, None)  # type: ignore[union-attr]
    changed(context)
    return END


async def cancel(update: Update, context: BotContext) -> int:
    context.user_data.pop(DRAFT, None)  # type: ignore[union-attr]
    lang = await language(update, context)
    await reply(update, context, replies.cancelled(lang), ReplyKeyboardRemove())
    return END


async def photos_please(update: Update, context: BotContext) -> str:
    await reply(update, context, replies.ask_photos(await language(update, context)))
    return PHOTOS


async def words_please(update: Update, context: BotContext) -> None:
    await reply(update, context, replies.need_words(await language(update, context)))


def conversation() -> ConversationHandler[Any]:
    private = filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE
    text = private & filters.TEXT & ~filters.COMMAND
    files = private & (filters.PHOTO | filters.Document.ALL)
    return ConversationHandler(
        entry_points=[CommandHandler("report", begin, filters=private)],
        states={
            CATEGORY: [MessageHandler(text, category)],
            DESCRIPTION: [MessageHandler(text, description)],
            PHOTOS: [
                MessageHandler(files, photo),
                MessageHandler(text, photos_please),
                CommandHandler(["done", "skip"], photos_done, filters=private),
            ],
            ANONYMOUS: [MessageHandler(text, anonymity)],
            CONFIRM: [MessageHandler(text, decide)],
        },
        fallbacks=[
            CommandHandler("cancel", cancel, filters=private),
            MessageHandler(private & ~filters.COMMAND & ~filters.TEXT, words_please),
        ],
        name="private_report",
        persistent=True,
        allow_reentry=True,
    )


async def keep(update: Update, context: BotContext) -> None:
    """Write a private chat's conversation step and draft down now, not at the next interval:
    a crash must not lose the step someone just answered."""
    chat, user = update.effective_chat, update.effective_user
    if chat is None or user is None or chat.type != Chat.PRIVATE:
        return
    context.application.mark_data_for_update_persistence(user_ids=user.id)
    await context.application.update_persistence()
