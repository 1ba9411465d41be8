"""PTB persistence in our own database: conversation states and drafts survive a restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from telegram.ext import BasePersistence, PersistenceInput
from telegram.ext._utils.types import CDCData, ConversationDict, ConversationKey

from bot.clock import Clock
from storage.uow import UnitOfWorkFactory

_CONVERSATION = "conv:{name}:"
_USER = "user_data:"


class DbPersistence(BasePersistence[dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    """Keeps conversation states and user data as rows of the KeyValue table.

    One row per conversation and per user, so two people's steps never overwrite each other.
    Bot data and chat data are not kept: the services live in bot_data, and the database is
    the record of everything else.
    """

    def __init__(self, uows: UnitOfWorkFactory, clock: Clock, update_interval: float = 60):
        super().__init__(
            store_data=PersistenceInput(
                bot_data=False, chat_data=False, user_data=True, callback_data=False
            ),
            update_interval=update_interval,
        )
        self._uows = uows
        self._clock = clock
        # PTB writes several entries at once (gather); one at a time keeps SQLite's one writer
        self._writing = asyncio.Lock()

    async def get_conversations(self, name: str) -> ConversationDict:
        prefix = _CONVERSATION.format(name=name)
        async with self._uows(readonly=True) as uow:
            rows = await uow.schedule.values_with_prefix(prefix)
            return {
                tuple(json.loads(row.key.removeprefix(prefix))): row.value["state"] for row in rows
            }

    async def update_conversation(
        self, name: str, key: ConversationKey, new_state: object | None
    ) -> None:
        row_key = _CONVERSATION.format(name=name) + json.dumps(list(key))
        await self._put(row_key, None if new_state is None else {"state": new_state})

    async def get_user_data(self) -> dict[int, dict[Any, Any]]:
        async with self._uows(readonly=True) as uow:
            rows = await uow.schedule.values_with_prefix(_USER)
            return {int(row.key.removeprefix(_USER)): dict(row.value) for row in rows}

    async def update_user_data(self, user_id: int, data: dict[Any, Any]) -> None:
        # most people never leave a draft: store nothing rather than an empty row for each
        await self._put(f"{_USER}{user_id}", dict(data) or None)

    async def drop_user_data(self, user_id: int) -> None:
        await self._put(f"{_USER}{user_id}", None)

    async def refresh_user_data(self, user_id: int, user_data: dict[Any, Any]) -> None:
        """Nothing to refresh: one process owns a person's conversation at a time."""

    async def _put(self, key: str, value: dict[str, Any] | None) -> None:
        async with self._writing, self._uows() as uow:
            if value is None:
                await uow.schedule.delete_value(key)
            else:
                await uow.schedule.put_value(key, value, self._clock.now())
            await uow.commit()

    # ---- what is not kept -------------------------------------------------------------

    async def get_chat_data(self) -> dict[int, dict[Any, Any]]:
        return {}

    async def get_bot_data(self) -> dict[Any, Any]:
        return {}

    async def get_callback_data(self) -> CDCData | None:
        return None

    async def update_chat_data(self, chat_id: int, data: dict[Any, Any]) -> None:
        """Chat data is not kept."""

    async def update_bot_data(self, data: dict[Any, Any]) -> None:
        """Bot data holds the services; it is built anew on each start."""

    async def update_callback_data(self, data: CDCData) -> None:
        """Callback data is plain strings; nothing to keep."""

    async def drop_chat_data(self, chat_id: int) -> None:
        """Chat data is not kept."""

    async def refresh_chat_data(self, chat_id: int, chat_data: dict[Any, Any]) -> None:
        """Chat data is not kept."""

    async def refresh_bot_data(self, bot_data: dict[Any, Any]) -> None:
        """Bot data is not kept."""

    async def flush(self) -> None:
        """Every write is committed when it is made."""
