"""Filing in the group: /report, /report as a reply, photos, #问题, edits, repeats, odd text."""

from __future__ import annotations

from bot.markup import utf16_len
from storage.tables import TicketState
from tests.factories import GROUP
from tests.handlers.conftest import STRANGER, UNBOUND, Harness


async def test_report_in_the_group_posts_the_card_replying_to_the_message_auto_assigned(
    harness: Harness,
) -> None:
    h = harness
    update = h.make_command_update("/report 发票开不出来 invoice stuck", "acme_boss", GROUP)
    sent = await h.process(update)

    [card] = [r for r in sent if r.chat_id == GROUP]
    assert card.params["reply_parameters"]["message_id"] == update.message.message_id
    assert card.text.startswith("#1 · 已交办")  # the group speaks Chinese
    assert "承办部门：Tax Bureau" in card.text
    assert "Acme <Rare Earth> & Co" in card.text
    assert card.reply_markup == {
        "inline_keyboard": [[{"text": "领办", "callback_data": "t1:claim:1"}]]
    }
    ticket = await h.ticket(1)
    assert ticket.state == TicketState.ASSIGNED
    assert ticket.department_id == h.org.depts["tax"]
    # the department hears of it privately, each official in their own language
    assert h.only_reply(sent, h.org["tax_head"]) == "#1 assigned to Tax Bureau"
    assert h.only_reply(sent, h.org["tax_clerk"]) == "#1 已交办 Tax Bureau"


async def test_a_report_no_rule_routes_waits_unassigned_without_buttons(harness: Harness) -> None:
    sent = await harness.say("acme_clerk", "/report 门口的路灯坏了", GROUP)
    card = harness.only_reply(sent, GROUP)
    assert card.startswith("#1 · 待交办")
    assert sent[0].reply_markup is None


async def test_report_with_the_bot_name_suffix_works(harness: Harness) -> None:
    await harness.say("acme_boss", "/report@qunban_test_bot road broken", GROUP)
    assert (await harness.ticket(1)).text == "road broken"


async def test_report_replying_to_a_member_files_it_for_the_authors_enterprise(
    harness: Harness,
) -> None:
    h = harness
    said = h.double.user_says(GROUP, h.org["acme_clerk"], "厂区停电三天了")["message"]
    sent = await h.say("city_coord", "/report", GROUP, reply_to=said["message_id"])

    ticket = await h.ticket(1)
    assert ticket.text == "厂区停电三天了"
    assert ticket.enterprise_id == h.org.enterprises["acme"]
    assert ticket.source_message_id == said["message_id"]
    [card] = [r for r in sent if r.chat_id == GROUP]
    assert card.params["reply_parameters"]["message_id"] == said["message_id"]


async def test_report_replying_to_an_official_files_it_as_the_replier(harness: Harness) -> None:
    h = harness
    said = h.double.user_says(GROUP, h.org["tax_clerk"], "我们这边也注意到了")["message"]
    await h.say("acme_boss", "/report see above", GROUP, reply_to=said["message_id"])
    ticket = await h.ticket(1)
    assert ticket.reporter_id is not None
    assert ticket.text == "我们这边也注意到了\n\nsee above"
    assert ticket.enterprise_id == h.org.enterprises["acme"]


async def test_someone_outside_an_enterprise_cannot_report(harness: Harness) -> None:
    h = harness
    sent = await h.say("tax_head", "/report our own problem", GROUP)
    assert h.only_reply(sent) == "Only members of an enterprise can report problems."
    sent = await h.say("tax_clerk", "/report 自己的问题", GROUP)
    assert h.only_reply(sent) == "只有企业成员可以反映问题。"
    assert await h.count_tickets() == 0


async def test_report_without_words_answers_with_the_usage_line(harness: Harness) -> None:
    h = harness
    assert h.only_reply(await h.say("acme_boss", "/report", GROUP)) == "Usage: /report TEXT"
    assert h.only_reply(await h.say("acme_clerk", "/report", GROUP)) == "用法：/report 问题描述"
    assert await h.count_tickets() == 0


async def test_a_photo_with_a_report_caption_keeps_the_file_id(harness: Harness) -> None:
    h = harness
    update = h.make_photo_update("acme_boss", GROUP, caption="/report 围墙倒了")
    await h.process(update)
    ticket = await h.ticket(1)
    assert ticket.text == "围墙倒了"
    assert await h.attachments(1) == [("photo", update.message.photo[-1].file_id)]


async def test_report_replying_to_a_photo_attaches_it(harness: Harness) -> None:
    h = harness
    shown = h.double.user_sends_photo(GROUP, h.org["acme_clerk"])["message"]
    await h.say("acme_clerk", "/report 看图", GROUP, reply_to=shown["message_id"])
    assert await h.attachments(1) == [("photo", shown["photo"][-1]["file_id"])]


async def test_a_message_tagged_as_a_problem_is_filed(harness: Harness) -> None:
    h = harness
    sent = await h.say("acme_clerk", "#问题 厂门口道路塌了", GROUP)
    assert (await h.ticket(1)).text == "厂门口道路塌了"
    assert h.only_reply(sent, GROUP).startswith("#1 · 待交办")


async def test_edits_of_a_message_file_nothing(harness: Harness) -> None:
    h = harness
    chatter = h.double.user_says(GROUP, h.org["acme_clerk"], "今天天气不错")["message"]
    edited = h.double.user_edits(chatter, "#问题 今天天气不错")
    sent = await h.process(h.make_update(edited))
    report = h.make_command_update("/report first words", "acme_boss", GROUP)
    await h.process(report)
    edited = h.double.user_edits(report.message.to_dict(), "/report second words")
    sent += await h.process(h.make_update(edited))
    assert [r for r in sent if r.chat_id == GROUP] == []
    assert await h.count_tickets() == 1
    assert (await h.ticket(1)).text == "first words"


async def test_the_same_update_twice_makes_one_ticket_and_one_card(harness: Harness) -> None:
    h = harness
    update = h.make_command_update("/report 发票 twice", "acme_boss", GROUP)
    first = await h.process(update)
    again = await h.process(update)
    assert await h.count_tickets() == 1
    assert len([r for r in first if r.chat_id == GROUP]) == 1
    assert again == []


async def test_five_thousand_characters_of_markup_and_emoji_still_make_a_card(
    harness: Harness,
) -> None:
    h = harness
    text = ("<&>*_😀 " * 700)[:5000]
    sent = await h.say("acme_boss", f"/report {text}", GROUP)
    card = h.only_reply(sent, GROUP)
    assert card.startswith("#1 · ")
    assert "<&>*_😀" in card
    assert (await h.ticket(1)).text == text.strip()
    # a progress note as long goes out too, split under Telegram's limit
    await h.services.tickets.assign(h.org["city_coord"], 1, "tax")
    await h.services.tickets.claim(h.org["tax_clerk"], 1)
    sent = await h.say("tax_clerk", f"/progress 1 {text}", GROUP)
    lines = h.texts(sent, GROUP)
    assert len(lines) >= 2
    assert all(utf16_len(line) <= 4096 for line in lines)
    assert "".join(lines).count("<&>*_😀") >= 600


async def test_a_stranger_in_a_bound_group_gets_a_polite_answer(harness: Harness) -> None:
    h = harness
    sent = await h.say(STRANGER, "/report let me in", GROUP)
    assert h.only_reply(sent).startswith("Sorry, I do not know you yet.")
    assert await h.say(STRANGER, "just chatting", GROUP) == []
    assert await h.count_tickets() == 0


async def test_an_unbound_group_hears_one_hint_and_then_silence(harness: Harness) -> None:
    h = harness
    first = await h.say("acme_clerk", "/report 这里也有问题", UNBOUND)
    assert h.only_reply(first) == "本群尚未接入群办，请管理员绑定。"
    assert await h.say("acme_boss", "/report again", UNBOUND) == []
    assert await h.say("acme_boss", "#问题 again", UNBOUND) == []
    assert await h.say(STRANGER, "/help", UNBOUND) == []
    assert await h.count_tickets() == 0


async def test_too_many_reports_in_an_hour_are_refused(harness: Harness) -> None:
    h = harness
    h.services.settings.report_limit_per_hour = 2
    await h.say("acme_boss", "/report one", GROUP)
    await h.say("acme_boss", "/report two", GROUP)
    sent = await h.say("acme_boss", "/report three", GROUP)
    assert h.only_reply(sent) == (
        "You have filed 2 reports within the hour; please wait a little."
    )
    assert await h.count_tickets() == 2


async def test_control_characters_in_a_report_are_dropped_and_the_rest_is_filed(
    harness: Harness,
) -> None:
    """A NUL (which PostgreSQL cannot store) or a bell in a message costs nothing of the rest."""
    sent = await harness.say("acme_boss", "/report 发票\x00开不\x07出来\tinvoice\nstuck", GROUP)
    [card] = harness.texts(sent, GROUP)
    assert card.startswith("#1 · 已交办")
    ticket = await harness.ticket(1)
    assert ticket.text == "发票开不出来\tinvoice\nstuck"
    assert await harness.say("tax_clerk", "/claim 1", GROUP)
    noted = await harness.say("tax_clerk", "/progress 1 已\x00联系", GROUP)
    assert any("已联系" in text for text in harness.texts(noted))
