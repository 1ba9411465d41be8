"""The workflow commands and their Chinese words, for the people allowed and the people not."""

from __future__ import annotations

from datetime import date

import pytest

from storage.tables import TicketState
from tests.factories import GROUP
from tests.handlers.conftest import Harness

S = TicketState


async def refused(h: Harness, who: str, text: str, number: int = 1, chat: int = GROUP) -> str:
    """Say it; assert that the ticket did not move and nothing but one reply went out."""
    before = await h.ticket(number)
    sent = await h.say(who, text, chat)
    after = await h.ticket(number)
    assert (after.state, after.version) == (before.state, before.version)
    return h.only_reply(sent)


# ---- 交办 assign ----------------------------------------------------------------------------


async def test_a_coordinator_assigns_and_the_group_hears_it_in_their_language(
    harness: Harness,
) -> None:
    h = harness
    await h.make_ticket()
    update = h.make_command_update("/assign 1 tax", "city_coord", GROUP)
    sent = await h.process(update)
    assert (await h.ticket(1)).state == S.ASSIGNED
    [line] = [r for r in sent if r.method == "sendMessage" and r.chat_id == GROUP]
    assert line.text == "#1 已交办 Tax Bureau"
    assert line.params["reply_parameters"]["message_id"] == update.message.message_id
    assert h.card(1)["text"].startswith("#1 · 已交办")


async def test_a_leader_assigns_in_english(harness: Harness) -> None:
    h = harness
    await h.make_ticket()
    sent = await h.say("mayor", "/assign #1 Market Regulation", GROUP)
    assert "#1 assigned to Market Regulation" in h.texts(sent, GROUP)


async def test_the_chinese_word_assigns_too(harness: Harness) -> None:
    h = harness
    await h.make_ticket()
    await h.say("city_coord", "交办 1 market", GROUP)
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.department_id) == (S.ASSIGNED, h.org.depts["market"])


async def test_assign_is_refused_to_an_enterprise_and_needs_a_department(
    harness: Harness,
) -> None:
    h = harness
    await h.make_ticket()
    role = await refused(h, "acme_boss", "/assign 1 tax")
    assert role == "Your role cannot do that with ticket #1."
    assert await refused(h, "acme_boss", "/assign 1") == "Usage: /assign N DEPT"
    assert await refused(h, "city_coord", "/assign 1") == "用法：/assign 编号 部门"
    unknown = await refused(h, "city_coord", "/assign 1 nowhere")
    assert unknown.startswith("没有与“nowhere”相符的部门。")


# ---- 领办 claim -----------------------------------------------------------------------------


async def test_an_official_claims_with_a_promise_date(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    sent = await h.say("tax_clerk", "/claim #1 2026-03-10", GROUP)
    ticket = await h.ticket(1)
    assert ticket.state == S.CLAIMED
    assert ticket.promised_date == date(2026, 3, 10)
    assert "#1 已由 税务小王 领办，承诺 2026-03-10 前办结" in h.texts(sent, GROUP)
    assert "#1 claimed by 税务小王, promised by 2026-03-10" in h.texts(sent, h.org["acme_boss"])
    assert "领办人：税务小王" in h.card(1)["text"]
    assert "reply_markup" not in h.card(1)  # nobody else can claim it now


async def test_claim_by_the_chinese_word(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    await h.say("tax_clerk", "领办 #1", GROUP)
    assert (await h.ticket(1)).state == S.CLAIMED


async def test_claim_privately_confirms_privately(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    sent = await h.say("tax_head", "/claim 1")
    assert h.texts(sent, h.org["tax_head"]) == ["#1 claimed by Tia Tax"]
    assert "#1 claimed by Tia Tax" not in h.texts(sent, GROUP)


async def test_claim_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    other = await refused(h, "market_head", "/claim 1")
    assert other == "未找到工单 #1，或您无权查看。"
    assert await refused(h, "tax_head", "/claim 1 tomorrow") == "Usage: /claim N [YYYY-MM-DD]"
    assert await refused(h, "tax_clerk", "/claim one") == "用法：/claim 编号 [承诺日期 YYYY-MM-DD]"
    past = await refused(h, "tax_head", "/claim 1 2020-01-01")
    assert past == "The promised date must not be in the past."
    await h.say("tax_clerk", "/claim 1", GROUP)
    taken = await refused(h, "tax_head", "/claim 1")
    assert taken == "Ticket #1 is already claimed by 税务小王."


# ---- 退单 return, and the decision on it ----------------------------------------------------


async def test_return_suggesting_a_department(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    sent = await h.say("tax_clerk", "/return 1 不归我们管 market", GROUP)
    ticket = await h.ticket(1)
    assert ticket.state == S.RETURNED
    assert ticket.suggested_department_id == h.org.depts["market"]
    assert "#1 被 税务小王 退单（非本部门职责）：不归我们管" in h.texts(sent, GROUP)
    assert h.texts(sent, h.org["city_coord"])  # the coordinators are asked to decide


async def test_return_without_a_department_keeps_the_whole_reason(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    await h.say("tax_head", "/return 1 this is not a tax matter at all", GROUP)
    ticket = await h.ticket(1)
    assert ticket.state == S.RETURNED
    assert ticket.suggested_department_id is None


async def test_return_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    assert await refused(h, "tax_clerk", "/return 1") == "用法：/return 编号 理由 [建议部门]"
    role = await refused(h, "acme_boss", "/return 1 nope")
    assert role == "Your role cannot do that with ticket #1."


async def test_a_coordinator_approves_a_return_to_the_suggested_department(
    harness: Harness,
) -> None:
    h = harness
    await h.make_ticket("returned")
    await h.say("city_coord", "/approve 1", GROUP)
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.department_id) == (S.ASSIGNED, h.org.depts["market"])


async def test_a_leader_rejects_a_return(harness: Harness) -> None:
    h = harness
    await h.make_ticket("returned")
    sent = await h.say("mayor", "/reject 1 it is yours", GROUP)
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.department_id) == (S.ASSIGNED, h.org.depts["tax"])
    assert "#1 return rejected by Mia Mayor; stays with Tax Bureau" in h.texts(sent, GROUP)


async def test_the_returner_cannot_decide_their_own_return(harness: Harness) -> None:
    h = harness
    await h.make_ticket("returned")
    assert await refused(h, "tax_clerk", "/approve 1") == "您的角色不能对工单 #1 这样办理。"
    assert await refused(h, "tax_head", "/reject 1") == "Your role cannot do that with ticket #1."
    assert await refused(h, "mayor", "/reject") == "Usage: /reject N"


# ---- 进展 progress, 办结 resolve ------------------------------------------------------------


async def test_progress_by_the_claimant_and_by_the_head(harness: Harness) -> None:
    h = harness
    await h.make_ticket("claimed")
    sent = await h.say("tax_clerk", "进展 1 已联系供电公司", GROUP)
    assert "#1 办理进展（税务小王）：已联系供电公司" in h.texts(sent, GROUP)
    await h.say("tax_head", "/progress 1 on it", GROUP)
    assert (await h.events(1)).count("progress") == 2


async def test_progress_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("claimed")
    assert await refused(h, "tax_clerk", "/progress 1") == "用法：/progress 编号 进展说明"
    assert await refused(h, "market_head", "/progress 1 x") == "未找到工单 #1，或您无权查看。"


async def test_resolve_sends_the_rating_buttons_to_the_enterprise(harness: Harness) -> None:
    h = harness
    await h.make_ticket("claimed")
    sent = await h.say("tax_clerk", "办结 1 路灯已修好", GROUP)
    assert (await h.ticket(1)).state == S.RESOLVED
    [note] = [r for r in sent if r.chat_id == h.org["acme_boss"]]
    assert note.text == "#1 resolved by 税务小王: 路灯已修好"
    labels = [b["text"] for row in note.reply_markup["inline_keyboard"] for b in row]
    assert labels == ["satisfied", "basically satisfied", "unsatisfied", "not solved"]
    # the live card in the (Chinese) group offers the same buttons
    buttons = [b for row in h.card(1)["reply_markup"]["inline_keyboard"] for b in row]
    assert [b["text"] for b in buttons] == ["满意", "基本满意", "不满意", "未解决"]
    assert [b["callback_data"] for b in buttons] == [f"t1:rate:1:{x}" for x in "sbun"]


async def test_resolve_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    state = await refused(h, "tax_clerk", "/resolve 1 done")
    assert state == "工单 #1 当前为“已交办”，现在不能这样办理。"
    assert await refused(h, "tax_head", "/resolve 1") == "Usage: /resolve N TEXT"


# ---- rating by command ----------------------------------------------------------------------


async def test_a_good_rating_closes_the_ticket(harness: Harness) -> None:
    h = harness
    await h.make_ticket("resolved")
    await h.say("acme_boss", "/rate 1 satisfied", GROUP)
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.rating) == (S.CLOSED, "satisfied")
    assert "评价：满意" in h.card(1)["text"]


@pytest.mark.parametrize(
    ("said", "rating"), [("不满意 还是坏的", "unsatisfied"), ("未解决", "unsolved")]
)
async def test_a_bad_rating_in_chinese_sends_it_back_for_redo(
    harness: Harness, said: str, rating: str
) -> None:
    h = harness
    await h.make_ticket("resolved")
    await h.say("acme_clerk", f"评价 1 {said}", GROUP)
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.rating, ticket.redo_count) == (S.CLAIMED, rating, 1)


async def test_rate_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("resolved")
    assert await refused(h, "beta_boss", "/rate 1 satisfied") == (
        "Ticket #1 was not found, or is not yours to see."
    )
    usage = "Usage: /rate N satisfied|basic|unsatisfied|unsolved [REASON]"
    assert await refused(h, "acme_boss", "/rate 1 great") == usage
    assert await refused(h, "tax_clerk", "/rate 1 满意") == "您的角色不能对工单 #1 这样办理。"


# ---- 督办 supervise -------------------------------------------------------------------------


async def test_a_leader_supervises_with_a_note(harness: Harness) -> None:
    h = harness
    await h.make_ticket("claimed")
    sent = await h.say("mayor", "/supervise 1 three days is too long", GROUP)
    assert (await h.ticket(1)).state == S.SUPERVISED
    assert "#1 is under supervision by Mia Mayor: three days is too long" in h.texts(sent, GROUP)
    assert h.texts(sent, h.org["tax_clerk"]) == ["#1 由 Mia Mayor 督办：three days is too long"]


async def test_on_site_supervision_keeps_the_place_and_the_photo(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    await h.make_ticket("claimed")
    spot = h.double.user_sends_location(GROUP, h.org["mayor"], 40.66, 109.85)["message"]
    await h.say("mayor", "督办 1 现场看过了", GROUP, reply_to=spot["message_id"])
    photo = h.make_photo_update("mayor", GROUP, caption="/supervise 2 照片为证")
    await h.process(photo)
    assert [(await h.ticket(n)).state for n in (1, 2)] == [S.SUPERVISED, S.SUPERVISED]
    assert [kind for kind, _ in await h.attachments(1)] == ["location"]
    assert await h.attachments(2) == [("photo", photo.message.photo[-1].file_id)]
    timeline = h.only_reply(await h.say("mayor", "/ticket 1"))
    assert "📍 location 40.66000, 109.85000" in timeline
    assert "Mia Mayor · supervise: 现场看过了" in timeline
    assert "📎 photo attached" in h.only_reply(await h.say("mayor", "/ticket 2"))
    # a second supervision is refused, and its photo is not kept
    await h.process(h.make_photo_update("mayor", GROUP, caption="/supervise 2 again"))
    assert len(await h.attachments(2)) == 1


async def test_supervise_is_for_the_leader_of_the_region(harness: Harness) -> None:
    h = harness
    await h.make_ticket("claimed")
    coord = await refused(h, "city_coord", "/supervise 1 hurry")
    assert coord == "您的角色不能对工单 #1 这样办理。"
    other = await refused(h, "west_leader", "/supervise 1 hurry")
    assert other == "未找到工单 #1，或您无权查看。"


# ---- transfer, withdraw, merge --------------------------------------------------------------


async def test_transfer_moves_it_to_another_department(harness: Harness) -> None:
    h = harness
    await h.make_ticket("claimed")
    await h.say("city_coord", "/transfer 1 market", GROUP)
    ticket = await h.ticket(1)
    assert (ticket.state, ticket.department_id) == (S.ASSIGNED, h.org.depts["market"])
    assert ticket.claimant_id is None


async def test_transfer_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    assert (
        await refused(h, "mayor", "/transfer 1 tax")
        == "Ticket #1 is already with that department."
    )
    assert await refused(h, "tax_head", "/transfer 1 market") == (
        "Your role cannot do that with ticket #1."
    )
    assert await refused(h, "city_coord", "/transfer 1") == "用法：/transfer 编号 部门"


async def test_the_reporter_withdraws_an_unclaimed_ticket(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    sent = await h.say("acme_boss", "/withdraw 1", GROUP)
    assert (await h.ticket(1)).state == S.WITHDRAWN
    assert "#1 withdrawn by Ann Acme" in h.texts(sent, GROUP)
    assert "reply_markup" not in h.card(1)


async def test_withdraw_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("claimed")
    colleague = await refused(h, "acme_clerk", "/withdraw 1")
    assert colleague == "工单 #1 当前为“已领办”，现在不能这样办理。"
    await h.make_ticket("reported")
    assert await refused(h, "acme_clerk", "/withdraw 2", 2) == "只有 #2 的反映人可以这样办理。"


async def test_merge_a_duplicate(harness: Harness) -> None:
    h = harness
    await h.make_ticket("assigned")
    await h.make_ticket("reported")
    sent = await h.say("mayor", "/merge 2 #1", GROUP)
    ticket = await h.ticket(2)
    assert (ticket.state, ticket.merged_into_id) == (S.MERGED, 1)
    assert "#2 merged into #1 by Mia Mayor" in h.texts(sent, GROUP)


async def test_merge_refusals(harness: Harness) -> None:
    h = harness
    await h.make_ticket("reported")
    assert (
        await refused(h, "city_coord", "/merge 1 1")
        == "工单 #1 不能并入 #1：该工单不在办或您无权办理。"
    )
    assert await refused(h, "city_coord", "/merge 1") == "用法：/merge 编号 并入的编号"
    assert await refused(h, "acme_boss", "/merge 1 2") == (
        "Ticket #1 cannot be merged into #2: that ticket is not open to you."
    )


async def test_a_command_for_a_ticket_that_does_not_exist(harness: Harness) -> None:
    h = harness
    sent = await h.say("tax_head", "/claim 999", GROUP)
    assert h.only_reply(sent) == "Ticket #999 was not found, or is not yours to see."
    sent = await h.say("tax_head", "/claim 99999999999999999999", GROUP)
    assert h.only_reply(sent) == "Usage: /claim N [YYYY-MM-DD]"
