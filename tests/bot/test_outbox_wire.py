"""What the outbox sender puts on the wire and reads back, on both of its ways to make a
request: its own, through the bot's request layer, for a bot that adds nothing to a call; and
PTB's typed methods, for a bot with defaults to fill in. And that the rows in hand keep going
out while a claim waits for the database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from telegram import Bot
from telegram.ext import Defaults, ExtBot

from bot.teledouble import DoubleRequest
from storage.tables import Outbox, OutboxState
from storage.uow import UnitOfWorkFactory
from tests.bot.test_outbox import (
    T0,
    Env,
    card_posted,
    dm_blocked,
    edit_row,
    open_env,
    person_id,
)
from tests.factories import COUNTY_GROUP, GROUP


@pytest.fixture
async def env(uows: UnitOfWorkFactory) -> AsyncIterator[Env]:
    async with open_env(uows) as env:
        yield env


BUTTONS = {"inline_keyboard": [[{"text": "认领", "callback_data": "claim:7"}]]}


@asynccontextmanager
async def typed_bot(env: Env) -> AsyncIterator[Bot]:
    """A bot with defaults of its own: the sender leaves the call to PTB's typed methods."""
    defaults = Defaults(disable_notification=True)
    async with ExtBot(env.double.token, request=DoubleRequest(env.double), defaults=defaults) as b:
        yield b


def row(chat: int, payload: dict[str, Any], method: str = "sendMessage") -> Outbox:
    return Outbox(chat_id=chat, method=method, payload=payload, created_at=T0, not_before=T0)


def calls(env: Env, method: str) -> list[dict[str, Any]]:
    return [c.params for c in env.double.calls if c.method == method]


async def test_a_plain_bot_sends_the_rows_fields_as_they_are_and_records_the_message_ids(env):
    replied = env.double.sent_to(GROUP)
    first = await env.add(
        row(
            GROUP,
            {
                "text": "<b>收到</b>",
                "parse_mode": "HTML",
                "reply_markup": {  # a field without a value is left off, as PTB did
                    "inline_keyboard": [
                        [{"text": "认领", "callback_data": "claim:7", "url": None}]
                    ]
                },
                "reply_parameters": {
                    "message_id": 404,
                    "allow_sending_without_reply": True,
                    "quote": None,
                },
            },
        )
    )
    plain = await env.add(row(COUNTY_GROUP, {"text": "no markup, no parse mode"}))
    report = await env.sender(limits=None).drain(env.bot)
    assert (report.sent, report.failed, report.retried) == (2, 0, 0)
    assert calls(env, "sendMessage") == [
        {
            "chat_id": GROUP,
            "text": "<b>收到</b>",
            "parse_mode": "HTML",
            "reply_markup": BUTTONS,
            "reply_parameters": {"message_id": 404, "allow_sending_without_reply": True},
            "link_preview_options": {"is_disabled": True},
        },
        {
            "chat_id": COUNTY_GROUP,
            "text": "no markup, no parse mode",
            "link_preview_options": {"is_disabled": True},
        },
    ]
    [to_group] = env.double.sent_to(GROUP)[len(replied) :]
    [to_county] = env.double.sent_to(COUNTY_GROUP)
    assert (await env.row(first)).sent_message_id == to_group.message_id
    assert (await env.row(plain)).sent_message_id == to_county.message_id
    assert env.double.message(GROUP, to_group.message_id)["text"] == "收到"


async def test_a_plain_bots_card_edit_names_the_card_and_not_the_rows_own_fields(env):
    sender = env.sender(limits=None)
    number, card_id = await card_posted(env, sender)
    edit = await env.add(edit_row(number, f"<b>#{number}</b> 已交办"))
    report = await sender.drain(env.bot)
    assert (report.sent, report.failed) == (1, 0)
    assert calls(env, "editMessageText") == [
        {
            "chat_id": GROUP,
            "message_id": card_id,
            "text": f"<b>#{number}</b> 已交办",
            "parse_mode": "HTML",
            "reply_markup": {},  # an empty keyboard, as PTB puts it: the buttons go
            "link_preview_options": {"is_disabled": True},
        }
    ]
    assert (await env.row(edit)).sent_message_id == card_id
    assert env.double.message(GROUP, card_id)["text"] == f"#{number} 已交办"
    assert "reply_markup" not in env.double.message(GROUP, card_id)


async def test_a_bot_with_defaults_gets_them_and_its_answers_are_recorded_the_same(env):
    async with typed_bot(env) as bot:
        sender = env.sender(limits=None)
        number, card_id = await card_posted(env, sender, bot=bot)
        edit = await env.add(edit_row(number, f"<b>#{number}</b> 已交办"))
        sent = await env.add(row(COUNTY_GROUP, {"text": "hello", "reply_markup": BUTTONS}))
        report = await sender.drain(bot)
    assert (report.sent, report.failed) == (2, 0)
    [*_, county] = calls(env, "sendMessage")
    assert county["disable_notification"] is True  # the bot's default was filled in
    assert county["reply_markup"] == BUTTONS
    [to_county] = env.double.sent_to(COUNTY_GROUP)
    assert (await env.row(sent)).sent_message_id == to_county.message_id
    [edited] = calls(env, "editMessageText")
    assert edited["message_id"] == card_id
    assert (await env.row(edit)).sent_message_id == card_id


@pytest.mark.parametrize("way", ["plain", "typed"])
async def test_telegrams_refusals_mean_the_same_on_either_way(env, way):
    """429 waits the chat out, a 403 gives up and marks the person, an unparsable text gives
    up with Telegram's words, "not modified" counts as sent, and a lost answer is retried and
    counted as ambiguous."""
    clerk = env.org["tax_clerk"]
    async with typed_bot(env) as typed:
        bot = env.bot if way == "plain" else typed
        sender = env.sender(limits=None, lanes=1)
        number, card_id = await card_posted(env, sender, bot=bot)
        env.double.block(clerk)
        env.double.fail_next(1, "429", retry_after=5)
        [limited] = await env.queue(env.org["tax_head"], ["to the head"])
        [blocked] = await env.queue(clerk, ["to the clerk"], person_id=await person_id(env, clerk))
        unparsable = await env.add(row(COUNTY_GROUP, {"text": "<b>open", "parse_mode": "HTML"}))
        edits = [await env.add(edit_row(number, f"<b>#{number}</b> 已交办")) for _ in range(2)]
        report = await sender.drain(bot)
        assert (report.rate_limited, report.failed, report.sent) == (1, 2, 2)
        assert (await env.row(limited)).not_before == T0 + timedelta(seconds=5)
        assert (await env.row(blocked)).last_error.startswith("403 Forbidden: ")
        assert await dm_blocked(env, clerk)
        assert "can't parse entities" in (await env.row(unparsable)).last_error.lower()
        assert [(await env.row(i)).sent_message_id for i in edits] == [card_id, None]
        assert [e.message_id for e in env.double.edits] == [card_id]  # changed once
        env.double.fail_next(1, "drop_response")
        env.clock.advance(timedelta(seconds=5))
        report = await sender.drain(bot)
        assert (report.ambiguous, report.retried, sender.stats.ambiguous) == (1, 1, 1)
        assert (await env.row(limited)).attempts == 1


class HeldClaims:
    """The sender's units of work, whose claims after the first wait until `go` is set;
    `queued` runs as the first ends (rows were queued meanwhile)."""

    def __init__(self, uows: UnitOfWorkFactory) -> None:
        self.uows = uows
        self.claims = 0
        self.queued: Callable[[], None] = lambda: None
        self.held = asyncio.Event()  # a claim is waiting
        self.go = asyncio.Event()

    def __call__(self, **kwargs: Any) -> Any:
        return _Held(self, self.uows(**kwargs))

    def single(self) -> Any:
        return _Held(self, self.uows.single())


class _Held:
    def __init__(self, owner: HeldClaims, uow: Any) -> None:
        self.owner, self.uow = owner, uow

    async def __aenter__(self) -> Any:
        uow = await self.uow.__aenter__()
        claim = uow.outbox.claim
        owner = self.owner

        async def held(*args: Any, **kwargs: Any) -> Any:
            owner.claims += 1
            if owner.claims > 1:
                owner.held.set()
                await owner.go.wait()
            found = await claim(*args, **kwargs)
            if owner.claims == 1:
                owner.queued()
            return found

        uow.outbox.claim = held
        return uow

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.uow.__aexit__(*exc)


async def test_the_rows_in_hand_keep_going_out_while_a_claim_waits_for_the_database(env):
    """Rows queued while the first claim was made call for another: it is made while the
    rows in hand go out, one lane after another (their records wait for the claim, which
    holds the database)."""
    chats = [GROUP, COUNTY_GROUP, env.org["tax_head"]]
    for chat in chats:
        await env.queue(chat, [f"to {chat}"])
    uows = HeldClaims(env.uows)
    sender = env.sender(limits=None, uows=uows, batch=4, lanes=1)  # type: ignore[arg-type]
    uows.queued = sender.wake
    drain = asyncio.create_task(sender.drain(env.bot))
    await asyncio.wait_for(uows.held.wait(), timeout=30)

    async def in_hand_sent() -> None:
        while any(not env.texts_to(chat) for chat in chats):
            await asyncio.sleep(0)  # the sends are in this loop: let them run

    await asyncio.wait_for(in_hand_sent(), timeout=30)
    assert not drain.done()  # the claim still waits
    uows.go.set()
    report = await asyncio.wait_for(drain, timeout=30)
    assert report.sent == len(chats)
    assert [env.texts_to(chat) for chat in chats] == [[f"to {chat}"] for chat in chats]
    assert {r.state for r in await env.rows()} == {OutboxState.SENT}
