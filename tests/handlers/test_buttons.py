"""The 领办 and rating buttons: answered first and once, checked like commands."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.callback_data import MAX_BYTES, build
from handlers import buttons
from storage.tables import TicketState
from tests.factories import GROUP
from tests.handlers.conftest import STRANGER, Harness

S = TicketState


def answer_calls(h: Harness) -> list[str]:
    return [c.method for c in h.double.calls if c.method.lower() == "answercallbackquery"]


async def test_claim_by_the_button(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    marks = len(h.double.calls)
    answer = await h.press("tax_clerk", h.card(1), "t1:claim:1")
    assert answer.get("show_alert") in (None, False)
    assert answer["text"] == "已完成：#1"
    assert (await h.ticket(1)).state == S.CLAIMED
    # the answer was the press's first call to Telegram, and its only answer
    assert h.double.calls[marks].method.lower() == "answercallbackquery"
    assert len(answer_calls(h)) == 1
    assert "领办人：税务小王" in h.card(1)["text"]
    assert "reply_markup" not in h.card(1)


async def test_the_claim_line_replies_to_the_card(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    card = h.card(1)
    update = h.make_callback_update("tax_head", card, "t1:claim:1")
    sent = await h.process(update)
    [line] = [r for r in sent if r.method == "sendMessage" and r.chat_id == GROUP]
    assert line.text == "#1 claimed by Tia Tax"
    assert line.params["reply_parameters"]["message_id"] == card["message_id"]


@pytest.mark.parametrize(
    ("who", "alert"),
    [
        ("market_head", "未找到工单 #1，或您无权查看。"),
        ("acme_boss", "Your role cannot do that with ticket #1."),
        ("mayor", "Your role cannot do that with ticket #1."),
        (STRANGER, "Sorry, I do not know you yet."),
    ],
)
async def test_a_press_by_someone_not_allowed_gets_an_alert_and_changes_nothing(
    harness: Harness, who: str | int, alert: str
) -> None:
    h = harness
    await h.make_ticket("assigned")
    before = await h.ticket(1)
    marks = len(h.double.sent)
    answer = await h.press(who, h.card(1), "t1:claim:1")
    assert answer["show_alert"] is True
    assert answer["text"].startswith(alert)
    after = await h.ticket(1)
    assert (after.state, after.version) == (before.state, before.version)
    assert h.double.sent[marks:] == []


async def test_a_second_press_after_the_claim_is_refused(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    card = h.card(1)
    await h.press("tax_clerk", card, "t1:claim:1")
    answer = await h.press("tax_head", card, "t1:claim:1")  # a stale card on their screen
    assert answer == {
        "callback_query_id": answer["callback_query_id"],
        "text": "Ticket #1 is already claimed by 税务小王.",
        "show_alert": True,
    }


@pytest.mark.parametrize(
    "data",
    [
        "t1:claim:abc",
        "t1:claim:1:x:y",
        "t1:claim:1:x",
        "t1:claim:01",
        "t1:ticket:1:s",
        "t2:claim:1",
        "t1:delete:1",
        "t1:rate:1:z",
        "t1:rate:1",
        "",
        "t1:claim:" + "9" * 60,
        "{'forged': true}",
    ],
)
async def test_forged_callback_data_gets_an_alert(harness: Harness, data: str) -> None:
    h = harness
    await h.make_ticket("assigned")
    answer = await h.press("tax_clerk", h.card(1), data)
    assert answer["show_alert"] is True
    assert answer["text"] == "该按钮无效。"
    assert (await h.ticket(1)).state == S.ASSIGNED


async def test_a_press_for_another_ticket_than_the_card_is_checked_on_its_own(
    harness: Harness,
) -> None:
    h = harness
    await h.make_ticket("assigned")
    await h.make_ticket("reported")
    answer = await h.press("tax_clerk", h.card(1), "t1:claim:2")
    assert answer["show_alert"] is True
    assert (await h.ticket(2)).state == S.REPORTED


async def test_rate_by_the_button_closes(harness: Harness) -> None:
    h = harness
    await h.make_ticket("resolved")
    note = next(r for r in h.double.sent if r.chat_id == h.org["acme_boss"] and r.reply_markup)
    answer = await h.press("acme_boss", note, "t1:rate:1:b")
    assert answer["text"] == "Done: #1"
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.rating) == (S.CLOSED, "basic")
    assert "评价：基本满意" in h.card(1)["text"]


async def test_rate_unsolved_by_the_button_sends_it_back(harness: Harness) -> None:
    h = harness
    await h.make_ticket("resolved")
    await h.press("acme_clerk", h.card(1), "t1:rate:1:n")
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.redo_count) == (S.CLAIMED, 1)


@pytest.mark.parametrize("who", ["beta_boss", "tax_clerk", "mayor"])
async def test_rating_buttons_are_for_the_reporting_enterprise_only(
    harness: Harness, who: str
) -> None:
    h = harness
    await h.make_ticket("resolved")
    answer = await h.press(who, h.card(1), "t1:rate:1:s")
    assert answer["show_alert"] is True
    assert (await h.ticket(1)).state == S.RESOLVED


async def test_the_ticket_button_shows_a_line_to_those_who_may_see(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    seen = await h.press("tax_clerk", h.card(1), "t1:ticket:1")
    assert seen["text"].startswith("#1 已交办 · Tax Bureau")
    hidden = await h.press("beta_boss", h.card(1), "t1:ticket:1")
    assert hidden["text"] == "Ticket #1 was not found, or is not yours to see."


async def test_a_slow_moment_is_answered_in_time_and_the_refusal_follows(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    await h.make_ticket("assigned")
    claim, answered = h.services.tickets.claim, [len(h.double.callback_answers)]

    async def slow(*args: Any, **kwargs: Any) -> Any:
        # the service takes until the press has been answered
        while len(h.double.callback_answers) == answered[0]:
            await asyncio.sleep(0)
        return await claim(*args, **kwargs)

    monkeypatch.setattr(buttons, "ANSWER_WITHIN", 0)
    monkeypatch.setattr(h.services.tickets, "claim", slow)
    marks = len(h.double.sent)
    answer = await h.press("market_head", h.card(1), "t1:claim:1")
    assert answer["text"] == "正在处理…"
    sent = h.double.sent[marks:]
    assert [(r.chat_id, r.text) for r in sent] == [
        (h.org["market_head"], "未找到工单 #1，或您无权查看。")
    ]
    answered[0] = len(h.double.callback_answers)
    answer = await h.press("tax_clerk", h.card(1), "t1:claim:1")
    assert answer["text"] == "正在处理…"
    assert (await h.ticket(1)).state == S.CLAIMED


def test_button_data_fits_telegram_at_the_largest_ticket_number() -> None:
    largest = 10**12 - 1
    for data in (build("claim", largest), build("rate", largest, "n"), build("ticket", largest)):
        assert len(data.encode()) <= MAX_BYTES
