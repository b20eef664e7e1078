"""Quota models: how the emulator counts PutItems / PutUsers calls against "10 calls per second per dataset group".

AWS documents the quota (Amazon Personalize endpoints and quotas: "PutItems ... 10 per second per dataset group")
and the answer to exceeding it (``ThrottlingException``), not how the counting works. Each model below is one
reading of "10 per second"; all admit exactly ``rate`` calls over any long run of evenly paced calls, and they
differ on bursts and on calls that arrive close together:

================  ==================================================================================  =======
model             a call arriving at ``t`` is admitted when                                            bursts
================  ==================================================================================  =======
sliding-window    fewer than ``rate`` calls were admitted in ``(t - 1 s, t]`` (the default: the most    rate
                  pessimistic model that still admits ``rate`` calls in one second)
fixed-window      fewer than ``rate`` calls were admitted in the same whole second (``floor(t)``)       2 x rate
                                                                                                       across an edge
token-bucket      a token is left: the bucket holds ``burst`` tokens and refills at ``rate`` per s       burst
strict-spacing    at least ``1 / rate`` s passed since the last admitted call                           1
================  ==================================================================================  =======

Throttled calls consume nothing. A call that is admitted and then fails validation has consumed its share.
Strict spacing is stricter than the sliding window, but it is not a per-second count: it throttles two calls
50 ms apart even in a second with only two calls, which contradicts "10 per second"; it is offered as a stress
model, not as the default.

A **foreign writer** (``foreign_share`` in ``[0, 1)``) stands for another producer writing to the same dataset
group (an import script, a second connector): it attempts ``foreign_share x rate`` calls per second, evenly
spaced with a random phase, against the same model, before any of our calls that arrives after them. Its
throttled attempts are dropped (not retried) and counted.
"""

from __future__ import annotations

import collections
import math
import random
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "QUOTA_MODELS",
    "FixedWindow",
    "QuotaModel",
    "QuotaSettings",
    "Quotas",
    "SlidingWindow",
    "StrictSpacing",
    "TokenBucket",
    "make_model",
]

WINDOW_S = 1.0
QUOTA_MODELS = ("sliding-window", "token-bucket", "fixed-window", "strict-spacing")
DEFAULT_MODEL = "sliding-window"


class QuotaModel(Protocol):
    def try_acquire(self, now: float) -> bool:
        """Admit (and count) one call arriving at ``now`` (seconds, never decreasing), or refuse it."""
        ...


class SlidingWindow:
    """At most ``rate`` admissions in any window of ``window_s`` seconds ending at the arrival."""

    def __init__(self, rate: float, window_s: float = WINDOW_S) -> None:
        self.rate, self.window_s = rate, window_s
        self._admitted: collections.deque[float] = collections.deque()

    def try_acquire(self, now: float) -> bool:
        q = self._admitted
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= self.rate:
            return False
        q.append(now)
        return True


class FixedWindow:
    """At most ``rate`` admissions per whole window (``floor(now / window_s)``): a burst across an edge passes."""

    def __init__(self, rate: float, window_s: float = WINDOW_S) -> None:
        self.rate, self.window_s = rate, window_s
        self._window = -1
        self._count = 0

    def try_acquire(self, now: float) -> bool:
        window = math.floor(now / self.window_s)
        if window != self._window:
            self._window, self._count = window, 0
        if self._count >= self.rate:
            return False
        self._count += 1
        return True


class TokenBucket:
    """A bucket of ``burst`` tokens (full at start) refilled at ``rate`` tokens per second; a call takes one."""

    def __init__(self, rate: float, burst: float) -> None:
        if burst < 1:
            raise ValueError("a token bucket needs burst >= 1")
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._last: float | None = None

    def try_acquire(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0 - 1e-9:
            return False
        self._tokens -= 1.0
        return True


class StrictSpacing:
    """An admission only ``1 / rate`` seconds or more after the previous one."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._last: float | None = None

    def try_acquire(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.interval - 1e-9:
            return False
        self._last = now
        return True


def make_model(name: str, rate: float, burst: float | None = None) -> QuotaModel:
    if name == "sliding-window":
        return SlidingWindow(rate)
    if name == "fixed-window":
        return FixedWindow(rate)
    if name == "token-bucket":
        return TokenBucket(rate, rate if burst is None else burst)
    if name == "strict-spacing":
        return StrictSpacing(rate)
    raise ValueError(f"unknown quota model {name!r} (known: {', '.join(QUOTA_MODELS)})")


@dataclass(frozen=True)
class QuotaSettings:
    rate: float | None  # None or 0: unlimited
    model: str = DEFAULT_MODEL
    burst: float | None = None  # token bucket only; None: ``rate``
    foreign_share: float = 0.0


class _Key:
    """One (operation, dataset group)'s model and its foreign writer."""

    def __init__(self, settings: QuotaSettings, rate: float, now: float, rng: random.Random) -> None:
        self.model = make_model(settings.model, rate, settings.burst)
        self.last = now
        self.foreign_interval = 1.0 / (settings.foreign_share * rate) if settings.foreign_share > 0 else None
        self.next_foreign = now + rng.uniform(0.0, self.foreign_interval) if self.foreign_interval else math.inf


class Quotas:
    """The quota of every key (operation, dataset group) under one :class:`QuotaSettings`. Not thread-safe."""

    def __init__(self, settings: QuotaSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._keys: dict[Any, _Key] = {}
        self.foreign_calls = 0
        self.foreign_throttled = 0

    def try_acquire(self, key: Any, now: float) -> bool:
        rate = self.settings.rate
        if not rate:
            return True
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key(self.settings, rate, now, self._rng)
        now = max(now, state.last)  # arrivals from concurrent server threads: keep each model's clock monotonic
        interval = state.foreign_interval
        while interval is not None and state.next_foreign <= now:
            self.foreign_calls += 1
            if not state.model.try_acquire(state.next_foreign):
                self.foreign_throttled += 1
            state.next_foreign += interval
        state.last = now
        return state.model.try_acquire(now)

    def clear(self) -> None:
        self._keys.clear()
        self.foreign_calls = self.foreign_throttled = 0

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.settings.model,
            "rate": self.settings.rate,
            "burst": self.settings.burst,
            "foreign_share": self.settings.foreign_share,
            "foreign_calls": self.foreign_calls,
            "foreign_throttled": self.foreign_throttled,
        }
