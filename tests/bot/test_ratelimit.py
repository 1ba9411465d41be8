"""Telegram's sending limits as the sender keeps them: 1/s per chat, 20/min per group, 30/s in
all, and a chat that got RetryAfter waits it out. Time is a hand-moved monotonic source."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.ratelimit import Limits, RateLimiter

GROUP = -1001000000001
USER = 5_000_000_001


class Monotonic:
    """A monotonic clock moved by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def tick() -> Monotonic:
    return Monotonic()


@pytest.fixture
def limiter(tick: Monotonic) -> RateLimiter:
    return RateLimiter(Limits(), monotonic=tick)


def figures(record_property, name: str, **values: object) -> None:
    """The figures a test reports: in the junit properties, and on stdout under `-s`."""
    for key, value in values.items():
        record_property(key, value)
    print(f"\n[figures] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def test_a_chat_gets_one_message_a_second(limiter, tick):
    assert limiter.wait(USER) == 0
    limiter.record(USER)
    assert limiter.wait(USER) == pytest.approx(1.0)
    tick.advance(0.25)
    assert limiter.wait(USER) == pytest.approx(0.75)
    assert limiter.wait(USER + 1) == 0  # another chat is not held back
    tick.advance(0.75)
    assert limiter.wait(USER) == 0


def test_a_group_gets_twenty_messages_a_minute(limiter, tick):
    for _ in range(20):
        assert limiter.wait(GROUP) == 0
        limiter.record(GROUP)
        tick.advance(1.0)
    # 20 went out at t=0..19; the 21st waits until the first leaves the minute's window
    assert limiter.wait(GROUP) == pytest.approx(40.0)
    tick.advance(39.5)
    assert limiter.wait(GROUP) == pytest.approx(0.5)
    tick.advance(0.5)
    assert limiter.wait(GROUP) == 0


def test_a_private_chat_has_no_per_minute_cap(limiter, tick):
    for _ in range(25):
        assert limiter.wait(USER) == 0
        limiter.record(USER)
        tick.advance(1.0)
    assert limiter.wait(USER) == 0


def test_all_chats_together_get_thirty_messages_a_second(limiter, tick):
    for n in range(30):
        assert limiter.wait(USER + n) == 0
        limiter.record(USER + n)
    assert limiter.wait(USER + 30) == pytest.approx(1.0)
    tick.advance(0.5)
    assert limiter.wait(USER + 30) == pytest.approx(0.5)
    tick.advance(0.5)
    assert limiter.wait(USER + 30) == 0


def test_retry_after_blocks_only_that_chat_until_it_has_passed(limiter, tick):
    limiter.block(GROUP, 7)
    assert limiter.wait(GROUP) == pytest.approx(7.0)
    assert limiter.wait(USER) == 0
    tick.advance(6.75)
    assert limiter.wait(GROUP) == pytest.approx(0.25)
    tick.advance(0.25)
    assert limiter.wait(GROUP) == 0


def test_the_longest_of_the_waits_wins(limiter, tick):
    limiter.record(GROUP)
    limiter.block(GROUP, 3)
    assert limiter.wait(GROUP) == pytest.approx(3.0)
    tick.advance(3.0)
    limiter.record(GROUP)
    assert limiter.wait(GROUP) == pytest.approx(1.0)


def test_scaled_limits_are_looser_by_the_factor(tick):
    limits = Limits().scaled(10)
    assert limits == Limits(per_chat_per_s=10.0, per_group_per_min=200, global_per_s=300)
    limiter = RateLimiter(limits, monotonic=tick)
    limiter.record(USER)
    assert limiter.wait(USER) == pytest.approx(0.1)
    for n in range(299):
        limiter.record(USER + 1 + n)
    assert limiter.wait(USER + 500) == pytest.approx(1.0)
    tick.advance(1.0)
    for _ in range(200):
        limiter.record(GROUP)
        tick.advance(0.1)
    assert limiter.wait(GROUP) == pytest.approx(40.0)


def test_no_limits_never_waits(tick):
    limiter = RateLimiter(None, monotonic=tick)
    for _ in range(100):
        limiter.record(GROUP)
    assert limiter.wait(GROUP) == 0
    limiter.block(GROUP, 30)  # a RetryAfter is still the row's not_before in the outbox
    assert limiter.wait(GROUP) == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chats=st.lists(
        st.sampled_from([GROUP, GROUP - 1, GROUP - 2, USER, USER + 1, USER + 2]),
        min_size=1,
        max_size=400,
    ),
    steps=st.lists(st.sampled_from([0.0, 0.05, 0.25, 0.5, 1.0, 3.0]), min_size=1, max_size=50),
)
def test_a_sender_that_obeys_wait_never_exceeds_any_window(chats, steps):
    """However the queue is made up and time moves, what the limiter lets go keeps every
    sliding window within Telegram's limits, measured independently of the limiter."""
    tick = Monotonic()
    limiter = RateLimiter(Limits(), monotonic=tick)
    sends: dict[int, list[float]] = {}
    everything: list[float] = []
    queue = deque(chats)
    i = 0
    while queue:
        chat = queue[0]
        wait = limiter.wait(chat)
        if wait > 0:
            tick.advance(max(wait, steps[i % len(steps)]))
            i += 1
            continue
        queue.popleft()
        limiter.record(chat)
        sends.setdefault(chat, []).append(tick.now)
        everything.append(tick.now)
    for chat, times in sends.items():
        assert _most_in(times, 1.0) <= 1
        if chat < 0:
            assert _most_in(times, 60.0) <= 20
    assert _most_in(everything, 1.0) <= 30


def _most_in(times: list[float], span: float) -> int:
    """The largest number of events inside any half-open window of `span` seconds."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - span:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_measured_rates_of_a_busy_queue_stay_within_the_limits(record_property):
    """650 messages, 25 to each of 10 groups and 10 to each of 40 people, sent as fast as the
    limiter allows: each limit is reached and none is passed."""
    tick = Monotonic()
    limiter = RateLimiter(Limits(), monotonic=tick)
    chats = [GROUP - n for n in range(10)] + [USER + n for n in range(40)]
    pending = {chat: 25 if chat < 0 else 10 for chat in chats}
    sends: dict[int, list[float]] = {chat: [] for chat in chats}
    everything: list[float] = []
    while any(pending.values()):
        sent_now = 0
        for chat in chats:
            if pending[chat] and limiter.wait(chat) == 0:
                limiter.record(chat)
                pending[chat] -= 1
                sends[chat].append(tick.now)
                everything.append(tick.now)
                sent_now += 1
        if not sent_now:
            tick.advance(0.05)
    per_chat = max(_most_in(times, 1.0) for times in sends.values())
    per_group = max(_most_in(sends[chat], 60.0) for chat in chats if chat < 0)
    overall = _most_in(everything, 1.0)
    elapsed = round(everything[-1] - everything[0], 2)
    figures(
        record_property,
        "rate limiter, 650 messages to 50 chats",
        max_per_chat_per_s=per_chat,
        max_per_group_per_min=per_group,
        max_global_per_s=overall,
        seconds=elapsed,
    )
    assert (per_chat, per_group, overall) == (1, 20, 30)
    # the last 5 of each group's 25 wait for the first minute's window to pass
    assert 60 <= elapsed < 70


# --------------------------------------------------------------------------- sends in flight


def test_a_send_holds_its_place_from_its_start_and_is_timed_from_its_answer(limiter, tick):
    limiter.start(USER)
    assert limiter.wait(USER) == math.inf  # its answer ends the wait, not a time known now
    assert limiter.wait(USER + 1) == 0
    tick.advance(0.4)  # the answer takes 0.4 s
    limiter.done(USER)
    assert limiter.wait(USER) == pytest.approx(1.0)  # a second from the answer, not the start
    tick.advance(1.0)
    assert limiter.wait(USER) == 0


def test_sends_in_flight_fill_the_overall_limit_until_they_are_answered(limiter, tick):
    for n in range(30):
        limiter.start(USER + n)
    assert limiter.wait_global() == math.inf  # only answers can make room
    tick.advance(0.5)
    limiter.done(USER)
    # 29 still out and one answered at t=0.5: room when that one leaves the second
    assert limiter.wait_global() == pytest.approx(1.0)
    assert limiter.wait(USER) == pytest.approx(1.0)
    tick.advance(1.0)
    assert limiter.wait_global() == 0
    for n in range(1, 30):
        limiter.done(USER + n)
    assert limiter.wait_global() == 0  # 29 in the second, timed from now
    limiter.record(USER + 30)
    assert limiter.wait_global() == pytest.approx(1.0)


def test_sends_whose_answers_never_come_count_as_answered_when_given_up(limiter, tick):
    limiter.start(GROUP)
    limiter.start(USER)
    tick.advance(2.0)
    limiter.end_open()
    assert limiter.wait(GROUP) == pytest.approx(1.0)
    assert limiter.wait(USER) == pytest.approx(1.0)
    assert limiter.wait_global() == 0


def test_without_limits_sends_in_flight_hold_nothing_back(tick):
    limiter = RateLimiter(None, monotonic=tick)
    limiter.start(USER)
    assert (limiter.wait(USER), limiter.wait_global()) == (0, 0)
    limiter.done(USER)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chats=st.lists(
        st.sampled_from([GROUP, GROUP - 1, USER, USER + 1, USER + 2, USER + 3]),
        min_size=1,
        max_size=300,
    ),
    answers=st.lists(st.sampled_from([0.0, 0.01, 0.2, 0.5, 1.5]), min_size=1, max_size=40),
    arrivals=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
    lanes=st.integers(1, 8),
)
def test_however_the_requests_travel_the_server_never_counts_more_than_the_limits(
    chats, answers, arrivals, lanes
):
    """Sends go out as `wait` allows, several at once (one per chat), each answered after
    its own delay; the server counts each at a moment anywhere between its start and its
    answer. Counted the server's way, every sliding window stays within the limits."""
    tick = Monotonic()
    limiter = RateLimiter(Limits(), monotonic=tick)
    queue = deque(chats)
    out: dict[int, tuple[float, float]] = {}  # chat: (started, answered at)
    seen: dict[int, list[float]] = {}
    everything: list[float] = []
    k = 0
    for _ in range(100_000):  # every turn starts a send or moves time on: it never spins
        if not (queue or out):
            break
        chat = queue[0] if queue else None
        if chat is not None and len(out) < lanes and chat not in out and not limiter.wait(chat):
            queue.popleft()
            limiter.start(chat)
            out[chat] = (tick.now, tick.now + answers[k % len(answers)])
            k += 1
            continue
        # nothing may start now: move on to the next answer or the next free moment
        free = chat is not None and chat not in out and len(out) < lanes
        wait = limiter.wait(chat) if free else math.inf
        soonest = min([at for _, at in out.values()] + [tick.now + wait])
        tick.advance(max(soonest - tick.now, 0.0))
        for c, (started, at) in list(out.items()):
            if at <= tick.now:
                limiter.done(c)
                del out[c]
                counted = started + (at - started) * arrivals[k % len(arrivals)]
                seen.setdefault(c, []).append(counted)
                everything.append(counted)
    assert not queue, "the sends never finished"
    assert not out, "the sends never finished"
    for chat, times in seen.items():
        times.sort()
        assert _most_in(times, 1.0) <= 1
        if chat < 0:
            assert _most_in(times, 60.0) <= 20
    everything.sort()
    assert _most_in(everything, 1.0) <= 30
