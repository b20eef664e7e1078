"""What the runner did: one ledger entry per invocation, and counters across mappings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from localcloud.esm.batch_policy import Outcome

# --------------------------------------------------------------------------------------------------------------
# Ledger and counters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    """One entry of the runner's ledger: an invocation of a function for a batch of one shard."""

    index: int
    mapping: str
    function: str
    shard_id: str
    request_id: str
    started_at: float  # epoch seconds
    duration_ms: float
    sequence_numbers: tuple[str, ...]
    outcome: Outcome
    response: Any = None
    error: Mapping[str, Any] | None = None
    detail: str | None = None
    attempt: int = 0  # failed attempts of this (sub)batch before this invocation
    cold_start: bool = False
    init_ms: float | None = None
    worker_pid: int | None = None
    iterator_age_ms: float = 0.0
    fault: Literal["kill", "hang"] | None = None  # a fault hook that fired during this invocation

    @property
    def batch_size(self) -> int:
        return len(self.sequence_numbers)

    @property
    def failed(self) -> bool:
        return self.outcome not in ("success", "partial")


_COUNTERS = (
    "invocations",
    "records_delivered",
    "records_succeeded",
    "records_filtered",
    "retries",
    "bisects",
    "function_errors",
    "invalid_responses",
    "partial_failures",
    "timeouts",
    "kills",
    "hangs",
    "cold_starts",
    "on_failure_messages",
    "records_to_on_failure",
    "records_expired",
    "poll_errors",
    "throttles",
)


@dataclass
class RunnerStats:
    """Counters across all mappings (``by_mapping`` breaks them down per ESM logical id)."""

    invocations: int = 0
    records_delivered: int = 0  # records sent to the function, counting redeliveries
    records_succeeded: int = 0  # records checkpointed after a successful (part of an) invocation
    records_filtered: int = 0
    retries: int = 0
    bisects: int = 0
    function_errors: int = 0  # raised, crashed, timed out, killed or answered an invalid response
    invalid_responses: int = 0
    partial_failures: int = 0
    timeouts: int = 0
    kills: int = 0  # workers killed by the kill_worker_probability fault hook
    hangs: int = 0  # workers frozen by the hang fault hook (a timeout, unless the answer was already out)
    cold_starts: int = 0
    on_failure_messages: int = 0
    records_to_on_failure: int = 0
    records_expired: int = 0  # of records_to_on_failure: past MaximumRecordAgeInSeconds
    poll_errors: int = 0
    throttles: int = 0  # invokes rejected at the reserved concurrency (Lambda's Throttles metric)
    records_pending: int = 0  # read from the shards but not yet checkpointed: the lag, in records
    iterator_age_ms: float = 0.0  # the highest current iterator age over the shards
    max_iterator_age_ms: float = 0.0
    shards: int = 0
    in_flight: int = 0
    by_mapping: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
