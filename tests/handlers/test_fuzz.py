"""Whatever people type after a command, the bot answers and nothing breaks (E8)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.tickets import WORDS
from tests.factories import GROUP
from tests.handlers.conftest import STRANGER, Harness
from tests.handlers.test_matrix import COMMANDS

EXAMPLES = int(os.environ.get("QUNBAN_FUZZ_EXAMPLES", "300"))
WORDS_AND_COMMANDS = [f"/{c}" for c in COMMANDS] + [f"/{c}@qunban_test_bot" for c in COMMANDS]
WORDS_AND_COMMANDS += list(WORDS)
PEOPLE = ["acme_boss", "acme_clerk", "tax_clerk", "tax_head", "mayor", "city_coord", "admin"]

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["#1", "＃2", "#0", "#-1", "1e9", "0x1f", "１２", "#", "9" * 40]),
)
words = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["tax", "market", "满意", "unsolved", "2026-03-10", "2020-02-30", "@mayor"]),
    st.sampled_from(["<b>", "&amp;", "</i>", "<a href='tg://user?id=1'>", "*_`[", "😀" * 30]),
)
arguments = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(numbers, words), max_size=6).map(" ".join),
    st.text(min_size=4000, max_size=5000),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    command=st.sampled_from(WORDS_AND_COMMANDS),
    args=arguments,
    who=st.sampled_from([*PEOPLE, STRANGER]),
    in_group=st.booleans(),
)
async def test_any_arguments_are_answered_without_an_error(
    harness: Harness, command: str, args: str, who: str | int, in_group: bool
) -> None:
    h = harness
    if not h.sources:
        for state in ("reported", "assigned", "claimed", "resolved"):
            await h.make_ticket(state, quiet=True)
    # (how long each answer takes is measured by the benchmarks, not asserted on a shared box)
    await h.say(who, f"{command} {args}"[:4096], GROUP if in_group else None)
    assert h.errors == []
    assert await h.failed_sends() == []
