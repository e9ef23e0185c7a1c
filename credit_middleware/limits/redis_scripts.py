"""All of a request's rate limits in one Redis round trip: one atomic Lua script per strategy.

`limits` checks one limit per call and reads the figures for the headers with a second call, so
a request with two limits cost four round trips (two in parallel). Here one script per
strategy takes every limit of the request, counts the request only if **every** limit has room
(a refused call spends no slot of the others) and returns the raw state each limit's figures
come from; :class:`RedisCounter` turns that state into remaining/reset with the formulas of
`limits`' own strategies (``get_window_stats``). The data kept under the keys is `limits`' own
(a newest-first list of timestamps; a counter with a TTL; a current and a previous counter), and
``tests/limits/test_ratelimit_scripts.py`` runs the same random hit sequences through these
scripts and through `limits`' Redis strategies and compares the answers.

Every key of one request shares the hash tag ``{<strategy>/<account>}``: one Redis Cluster slot,
so the script runs on one node. Scripts go by EVALSHA on the app's shared client; where Redis
does not know the script yet (first use, a restart, a failover, another cluster node) that
call is answered NOSCRIPT and is sent again as EVAL, which runs the script and caches it: two
round trips, once per node. (``register_script`` would load it with SCRIPT LOAD on every
primary and then retry: a herd of first requests on a fresh cluster sent three round trips
each, and timed out.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from limits import RateLimitItem

__all__ = ["SCRIPTS", "Counted", "RedisCounter", "sliding_figures"]

# KEYS[i]: limit i's list of timestamps, newest first. ARGV: now, then limit and expiry (s) per
# limit. Reply: allowed, then per limit: fits (0/1), count in the window, oldest entry in it.
_MOVING = """
local now = tonumber(ARGV[1])
local n = #KEYS
local reply = {1}
local counts, oldest = {}, {}
for i = 1, n do
  local key, limit = KEYS[i], tonumber(ARGV[2 * i])
  local target = now - tonumber(ARGV[2 * i + 1])
  -- the list may be far shorter than the limit (a quota much larger than the traffic): search
  -- only what is there
  local low, high, found = 0, math.min(limit, redis.call('llen', key)) - 1, -1
  local first = tonumber(redis.call('lindex', key, 0))
  if not first or first < target then high = -1 end
  while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = tonumber(redis.call('lindex', key, mid))
    if value and value >= target then found = mid; low = mid + 1 else high = mid - 1 end
  end
  counts[i] = found + 1
  oldest[i] = found >= 0 and redis.call('lindex', key, found) or false
  local fits = counts[i] < limit and 1 or 0
  if fits == 0 then reply[1] = 0 end
  reply[3 * i - 1] = fits
end
if reply[1] == 1 then
  for i = 1, n do
    local key, limit = KEYS[i], tonumber(ARGV[2 * i])
    redis.call('lpush', key, now)
    redis.call('ltrim', key, 0, limit - 1)
    redis.call('expire', key, ARGV[2 * i + 1])
    counts[i] = counts[i] + 1
    if not oldest[i] then oldest[i] = redis.call('lindex', key, 0) end
  end
end
for i = 1, n do
  reply[3 * i] = counts[i]
  reply[3 * i + 1] = oldest[i]
end
return reply
"""

# KEYS[i]: limit i's counter. ARGV: limit and expiry (s) per limit.
# Reply: allowed, then per limit: fits, count, PTTL (ms).
_FIXED = """
local n = #KEYS
local reply = {1}
local counts = {}
for i = 1, n do
  counts[i] = tonumber(redis.call('get', KEYS[i])) or 0
  local fits = counts[i] < tonumber(ARGV[2 * i - 1]) and 1 or 0
  if fits == 0 then reply[1] = 0 end
  reply[3 * i - 1] = fits
end
if reply[1] == 1 then
  for i = 1, n do
    counts[i] = redis.call('incrby', KEYS[i], 1)
    if counts[i] == 1 or redis.call('pttl', KEYS[i]) == -1 then
      redis.call('expire', KEYS[i], ARGV[2 * i])
    end
  end
end
for i = 1, n do
  reply[3 * i] = counts[i]
  reply[3 * i + 1] = redis.call('pttl', KEYS[i])
end
return reply
"""

# KEYS[2i-1], KEYS[2i]: limit i's previous and current counters. ARGV: limit and expiry (s)
# per limit. Reply: allowed, then per limit: fits, previous count, previous PTTL, current
# count, current PTTL (ms; 0 for a missing key).
_SLIDING = """
local n = #KEYS / 2
local reply = {1}
local state = {}
local function read(previous, current)
  local pc = tonumber(redis.call('get', previous)) or 0
  local pt = math.max(0, tonumber(redis.call('pttl', previous)))
  local cc = tonumber(redis.call('get', current)) or 0
  local ct = math.max(0, tonumber(redis.call('pttl', current)))
  return {pc, pt, cc, ct}
end
for i = 1, n do
  local previous, current = KEYS[2 * i - 1], KEYS[2 * i]
  local expiry = tonumber(ARGV[2 * i]) * 1000
  local ttl = tonumber(redis.call('pttl', current))
  if ttl > 0 and ttl < expiry then
    -- the current window has ended: it becomes the previous one
    redis.call('rename', current, previous)
    redis.call('set', current, 0, 'PX', ttl + expiry)
  end
  local s = read(previous, current)
  state[i] = s
  local weighted = math.floor(s[1] * s[2] / expiry) + s[3]
  local fits = weighted + 1 <= tonumber(ARGV[2 * i - 1]) and 1 or 0
  if fits == 0 then reply[1] = 0 end
  reply[5 * i - 3] = fits
end
if reply[1] == 1 then
  for i = 1, n do
    local previous, current = KEYS[2 * i - 1], KEYS[2 * i]
    if redis.call('exists', current) == 1 then
      redis.call('incrby', current, 1)
    else
      redis.call('set', current, 1, 'PX', tonumber(ARGV[2 * i]) * 2000)
    end
    state[i] = read(previous, current)
  end
end
for i = 1, n do
  for j = 1, 4 do reply[5 * i - 3 + j] = state[i][j] end
end
return reply
"""

SCRIPTS = {"moving-window": _MOVING, "fixed-window": _FIXED, "sliding-window-counter": _SLIDING}
_WIDTH = {"moving-window": 3, "fixed-window": 3, "sliding-window-counter": 5}

#: per limit: whether it has room, what is left after this request, seconds until it resets
Counted = tuple[bool, int, float]


class _Plan:
    """What one tuple of limits needs on every request, computed once: key suffixes, ARGV."""

    __slots__ = ("amounts", "args", "expiries", "suffixes")

    def __init__(self, items: Sequence[RateLimitItem], sliding: bool) -> None:
        self.amounts = [item.amount for item in items]
        self.expiries = [item.get_expiry() for item in items]
        base = [f"/{i.amount}/{i.multiples}/{i.GRANULARITY.name}" for i in items]
        # the previous window's counter first, as the script reads KEYS in pairs
        self.suffixes = [s for b in base for s in (b + "/-1", b)] if sliding else base
        self.args: list[Any] = [
            x for a, e in zip(self.amounts, self.expiries, strict=True) for x in (a, e)
        ]


class RedisCounter:
    """One strategy's script on a redis.asyncio client (plain, Sentinel master or cluster)."""

    def __init__(self, client: Any, strategy: str, key_prefix: str, tag: str) -> None:
        from redis.exceptions import NoScriptError

        self._strategy = strategy
        self._client = client
        self._source = SCRIPTS[strategy]
        self._sha = hashlib.sha1(self._source.encode(), usedforsecurity=False).hexdigest()
        self._noscript = NoScriptError
        self._known = False  # True once a call ran it: EVALSHA first from then on
        self._width = _WIDTH[strategy]
        self._prefix = f"{key_prefix}:{{{tag}/"
        self._plans: dict[tuple[RateLimitItem, ...], _Plan] = {}

    def _plan(self, items: tuple[RateLimitItem, ...]) -> _Plan:
        plan = self._plans.get(items)
        if plan is None:
            plan = _Plan(items, self._strategy == "sliding-window-counter")
            self._plans[items] = plan
        return plan

    async def count(
        self, items: tuple[RateLimitItem, ...], account: str, route: str, now: float
    ) -> tuple[bool, list[Counted]]:
        """Count one request against every limit in ``items`` if all have room (one round
        trip): whether it was allowed, and each limit's figures afterwards."""
        plan = self._plan(items)
        head = f"{self._prefix}{account}}}/{route}"
        keys = [head + suffix for suffix in plan.suffixes]
        args = [now, *plan.args] if self._strategy == "moving-window" else plan.args
        reply = await self._run(keys, args)
        decode = _DECODERS[self._strategy]
        w = self._width
        out = [
            decode(plan.amounts[i], plan.expiries[i], reply[1 + w * i : 1 + w * (i + 1)], now)
            for i in range(len(items))
        ]
        return reply[0] == 1, out

    async def _run(self, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA; EVAL where this Redis node does not know the script (which caches it)."""
        if self._known:
            try:
                return await self._client.evalsha(self._sha, len(keys), *keys, *args)
            except self._noscript:
                pass  # this node does not know it (yet, or any more)
        reply = await self._client.eval(self._source, len(keys), *keys, *args)
        self._known = True
        return reply


def _moving(amount: int, expiry: int, r: list[Any], now: float) -> Counted:
    # limits: the window starts at its oldest entry (now if it is empty) and resets one expiry
    # later; what is left is the quota minus the entries inside it
    fits, count, oldest = r
    start = float(oldest) if count else now
    return fits == 1, amount - int(count), start + expiry - now


def _fixed(amount: int, expiry: int, r: list[Any], now: float) -> Counted:
    fits, count, pttl = r
    return fits == 1, max(0, amount - int(count)), max(0, int(pttl)) / 1000


def _sliding(amount: int, expiry: int, r: list[Any], now: float) -> Counted:
    fits, previous, previous_ms, current, current_ms = (int(x) for x in r)
    return (fits == 1, *sliding_figures(amount, expiry, previous, previous_ms / 1000, current,
                                        current_ms / 1000))  # fmt: skip


def sliding_figures(
    amount: int, expiry: int, previous: int, previous_ttl: float, current: int, current_ttl: float
) -> tuple[int, float]:
    """Remaining and seconds to reset of a sliding-window counter from its two windows' counts
    and TTLs (s): `limits`' SlidingWindowCounterRateLimiter.get_window_stats."""
    remaining = max(0, amount - math.floor(previous * previous_ttl / expiry + current))
    if not (previous or current):
        return remaining, 0.0
    previous_in = previous_ttl % (expiry / previous) if previous else math.inf
    # the current window becomes the previous one when its TTL falls to one expiry; one that
    # starts right now has exactly two left, for which limits' TTL % expiry says 0 (it reads
    # the TTL a moment later, in a call of its own, and gets one expiry less that moment)
    current_in = (current_ttl % expiry or float(expiry)) if current else math.inf
    return remaining, min(previous_in, current_in)


_DECODERS = {"moving-window": _moving, "fixed-window": _fixed, "sliding-window-counter": _sliding}
