"""Button payloads: what the bot builds parses back; anything else is refused."""

import pytest

from bot import callback_data


@pytest.mark.parametrize(
    ("action", "ticket", "arg"),
    [("claim", 1, None), ("ticket", 2**39, None), ("rate", 999_999_999_999, "s")],
)
def test_what_the_bot_builds_parses_back_within_64_bytes(action, ticket, arg):
    data = callback_data.build(action, ticket, arg)
    assert len(data.encode()) <= callback_data.MAX_BYTES
    assert callback_data.parse(data) == callback_data.ButtonData(action, ticket, arg)


@pytest.mark.parametrize(
    "data",
    [
        None,
        "",
        "t1:claim:1:x",
        "t1:rate:1",
        "t1:rate:1:z",
        "t2:claim:1",
        "t1:delete:1",
        "t1:claim:-1",
        "t1:claim:1e3",
        "t1:claim:" + "9" * 13,
        "t1:claim:１２",
        "x" * 65,
    ],
)
def test_forged_or_malformed_data_is_refused(data):
    assert callback_data.parse(data) is None
