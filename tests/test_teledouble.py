"""The Bot API double: in-process, through PTB's request layer, and over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import ApplicationBuilder, CommandHandler, ContextTypes
from telegram.request import HTTPXRequest

from bot.clock import ManualClock
from bot.markup import escape, split_html
from bot.teledouble import NOT_MODIFIED, ApiError, DoubleRequest, ResponseDropped, TeleDouble
from bot.teledouble_http import DoubleServer, serve

GROUP = -1001234567890
BASIC_GROUP = -4567
ANA = 20001
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def double(clock: ManualClock) -> TeleDouble:
    return TeleDouble(clock=clock)


async def api_error(double: TeleDouble, method: str, **params: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await double.call(method, params)
    return caught.value


def keyboard(data: str = "t1:claim:1") -> dict[str, Any]:
    return {"inline_keyboard": [[{"text": "领办", "callback_data": data}]]}


# ------------------------------------------------------------------------- identity and basics


async def test_get_me_describes_a_bot_that_can_join_groups(double: TeleDouble) -> None:
    me = await double.call("getMe")

    assert me["is_bot"] is True
    assert me["can_join_groups"] is True
    assert me["id"] == 123456789
    assert me["username"] == "qunban_test_bot"


async def test_unknown_method_answers_404_not_found_like_telegram(double: TeleDouble) -> None:
    status, body = await double.respond("sendTelepathy", {})

    assert status == 404
    assert body == {"ok": False, "error_code": 404, "description": "Not Found"}


async def test_method_names_are_case_insensitive(double: TeleDouble) -> None:
    assert (await double.call("getme"))["is_bot"] is True


async def test_message_dates_are_unix_seconds_from_the_injected_clock(
    double: TeleDouble, clock: ManualClock
) -> None:
    clock.advance(timedelta(seconds=90))

    msg = await double.call("sendMessage", {"chat_id": ANA, "text": "hi"})

    assert msg["date"] == int(START.timestamp()) + 90


async def test_send_message_returns_a_full_message(double: TeleDouble) -> None:
    msg = await double.call(
        "sendMessage", {"chat_id": GROUP, "text": "plain", "reply_markup": keyboard()}
    )

    assert msg["message_id"] == 1
    assert msg["chat"] == {"id": GROUP, "type": "supergroup", "title": f"Group {GROUP}"}
    assert msg["from"]["id"] == double.bot_id
    assert msg["from"]["is_bot"] is True
    assert msg["text"] == "plain"
    assert "entities" not in msg
    assert msg["reply_markup"] == keyboard()


@pytest.mark.parametrize(
    ("chat_id", "kind"), [(ANA, "private"), (BASIC_GROUP, "group"), (GROUP, "supergroup")]
)
async def test_chat_type_follows_the_id(double: TeleDouble, chat_id: int, kind: str) -> None:
    msg = await double.call("sendMessage", {"chat_id": chat_id, "text": "x"})

    assert msg["chat"]["type"] == kind


async def test_message_ids_increase_per_chat(double: TeleDouble) -> None:
    ids = [
        (await double.call("sendMessage", {"chat_id": chat, "text": "x"}))["message_id"]
        for chat in (GROUP, GROUP, ANA, GROUP)
    ]

    assert ids == [1, 2, 1, 3]


async def test_wire_parameters_are_decoded_like_form_fields(double: TeleDouble) -> None:
    msg = await double.call(
        "sendMessage",
        {"chat_id": str(GROUP), "text": "42", "reply_markup": json.dumps(keyboard())},
    )

    assert msg["chat"]["id"] == GROUP
    assert msg["text"] == "42"
    assert msg["reply_markup"] == keyboard()


# ------------------------------------------------------------------------- getUpdates


async def test_offset_confirms_earlier_updates_for_good(double: TeleDouble) -> None:
    ids = [double.user_says(GROUP, ANA, f"report {n}")["update_id"] for n in range(3)]

    first = await double.call("getUpdates", {})
    again = await double.call("getUpdates", {})
    after = await double.call("getUpdates", {"offset": ids[1]})
    later = await double.call("getUpdates", {"offset": 0})

    assert [u["update_id"] for u in first] == ids
    assert again == first, "unconfirmed updates are handed out again"
    assert [u["update_id"] for u in after] == ids[1:]
    assert [u["update_id"] for u in later] == ids[1:]
    assert double.confirmed_offset == ids[1]


async def test_negative_offset_keeps_only_the_last_updates(double: TeleDouble) -> None:
    for n in range(5):
        double.user_says(GROUP, ANA, f"m{n}")

    updates = await double.call("getUpdates", {"offset": -2})

    assert [u["message"]["text"] for u in updates] == ["m3", "m4"]


async def test_limit_caps_the_batch(double: TeleDouble) -> None:
    for n in range(5):
        double.user_says(GROUP, ANA, f"m{n}")

    assert len(await double.call("getUpdates", {"limit": 2})) == 2


async def test_long_poll_with_nothing_pending_returns_empty_after_the_timeout(
    double: TeleDouble,
) -> None:
    assert await double.call("getUpdates", {"timeout": 0.05}) == []


async def test_long_poll_returns_as_soon_as_an_update_arrives(double: TeleDouble) -> None:
    poll = asyncio.create_task(double.call("getUpdates", {"timeout": 30}))
    while double.waiting_polls == 0:
        await asyncio.sleep(0)

    double.user_says(GROUP, ANA, "urgent")
    updates = await asyncio.wait_for(poll, 2)

    assert [u["message"]["text"] for u in updates] == ["urgent"]


async def test_a_second_poller_ends_the_first_with_conflict(double: TeleDouble) -> None:
    first = asyncio.create_task(double.respond("getUpdates", {"timeout": 30}))
    while double.waiting_polls == 0:
        await asyncio.sleep(0)

    second = await double.respond("getUpdates", {"timeout": 0})
    status, body = await asyncio.wait_for(first, 2)

    assert second == (200, {"ok": True, "result": []})
    assert status == 409
    assert body["description"].startswith("Conflict: terminated by other getUpdates request")


async def test_updates_expire_after_24_hours(double: TeleDouble, clock: ManualClock) -> None:
    double.user_says(GROUP, ANA, "old")
    clock.advance(timedelta(hours=23))
    double.user_says(GROUP, ANA, "new")
    clock.advance(timedelta(hours=1, seconds=1))

    updates = await double.call("getUpdates", {})

    assert [u["message"]["text"] for u in updates] == ["new"]
    assert double.expired_updates == 1


async def test_allowed_updates_are_recorded_and_filter_delivery(double: TeleDouble) -> None:
    double.push_update({"chat_member": {"chat": {"id": GROUP}}})
    double.user_says(GROUP, ANA, "hello")

    default = await double.call("getUpdates", {})
    double.push_update({"chat_member": {"chat": {"id": GROUP}}})
    chosen = await double.call("getUpdates", {"allowed_updates": '["chat_member"]'})

    assert [next(iter(set(u) - {"update_id"})) for u in default] == ["message"]
    assert double.allowed_updates == ["chat_member"]
    assert [next(iter(set(u) - {"update_id"})) for u in chosen] == ["chat_member"]


async def test_push_update_keeps_an_explicit_update_id_and_continues_after_it(
    double: TeleDouble,
) -> None:
    explicit = double.push_update({"update_id": 500, "message": {"text": "x"}})
    following = double.user_says(GROUP, ANA, "next")
    double.reset_update_ids(7)
    lowered = double.user_says(GROUP, ANA, "after a quiet week")

    assert explicit["update_id"] == 500
    assert following["update_id"] == 501
    assert lowered["update_id"] == 7


# ------------------------------------------------------------------------- webhooks


async def test_get_updates_conflicts_while_a_webhook_is_set(double: TeleDouble) -> None:
    await double.call("setWebhook", {"url": "https://bot.example/hook", "secret_token": "s3"})

    error = await api_error(double, "getUpdates")
    info = await double.call("getWebhookInfo")

    assert error.error_code == 409
    assert info["url"] == "https://bot.example/hook"


async def test_delete_webhook_honours_drop_pending_updates(double: TeleDouble) -> None:
    double.user_says(GROUP, ANA, "a")
    double.user_says(GROUP, ANA, "b")
    await double.call("setWebhook", {"url": "https://bot.example/hook"})

    pending = (await double.call("getWebhookInfo"))["pending_update_count"]
    await double.call("deleteWebhook", {"drop_pending_updates": "true"})

    assert pending == 2
    assert double.dropped_pending == 2
    assert await double.call("getUpdates") == []
    assert double.calls[-2].params == {"drop_pending_updates": True}


async def test_a_bad_secret_token_is_refused(double: TeleDouble) -> None:
    error = await api_error(double, "setWebhook", url="https://x.example", secret_token="a b")

    assert error.description == "Bad Request: secret token contains unallowed characters"


async def test_webhook_delivery_sends_the_secret_and_retries_failures(double: TeleDouble) -> None:
    seen: list[tuple[str | None, int]] = []
    answers = iter([500, 200, 200])

    def receiver(request: httpx.Request) -> httpx.Response:
        update = json.loads(request.content)
        seen.append((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), update["update_id"]))
        return httpx.Response(next(answers))

    first = double.user_says(GROUP, ANA, "one")["update_id"]
    second = double.user_says(GROUP, ANA, "two")["update_id"]
    await double.call("setWebhook", {"url": "https://bot.example/hook", "secret_token": "s3"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        delivered = await double.deliver_webhooks(client)

    assert delivered == 2
    assert seen == [("s3", first), ("s3", first), ("s3", second)]
    assert double.pending_updates() == []
    assert double.webhook_attempts == 3


async def test_webhook_delivery_stops_in_order_at_an_update_that_keeps_failing(
    double: TeleDouble,
) -> None:
    double.user_says(GROUP, ANA, "one")
    double.user_says(GROUP, ANA, "two")
    await double.call("setWebhook", {"url": "https://bot.example/hook"})
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    async with httpx.AsyncClient(transport=transport) as client:
        delivered = await double.deliver_webhooks(client, attempts=3)

    info = await double.call("getWebhookInfo")
    assert delivered == 0
    assert double.webhook_attempts == 3
    assert info["pending_update_count"] == 2
    assert "503" in info["last_error_message"]


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize("text", ["", "   \n ", None])
async def test_empty_text_is_refused(double: TeleDouble, text: str | None) -> None:
    error = await api_error(double, "sendMessage", chat_id=ANA, text=text)

    assert (error.error_code, error.description) == (400, "Bad Request: message text is empty")


async def test_length_is_counted_in_utf16_units_after_parsing(double: TeleDouble) -> None:
    fits = "<b>" + "x" * 4096 + "</b>"
    emoji_too_long = "😀" * 2049  # 4098 UTF-16 units

    await double.call("sendMessage", {"chat_id": ANA, "text": fits, "parse_mode": "HTML"})
    error = await api_error(double, "sendMessage", chat_id=ANA, text=emoji_too_long)

    assert error.description == "Bad Request: message is too long"


async def test_caption_over_1024_units_is_refused(double: TeleDouble) -> None:
    error = await api_error(
        double, "sendPhoto", chat_id=ANA, photo="https://x.example/a.jpg", caption="c" * 1025
    )

    assert error.description == "Bad Request: message caption is too long"


@pytest.mark.parametrize("bad", ["1 < 2", "Tom & Jerry", "<br>", "<b>open", "<b>x</i>"])
async def test_html_that_telegram_cannot_parse_is_refused(double: TeleDouble, bad: str) -> None:
    error = await api_error(double, "sendMessage", chat_id=ANA, text=bad, parse_mode="HTML")

    assert error.error_code == 400
    assert error.description.startswith("Bad Request: can't parse entities: ")


async def test_html_is_stored_as_visible_text_and_entities(double: TeleDouble) -> None:
    msg = await double.call(
        "sendMessage",
        {"chat_id": ANA, "text": "😀 <b>#12</b> &lt;ok&gt;", "parse_mode": "HTML"},
    )

    assert msg["text"] == "😀 #12 <ok>"
    assert msg["entities"] == [{"type": "bold", "offset": 3, "length": 3}]


async def test_callback_data_over_64_bytes_is_refused(double: TeleDouble) -> None:
    at_limit = "领" * 21 + "x"  # 64 bytes
    await double.call(
        "sendMessage", {"chat_id": ANA, "text": "ok", "reply_markup": keyboard(at_limit)}
    )

    error = await api_error(
        double, "sendMessage", chat_id=ANA, text="ok", reply_markup=keyboard(at_limit + "x")
    )

    assert error.description == "Bad Request: BUTTON_DATA_INVALID"


async def test_replying_to_a_missing_message_is_refused(double: TeleDouble) -> None:
    error = await api_error(
        double, "sendMessage", chat_id=GROUP, text="x", reply_parameters={"message_id": 99}
    )
    allowed = await double.call(
        "sendMessage",
        {
            "chat_id": GROUP,
            "text": "x",
            "reply_parameters": {"message_id": 99, "allow_sending_without_reply": True},
        },
    )

    assert error.description == "Bad Request: message to be replied not found"
    assert "reply_to_message" not in allowed


async def test_a_reply_carries_the_replied_message(double: TeleDouble) -> None:
    report = double.user_says(GROUP, ANA, "停电了")["message"]

    reply = await double.call(
        "sendMessage",
        {
            "chat_id": GROUP,
            "text": "收到",
            "reply_parameters": {"message_id": report["message_id"]},
        },
    )

    assert reply["reply_to_message"]["text"] == "停电了"


# ------------------------------------------------------------------------- edits and deletes


async def test_editing_to_the_same_content_is_not_modified(double: TeleDouble) -> None:
    msg = await double.call(
        "sendMessage",
        {"chat_id": GROUP, "text": "<b>#1</b>", "parse_mode": "HTML", "reply_markup": keyboard()},
    )
    same = {
        "chat_id": GROUP,
        "message_id": msg["message_id"],
        "text": "<b>#1</b>",
        "parse_mode": "HTML",
        "reply_markup": keyboard(),
    }

    error = await api_error(double, "editMessageText", **same)

    assert error.description == NOT_MODIFIED


async def test_an_edit_returns_the_edited_message_and_drops_an_omitted_keyboard(
    double: TeleDouble, clock: ManualClock
) -> None:
    msg = await double.call(
        "sendMessage", {"chat_id": GROUP, "text": "#1 assigned", "reply_markup": keyboard()}
    )
    clock.advance(timedelta(minutes=5))

    edited = await double.call(
        "editMessageText",
        {"chat_id": GROUP, "message_id": msg["message_id"], "text": "#1 claimed"},
    )

    assert edited["text"] == "#1 claimed"
    assert edited["edit_date"] == int(START.timestamp()) + 300
    assert "reply_markup" not in edited
    assert double.messages_in(GROUP)[0]["text"] == "#1 claimed"
    assert [r.method for r in double.edits] == ["editMessageText"]


async def test_edit_reply_markup_and_caption(double: TeleDouble) -> None:
    text = await double.call(
        "sendMessage", {"chat_id": GROUP, "text": "t", "reply_markup": keyboard()}
    )
    photo = await double.call(
        "sendPhoto", {"chat_id": GROUP, "photo": "https://x.example/p.jpg", "caption": "old"}
    )

    cleared = await double.call(
        "editMessageReplyMarkup", {"chat_id": GROUP, "message_id": text["message_id"]}
    )
    again = await api_error(
        double, "editMessageReplyMarkup", chat_id=GROUP, message_id=text["message_id"]
    )
    captioned = await double.call(
        "editMessageCaption",
        {
            "chat_id": GROUP,
            "message_id": photo["message_id"],
            "caption": "<i>new</i>",
            "parse_mode": "HTML",
        },
    )
    no_caption = await api_error(
        double, "editMessageCaption", chat_id=GROUP, message_id=text["message_id"], caption="c"
    )

    assert "reply_markup" not in cleared
    assert again.description == NOT_MODIFIED
    assert captioned["caption"] == "new"
    assert captioned["caption_entities"] == [{"type": "italic", "offset": 0, "length": 3}]
    assert no_caption.description == "Bad Request: there is no caption in the message to edit"


async def test_inline_message_edits_answer_true(double: TeleDouble) -> None:
    assert await double.call("editMessageText", {"inline_message_id": "AAE", "text": "x"}) is True


async def test_edits_of_missing_or_foreign_messages_are_refused(double: TeleDouble) -> None:
    report = double.user_says(GROUP, ANA, "mine")["message"]

    missing = await api_error(double, "editMessageText", chat_id=GROUP, message_id=77, text="x")
    foreign = await api_error(
        double, "editMessageText", chat_id=GROUP, message_id=report["message_id"], text="x"
    )

    assert missing.description == "Bad Request: message to edit not found"
    assert foreign.description == "Bad Request: message can't be edited"


async def test_a_double_with_a_history_folds_its_older_messages_and_trims_its_records(
    clock: ManualClock,
) -> None:
    double = TeleDouble(clock=clock, history=3)
    double.user_says(GROUP, ANA, "hello")  # joins the chat; its message counts too
    sent = [
        await double.call("sendMessage", {"chat_id": GROUP, "text": f"m{k}"}) for k in range(9)
    ]
    room = double._chats[GROUP]
    before = len(room.folded), len(room.messages)

    edited = await double.call(
        "editMessageText", {"chat_id": GROUP, "message_id": sent[0]["message_id"], "text": "x"}
    )
    same = await api_error(
        double, "editMessageText", chat_id=GROUP, message_id=sent[1]["message_id"], text="m1"
    )
    to = {"message_id": sent[2]["message_id"]}
    answer = await double.call(
        "sendMessage", {"chat_id": GROUP, "text": "re", "reply_parameters": to}
    )
    await double.call("deleteMessage", {"chat_id": GROUP, "message_id": sent[3]["message_id"]})

    assert before == (7, 3)  # the latest three are objects, the older ones text
    assert (edited["message_id"], edited["text"]) == (sent[0]["message_id"], "x")
    assert same.description.startswith("Bad Request: message is not modified")
    assert answer["reply_to_message"]["text"] == "m2"
    shown = [m.get("text") for m in double.messages_in(GROUP)]
    assert shown == ["hello", "x", "m1", "m2", "m4", "m5", "m6", "m7", "m8", "re"]
    assert len(room.messages) <= 3
    assert 3 <= len(double.sent) <= 4  # the records are trimmed back to the history now and then
    assert double.sent[-1].text == "re"
    keeping = TeleDouble(clock=clock)
    for k in range(9):
        await keeping.call("sendMessage", {"chat_id": GROUP, "text": f"m{k}"})
    assert len(keeping.sent) == 9  # by default everything is kept


async def test_delete_message_within_48_hours_only(double: TeleDouble, clock: ManualClock) -> None:
    fresh = await double.call("sendMessage", {"chat_id": GROUP, "text": "a"})
    old = await double.call("sendMessage", {"chat_id": GROUP, "text": "b"})

    assert await double.call(
        "deleteMessage", {"chat_id": GROUP, "message_id": fresh["message_id"]}
    )
    again = await api_error(double, "deleteMessage", chat_id=GROUP, message_id=fresh["message_id"])
    clock.advance(timedelta(hours=48, seconds=1))
    late = await api_error(double, "deleteMessage", chat_id=GROUP, message_id=old["message_id"])

    assert again.description == "Bad Request: message to delete not found"
    assert late.description == "Bad Request: message can't be deleted"
    assert [m["text"] for m in double.messages_in(GROUP)] == ["b"]


# ------------------------------------------------------------------------- refusals by chat


async def test_forbidden_variants(double: TeleDouble) -> None:
    double.block(1)
    double.deactivate(2)
    double.never_started(3)
    double.kick(BASIC_GROUP)
    double.kick(GROUP)

    answers = {
        chat: (await api_error(double, "sendMessage", chat_id=chat, text="x")).description
        for chat in (1, 2, 3, BASIC_GROUP, GROUP)
    }

    assert answers == {
        1: "Forbidden: bot was blocked by the user",
        2: "Forbidden: user is deactivated",
        3: "Forbidden: bot can't initiate conversation with a user",
        BASIC_GROUP: "Forbidden: bot was kicked from the group chat",
        GROUP: "Forbidden: bot was kicked from the supergroup chat",
    }
    assert double.sent == []


async def test_a_person_who_writes_to_the_bot_has_started_it(double: TeleDouble) -> None:
    double.never_started(ANA)
    double.user_says(ANA, ANA, "/start")

    msg = await double.call("sendMessage", {"chat_id": ANA, "text": "欢迎"})

    assert msg["chat"]["type"] == "private"


async def test_a_migrated_group_answers_with_the_new_id(double: TeleDouble) -> None:
    new_id = double.migrate(BASIC_GROUP)

    error = await api_error(double, "sendMessage", chat_id=BASIC_GROUP, text="x")
    updates = await double.call("getUpdates")

    assert new_id == int(f"-100{abs(BASIC_GROUP)}")
    assert error.error_code == 400
    assert error.parameters == {"migrate_to_chat_id": new_id}
    assert updates[0]["message"]["migrate_to_chat_id"] == new_id
    assert updates[1]["message"]["chat"]["type"] == "supergroup"


# ------------------------------------------------------------------------- flood limits


async def test_limits_are_off_by_default(double: TeleDouble) -> None:
    for _ in range(50):
        await double.call("sendMessage", {"chat_id": ANA, "text": "x"})

    assert double.violations == 0


async def test_private_chat_limit_answers_429_with_retry_after(
    double: TeleDouble, clock: ManualClock
) -> None:
    double.enforce_limits()
    await double.call("sendMessage", {"chat_id": ANA, "text": "1"})

    error = await api_error(double, "sendMessage", chat_id=ANA, text="2")
    clock.advance(timedelta(seconds=1))
    await double.call("sendMessage", {"chat_id": ANA, "text": "3"})

    assert error.error_code == 429
    assert error.description == "Too Many Requests: retry after 1"
    assert error.parameters == {"retry_after": 1}
    assert double.violations == 1
    assert [r.text for r in double.sent] == ["1", "3"]


async def test_group_limit_is_twenty_a_minute(double: TeleDouble, clock: ManualClock) -> None:
    double.enforce_limits()
    for n in range(20):
        clock.advance(timedelta(seconds=1))
        await double.call("sendMessage", {"chat_id": GROUP, "text": str(n)})

    error = await api_error(double, "sendMessage", chat_id=GROUP, text="21st")

    assert error.error_code == 429
    assert error.parameters == {"retry_after": 41}


async def test_global_limit_is_thirty_a_second(double: TeleDouble) -> None:
    double.enforce_limits()
    for user in range(1, 31):
        await double.call("sendMessage", {"chat_id": user, "text": "x"})

    error = await api_error(double, "sendMessage", chat_id=31, text="x")

    assert error.error_code == 429
    assert double.violations == 1


async def test_retrying_before_retry_after_is_counted_and_refused(
    double: TeleDouble, clock: ManualClock
) -> None:
    double.enforce_limits(per_group_per_min=1)
    await double.call("sendMessage", {"chat_id": GROUP, "text": "a"})
    first = await api_error(double, "sendMessage", chat_id=GROUP, text="b")

    clock.advance(timedelta(seconds=30))
    early = await api_error(double, "sendMessage", chat_id=GROUP, text="b")
    clock.advance(timedelta(seconds=30))
    await double.call("sendMessage", {"chat_id": GROUP, "text": "b"})

    assert first.parameters == {"retry_after": 60}
    assert early.parameters == {"retry_after": 30}
    assert double.early_retries == 1


# ------------------------------------------------------------------------- fault injection


@pytest.mark.parametrize(("kind", "code"), [("429", 429), ("500", 500), ("502", 502)])
async def test_fail_next_answers_the_chosen_error_and_sends_nothing(
    double: TeleDouble, kind: str, code: int
) -> None:
    double.fail_next(1, kind, retry_after=7)  # type: ignore[arg-type]

    status, body = await double.respond("sendMessage", {"chat_id": ANA, "text": "x"})
    after, _ = await double.respond("sendMessage", {"chat_id": ANA, "text": "y"})

    assert status == code
    assert body["error_code"] == code
    assert (body.get("parameters") or {}).get("retry_after") == (7 if kind == "429" else None)
    assert after == 200
    assert [r.text for r in double.sent] == ["y"]


async def test_a_dropped_response_is_delivered_but_never_answered(double: TeleDouble) -> None:
    double.fail_next(1, "drop_response")

    with pytest.raises(ResponseDropped) as caught:
        await double.call("sendMessage", {"chat_id": ANA, "text": "ambiguous"})
    await double.call("sendMessage", {"chat_id": ANA, "text": "ambiguous"})

    assert caught.value.delivered is True
    assert [r.response_dropped for r in double.sent] == [True, False]
    assert double.ambiguous_sends == 1
    assert double.count_duplicates() == 1


async def test_a_lost_request_has_no_effect(double: TeleDouble) -> None:
    double.fail_next(1, "lost")

    with pytest.raises(ResponseDropped) as caught:
        await double.call("sendMessage", {"chat_id": ANA, "text": "x"})

    assert caught.value.delivered is False
    assert double.sent == []


async def test_faults_leave_polling_alone_by_default(double: TeleDouble) -> None:
    double.fail_next(1, "500")

    assert await double.call("getUpdates") == []
    assert (await double.respond("sendMessage", {"chat_id": ANA, "text": "x"}))[0] == 500


async def test_chaos_is_seeded_and_switches_off(double: TeleDouble) -> None:
    double.chaos(p429=0.3, p5xx=0.2, p_drop_response=0.1, seed=7)
    outcomes = []
    for n in range(200):
        try:
            await double.call("sendMessage", {"chat_id": n + 1, "text": "x"})
            outcomes.append("ok")
        except ApiError as error:
            outcomes.append(str(error.error_code))
        except ResponseDropped:
            outcomes.append("dropped")
    double.chaos()

    assert 30 < outcomes.count("429") < 90
    assert 15 < outcomes.count("500") < 65
    assert 5 < outcomes.count("dropped") < 40
    assert double.ambiguous_sends == outcomes.count("dropped")
    assert len(double.sent) == outcomes.count("ok") + outcomes.count("dropped")
    assert await double.call("sendMessage", {"chat_id": ANA, "text": "calm"})


# ------------------------------------------------------------------------- people


async def test_user_says_builds_a_group_message_with_command_entities(double: TeleDouble) -> None:
    double.add_user(ANA, "安娜", username="ana_official", language_code="zh-hans")

    update = double.user_says(GROUP, ANA, "/claim@qunban_test_bot 42 #问题")
    message = update["message"]

    assert message["from"] == {
        "id": ANA,
        "is_bot": False,
        "first_name": "安娜",
        "username": "ana_official",
        "language_code": "zh-hans",
    }
    assert message["chat"]["type"] == "supergroup"
    assert message["entities"] == [
        {"type": "bot_command", "offset": 0, "length": 22},
        {"type": "hashtag", "offset": 26, "length": 3},
    ]


async def test_user_says_can_reply_to_the_bot(double: TeleDouble) -> None:
    card = await double.call("sendMessage", {"chat_id": GROUP, "text": "#7"})

    update = double.user_says(GROUP, ANA, "我来", reply_to=card["message_id"])

    assert update["message"]["reply_to_message"]["from"]["id"] == double.bot_id


async def test_privacy_mode_hides_plain_group_chatter(clock: ManualClock) -> None:
    double = TeleDouble(clock=clock, privacy_mode=True)

    chatter = double.user_says(GROUP, ANA, "just chatting")
    command = double.user_says(GROUP, ANA, "/report 停电")

    assert "update_id" not in chatter
    assert [u["update_id"] for u in double.pending_updates()] == [command["update_id"]]
    assert (await double.call("getMe"))["can_read_all_group_messages"] is False


async def test_button_press_builds_a_callback_query_that_can_be_answered_once(
    double: TeleDouble,
) -> None:
    card = await double.call(
        "sendMessage", {"chat_id": GROUP, "text": "#1", "reply_markup": keyboard()}
    )

    query = double.user_presses(ANA, card, "t1:claim:1")["callback_query"]
    answered = await double.call(
        "answerCallbackQuery", {"callback_query_id": query["id"], "text": "ok"}
    )
    twice = await api_error(double, "answerCallbackQuery", callback_query_id=query["id"])

    assert query["message"]["message_id"] == card["message_id"]
    assert query["chat_instance"]
    assert query["from"]["id"] == ANA
    assert answered is True
    assert twice.description.startswith("Bad Request: query is too old")
    assert double.callback_answers[query["id"]]["text"] == "ok"


async def test_a_late_callback_answer_is_refused(double: TeleDouble, clock: ManualClock) -> None:
    card = await double.call(
        "sendMessage", {"chat_id": GROUP, "text": "#1", "reply_markup": keyboard()}
    )
    query = double.user_presses(ANA, (GROUP, card["message_id"]), "t1:claim:1")["callback_query"]
    clock.advance(timedelta(seconds=16))

    error = await api_error(double, "answerCallbackQuery", callback_query_id=query["id"])

    assert error.error_code == 400


async def test_photos_and_locations_from_people(double: TeleDouble) -> None:
    photo = double.user_sends_photo(GROUP, ANA, "现场照片", data=b"jpeg")["message"]
    where = double.user_sends_location(GROUP, ANA, 40.65, 109.84)["message"]

    info = await double.call("getFile", {"file_id": photo["photo"][-1]["file_id"]})

    assert photo["caption"] == "现场照片"
    assert double.file_bytes(info["file_path"]) == b"jpeg"
    assert where["location"] == {"latitude": 40.65, "longitude": 109.84}


async def test_user_edits_produce_an_edited_message(double: TeleDouble) -> None:
    report = double.user_says(GROUP, ANA, "停电")["message"]

    update = double.user_edits(report, "停电两天了")

    assert update["edited_message"]["text"] == "停电两天了"
    assert update["edited_message"]["message_id"] == report["message_id"]


async def test_commands_and_menu_button(double: TeleDouble) -> None:
    commands = [{"command": "claim", "description": "领办"}]
    scope = {"type": "all_group_chats"}

    await double.call("setMyCommands", {"commands": commands, "scope": scope})
    stored = await double.call("getMyCommands", {"scope": scope})
    default = await double.call("getMyCommands", {})
    await double.call("deleteMyCommands", {"scope": scope})
    bad = await api_error(
        double, "setMyCommands", commands=[{"command": "Claim!", "description": "x"}]
    )
    await double.call("setChatMenuButton", {"menu_button": {"type": "commands"}})

    assert stored == commands
    assert default == []
    assert await double.call("getMyCommands", {"scope": scope}) == []
    assert bad.description == "Bad Request: BOT_COMMAND_INVALID"
    assert await double.call("getChatMenuButton", {}) == {"type": "commands"}


async def test_split_chunks_are_accepted_by_the_double(double: TeleDouble) -> None:
    text = "<b>" + escape("<&>*_ 工单 😀\n" * 1200) + "</b>"

    for chunk in split_html(text):
        await double.call("sendMessage", {"chat_id": GROUP, "text": chunk, "parse_mode": "HTML"})

    assert len(double.sent) > 1


# ------------------------------------------------------------------------- PTB in-process


@pytest.fixture
async def ptb_bot(double: TeleDouble) -> AsyncIterator[Bot]:
    bot = Bot(
        double.token, request=DoubleRequest(double), get_updates_request=DoubleRequest(double)
    )
    async with bot:
        yield bot


async def test_ptb_bot_initializes_sends_edits_and_answers(
    double: TeleDouble, ptb_bot: Bot
) -> None:
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("领办", callback_data="t1:claim:1")]])

    sent = await ptb_bot.send_message(
        GROUP, "<b>#1</b> 待交办", parse_mode="HTML", reply_markup=markup
    )
    edited = await ptb_bot.edit_message_text(
        "#1 已领办", chat_id=GROUP, message_id=sent.message_id
    )
    double.user_presses(ANA, (GROUP, sent.message_id), "t1:claim:1")
    [update] = await ptb_bot.get_updates(timeout=0)
    answered = await ptb_bot.answer_callback_query(update.callback_query.id, "已领办")

    assert ptb_bot.bot.username == "qunban_test_bot"
    assert sent.text == "#1 待交办"
    assert sent.date == START
    assert sent.reply_markup == markup
    assert edited.text == "#1 已领办"
    assert update.callback_query.data == "t1:claim:1"
    assert answered is True


async def test_ptb_get_updates_confirms_with_offset(double: TeleDouble, ptb_bot: Bot) -> None:
    double.user_says(GROUP, ANA, "one")
    [first] = await ptb_bot.get_updates(timeout=0)
    double.user_says(GROUP, ANA, "two")

    [second] = await ptb_bot.get_updates(offset=first.update_id + 1, timeout=0)

    assert second.message.text == "two"


async def test_ptb_uploads_are_recorded_by_name_and_size(double: TeleDouble, ptb_bot: Bot) -> None:
    msg = await ptb_bot.send_photo(
        ANA, InputFile(b"\x89PNG....", filename="chart.png"), caption="图"
    )
    file = await ptb_bot.get_file(msg.photo[-1].file_id)

    assert double.sent[-1].params["photo"] == {"file_name": "chart.png", "size": 8}
    assert bytes(await file.download_as_bytearray()) == b"\x89PNG...."


@pytest.mark.parametrize(
    ("arrange", "error"),
    [
        (lambda d: d.block(ANA), Forbidden),
        (lambda d: d.fail_next(1, "429", retry_after=3), RetryAfter),
        (lambda d: d.fail_next(1, "500"), NetworkError),
        (lambda d: d.fail_next(1, "drop_response"), TimedOut),
    ],
)
async def test_ptb_sees_the_errors_it_would_see_from_telegram(
    double: TeleDouble,
    ptb_bot: Bot,
    arrange: Any,
    error: type[Exception],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # PTB 22 warns on RetryAfter otherwise
    arrange(double)

    with pytest.raises(error):
        await ptb_bot.send_message(ANA, "x")


async def test_ptb_sees_chat_migrated_and_bad_request(double: TeleDouble, ptb_bot: Bot) -> None:
    new_id = double.migrate(BASIC_GROUP, push=False)

    with pytest.raises(ChatMigrated) as migrated:
        await ptb_bot.send_message(BASIC_GROUP, "x")
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
        await ptb_bot.send_message(ANA, "a < b", parse_mode="HTML")

    assert migrated.value.new_chat_id == new_id


async def test_an_application_handles_a_command_from_the_double(double: TeleDouble) -> None:
    async def claim(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text(f"claimed {context.args}")

    app = (
        ApplicationBuilder()
        .token(double.token)
        .request(DoubleRequest(double))
        .get_updates_request(DoubleRequest(double))
        .updater(None)
        .build()
    )
    app.add_handler(CommandHandler("claim", claim))
    raw = double.user_says(GROUP, ANA, "/claim@qunban_test_bot 42")
    async with app:
        await app.process_update(Update.de_json(raw, app.bot))

    assert [r.text for r in double.sent_to(GROUP)] == ["claimed ['42']"]


# ------------------------------------------------------------------------- over HTTP


@pytest.fixture
async def server(double: TeleDouble) -> AsyncIterator[DoubleServer]:
    running = await serve(double, "127.0.0.1", 0)
    yield running
    await running.stop()


@pytest.fixture
async def http_bot(double: TeleDouble, server: DoubleServer) -> AsyncIterator[Bot]:
    bot = Bot(
        double.token,
        base_url=f"http://127.0.0.1:{server.port}/bot",
        base_file_url=server.base_file_url,
        request=HTTPXRequest(),
        get_updates_request=HTTPXRequest(),
    )
    async with bot:
        yield bot


@pytest.fixture
async def control(server: DoubleServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{server.url}/_control") as client:
        yield client


async def test_http_get_me_updates_and_send(double: TeleDouble, http_bot: Bot) -> None:
    double.user_says(GROUP, ANA, "/report 停水")
    [first] = await http_bot.get_updates(timeout=0)
    double.user_says(GROUP, ANA, "second")

    [second] = await http_bot.get_updates(offset=first.update_id + 1, timeout=0.05)
    empty = await http_bot.get_updates(offset=second.update_id + 1, timeout=0.05)
    sent = await http_bot.send_message(GROUP, "<b>收到</b> &amp; 已登记", parse_mode="HTML")

    assert http_bot.bot.is_bot
    assert first.message.text == "/report 停水"
    assert second.message.text == "second"
    assert empty == ()
    assert sent.text == "收到 & 已登记"
    assert double.sent_to(GROUP)[0].message_id == sent.message_id


async def test_http_long_poll_wakes_on_an_update_from_the_control_api(
    double: TeleDouble, http_bot: Bot, control: httpx.AsyncClient
) -> None:
    poll = asyncio.create_task(http_bot.get_updates(timeout=30))
    while double.waiting_polls == 0:
        await asyncio.sleep(0)

    said = await control.post("/say", json={"chat": GROUP, "user": ANA, "text": "在吗"})
    [update] = await asyncio.wait_for(poll, 5)

    assert said.status_code == 200
    assert update.update_id == said.json()["update_id"]


async def test_http_uploads_and_downloads_files(double: TeleDouble, http_bot: Bot) -> None:
    data = b"\x00\r\n--not-a-boundary\r\n\xff"
    msg = await http_bot.send_document(ANA, InputFile(data, filename="报告.pdf"), caption="附件")
    file = await http_bot.get_file(msg.document.file_id)

    assert msg.document.file_name == "报告.pdf"
    assert double.sent[-1].params["document"] == {"file_name": "报告.pdf", "size": len(data)}
    assert bytes(await file.download_as_bytearray()) == data


async def test_http_drop_closes_the_connection_after_delivering(
    double: TeleDouble, http_bot: Bot, server: DoubleServer
) -> None:
    double.fail_next(1, "drop_response")

    with pytest.raises(NetworkError):
        await http_bot.send_message(GROUP, "maybe")
    after = await http_bot.send_message(GROUP, "surely")

    assert [(r.text, r.response_dropped) for r in double.sent] == [
        ("maybe", True),
        ("surely", False),
    ]
    assert server.dropped_connections == 1
    assert after.message_id == 2


async def test_http_refusals_carry_telegram_codes(double: TeleDouble, http_bot: Bot) -> None:
    double.block(ANA)

    with pytest.raises(Forbidden, match="blocked by the user"):
        await http_bot.send_message(ANA, "x")


async def test_http_wrong_token_and_unknown_method(server: DoubleServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        wrong = await client.get("/bot1:nope/getMe")
        unknown = await client.post("/bot123456789:TEST-double-token/sendTelepathy")
        elsewhere = await client.get("/favicon.ico")

    assert wrong.status_code == 401
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert elsewhere.status_code == 404


async def test_http_accepts_json_form_and_query_parameters(
    double: TeleDouble, server: DoubleServer
) -> None:
    url = f"/bot{double.token}/sendMessage"
    async with httpx.AsyncClient(base_url=server.url) as client:
        as_json = await client.post(
            url, json={"chat_id": GROUP, "text": "json", "reply_markup": keyboard()}
        )
        as_form = await client.post(url, data={"chat_id": str(GROUP), "text": "form"})
        as_query = await client.get(url, params={"chat_id": GROUP, "text": "query"})

    assert [r.json()["result"]["text"] for r in (as_json, as_form, as_query)] == [
        "json",
        "form",
        "query",
    ]
    assert as_json.json()["result"]["reply_markup"] == keyboard()


async def test_invalid_ptb_token_is_reported(server: DoubleServer) -> None:
    bot = Bot("1:wrong", base_url=server.base_url, request=HTTPXRequest())

    with pytest.raises(InvalidToken):
        await bot.initialize()
    await bot.shutdown()


async def test_control_api_drives_people_faults_and_reads_the_ledger(
    double: TeleDouble, http_bot: Bot, control: httpx.AsyncClient
) -> None:
    card = await http_bot.send_message(
        GROUP,
        "#3",
        reply_markup=InlineKeyboardMarkup(
            [[InlineKeyboardButton("领办", callback_data="t1:claim:3")]]
        ),
    )
    press = await control.post(
        "/press",
        json={"user": ANA, "chat_id": GROUP, "message_id": card.message_id, "data": "t1:claim:3"},
    )
    await control.post("/block", json={"user_id": 5})
    await control.post("/limits", json={"per_chat_per_s": 1})
    await control.post("/fail_next", json={"n": 1, "kind": "502"})
    with pytest.raises(NetworkError):
        await http_bot.send_message(GROUP, "bad gateway")
    with pytest.raises(Forbidden):
        await http_bot.send_message(5, "blocked")
    ledger = (await control.get("/sent", params={"chat_id": GROUP})).json()
    updates = (await control.get("/updates")).json()
    stats = (await control.get("/stats")).json()
    missing = await control.get("/nothing-here")
    bad = await control.post("/say", json={"chat": GROUP})

    assert press.json()["callback_query"]["data"] == "t1:claim:3"
    assert [r["text"] for r in ledger] == ["#3"]
    assert [u["update_id"] for u in updates["pending"]] == [press.json()["update_id"]]
    assert stats["sent"] == 1
    assert missing.status_code == 404
    assert bad.status_code == 400


async def test_control_api_moves_a_manual_clock(
    double: TeleDouble, clock: ManualClock, control: httpx.AsyncClient
) -> None:
    answer = await control.post("/advance", json={"seconds": 3600})

    assert answer.json() == {"now": (START + timedelta(hours=1)).isoformat()}
    assert double.now() == START + timedelta(hours=1)


async def test_stopping_the_server_ends_an_open_long_poll(
    double: TeleDouble, server: DoubleServer
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        poll = asyncio.create_task(
            client.get(f"/bot{double.token}/getUpdates", params={"timeout": 30})
        )
        while double.waiting_polls == 0:
            await asyncio.sleep(0)
        await server.stop()

        with pytest.raises(httpx.HTTPError):
            await asyncio.wait_for(poll, 5)


def test_a_text_sent_again_is_parsed_alike_and_each_message_owns_its_entities():
    from bot.teledouble import parse_text

    html = '<b>#7</b> · <a href="https://e.x/?a=1&amp;b=2">链接</a> <code>x &lt; y</code> 😀'
    first, entities = parse_text(html, "HTML", None, limit=4096)
    again, copy = parse_text(html, "HTML", None, limit=4096)
    assert (first, entities) == (again, copy)
    assert first == "#7 · 链接 x < y 😀"
    assert [e["type"] for e in entities] == ["bold", "text_link", "code"]
    entities[0]["length"] = 99  # one message's entities are not another's
    assert parse_text(html, "HTML", None, limit=4096)[1] == copy
    with pytest.raises(ApiError, match="can't parse entities"):
        parse_text("<b>unclosed", "HTML", None, limit=4096)
    with pytest.raises(ApiError, match="can't parse entities"):  # a failure is not remembered
        parse_text("<b>unclosed", "HTML", None, limit=4096)
