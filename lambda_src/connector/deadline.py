"""The invocation's deadline, from ``context.get_remaining_time_in_millis()``.

The pipeline asks :meth:`Deadline.allows` before every PutItems call and every DLQ send, with the worst case
that step could take. When the answer is no, it stops and reports what is left as retry, so the function
returns with time to spare instead of being killed mid-batch (a timeout would redeliver the whole batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class LambdaContextLike(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class Deadline:
    def __init__(self, remaining_ms: Callable[[], float], margin_ms: float) -> None:
        self._remaining_ms = remaining_ms
        self.margin_ms = margin_ms

    @classmethod
    def from_context(cls, context: LambdaContextLike | None, margin_ms: float) -> Deadline:
        if context is None or not hasattr(context, "get_remaining_time_in_millis"):
            return cls.unbounded()
        return cls(context.get_remaining_time_in_millis, margin_ms)

    @classmethod
    def unbounded(cls) -> Deadline:
        return cls(lambda: float("inf"), 0)

    def remaining_ms(self) -> float:
        return self._remaining_ms()

    def allows(self, step_ms: float) -> bool:
        """True when a step taking up to ``step_ms`` still ends ``margin_ms`` before the deadline."""
        return self._remaining_ms() - step_ms >= self.margin_ms


# botocore (pinned 1.44): a retry after a response carrying ``x-amz-retry-after`` waits up to 5 s longer than the
# backoff (``ExponentialBackoff._RETRY_AFTER_MAX_ADDITIONAL``); adaptive mode's client-side token bucket never
# fills slower than 0.5 tokens/s (``TokenBucket._MIN_RATE``), so one attempt can wait up to 2 s for its token.
RETRY_AFTER_MAX_ADDITIONAL_S = 5.0
ADAPTIVE_MIN_RATE = 0.5
MAX_BACKOFF_S = 20.0


def worst_call_ms(
    max_attempts: int,
    connect_timeout_s: float,
    read_timeout_s: float,
    pacing_s: float = 0,
    *,
    adaptive: bool = False,
) -> float:
    """Upper bound of one botocore call: every attempt waits ``pacing_s`` for its slot (and, in adaptive mode,
    for the client's token bucket) and times out, with the longest backoff between attempts (throttling: 1 s,
    2 s, 4 s … capped at 20 s, each raised by up to 5 s by ``x-amz-retry-after``)."""
    backoff_s = sum(min(2**i, MAX_BACKOFF_S) + RETRY_AFTER_MAX_ADDITIONAL_S for i in range(max_attempts - 1))
    per_attempt_s = connect_timeout_s + read_timeout_s + pacing_s + (1 / ADAPTIVE_MIN_RATE if adaptive else 0)
    return (max_attempts * per_attempt_s + backoff_s) * 1000


class OutageBackoff:
    """Slows a container down while a dependency is broken, so an outage is not a hot loop of invocations.

    After an invocation that stopped on an error (systemic, or a call that failed after every retry), the next
    failing invocation waits twice as long before returning, from ``base_s`` up to ``max_s``, and never past the
    deadline's margin. Any invocation that ends without such an error resets it. Lambda then redelivers the
    records (retries are bounded by record age, not by count), so nothing is lost while it waits.
    """

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_s, self.max_s = base_s, max_s
        self._sleep = sleep
        self.failures = 0

    def after(self, failed: bool, deadline: Deadline) -> float:
        """Record how the invocation ended; on failure, sleep (bounded by ``deadline``) and return the seconds."""
        if not failed:
            self.failures = 0
            return 0.0
        self.failures += 1
        wanted = min(self.base_s * 2 ** (self.failures - 1), self.max_s)
        room = (deadline.remaining_ms() - deadline.margin_ms) / 1000
        delay = max(0.0, min(wanted, room))
        if delay:
            self._sleep(delay)
        return delay
