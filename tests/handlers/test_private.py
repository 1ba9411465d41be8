"""The private /report conversation: each step, anonymity, cancelling, and a restart midway."""

from __future__ import annotations

from typing import Any

from storage.tables import TicketState
from tests.factories import COUNTY_GROUP, GROUP
from tests.handlers.conftest import STRANGER, Harness, make_settings, open_app


def keyboard(record: Any) -> list[str]:
    """The reply keyboard's labels a message offered."""
    markup = record.params.get("reply_markup") or {}
    return [button["text"] for row in markup.get("keyboard", []) for button in row]


async def test_an_enterprise_reports_privately_and_anonymously(harness: Harness) -> None:
    h = harness
    [ask] = await h.say("acme_boss", "/report")
    assert ask.text == "Which department is it about? Pick one, or “Other”."
    assert keyboard(ask) == ["Tax Bureau", "Market Regulation", "East Environment", "Other"]
    [ask] = await h.say("acme_boss", "Tax Bureau")
    assert ask.text == "Describe the problem in a few sentences."
    [ask] = await h.say("acme_boss", "The VAT refund <since May> & still nothing 😀")
    assert ask.text == "Send photos or files if you have any, then /done. Or /skip."
    photo = h.make_photo_update("acme_boss")
    [ask] = await h.process(photo)
    assert ask.text == "Got it (1). Send more, or /done."
    [ask] = await h.say("acme_boss", "/done")
    assert keyboard(ask) == ["Show our name", "Anonymous"]
    [ask] = await h.say("acme_boss", "Anonymous")
    assert ask.text == (
        "Please check:\nDepartment: Tax Bureau\n"
        "Problem: The VAT refund <since May> & still nothing 😀\nAttachments: 1\n"
        "Shown as: Anonymous\n\nSend it?"
    )
    assert keyboard(ask) == ["Send", "Cancel"]
    sent = await h.say("acme_boss", "Send")

    ticket = await h.ticket(1)
    # the department the enterprise picked is where the ticket goes
    assert (ticket.state, ticket.anonymous, ticket.category) == (
        TicketState.ASSIGNED,
        True,
        "Tax Bureau",
    )
    assert ticket.department_id == h.org.depts["tax"]
    assert ticket.text == "The VAT refund <since May> & still nothing 😀"
    assert await h.attachments(1) == [("photo", photo.message.photo[-1].file_id)]
    # the county's group sees the county and the industry, not the enterprise
    card = h.only_reply(sent, COUNTY_GROUP)
    assert "企业：East County · rare earth" in card
    assert "Acme" not in card
    assert h.only_reply(sent, h.org["acme_boss"]).startswith("#1 reported by Ann Acme")
    # the leaders and the department may still know who it was
    assert "Acme <Rare Earth> & Co" in h.only_reply(await h.say("east_leader", "/ticket 1"))
    in_group = h.only_reply(await h.say("east_leader", "/ticket 1", COUNTY_GROUP))
    assert "Acme" not in in_group


async def test_a_short_way_through_in_chinese(harness: Harness) -> None:
    h = harness
    [ask] = await h.say("acme_clerk", "/report 厂门口路灯坏了")
    assert ask.text == "问题涉及哪个部门？请选择，或选“其他”。"
    assert keyboard(ask)[-1] == "其他"
    [ask] = await h.say("acme_clerk", "其他")
    assert ask.text == "如有照片或文件请发送，发完后点 /done；没有请点 /skip。"
    [ask] = await h.say("acme_clerk", "no photos")
    assert ask.text.startswith("如有照片或文件请发送")
    await h.say("acme_clerk", "/skip")
    [ask] = await h.say("acme_clerk", "显示企业名称")
    assert "显示为：显示企业名称" in ask.text
    [ask] = await h.say("acme_clerk", "maybe")
    assert ask.text == "请用文字回答。"
    await h.say("acme_clerk", "提交")
    ticket = await h.ticket(1)
    assert (ticket.text, ticket.category, ticket.anonymous) == ("厂门口路灯坏了", None, False)
    assert "Acme <Rare Earth> & Co" in h.card(1, COUNTY_GROUP)["text"]


async def test_cancel_files_nothing_and_forgets_the_draft(harness: Harness) -> None:
    h = harness
    await h.say("acme_boss", "/report")
    await h.say("acme_boss", "Other")
    [done] = await h.say("acme_boss", "/cancel")
    assert done.text == "Cancelled; nothing was filed."
    assert await h.count_tickets() == 0
    async with h.services.uows(readonly=True) as uow:
        assert await uow.schedule.values_with_prefix("user_data:") == []
        assert await uow.schedule.values_with_prefix("conv:") == []
    # no longer in the conversation: a word out of context gets the help
    assert h.only_reply(await h.say("acme_boss", "Tax Bureau")).startswith("Ann Acme · enterprise")


async def test_pictures_where_words_are_wanted(harness: Harness) -> None:
    h = harness
    await h.say("acme_boss", "/report")
    [ask] = await h.process(h.make_photo_update("acme_boss"))
    assert ask.text == "Please answer in words."


async def test_only_enterprises_report_privately(harness: Harness) -> None:
    h = harness
    sent = await h.say("tax_clerk", "/report 内部问题")
    assert h.only_reply(sent) == "只有企业成员可以反映问题。"
    assert h.only_reply(await h.say("tax_clerk", "Tax Bureau")).startswith(
        "税务小王 · 部门工作人员"
    )
    sent = await h.say(STRANGER, "/report hello")
    assert h.only_reply(sent).startswith("Sorry, I do not know you yet.")


async def test_the_conversation_survives_a_restart(harness: Harness) -> None:
    h = harness
    await h.say("acme_boss", "/report")
    await h.say("acme_boss", "Market Regulation")
    await h.say("acme_boss", "license renewal is stuck")
    # the process dies here: a new application over the same database takes over
    app, services, errors = await open_app(make_settings(), h.clock, h.services.engine, h.double)
    async with app:
        second = type(h)(app, h.double, services, h.org, h.clock, errors)
        [ask] = await second.say("acme_boss", "/skip")
        assert keyboard(ask) == ["Show our name", "Anonymous"]
        await second.say("acme_boss", "Show our name")
        sent = await second.say("acme_boss", "Send")
    assert errors == []
    ticket = await h.ticket(1)
    assert (ticket.text, ticket.category) == ("license renewal is stuck", "Market Regulation")
    assert h.only_reply(sent, COUNTY_GROUP).startswith("#1 · ")
    assert h.texts(sent, GROUP) == []
