"""The collector's full pass waits for an idle moment, at most once a minute."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bot.heap import BACKSTOP, Heap
from tests.factories import Ticking


@pytest.fixture
def restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settling_freezes_what_start_up_built_and_holds_back_full_passes(restored):
    kept = [[] for _ in range(100)]  # noqa: F841 (alive across the freeze)
    young, middle, _ = gc.get_threshold()
    Heap().settle()
    assert gc.get_freeze_count() >= 100
    assert gc.get_threshold() == (young, middle, BACKSTOP)


def test_a_full_pass_is_taken_at_an_idle_moment_once_it_is_due():
    clock = Ticking()
    heap = Heap(every=60, clock=clock)
    assert not heap.idle()
    clock.now += 59.9
    assert not heap.idle()
    clock.now += 0.1
    assert heap.idle()
    assert heap.full_passes == 1
    assert not heap.idle()  # the next one counts from this pass
    clock.now += 60
    assert heap.idle()
    assert heap.full_passes == 2


def test_the_full_pass_frees_rings_the_young_passes_missed():
    heap = Heap(every=0)

    class Node:
        pass

    ring = Node()
    ring.other = Node()  # type: ignore[attr-defined]
    ring.other.other = ring  # type: ignore[attr-defined]
    gc.collect(1)  # survived the young passes: the ring now sits in the old generation
    alive = weakref.ref(ring)
    del ring
    gc.collect(1)
    assert alive() is not None  # the young passes do not look at the old generation
    assert heap.idle()
    assert alive() is None
