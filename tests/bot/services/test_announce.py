"""Who is told what: the outbox rows each event writes, in the same transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from bot import texts
from bot.markup import tokens, utf16_len, visible_text
from bot.notify import Notifier, Origin
from bot.tickets import Action
from storage.tables import Outbox
from tests.factories import COUNTY_GROUP, GROUP

TELEGRAM_LIMIT = 4096


@dataclass
class Told:
    """The outbox rows one change wrote, sorted by kind."""

    cards: list[Outbox]
    edits: list[Outbox]
    lines: list[Outbox]
    direct: dict[str, list[Outbox]]


class Outboxes:
    """Reads what each step added to the outbox."""

    def __init__(self, flow: Any) -> None:
        self.flow = flow
        self.seen = 0
        self.names = {tg: name for name, tg in flow.org.ids.items()}

    async def new(self) -> Told:
        rows = await self.flow.outbox()
        fresh, self.seen = rows[self.seen :], len(rows)
        told = Told([], [], [], {})
        for row in fresh:
            if row.chat_id in (GROUP, COUNTY_GROUP):
                if row.is_card:
                    told.cards.append(row)
                elif row.method == "editMessageText":
                    told.edits.append(row)
                else:
                    told.lines.append(row)
            else:
                told.direct.setdefault(self.names[row.chat_id], []).append(row)
        return told

    async def after(self, call: Awaitable[Any]) -> Told:
        await self.new()
        await call
        return await self.new()


@pytest.fixture
def outboxes(flow) -> Outboxes:
    return Outboxes(flow)


def text(row: Outbox) -> str:
    return row.payload["text"]


# ---- the card ------------------------------------------------------------------------------


async def test_a_report_posts_one_card_in_reply_to_the_message_and_tells_nobody_else(
    tickets, flow, outboxes
):
    told = await outboxes.after(
        tickets.report(flow.org["acme_boss"], "The roof leaks", chat_id=GROUP, message_id=11)
    )
    [card] = told.cards
    assert (card.chat_id, card.method) == (GROUP, "sendMessage")
    assert card.payload["reply_parameters"]["message_id"] == 11
    assert card.payload["parse_mode"] == "HTML"
    assert "The roof leaks" in text(card)
    assert (told.edits, told.lines, told.direct) == ([], [], {})


async def test_a_keyword_routed_report_posts_one_card_showing_the_department_and_tells_it(
    tickets, flow, outboxes
):
    told = await outboxes.after(
        tickets.report(flow.org["acme_boss"], "A 税 question", chat_id=GROUP, message_id=11)
    )
    [card] = told.cards
    assert "Tax Bureau" in text(card)
    assert (told.edits, told.lines) == ([], [])
    assert set(told.direct) == {"tax_head", "tax_clerk"}
    [dm] = told.direct["tax_head"]
    assert dm.payload["reply_markup"]["inline_keyboard"][0][0]["callback_data"].startswith(
        "t1:claim:"
    )


async def test_every_later_change_edits_the_one_card_and_adds_one_line_to_the_group(
    tickets, flow, outboxes
):
    """Each change adds its line; the card is edited when what it says changes (a progress
    note leaves state, department and holder as they were, and the card with them)."""
    org = flow.org
    number = await flow.reported()
    steps = [
        (tickets.assign(org["city_coord"], number, "tax", Origin(GROUP, 21)), 1),
        (tickets.claim(org["tax_clerk"], number, None, Origin(GROUP, 22)), 1),
        (tickets.supervise(org["mayor"], number, "hurry", (), Origin(GROUP, 23)), 1),
        (tickets.progress(org["tax_clerk"], number, "halfway", Origin(GROUP, 24)), 0),
        (tickets.progress(org["tax_clerk"], number, "almost", Origin(GROUP, 25)), 0),
        (tickets.resolve(org["tax_head"], number, "done", Origin(GROUP, 26)), 1),
        (tickets.rate(org["acme_boss"], number, "basic", None, Origin(GROUP, 27)), 1),
    ]
    texts = []
    for message, (step, edited) in enumerate(steps, start=21):
        told = await outboxes.after(step)
        assert told.cards == []
        assert len(told.edits) == edited
        for edit in told.edits:
            assert edit.payload["card_of"] == number
            assert edit.chat_id == GROUP
            texts.append(edit.payload["text"])
        [line] = told.lines
        assert line.payload["reply_parameters"]["message_id"] == message
    assert len(set(texts)) == len(texts)  # no edit says what the last one said
    cards = [r for r in await flow.outbox() if r.is_card]
    assert len(cards) == 1


async def test_a_change_made_elsewhere_posts_its_line_without_replying_to_anything(
    tickets, flow, outboxes
):
    number = await flow.reported()
    told = await outboxes.after(tickets.assign(flow.org["city_coord"], number, "tax"))
    [line] = told.lines
    assert "reply_parameters" not in line.payload


async def test_the_card_offers_claim_while_nobody_holds_the_ticket_and_rating_once_resolved(
    tickets, flow, outboxes
):
    number = await flow.assigned()
    await outboxes.new()
    told = await outboxes.after(tickets.claim(flow.org["tax_clerk"], number))
    assert told.edits[0].payload["reply_markup"] == {"inline_keyboard": []}
    told = await outboxes.after(tickets.resolve(flow.org["tax_clerk"], number, "done"))
    buttons = told.edits[0].payload["reply_markup"]["inline_keyboard"]
    assert [b["callback_data"] for row in buttons for b in row] == [
        f"t1:rate:{number}:{x}" for x in "sbun"
    ]


# ---- private notes -------------------------------------------------------------------------

Step = Callable[[], Awaitable[Any]]


async def test_each_event_tells_exactly_the_people_it_concerns(tickets, flow, outboxes):
    org = flow.org
    a = await flow.reported()
    b = await flow.reported("Second problem")
    c = await flow.reported("Same as the second")

    def act(method: str, who: str, number: int, *args: Any) -> tuple[str, Step]:
        return who, lambda: getattr(tickets, method)(org[who], number, *args)

    tax, holders, reporter = {"tax_head", "tax_clerk"}, {"tax_clerk", "tax_head"}, {"acme_boss"}
    walk: list[tuple[str, tuple[str, Step], set[str]]] = [
        ("assign", act("assign", "city_coord", a, "tax"), tax),
        ("return", act("return_", "tax_clerk", a, "not ours", "market"), {"city_coord"}),
        ("approve", act("approve_return", "city_coord", a), {"market_head"}),
        ("transfer", act("transfer", "mayor", a, "tax"), tax),
        ("claim", act("claim", "tax_clerk", a), reporter),
        ("supervise", act("supervise", "mayor", a, "hurry"), reporter | holders),
        ("progress", act("progress", "tax_clerk", a, "halfway"), reporter),
        ("resolve", act("resolve", "tax_head", a, "done"), reporter),
        ("bad rating", act("rate", "acme_clerk", a, "unsolved"), holders | reporter),
        ("resolve again", act("resolve", "tax_clerk", a, "done"), reporter),
        ("good rating", act("rate", "acme_boss", a, "satisfied"), holders),
        ("assign b", act("assign", "city_coord", b, "tax"), tax),
        ("return b", act("return_", "tax_head", b, "not ours"), {"city_coord"}),
        ("reject", act("reject_return", "city_coord", b), tax),
        ("merge", act("merge", "city_coord", c, b), reporter),
        ("withdraw", act("withdraw", "acme_boss", b), tax),
    ]
    for label, (actor, step), expected in walk:
        told = await outboxes.after(step())
        assert set(told.direct) == expected, label
        assert actor not in told.direct, label
        assert all(len(rows) == 1 for rows in told.direct.values()), label


async def test_the_scheduler_tells_the_reporter_and_the_holders(tickets, flow, outboxes):
    late = await flow.claimed()
    told = await outboxes.after(tickets.system(late, Action.SUPERVISE, "past due"))
    assert set(told.direct) == {"acme_boss", "tax_clerk", "tax_head"}
    unrated = await flow.resolved()
    told = await outboxes.after(tickets.system(unrated, Action.AUTOCLOSE))
    assert set(told.direct) == {"acme_boss"}


async def test_a_command_given_in_private_is_answered_there(tickets, flow, outboxes):
    number = await flow.assigned()
    private = Origin(flow.org["tax_clerk"], 5)
    told = await outboxes.after(tickets.claim(flow.org["tax_clerk"], number, None, private))
    assert set(told.direct) == {"tax_clerk", "acme_boss"}
    [line] = told.lines
    assert "reply_parameters" not in line.payload


async def test_each_person_is_told_in_their_own_language(tickets, flow, queries, outboxes):
    number = await flow.reported()
    told = await outboxes.after(tickets.assign(flow.org["city_coord"], number, "tax"))
    view, _ = await queries.ticket(flow.org["admin"], number)
    event = view.events[-1]
    [english] = told.direct["tax_head"]  # Tia Tax reads English
    [chinese] = told.direct["tax_clerk"]
    assert text(english) == texts.event_sentence("en", view, event, reveal=True)
    assert text(chinese) == texts.event_sentence("zh", view, event, reveal=True)
    assert "assigned to Tax Bureau" in text(english)
    told = await outboxes.after(tickets.claim(flow.org["tax_clerk"], number))
    [note] = told.direct["acme_boss"]
    assert "claimed by 税务小王" in text(note)


async def test_a_deactivated_official_is_not_written_to(tickets, flow, outboxes):
    async with flow.uows() as uow:
        clerk = await uow.org.person_by_telegram(flow.org["tax_clerk"])
        assert clerk is not None
        clerk.active = False
        await uow.commit()
    number = await flow.reported()
    told = await outboxes.after(tickets.assign(flow.org["city_coord"], number, "tax"))
    assert set(told.direct) == {"tax_head"}


# ---- anonymity -----------------------------------------------------------------------------


async def test_an_anonymous_report_card_never_names_the_enterprise(tickets, flow, outboxes):
    org = flow.org
    told = await outboxes.after(
        tickets.report(
            org["acme_boss"],
            "An inspector keeps asking for gifts",
            chat_id=org["acme_boss"],
            message_id=3,
            private=True,
            anonymous=True,
        )
    )
    [card] = told.cards
    assert card.chat_id == COUNTY_GROUP
    assert "reply_parameters" not in card.payload  # the report was not made in the group
    number = card.ticket_id
    for step in (
        tickets.assign(org["east_coord"], number, "east_env"),
        tickets.claim(org["env_head"], number),
        tickets.resolve(org["env_head"], number, "spoke to the inspector's office"),
    ):
        told = await outboxes.after(step)
        for row in [card, *told.edits, *told.lines]:
            assert "Acme" not in text(row)
            assert "Ann" not in text(row)
    assert "East County · rare earth" in text(card)


# ---- length --------------------------------------------------------------------------------

LONG = ("<&>😀 " * 2000)[:10_000]


def assert_sendable(rows: list[Outbox]) -> str:
    """Each row valid Telegram HTML within the limit; returns the visible text, joined."""
    for row in rows:
        tokens(text(row))  # raises on anything Telegram would refuse to parse
        assert utf16_len(visible_text(text(row))) <= TELEGRAM_LIMIT
    return "".join(visible_text(text(row)) for row in rows)


async def test_a_ten_thousand_character_note_is_split_into_sendable_messages(
    tickets, flow, outboxes
):
    number = await flow.claimed()
    await outboxes.new()
    told = await outboxes.after(tickets.progress(flow.org["tax_clerk"], number, LONG))
    assert len(told.lines) > 1
    assert assert_sendable(told.lines).count("<&>😀") == LONG.count("<&>😀") == 2000
    assert told.edits == []  # the card shows no notes: it stays as it was
    notes = told.direct["acme_boss"]
    assert len(notes) > 1
    assert assert_sendable(notes).count("<&>😀") == 2000


async def test_a_long_resolution_keeps_the_rating_buttons_on_the_last_part(
    tickets, flow, outboxes
):
    number = await flow.claimed()
    told = await outboxes.after(tickets.resolve(flow.org["tax_clerk"], number, LONG))
    notes = told.direct["acme_boss"]
    assert len(notes) > 1
    assert_sendable(notes)
    assert all("reply_markup" not in n.payload for n in notes[:-1])
    assert notes[-1].payload["reply_markup"]["inline_keyboard"]


async def test_a_ten_thousand_character_report_gives_a_card_within_the_limit(
    tickets, flow, outboxes
):
    told = await outboxes.after(
        tickets.report(flow.org["acme_boss"], LONG, chat_id=GROUP, message_id=4)
    )
    [card] = told.cards
    assert_sendable([card])


async def test_a_card_queued_earlier_in_the_same_transaction_is_edited_not_posted_twice(
    tickets, flow, uows, settings, clock
):
    number = await flow.reported()
    async with uows() as uow:
        await uow.session.exec(sa.delete(Outbox))  # as if the card had never been queued
        await uow.commit()
    notify = Notifier(settings, clock)
    async with uows() as uow:
        ticket = await uow.tickets.get(number)
        view = await tickets.org.view(uow, ticket)
        await notify.card(uow, ticket, view, "en")
        await notify.card(uow, ticket, view, "zh")  # the first is not written yet
        await notify.card(uow, ticket, view, "zh")  # says what the last one said
        await uow.commit()
    rows = await flow.outbox()
    assert [(r.method, r.is_card) for r in rows] == [
        ("sendMessage", True),
        ("editMessageText", False),
    ]
