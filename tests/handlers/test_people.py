"""Onboarding, help per role, language, the lists, one ticket, and the leaders' figures."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from tests.factories import GROUP
from tests.handlers.conftest import STRANGER, Harness

NEWCOMER = 7_000_000_002


@pytest.fixture
async def h(harness: Harness) -> Harness:
    harness.double.add_user(NEWCOMER, "Nina", username="nina_new", language_code="zh-hans")
    return harness


# ---- /start with an invite ------------------------------------------------------------------


async def test_start_with_a_valid_invite_binds_the_account(h: Harness) -> None:
    invite = await h.services.people.create_invite("enterprise", "Sam Beta", enterprise="beta")
    sent = await h.say(STRANGER, f"/start {invite.code}")
    reply = h.only_reply(sent)
    assert reply.startswith("Welcome, Sam Beta! You are registered as enterprise.")
    assert "/report TEXT — file a problem" in reply
    person = await h.services.queries.whoami(STRANGER)
    assert person is not None
    assert (person.name, person.enterprise_id, person.language) == (
        "Sam Beta",
        h.org.enterprises["beta"],
        "en",  # from Telegram, the invite named none
    )
    assert person.username == "stan_stranger"
    # a member now: the guard lets them report
    await h.say(STRANGER, "/report 奶粉 license", GROUP)
    assert await h.count_tickets() == 1


async def test_an_invite_works_once(h: Harness) -> None:
    invite = await h.services.people.create_invite("official", "新同事", department="tax")
    await h.say(NEWCOMER, f"/start {invite.code}")
    sent = await h.say(STRANGER, f"/start {invite.code}")
    assert h.only_reply(sent) == "That invite has already been used."
    assert await h.services.queries.whoami(STRANGER) is None


async def test_an_expired_invite_is_refused(h: Harness) -> None:
    invite = await h.services.people.create_invite(
        "leader", "Lee", region="east", ttl=timedelta(hours=1)
    )
    h.clock.advance(timedelta(hours=2))
    sent = await h.say(NEWCOMER, f"/start {invite.code}")
    assert h.only_reply(sent) == "该邀请码已过期，请重新索取。"
    assert await h.services.queries.whoami(NEWCOMER) is None


async def test_an_unknown_invite_is_refused(h: Harness) -> None:
    sent = await h.say(STRANGER, "/start not-a-real-code")
    assert h.only_reply(sent) == "That invite code is not known."


async def test_a_registered_person_cannot_spend_an_invite(h: Harness) -> None:
    invite = await h.services.people.create_invite("admin", "Another")
    sent = await h.say("acme_boss", f"/start {invite.code}")
    assert h.only_reply(sent) == "This account is already registered as Ann Acme."
    sent = await h.say(NEWCOMER, f"/start {invite.code}")  # still unused
    assert h.only_reply(sent).startswith("欢迎，Another！您已登记为管理员。")


async def test_start_without_a_code(h: Harness) -> None:
    assert h.only_reply(await h.say("tax_clerk", "/start")).startswith("欢迎，税务小王！")
    assert h.only_reply(await h.say(STRANGER, "/start")).startswith("Sorry, I do not know you")
    assert h.only_reply(await h.say(NEWCOMER, "/start")).startswith("抱歉，我还不认识您。")


async def test_start_in_a_group_asks_for_a_private_chat(h: Harness) -> None:
    sent = await h.say("mayor", "/start", GROUP)
    assert h.only_reply(sent) == "Please write to me privately for that."


# ---- /help per role, /lang ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "shown", "hidden"),
    [
        ("acme_boss", ["/report", "/rate", "/withdraw", "/mine"], ["/assign", "/claim"]),
        ("tax_head", ["/claim", "/return", "/resolve", "/overdue"], ["/assign", "/supervise"]),
        ("mayor", ["/assign", "/supervise", "/digest", "/stats", "/record"], ["/claim"]),
        ("city_coord", ["/assign", "/approve", "/merge"], ["/supervise", "/claim", "/rate"]),
        ("admin", ["/assign", "/transfer"], ["/claim", "/report", "/rate"]),
    ],
)
async def test_help_shows_the_commands_of_the_role(
    h: Harness, who: str, shown: list[str], hidden: list[str]
) -> None:
    text = h.only_reply(await h.say(who, "/help"))
    commands = set(re.findall(r"^(/\w+)", text, re.MULTILINE))
    assert set(shown) <= commands
    assert not set(hidden) & commands
    assert {"/help", "/lang"} <= commands


async def test_help_speaks_the_persons_language(h: Harness) -> None:
    english = h.only_reply(await h.say("tax_head", "/help"))
    assert english.startswith("Tia Tax · official")
    assert "/claim N [YYYY-MM-DD] — claim a ticket (领办), with the date you promise" in english
    chinese = h.only_reply(await h.say("tax_clerk", "/help"))
    assert chinese.startswith("税务小王 · 部门工作人员")
    assert "/claim 编号 [承诺日期 YYYY-MM-DD] — 领办工单，可附承诺办结日期" in chinese
    assert h.only_reply(await h.say(STRANGER, "/help")).startswith("Sorry, I do not know you")


async def test_lang_switches_the_language(h: Harness) -> None:
    assert h.only_reply(await h.say("acme_boss", "/lang zh")) == "以后我用中文回复您。"
    assert h.only_reply(await h.say("acme_boss", "/help")).startswith("Ann Acme · 企业")
    assert h.only_reply(await h.say("acme_boss", "/lang en")) == (
        "I will answer you in English from now on."
    )
    assert h.only_reply(await h.say("acme_boss", "/lang fr")) == "Choose zh or en."
    assert h.only_reply(await h.say("acme_clerk", "/lang")) == "用法：/lang zh|en"


# ---- the lists ------------------------------------------------------------------------------


async def scoped_tickets(h: Harness) -> None:
    """#1 Acme's with tax (claimed), #2 Beta's with market, #3 Acme's unassigned."""
    await h.make_ticket("claimed", "ACME-ONE 路灯")
    said = h.double.user_says(GROUP, h.org["beta_boss"], "BETA-TWO")["message"]
    await h.services.tickets.report(
        h.org["beta_boss"], "BETA-TWO", chat_id=GROUP, message_id=said["message_id"]
    )
    await h.services.tickets.assign(h.org["mayor"], 2, "market")
    await h.make_ticket("reported", "ACME-THREE")


def listed(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"^#(\d+) ", text, re.MULTILINE)}


@pytest.mark.parametrize(
    ("who", "command", "numbers"),
    [
        ("acme_boss", "/mine", {1, 3}),
        ("acme_clerk", "/open", {1, 3}),
        ("beta_boss", "/open", {2}),
        ("gamma_boss", "/open", set()),
        ("tax_clerk", "/mine", {1}),
        ("tax_head", "/open", {1}),
        ("market_head", "/open", {2}),
        ("env_head", "/open", set()),
        ("mayor", "/open", {1, 2, 3}),
        ("east_leader", "/open", set()),
        ("city_coord", "/open", {1, 2, 3}),
        ("admin", "/open", {1, 2, 3}),
    ],
)
async def test_lists_show_only_what_the_person_may_see(
    h: Harness, who: str, command: str, numbers: set[int]
) -> None:
    await scoped_tickets(h)
    text = h.only_reply(await h.say(who, command))
    assert listed(text) == numbers
    hidden = {"ACME": {1, 3}, "BETA": {2}}
    for word, tickets in hidden.items():
        if not tickets & numbers:
            assert word not in text


async def test_overdue_lists_what_is_past_its_due_time(h: Harness) -> None:
    await scoped_tickets(h)
    assert h.only_reply(await h.say("mayor", "/overdue")).endswith("Nothing here.")
    h.clock.advance(timedelta(days=6))
    text = h.only_reply(await h.say("mayor", "/overdue"))
    assert text.startswith("Overdue tickets")
    assert listed(text) == {1, 2}
    assert listed(h.only_reply(await h.say("tax_clerk", "/overdue"))) == {1}
    assert h.only_reply(await h.say("tax_clerk", "/overdue")).startswith("超期工单")


# ---- /ticket N ------------------------------------------------------------------------------


async def test_ticket_shows_the_card_and_the_timeline(h: Harness) -> None:
    await h.make_ticket("claimed")
    await h.say("tax_clerk", "/progress 1 联系了供电局", GROUP)
    text = h.only_reply(await h.say("tax_head", "/ticket #1"))
    assert text.startswith("#1 · claimed\nEnterprise: Acme <Rare Earth> & Co")
    assert "Department: Tax Bureau" in text
    assert "Timeline" in text
    assert "2026-03-02 09:00 · Ann Acme · event:report" not in text
    lines = text.split("Timeline\n", 1)[1].splitlines()
    assert lines[0].startswith("2026-03-02 09:00 · Ann Acme · report")
    assert any("Cora Coord · assign" in line for line in lines)
    assert any("税务小王 · claim (assigned → claimed)" in line for line in lines)
    assert any(line.endswith("税务小王 · progress: 联系了供电局") for line in lines)
    chinese = h.only_reply(await h.say("tax_clerk", "/ticket 1"))
    assert chinese.startswith("#1 · 已领办")
    assert "税务小王 · 领办 (已交办 → 已领办)" in chinese


async def test_ticket_out_of_sight_reads_exactly_like_a_missing_one(h: Harness) -> None:
    await h.make_ticket("assigned")
    hidden = h.only_reply(await h.say("beta_boss", "/ticket 1"))
    missing = h.only_reply(await h.say("beta_boss", "/ticket 2"))
    assert hidden.replace("#1", "#N") == missing.replace("#2", "#N")
    assert "Acme" not in hidden
    assert h.only_reply(await h.say("beta_boss", "/ticket")) == "Usage: /ticket N"


# ---- the leaders' figures -------------------------------------------------------------------


async def test_a_leader_gets_the_digest_now(h: Harness) -> None:
    await h.make_ticket("claimed")
    h.clock.advance(timedelta(days=1))  # the next morning's digest covers the day it was claimed
    sent = await h.say("mayor", "/digest")
    assert all(r.chat_id == h.org["mayor"] for r in sent)
    [text] = [r.text or "" for r in sent if r.method == "sendMessage"]
    assert text.startswith("Daily digest · Metro City · 2026-03-03")
    assert "claimed 1" in text
    assert "Tax Bureau" in text
    assert "2 other departments had no tickets." in text


@pytest.mark.parametrize("command", ["/digest", "/stats", "/record tax"])
async def test_the_figures_are_for_leaders(h: Harness, command: str) -> None:
    await h.make_ticket("claimed")
    assert h.only_reply(await h.say("acme_boss", command)) == (
        "Only leaders can see the digest, the ranking and the records."
    )
    assert (
        h.only_reply(await h.say("tax_clerk", command)) == "只有领导可以查看日报、排名和履职记录。"
    )


async def test_stats_ranks_the_departments(h: Harness) -> None:
    await h.make_ticket("claimed")
    h.clock.advance(timedelta(minutes=1))
    text = h.only_reply(await h.say("mayor", "/stats 7d"))
    assert "Metro City" in text
    assert "Tax Bureau" in text
    assert h.only_reply(await h.say("mayor", "/stats soon")) == "Usage: /stats [7d|30d]"


async def test_record_of_a_department_and_of_an_official(h: Harness) -> None:
    await h.make_ticket("claimed")
    department = h.only_reply(await h.say("mayor", "/record tax"))
    assert "Tax Bureau" in department
    official = h.only_reply(await h.say("mayor", "/record @tax_clerk 7d"))
    assert "税务小王" in official
    unknown = h.only_reply(await h.say("mayor", "/record nowhere"))
    assert unknown.startswith("No department matches “nowhere”.")


async def test_a_private_message_out_of_context_gets_the_help(h: Harness) -> None:
    assert h.only_reply(await h.say("mayor", "hello")).startswith("Mia Mayor · leader")
    assert h.only_reply(await h.say("tax_clerk", "/unknown")).startswith("税务小王 · 部门工作人员")
    assert await h.say("mayor", "hello", GROUP) == []  # chatter in the group is not for us
