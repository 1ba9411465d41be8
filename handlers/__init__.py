"""Telegram adapters: turn updates into service calls and results into replies."""

from __future__ import annotations

from typing import Any

from telegram import Update
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

GUARD_GROUP = -1
KEEP_GROUP = 90  # after every handler: the private conversation's step is written down


def register(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Add every handler to the application (the composition root calls this once)."""
    from handlers import admin, buttons, guard, intake, people, private, tickets

    new = filters.UpdateType.MESSAGE  # edits of a message never act a second time
    groups = new & filters.ChatType.GROUPS
    app.add_handler(TypeHandler(Update, guard.guard), group=GUARD_GROUP)
    app.add_handler(private.conversation())
    app.add_handler(CommandHandler("report", intake.report, filters=groups))
    caption = filters.CaptionRegex(intake.CAPTION_COMMAND)
    files = filters.PHOTO | filters.Document.ALL
    app.add_handler(MessageHandler(groups & files & caption, intake.report))
    for name, handler in tickets.COMMANDS.items():
        app.add_handler(CommandHandler(name, handler, filters=new))
    supervise_caption = filters.CaptionRegex(r"^/supervise(@\w+)?(\s|$)")
    app.add_handler(MessageHandler(new & files & supervise_caption, tickets.supervise))
    app.add_handler(MessageHandler(groups & filters.Regex(tickets.WORD_PATTERN), tickets.word))
    tag = filters.Regex(intake.TAG) | filters.CaptionRegex(intake.TAG)
    app.add_handler(MessageHandler(groups & tag, intake.tagged))
    for name, handler in people.COMMANDS.items():
        app.add_handler(CommandHandler(name, handler, filters=new))
    app.add_handler(CallbackQueryHandler(buttons.claim_button, pattern=r"^t1:claim:"))
    app.add_handler(CallbackQueryHandler(buttons.rate_button, pattern=r"^t1:rate:"))
    app.add_handler(CallbackQueryHandler(buttons.ticket_button, pattern=r"^t1:ticket:"))
    app.add_handler(CallbackQueryHandler(buttons.bad_button))
    private_text = new & filters.ChatType.PRIVATE & (filters.TEXT | filters.COMMAND)
    app.add_handler(MessageHandler(private_text, people.anything_else))
    app.add_handler(TypeHandler(Update, private.keep), group=KEEP_GROUP)
    admin.register(app)  # /status, /retry, /drop: before the guard, admins only
