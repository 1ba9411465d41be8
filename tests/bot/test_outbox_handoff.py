"""Messages handed from the unit of work that queued them to the sender of the same process:
written under the sender's lease, sent without a claim, in order behind what the sender holds
of their chats; one whose chat has a message the sender does not hold waits for it, and those
of a sender that died go out through another once their short lease lapses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select
from telegram import Bot

from bot.notify import outbox_row
from bot.outbox import BIRTH_LEASE, OutboxSender
from bot.teledouble import DoubleRequest, TeleDouble
from storage.repositories import _QUEUE_OUTBOX_RETURNING_ANY, OutboxRepository
from storage.tables import Outbox, OutboxState
from storage.uow import UnitOfWorkFactory
from tests.bot.test_outbox import T0, Env, open_env
from tests.factories import COUNTY_GROUP, GROUP


@pytest.fixture
async def env(uows: UnitOfWorkFactory) -> AsyncIterator[Env]:
    async with open_env(uows) as env:
        yield env


async def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Let the other tasks run until `condition` holds; fails after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0)


def counted_claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many claims the senders made, counted as they are made."""
    claims: list[int] = []
    claim = OutboxRepository.claim

    async def counting(self: OutboxRepository, *args: Any, **kwargs: Any) -> Any:
        claims.append(1)
        return await claim(self, *args, **kwargs)

    monkeypatch.setattr(OutboxRepository, "claim", counting)
    return claims


async def started(env: Env, bot: Bot, **kwargs: Any) -> tuple[OutboxSender, asyncio.Task[None]]:
    """A sender running, wired to take what the units of work queue, its first look done."""
    sender = env.sender(limits=None, **kwargs)
    env.uows.handoff = sender
    running = asyncio.create_task(sender.run(bot, idle=3600))
    await until(lambda: sender.birth_lease() is not None)
    return sender, running


async def leased(env: Env, text: str, owner: str, until: datetime) -> int:
    """A message for the group, due now, written with `owner`'s lease until `until`."""
    row = Outbox(chat_id=GROUP, payload={"text": text}, created_at=T0, not_before=T0,
                 lease_owner=owner, lease_until=until)  # fmt: skip
    return await env.add(row)


async def second_waits(env: Env, sender: OutboxSender) -> None:
    """A second message for the group is handed over and held back, one for another chat goes."""
    await env.queue(GROUP, ["second"])
    await env.queue(COUNTY_GROUP, ["elsewhere"])
    await until(lambda: env.texts_to(COUNTY_GROUP) == ["elsewhere"])
    await until(lambda: not sender._adopted)
    assert env.texts_to(GROUP) == []


async def stopped(sender: OutboxSender, running: asyncio.Task[None]) -> None:
    sender.stop()
    await running


async def test_what_is_queued_while_the_sender_runs_goes_out_in_order_without_a_claim(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = counted_claims(monkeypatch)
    sender, running = await started(env, env.bot, look_while_handed=3600)
    await until(lambda: len(claims) == 1)  # the look a sender takes as it starts
    sent: dict[int, list[str]] = {GROUP: [], COUNTY_GROUP: []}
    for batch in range(3):
        for chat in sent:
            texts = [f"{chat} {batch}.{k} 🚧" for k in range(3)]
            await env.queue(chat, texts)
            sent[chat] += texts
    await until(lambda: len(env.double.sent) == 18)
    await stopped(sender, running)
    assert len(claims) == 1
    for chat, texts in sent.items():
        assert env.texts_to(chat) == texts
    rows = await env.rows()
    assert {r.state for r in rows} == {OutboxState.SENT}
    assert all(r.lease_until is None for r in rows)


async def test_a_message_waits_behind_one_of_its_chat_the_sender_does_not_hold(
    env: Env,
) -> None:
    """Another sender holds the chat's first message: the one queued here after it is left
    to a claim, which takes it once that first one is gone; other chats go on meanwhile."""
    held = await leased(env, "first, with host-b", "host-b", T0 + timedelta(hours=1))
    sender, running = await started(env, env.bot, look_while_handed=0)
    await second_waits(env, sender)
    async with env.uows() as uow:
        row = await uow.outbox.get(held)
        assert row is not None
        row.state, row.lease_until = OutboxState.SENT, None  # host-b sent it
        await uow.commit()
    sender.wake()
    await until(lambda: env.texts_to(GROUP) == ["second"])
    await stopped(sender, running)
    assert {r.state for r in await env.rows()} == {OutboxState.SENT}


async def test_a_message_waits_behind_one_of_its_chat_waiting_for_a_retry(env: Env) -> None:
    retry_at = T0 + timedelta(minutes=5)
    await env.add(
        Outbox(chat_id=GROUP, payload={"text": "first"}, created_at=T0, not_before=retry_at)
    )
    sender, running = await started(env, env.bot, look_while_handed=0)
    await second_waits(env, sender)
    await stopped(sender, running)
    env.clock.advance(timedelta(minutes=5))
    await env.settle(env.sender(limits=None))
    assert env.texts_to(GROUP) == ["first", "second"]


class Stuck(DoubleRequest):
    """Sends never reach Telegram: the process dies with them in hand."""

    def __init__(self, double: TeleDouble) -> None:
        super().__init__(double)
        self.started = asyncio.Event()

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if "sendMessage" in str(kwargs.get("url", args[0] if args else "")):
            self.started.set()
            await asyncio.Event().wait()
        return await super().do_request(*args, **kwargs)


async def test_what_a_dead_sender_was_handed_goes_out_once_through_another(env: Env) -> None:
    request = Stuck(env.double)
    async with Bot(env.double.token, request=request) as bot:
        _, running = await started(env, bot, instance="host-a")
        await env.queue(GROUP, ["one", "two"])
        await request.started.wait()
        running.cancel()  # the process dies
        await asyncio.gather(running, return_exceptions=True)
    env.uows.handoff = None
    rows = await env.rows()
    assert {r.lease_until for r in rows} == {T0 + BIRTH_LEASE}
    other = env.sender(limits=None, instance="host-b")
    report = await other.drain(env.bot)
    assert report.sent == 0  # its lease is still live
    env.clock.advance(BIRTH_LEASE)
    await env.settle(other)
    assert env.texts_to(GROUP) == ["one", "two"]


async def test_a_unit_of_work_that_does_not_commit_hands_over_nothing(env: Env) -> None:
    sender, running = await started(env, env.bot)
    async with env.uows() as uow:
        env.notifier.message(uow, GROUP, "never")
        await uow.flush()
        await uow._write_outbox()  # written, then rolled back as the unit of work ends
    assert not sender._adopted
    await env.queue(GROUP, ["after"])
    await until(lambda: env.texts_to(GROUP) == ["after"])
    await stopped(sender, running)


async def test_the_queue_says_each_row_s_id_and_the_row_pending_before_it(env: Env) -> None:
    first = await env.queue(GROUP, ["a"])
    async with env.uows() as uow:
        rows = [
            outbox_row(chat, {"text": text}, now=env.clock.now())
            for chat, text in ((GROUP, "b"), (COUNTY_GROUP, "c"), (GROUP, "d"))
        ]
        written = await uow.outbox.queue_returning(rows)
        await uow.commit()
    async with env.uows(readonly=True) as uow:
        ids = list((await uow.session.exec(select(Outbox.id).order_by(Outbox.id))).all())
    assert [i for i, _ in written] == ids[1:]
    b, c, d = written
    assert b[1] == first[0]
    assert c[1] is None
    # the row before d in its chat: b where the statement sees its own rows (SQLite), else a
    assert d[1] in (b[0], first[0])


async def test_a_message_not_handed_over_goes_out_when_the_sender_is_told_to_look(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written another way (another process, a row object) wait for a look in the
    outbox: a wake that says so, or the periodic look; a wake for a handover makes none."""
    claims = counted_claims(monkeypatch)
    sender, running = await started(env, env.bot, look_while_handed=0)
    await until(lambda: len(claims) == 1)
    await env.add(Outbox(chat_id=GROUP, payload={"text": "written elsewhere"}, created_at=T0,
                         not_before=T0))  # fmt: skip
    await env.queue(COUNTY_GROUP, ["handed over"])
    sender.wake(look=False)
    await until(lambda: env.texts_to(COUNTY_GROUP) == ["handed over"])
    assert len(claims) == 1
    assert env.texts_to(GROUP) == []
    sender.wake()
    await until(lambda: env.texts_to(GROUP) == ["written elsewhere"])
    await stopped(sender, running)
    assert len(claims) == 2


async def test_nothing_is_handed_to_a_sender_that_has_stopped(env: Env) -> None:
    """A change committed after the sender stopped is written free for any sender; a handover
    that comes late is not held in a list nobody drains (its rows' lease lapses)."""
    sender, running = await started(env, env.bot)
    lease = sender.birth_lease()
    assert lease is not None
    async with env.uows() as uow:
        env.notifier.message(uow, GROUP, "late")
        await stopped(sender, running)
        await uow.commit()
    assert sender.birth_lease() is None
    late = outbox_row(GROUP, {"text": "later"}, now=env.clock.now())
    sender.adopt(lease[0], [(10**6, None, late)])
    assert not sender._adopted
    assert [(r.lease_owner, r.lease_until) for r in await env.rows()] == [(None, None)]
    await env.settle(env.sender(limits=None))
    assert env.texts_to(GROUP) == ["late"]


async def test_the_last_pending_message_of_a_chat_is_found_among_its_pending_ones(
    env: Env,
) -> None:
    """Asked as each message is queued: the chat's pending few through their own index, never
    a walk back over everything the chat was ever sent (46 ms behind 100,000 sent messages)."""
    async with env.uows() as uow:  # a transaction: SET LOCAL holds in it
        if uow.dialect == "sqlite":
            # the plan of the queue's own statement, its subquery's included
            sql = str(_QUEUE_OUTBOX_RETURNING_ANY.compile(dialect=uow.session.bind.dialect))
            conn = await uow.session.connection()
            args = (None,) * sql.count("?")
            rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, args)).all()
        else:
            # the table is empty: left to itself the planner would rather read it whole
            await uow.session.exec(sa.text("SET LOCAL enable_seqscan = off"))
            subquery = (
                "EXPLAIN SELECT max(before.id) FROM outbox AS before WHERE before.chat_id = 7"
                " AND before.state = 'pending' AND before.id < 100"
            )
            rows = (await uow.session.exec(sa.text(subquery))).all()
    assert "ix_outbox_chat_pending" in " ".join(str(row) for row in rows)


async def test_what_was_handed_over_as_the_sender_stopped_is_given_back(env: Env) -> None:
    """Handed over in the moment `stop()` was called: not sent, and free for any sender at
    once rather than when its lease lapses."""
    sender, running = await started(env, env.bot)
    lease = sender.birth_lease()
    assert lease is not None
    owner, length = lease
    handed = await leased(env, "handed", owner, T0 + length)
    row = outbox_row(GROUP, {"text": "handed"}, now=T0)
    sender.stop()
    sender.adopt(owner, [(handed, None, row)])
    await running
    assert env.texts_to(GROUP) == []
    assert (await env.row(handed)).lease_until is None
    await env.settle(env.sender(limits=None))
    assert env.texts_to(GROUP) == ["handed"]
