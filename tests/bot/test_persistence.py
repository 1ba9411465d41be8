"""Conversation states and drafts kept in the database, one row each."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.clock import ManualClock
from bot.persistence import DbPersistence
from storage.uow import UnitOfWorkFactory


async def test_conversations_and_user_data_come_back_after_a_restart(
    uows: UnitOfWorkFactory,
) -> None:
    clock = ManualClock(datetime(2026, 3, 2, tzinfo=UTC))
    first = DbPersistence(uows, clock)
    await first.update_conversation("private_report", (5, 5), "description")
    await first.update_conversation("private_report", (6, 6), "photos")
    await first.update_conversation("other_one", (5, 5), "x")
    await first.update_user_data(5, {"report": {"text": "<&> 😀", "files": [["photo", "F"]]}})
    await first.update_user_data(6, {})
    again = DbPersistence(uows, clock)
    assert await again.get_conversations("private_report") == {
        (5, 5): "description",
        (6, 6): "photos",
    }
    assert await again.get_user_data() == {
        5: {"report": {"text": "<&> 😀", "files": [["photo", "F"]]}}
    }
    await again.update_conversation("private_report", (5, 5), None)
    await again.drop_user_data(5)
    assert await again.get_conversations("private_report") == {(6, 6): "photos"}
    assert await again.get_user_data() == {}
    assert await again.get_conversations("other_one") == {(5, 5): "x"}
    assert await again.get_chat_data() == {}
    assert await again.get_bot_data() == {}
    assert await again.get_callback_data() is None


async def test_names_with_like_wildcards_do_not_match_each_other(uows: UnitOfWorkFactory) -> None:
    keep = DbPersistence(uows, ManualClock(datetime(2026, 3, 2, tzinfo=UTC)))
    await keep.update_conversation("a_b", (1,), 1)
    await keep.update_conversation("axb", (2,), 2)
    assert await keep.get_conversations("a_b") == {(1,): 1}
