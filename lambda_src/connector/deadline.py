"""The invocation's deadline, from ``context.get_remaining_time_in_millis()``.

The pipeline asks :meth:`Deadline.allows` before every PutItems call and every DLQ send, with the worst case
that step could take. When the answer is no, it stops and reports what is left as retry, so the function
returns with time to spare instead of being killed mid-batch (a timeout would redeliver the whole batch).
"""

from __future__ import annotations

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


def worst_call_ms(max_attempts: int, connect_timeout_s: float, read_timeout_s: float, pacing_s: float = 0) -> float:
    """Upper bound of one botocore call in standard retry mode: every attempt times out (after waiting
    ``pacing_s`` for its slot), with the full throttling backoff (1 s, 2 s, 4 s … capped at 20 s) between."""
    backoff_s = sum(min(2**i, 20) for i in range(max_attempts - 1))
    return (max_attempts * (connect_timeout_s + read_timeout_s + pacing_s) + backoff_s) * 1000
