"""The in-process counter against `limits`' own strategies on its memory storage: the same
random hit sequences (hypothesis), one injected clock for both, the same answers.

The reference counts a request all or nothing, as the counter does: ``test()`` every limit,
``hit()`` every limit only if all have room, then ``get_window_stats()`` each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import limits.storage.memory as lmemory
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits import parse_many, strategies
from limits.storage import MemoryStorage

from credit_middleware.limits import memory as _ratelimit_memory
from credit_middleware.limits.memory import MemoryCounter
from credit_middleware.limits.ratelimit import RateLimiter

LIMIT_SETS = ["2/10 seconds", "1/5 seconds;3/minute", "1/second;2/10 seconds;4/minute"]
STRATEGIES = ["moving-window", "fixed-window", "sliding-window-counter"]


@contextmanager
def _clock(now: list[float]) -> Iterator[None]:
    fake = SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic)
    with (
        mock.patch.object(lmemory, "time", fake),
        mock.patch.object(strategies, "time", fake),
        mock.patch.object(_ratelimit_memory, "time", fake),
    ):
        yield


def _run(strategy: str, steps: Sequence[tuple[int, str, int]]) -> None:
    """Each step moves the clock a whole number of ms and 1 µs: no entry is ever exactly one
    window old, the instant where limits' memory storage has two answers (its ``test()`` says
    there is room, its ``hit()`` refuses; see the test below)."""
    now = [1_000_000.0]
    with _clock(now):
        mine = MemoryCounter(strategy)
        ref = strategies.STRATEGIES[strategy](MemoryStorage())
        for which, account, ms in steps:
            now[0] = round(now[0] + ms / 1000 + 1e-6, 6)
            spec = LIMIT_SETS[which]
            items = tuple(parse_many(spec))
            ids = ("t", account, "*")
            allowed, counted = mine.count(items, ids)
            fits = [ref.test(item, *ids) for item in items]
            if all(fits):
                for item in items:
                    assert ref.hit(item, *ids)
            stats = [ref.get_window_stats(item, *ids) for item in items]
            assert allowed == all(fits), (spec, counted, stats)
            assert [c[0] for c in counted] == fits, (spec, counted, stats)
            assert [c[1] for c in counted] == [s.remaining for s in stats], (spec, counted, stats)
            for item, (_, _, left), s in zip(items, counted, stats, strict=True):
                ref_left = s.reset_time - now[0]
                if strategy == "sliding-window-counter" and ref_left == 0 < left:
                    # a current window that starts exactly now: limits' TTL % expiry says 0
                    assert left == item.get_expiry()
                    continue
                assert left == pytest.approx(ref_left, abs=1e-6), (spec, counted, stats)


STEP = st.tuples(
    st.integers(0, len(LIMIT_SETS) - 1),
    st.sampled_from(["alice", "alice", "bob"]),
    st.sampled_from([0] * 6 + [1, 250, 999, 1000, 2500, 5000, 9999, 10_000, 30_000, 61_000]),
)


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=150, deadline=None)
@given(steps=st.lists(STEP, min_size=4, max_size=40))
def test_memory_counter_matches_limits(strategy: str, steps: Any) -> None:
    _run(strategy, steps)


def test_an_entry_exactly_one_window_old_still_counts_as_limits_hit_says() -> None:
    now = [1_000_000.0]
    with _clock(now):
        counter = MemoryCounter("moving-window")
        ref = strategies.MovingWindowRateLimiter(MemoryStorage())
        items = tuple(parse_many("2/10 seconds;5/minute"))
        ids = ("t", "a", "*")
        for _ in range(2):
            assert counter.count(items, ids)[0]
            assert ref.hit(items[0], *ids)
        now[0] += 10  # both entries are exactly one window old
        assert ref.test(items[0], *ids) and not ref.hit(items[0], *ids)
        allowed, counted = counter.count(items, ids)
        assert not allowed and [c[0] for c in counted] == [False, True]
        now[0] += 0.001
        assert counter.count(items, ids)[0]


@pytest.mark.anyio
async def test_memory_path_counts_nothing_for_a_refused_request() -> None:
    limiter = RateLimiter(tiers={"trial": "1/minute;5/day"})
    assert (await limiter.hit("a", "trial")).allowed
    limiter._refusals.clear()  # no remembered refusal: each call reaches the counter
    for _ in range(3):
        assert not (await limiter.hit("a", "trial")).allowed
        limiter._refusals.clear()
    day = (await limiter.hit("a", "trial")).states[1]
    assert day.remaining == 4  # only the allowed call was counted


def test_expired_entries_are_swept_at_most_once_a_second() -> None:
    counter = MemoryCounter("fixed-window")
    items = tuple(parse_many("5/second"))
    started = 0
    real = threading.Timer

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal started
        started += 1
        return real(*args, **kwargs)

    with mock.patch("credit_middleware.limits.memory.threading.Timer", counting):
        for i in range(200):
            counter.count(items, ("t", f"acct-{i}", "*"))
    assert started <= 1  # limits' own storage would start up to one thread per 10 ms
