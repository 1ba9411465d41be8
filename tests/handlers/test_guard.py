"""The door: strangers, unbound groups, other bots' commands, groups that became supergroups."""

from __future__ import annotations

from tests.factories import GROUP
from tests.handlers.conftest import STRANGER, UNBOUND, Harness


async def test_a_stranger_writing_privately_gets_a_short_polite_answer(harness: Harness) -> None:
    h = harness
    sent = await h.say(STRANGER, "hello?")
    assert h.only_reply(sent) == (
        "Sorry, I do not know you yet. Ask your administrator for an invite, "
        "then send me /start CODE privately."
    )
    for command in ("/mine", "/claim 1", "/ticket 1", "/lang en"):
        assert h.only_reply(await h.say(STRANGER, command)).startswith("Sorry")
    assert await h.services.queries.whoami(STRANGER) is None


async def test_a_stranger_chatting_in_a_group_is_ignored(harness: Harness) -> None:
    h = harness
    assert await h.say(STRANGER, "nice weather", GROUP) == []
    said = h.double.user_says(GROUP, STRANGER, "hello all")["message"]
    assert await h.process(h.make_update(h.double.user_edits(said, "/report edited"))) == []


async def test_commands_for_another_bot_are_not_ours(harness: Harness) -> None:
    h = harness
    assert await h.say(STRANGER, "/help@some_other_bot", GROUP) == []
    assert await h.say("acme_boss", "/report@some_other_bot hi", GROUP) == []
    assert await h.count_tickets() == 0


async def test_a_button_in_an_unbound_group_is_answered_and_does_nothing(
    harness: Harness,
) -> None:
    h = harness
    await h.make_ticket("assigned")
    said = h.double.user_says(UNBOUND, h.org["tax_clerk"], "hi")["message"]
    answer = await h.press("tax_clerk", said, "t1:claim:1")
    assert answer["show_alert"] is True
    assert answer["text"] == "本群尚未接入群办，请管理员绑定。"
    assert (await h.ticket(1)).state == "assigned"


async def test_the_binding_follows_a_group_that_became_a_supergroup(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    new_id = h.double.migrate(GROUP)
    for raw in h.double.pending_updates()[-2:]:
        assert await h.process(h.make_update(raw)) == []
    assert (await h.services.people.group(new_id)) is not None
    assert (await h.services.people.group(GROUP)) is None
    assert (await h.ticket(1)).group_chat_id == new_id
    # the next change shows the card anew in the supergroup
    sent = await h.say("tax_clerk", "/claim 1", new_id)
    assert h.only_reply([r for r in sent if r.text and r.text.startswith("#1 · ")], new_id)
    await h.say("acme_boss", "/report 发票 in the new group", new_id)
    assert (await h.ticket(2)).group_chat_id == new_id
