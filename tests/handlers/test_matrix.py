"""Who may do what: every command of the handler registry, every Chinese word and every button,
tried by every kind of person on a ticket in the state the action needs, in the group and in
private. Refused cells change nothing and tell nobody else; people who may not see the ticket
learn nothing of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from telegram.ext import BaseHandler, CommandHandler, ConversationHandler

from bot.app import build_application
from bot.clock import ManualClock
from bot.errors import QunbanError
from bot.teledouble import DoubleRequest, SentRecord, TeleDouble
from handlers.tickets import WORDS
from tests.factories import GROUP
from tests.handlers.conftest import STRANGER, Harness, make_settings

SECRET = "SECRET-7f3a"  # in every matrix ticket's text: nobody outside may read it
OUTSIDE_WORDS = (SECRET, "Acme", "Ann Acme")

ROLES: dict[str, str | int] = {
    "enterprise_own": "acme_boss",  # the reporter
    "enterprise_other": "beta_boss",
    "official_own": "tax_clerk",  # of the assigned department; the claimant once claimed
    "head_own": "tax_head",
    "official_other": "market_head",
    "leader_own": "mayor",
    "leader_other": "west_leader",
    "coordinator": "city_coord",
    "admin": "admin",
    "stranger": STRANGER,
}
ORG = frozenset({"leader_own", "coordinator", "admin"})
DEPT = frozenset({"official_own", "head_own"})


@dataclass(frozen=True)
class Probe:
    state: str  # the state the ticket is walked to first
    args: str  # after the command word; {n} the ticket, {m} a second reported ticket
    allowed: frozenset[str] = frozenset()  # the roles whose try must change the ticket


PROBES: dict[str, Probe] = {
    "assign": Probe("reported", "{n} market", ORG),
    "claim": Probe("assigned", "{n}", DEPT),
    "return": Probe("assigned", "{n} not ours market", DEPT),
    "approve": Probe("returned", "{n}", ORG),
    "reject": Probe("returned", "{n}", ORG),
    "progress": Probe("claimed", "{n} working on it", DEPT),
    "resolve": Probe("claimed", "{n} done", DEPT),
    "rate": Probe("resolved", "{n} satisfied", frozenset({"enterprise_own"})),
    "supervise": Probe("claimed", "{n} hurry up", frozenset({"leader_own"})),
    "transfer": Probe("assigned", "{n} market", ORG),
    "withdraw": Probe("reported", "{n}", frozenset({"enterprise_own"})),
    "merge": Probe("reported", "{n} {m}", ORG),
    "report": Probe("claimed", "matrix words"),
    "ticket": Probe("claimed", "{n}"),
    "mine": Probe("claimed", ""),
    "open": Probe("claimed", ""),
    "overdue": Probe("claimed", ""),
    "digest": Probe("claimed", ""),
    "stats": Probe("claimed", "30d"),
    "record": Probe("claimed", "tax"),
    "start": Probe("claimed", ""),
    "help": Probe("claimed", ""),
    "lang": Probe("claimed", "en"),
}
WORD_COMMANDS = {
    "交办": "assign",
    "领办": "claim",
    "退单": "return",
    "进展": "progress",
    "办结": "resolve",
    "评价": "rate",
    "督办": "supervise",
    "转办": "transfer",
    "撤回": "withdraw",
    "并单": "merge",
}
BUTTONS: dict[str, Probe] = {
    "claim": Probe("assigned", "t1:claim:{n}", DEPT),
    "rate": Probe("resolved", "t1:rate:{n}:s", frozenset({"enterprise_own"})),
    "ticket": Probe("claimed", "t1:ticket:{n}"),
    "forged": Probe("assigned", "t1:claim:{n}:x"),
}


def _commands(handler: BaseHandler[Any, Any, Any]) -> set[str]:
    if isinstance(handler, CommandHandler):
        return set(handler.commands)
    if isinstance(handler, ConversationHandler):
        inner = [*handler.entry_points, *handler.fallbacks]
        inner += [h for hs in handler.states.values() for h in hs]
        return set().union(*(_commands(h) for h in inner))
    return set()


def registry_commands() -> list[str]:
    """Every command the application answers, read from the handler registry itself."""
    double = TeleDouble()
    app = build_application(
        make_settings(),
        clock=ManualClock(datetime(2026, 3, 2, tzinfo=UTC)),
        request=DoubleRequest(double),
        token=double.token,
    )
    found: set[str] = set()
    for handlers in app.handlers.values():
        for handler in handlers:
            found |= _commands(handler)
    return sorted(found)


COMMANDS = registry_commands()
CHATS = ("group", "private")


def test_every_workflow_word_has_its_probe() -> None:
    assert set(WORDS) == set(WORD_COMMANDS)
    state_changing = {"assign", "claim", "return", "approve", "reject", "progress", "resolve"}
    state_changing |= {"rate", "supervise", "transfer", "withdraw", "merge"}
    assert state_changing <= set(COMMANDS)
    assert state_changing <= set(PROBES)


async def _snapshot(h: Harness, numbers: list[int]) -> list[tuple[str, int, int]]:
    return [((t := await h.ticket(n)).state, t.version, len(await h.events(n))) for n in numbers]


async def _outside(h: Harness, who: str | int, number: int) -> bool:
    try:
        await h.services.queries.ticket(h.uid(who), number)
    except QunbanError:
        return True
    return False


async def _cell(
    h: Harness, role: str, probe: Probe, say: Any, failures: list[str], label: str
) -> None:
    """Walk fresh tickets to the state, let `role` try, and check what happened."""
    who = ROLES[role]
    n = await h.make_ticket(probe.state, f"{SECRET} 路灯坏了", quiet=True)
    m = (
        await h.make_ticket("reported", f"{SECRET} 又一盏", quiet=True)
        if "{m}" in probe.args
        else n
    )
    outside = await _outside(h, who, n)
    before = await _snapshot(h, [n, m])
    sent, answer, places = await say(who, probe.args.format(n=n, m=m))
    changed = await _snapshot(h, [n, m]) != before
    cell = f"{label} × {role}"
    if changed != (role in probe.allowed):
        failures.append(f"{cell}: changed={changed}, expected {role in probe.allowed}")
    if not changed:
        others = [r for r in sent if r.chat_id not in places]
        if others:
            failures.append(f"{cell}: refused, yet told {[r.chat_id for r in others]}")
    if outside:
        seen = " ".join([*(r.text or "" for r in sent), str(answer or "")])
        if any(word in seen for word in OUTSIDE_WORDS):
            failures.append(f"{cell}: an outsider read {seen[:120]!r}")


def _talker(h: Harness, command: str, chat: str) -> Any:
    async def say(who: str | int, args: str) -> tuple[list[SentRecord], None, set[int]]:
        """A refusal may answer where it was asked, and only there."""
        where = GROUP if chat == "group" else h.uid(who)
        return await h.say(who, f"{command} {args}".strip(), where), None, {where}

    return say


def _presser(h: Harness) -> Any:
    async def press(who: str | int, data: str) -> tuple[list[SentRecord], Any, set[int]]:
        """A refused press is answered by an alert only."""
        # any message of the group carries the press: clients can attach any data to any
        update = h.make_callback_update(who, h.sources[int(data.split(":")[2])], data)
        sent = await h.process(update)
        return sent, h.double.callback_answers.get(update.callback_query.id), set()

    return press


async def _run(h: Harness, label: str, probe: Probe, say: Any) -> int:
    failures: list[str] = []
    for role in ROLES:
        await _cell(h, role, probe, say, failures, label)
    assert failures == []
    return len(ROLES)


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("command", COMMANDS)
async def test_command_matrix(harness: Harness, command: str, chat: str) -> None:
    probe = PROBES.get(command, Probe("claimed", "{n}"))  # unknown: must change nothing
    await _run(harness, f"/{command} in {chat}", probe, _talker(harness, f"/{command}", chat))


@pytest.mark.parametrize("word", sorted(WORD_COMMANDS))
async def test_word_matrix(harness: Harness, word: str) -> None:
    probe = PROBES[WORD_COMMANDS[word]]
    await _run(harness, f"{word} in group", probe, _talker(harness, word, "group"))


@pytest.mark.parametrize("button", sorted(BUTTONS))
async def test_button_matrix(harness: Harness, button: str) -> None:
    await _run(harness, f"button {button}", BUTTONS[button], _presser(harness))


def matrix_size() -> int:
    """Cells: commands × chats × roles, words × roles, buttons × roles."""
    return (len(COMMANDS) * len(CHATS) + len(WORD_COMMANDS) + len(BUTTONS)) * len(ROLES)


def test_the_matrix_covers_the_whole_registry() -> None:
    assert set(COMMANDS) >= set(PROBES)
    assert matrix_size() >= 500
