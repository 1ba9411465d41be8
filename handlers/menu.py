"""The command menu Telegram clients show, in Chinese and English."""

from __future__ import annotations

from telegram import Bot, BotCommand, BotCommandScopeAllGroupChats, BotCommandScopeAllPrivateChats

from bot.i18n import LANGUAGES, gettext
from handlers.replies import COMMANDS

_PRIVATE = ["report", "mine", "open", "overdue", "ticket", "digest", "stats", "lang", "help"]
_GROUP = [
    "report",
    "claim",
    "progress",
    "resolve",
    "assign",
    "supervise",
    "ticket",
    "open",
    "help",
]


def _menu(language: str, names: list[str]) -> list[BotCommand]:
    return [BotCommand(name, gettext(language, COMMANDS[name][1])[:256]) for name in names]


async def publish_menu(bot: Bot) -> None:
    """Tell Telegram the commands worth a menu entry, per kind of chat and language."""
    for scope, names in (
        (BotCommandScopeAllPrivateChats(), _PRIVATE),
        (BotCommandScopeAllGroupChats(), _GROUP),
    ):
        await bot.set_my_commands(_menu("zh", names), scope=scope)
        for language in LANGUAGES:
            await bot.set_my_commands(_menu(language, names), scope=scope, language_code=language)
