"""Long polling against the Bot API double: nothing is confirmed before it is stored."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import func, select
from telegram import Bot

import bot.receiver as receiver_module
from bot.clock import ManualClock
from bot.inbox import store_in
from bot.receiver import ALLOWED_UPDATES, OFFSET_KEY, Receiver
from bot.teledouble import DoubleRequest, TeleDouble
from storage.tables import InboxUpdate
from storage.uow import UnitOfWorkFactory

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
GROUP = -1001000000001


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


class WatchedDouble(TeleDouble):
    """The double, telling the test when calls arrive (so tests wait on events, not time)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrivals: Counter[str] = Counter()
        self._arrived = asyncio.Event()

    async def call(self, method: str, params: Any = None, **kw: Any) -> Any:
        self.arrivals[method] += 1
        self._arrived.set()
        return await super().call(method, params, **kw)

    async def arrived(self, method: str, n: int = 1) -> None:
        while self.arrivals[method] < n:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), 5)


@pytest.fixture
def double(clock: ManualClock) -> WatchedDouble:
    return WatchedDouble(clock=clock)


@pytest.fixture
async def tg(double: TeleDouble) -> AsyncIterator[Bot]:
    bot = Bot(
        double.token,
        request=DoubleRequest(double),
        get_updates_request=DoubleRequest(double),
    )
    async with bot:
        yield bot


class Stored:
    """The receiver's on_stored callback, awaitable from the test."""

    def __init__(self) -> None:
        self.calls = 0
        self.added = 0
        self.event = asyncio.Event()

    def __call__(self, added: int) -> None:
        self.calls += 1
        self.added += added
        self.event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), 5)
        self.event.clear()


def make(tg: Bot, uows: UnitOfWorkFactory, clock: ManualClock, **kw: Any) -> Receiver:
    kw.setdefault("timeout", 0)
    kw.setdefault("min_backoff", 0.01)
    kw.setdefault("poll_interval", 0.01)
    return Receiver(tg, uows, Stored(), clock=clock, **kw)


async def inbox_ids(uows: UnitOfWorkFactory) -> list[int]:
    async with uows(readonly=True) as uow:
        rows = await uow.session.exec(
            select(InboxUpdate.update_id).order_by(InboxUpdate.update_id)
        )
        return list(rows.all())


def say(double: TeleDouble, text: str, user: int = 5_000_000_001) -> dict:
    return double.user_says(GROUP, user, text)


def get_updates_calls(double: TeleDouble) -> list[dict]:
    return [c.params for c in double.calls if c.method == "getUpdates"]


# --------------------------------------------------------------------------- offsets


async def test_updates_are_confirmed_only_after_they_are_stored(tg, double, uows, clock):
    ids = [say(double, f"report {i}")["update_id"] for i in range(3)]
    receiver = make(tg, uows, clock)
    assert await receiver.poll_once() == 3
    assert await inbox_ids(uows) == ids
    assert [u["update_id"] for u in double.pending_updates()] == ids  # stored, not confirmed
    assert await receiver.poll_once() == 0
    assert double.pending_updates() == []
    assert double.confirmed_offset == ids[-1] + 1


async def test_the_inbox_keeps_each_update_as_telegram_sent_it(tg, double, uows, clock):
    """Fields this PTB does not know yet (and nulls, and key order) survive: the worker of a
    later version reads what Telegram said, not what this one made of it."""
    sent = double.push_update(
        {
            "message": {
                "message_id": 7,
                "date": 1_700_000_000,
                "chat": {"id": -1001, "type": "supergroup", "title": "<群> & 😀"},
                "from": {"id": 5, "is_bot": False, "first_name": "P"},
                "text": "/report 停电 <b>&amp;",
                "a_field_from_a_later_bot_api": {"nested": [1, None]},
            },
            "another_kind_of_update": None,
        }
    )
    assert await make(tg, uows, clock).poll_once() == 1
    async with uows(readonly=True) as uow:
        row = await uow.inbox.get(sent["update_id"])
        assert row is not None
        assert row.payload == sent
        assert row.chat_id == -1001


async def test_a_batch_that_could_not_be_stored_stays_unconfirmed(
    tg, double, uows, clock, monkeypatch
):
    failures = [sa.exc.OperationalError("INSERT", {}, OSError("disk I/O error"))]

    async def flaky_store(uow, updates, now):
        if failures:
            raise failures.pop()
        return await store_in(uow, updates, now)

    monkeypatch.setattr(receiver_module, "store_in", flaky_store)
    update_id = say(double, "report")["update_id"]
    receiver = make(tg, uows, clock)
    with pytest.raises(sa.exc.OperationalError):
        await receiver.poll_once()
    assert await inbox_ids(uows) == []
    assert receiver.offset is None
    assert [u["update_id"] for u in double.pending_updates()] == [update_id]
    assert await receiver.poll_once() == 1  # the same update again: now it is kept
    await receiver.poll_once()
    assert await inbox_ids(uows) == [update_id]
    assert double.pending_updates() == []


async def test_the_offset_survives_a_restart(tg, double, uows, clock):
    ids = [say(double, f"r{i}")["update_id"] for i in range(2)]
    await make(tg, uows, clock).poll_once()  # stored; the process dies before confirming
    async with uows(readonly=True) as uow:
        assert (await uow.schedule.get_value(OFFSET_KEY)).value == {"offset": ids[-1] + 1}
    again = make(tg, uows, clock)
    await again.start()
    assert await again.poll_once() == 0  # nothing read twice
    assert get_updates_calls(double)[-1]["offset"] == ids[-1] + 1
    assert double.pending_updates() == []


async def test_an_offset_saved_before_a_long_silence_is_not_sent(tg, double, uows, clock):
    say(double, "before")
    await make(tg, uows, clock).poll_once()
    clock.advance(timedelta(days=8))
    double.reset_update_ids(3)  # after a week without updates Telegram numbers afresh
    late = say(double, "after a week")["update_id"]
    again = make(tg, uows, clock)
    await again.start()
    assert again.offset is None
    await again.poll_once()
    assert late in await inbox_ids(uows)


async def test_update_ids_that_jump_down_are_all_kept(tg, double, uows, clock):
    """RELIABILITY A7: no high-water mark drops an update."""
    receiver = make(tg, uows, clock)
    high = [say(double, f"h{i}")["update_id"] for i in range(3)]
    double.reset_update_ids(900_000)
    high += [say(double, f"h{i}")["update_id"] for i in range(3, 5)]
    await receiver.poll_once()
    await receiver.poll_once()  # confirms; answers nothing
    double.reset_update_ids(7)
    low = [say(double, f"l{i}")["update_id"] for i in range(3)]
    assert max(low) < min(high[3:])
    await receiver.poll_once()
    await receiver.poll_once()
    assert await inbox_ids(uows) == sorted(high + low)
    assert double.pending_updates() == []


# --------------------------------------------------------------------------- Telegram's side


async def test_startup_keeps_pending_updates_and_asks_for_what_we_handle(tg, double, uows, clock):
    """RELIABILITY A5 (drop_pending_updates stays off) and A12 (allowed_updates)."""
    await double.call("setWebhook", {"url": "https://example.org/telegram"})
    update_id = say(double, "while the webhook was set")["update_id"]
    receiver = make(tg, uows, clock)
    await receiver.start()
    await receiver.poll_once()
    [delete] = [c.params for c in double.calls if c.method == "deleteWebhook"]
    assert delete.get("drop_pending_updates") in (None, False)
    assert double.dropped_pending == 0
    assert await inbox_ids(uows) == [update_id]
    expected = ["message", "edited_message", "callback_query", "my_chat_member", "chat_member"]
    assert list(ALLOWED_UPDATES) == expected
    assert double.allowed_updates == expected
    assert all(c.get("offset", 0) >= 0 for c in get_updates_calls(double))


async def test_a_rival_poller_is_a_logged_conflict_not_a_crash(tg, double, uows, clock, caplog):
    """RELIABILITY A6: the superseded poll gets 409 Conflict; ours backs off and carries on."""
    receiver = make(tg, uows, clock, timeout=5)
    stored: Stored = receiver._on_stored  # type: ignore[assignment]
    task = asyncio.create_task(receiver.run())
    await double.arrived("getUpdates")
    with caplog.at_level(logging.WARNING, logger="bot.receiver"):
        await double.call("getUpdates", {"timeout": 0})  # another instance polls
        say(double, "still here")
        await stored.wait()
    receiver.stop()
    await asyncio.wait_for(task, 5)
    assert len(await inbox_ids(uows)) == 1
    assert any("another instance" in r.getMessage() for r in caplog.records)


async def test_network_errors_back_off_and_lose_nothing(tg, double, uows, clock, caplog):
    update_id = say(double, "through a bad line")["update_id"]
    double.fail_next(2, "502", methods=["getUpdates"])
    double.fail_next(1, "lost", methods=["getUpdates"])
    receiver = make(tg, uows, clock)
    stored: Stored = receiver._on_stored  # type: ignore[assignment]
    task = asyncio.create_task(receiver.run())
    with caplog.at_level(logging.WARNING, logger="bot.receiver"):
        await stored.wait()
    receiver.stop()
    await asyncio.wait_for(task, 5)
    assert await inbox_ids(uows) == [update_id]
    assert double.pending_updates() == []
    assert sum("getUpdates failed" in r.getMessage() for r in caplog.records) == 3


async def test_an_empty_answer_is_followed_by_a_pause(tg, double, uows, clock):
    """A server that does not hold the poll open must not make the receiver spin."""
    pauses: list[float] = []
    receiver = make(tg, uows, clock, poll_interval=0.25)

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            receiver.stop()

    receiver._pause = pause  # type: ignore[method-assign]
    await asyncio.wait_for(receiver.run(), 5)
    assert pauses == [0.25, 0.25, 0.25]
    assert len(get_updates_calls(double)) == 3


async def test_stopping_confirms_what_was_stored(tg, double, uows, clock):
    """RELIABILITY A4: the extra getUpdates that confirms the offset happens before exit."""
    receiver = make(tg, uows, clock, timeout=5)
    stored: Stored = receiver._on_stored  # type: ignore[assignment]
    task = asyncio.create_task(receiver.run())
    ids = [say(double, f"r{i}")["update_id"] for i in range(3)]
    await stored.wait()
    receiver.stop()
    await asyncio.wait_for(task, 5)
    assert await inbox_ids(uows) == ids
    assert stored.added == 3
    assert double.pending_updates() == []
    assert get_updates_calls(double)[-1]["offset"] == ids[-1] + 1


async def test_an_abandoned_long_poll_confirms_nothing(tg, double, uows, clock):
    receiver = make(tg, uows, clock, timeout=20)
    task = asyncio.create_task(receiver.run())
    await double.arrived("getUpdates")
    receiver.stop()
    await asyncio.wait_for(task, 5)
    update_id = say(double, "after the stop")["update_id"]
    assert [u["update_id"] for u in double.pending_updates()] == [update_id]
    async with uows(readonly=True) as uow:
        assert (await uow.session.exec(select(func.count()).select_from(InboxUpdate))).one() == 0
