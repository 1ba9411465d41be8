"""The typed handler context: `context.services` instead of casts out of bot_data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from telegram.ext import Application, CallbackContext, ExtBot

if TYPE_CHECKING:
    from bot.app import Services


class BotContext(CallbackContext[ExtBot[None], dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    @classmethod
    def from_update(
        cls, update: object, application: Application[Any, Any, Any, Any, Any, Any]
    ) -> BotContext:  # type: ignore[override]
        return super().from_update(update, application)  # type: ignore[return-value]

    @property
    def services(self) -> Services:
        return self.application.bot_data["services"]  # type: ignore[no-any-return]
