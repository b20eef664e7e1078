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

    @classmethod
    def after(cls, seconds: float, margin_ms: float = 0, clock: Callable[[], float] = time.monotonic) -> Deadline:
        end = clock() + seconds
        return cls(lambda: (end - clock()) * 1000, margin_ms)

    def remaining_ms(self) -> float:
        return self._remaining_ms()

    def allows(self, step_ms: float) -> bool:
        """True when a step taking up to ``step_ms`` still ends ``margin_ms`` before the deadline."""
        return self._remaining_ms() - step_ms >= self.margin_ms
