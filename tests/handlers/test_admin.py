"""/status, /retry and /drop: the admins see the bot's state and decide about parked updates;
nobody else can."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import col, select

from storage.tables import InboxUpdate, KeyValue
from tests.factories import GROUP
from tests.handlers.conftest import STRANGER, Harness

OPS = -1005550000001
PARKED = 900_000_123


async def speak_english(h: Harness, *people: str) -> None:
    async with h.services.uows() as uow:
        for who in people:
            person = await uow.org.person_by_telegram(h.org[who])
            assert person is not None
            person.language = "en"
        await uow.commit()


async def park(h: Harness, update_id: int = PARKED) -> None:
    async with h.services.uows() as uow:
        uow.inbox.add(
            InboxUpdate(
                update_id=update_id,
                chat_id=GROUP,
                payload={"update_id": update_id},
                received_at=h.clock.now(),
                attempts=5,
                parked=True,
                error="Traceback (most recent call last):\nKeyError: 'chat'",
            )
        )
        await uow.commit()


async def parked_row(h: Harness, update_id: int = PARKED) -> InboxUpdate:
    """A detached copy (a read-only unit of work expires what it loaded when it ends)."""
    async with h.services.uows(readonly=True) as uow:
        row = await uow.inbox.get(update_id)
        assert row is not None
        return InboxUpdate.model_validate(row.model_dump())


async def audit_entries(h: Harness) -> list[dict[str, object]]:
    async with h.services.uows(readonly=True) as uow:
        query = select(KeyValue).where(col(KeyValue.key).like("audit:%"))
        return [row.value for row in (await uow.session.exec(query)).all()]


async def test_status_shows_an_admin_the_state_of_the_bot(harness: Harness) -> None:
    h = harness
    await speak_english(h, "admin")
    await park(h)
    await h.services.ops.beat("scan")
    h.clock.advance(timedelta(minutes=1))
    text = h.only_reply(await h.say("admin", "/status"))
    assert "Qunban" in text
    assert h.services.engine.dialect.name in text
    assert "Inbox: 0 waiting" in text
    assert "Parked updates: 1" in text
    assert str(PARKED) in text
    assert "KeyError" in text
    assert "Outbox:" in text
    assert "Last sweep: 03-02 09:00:00 (1 min ago)" in text
    assert "Last digest check: never" in text


async def test_status_answers_an_admin_in_the_ops_chat_though_it_is_no_service_group(
    harness: Harness,
) -> None:
    h = harness
    h.services.settings.ops_chat_id = OPS
    h.double.add_chat(OPS, type="supergroup", title="Qunban ops")
    sent = await h.say("admin", "/status", OPS)
    assert "Qunban" in h.only_reply(sent, OPS)


async def test_status_in_a_service_group_asks_the_admin_to_write_privately(
    harness: Harness,
) -> None:
    h = harness
    await speak_english(h, "admin")
    sent = await h.say("admin", "/status", GROUP)
    assert h.only_reply(sent) == "Please write to me privately for that."


async def test_others_get_the_standard_refusal_and_see_nothing(harness: Harness) -> None:
    h = harness
    await speak_english(h, "tax_clerk", "mayor", "acme_boss", "city_coord")
    await park(h)
    for who in ("tax_clerk", "mayor", "acme_boss", "city_coord"):
        for command in ("/status", f"/retry {PARKED}", f"/drop {PARKED}"):
            text = h.only_reply(await h.say(who, command))
            assert text == "That cannot be done.", (who, command, text)
    stranger = h.only_reply(await h.say(STRANGER, "/status"))
    assert "I do not know you" in stranger
    row = await parked_row(h)
    assert (row.parked, row.processed, row.attempts) == (True, False, 5)
    assert await audit_entries(h) == []


async def test_retry_gives_a_parked_update_fresh_attempts_and_is_recorded(
    harness: Harness,
) -> None:
    h = harness
    await park(h)
    text = h.only_reply(await h.say("admin", f"/retry {PARKED}"))
    assert str(PARKED) in text
    row = await parked_row(h)
    assert (row.parked, row.processed, row.attempts) == (False, False, 0)
    [entry] = await audit_entries(h)
    assert entry["action"] == "retry"
    assert entry["update_id"] == PARKED
    assert entry["by_name"] == "Ada Admin"
    assert entry["at"] == h.clock.now().isoformat()
    assert entry["error"] == "KeyError: 'chat'"


async def test_drop_gives_up_on_a_parked_update_but_keeps_it_on_record(harness: Harness) -> None:
    h = harness
    await speak_english(h, "admin")
    await park(h)
    text = h.only_reply(await h.say("admin", f"/drop #{PARKED}"))
    assert "dropped" in text
    row = await parked_row(h)
    assert (row.parked, row.processed) == (False, True)
    assert row.error is not None
    assert row.error.startswith("dropped by Ada Admin")
    assert "KeyError" in row.error
    [entry] = await audit_entries(h)
    assert entry["action"] == "drop"
    again = h.only_reply(await h.say("admin", f"/drop {PARKED}"))
    assert again == "That cannot be done."  # it is no longer parked


async def test_retry_needs_the_number_of_a_parked_update(harness: Harness) -> None:
    h = harness
    await speak_english(h, "admin")
    assert h.only_reply(await h.say("admin", "/retry")) == "Usage: /retry"
    assert h.only_reply(await h.say("admin", "/retry abc")) == "Usage: /retry"
    assert h.only_reply(await h.say("admin", "/retry 42")) == "That cannot be done."
    # digits that are not the ten plain ones (a superscript, say) are no update number
    for word in ("¹", "#²3", "٣"):
        assert h.only_reply(await h.say("admin", f"/drop {word}")) == "Usage: /drop", word
    assert h.errors == []
