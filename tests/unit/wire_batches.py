"""Helpers for the tests that drive ``pipeline.run`` against a real botocore ``personalize-events`` client answered
on the wire (``tests.fakes.Wire``, at ``before-send``, after the pacer's or the shared budget's hook), with calls in
flight together: the attacks on calls in flight, on the throttle gate and on the inline/pooled switch.

botocore's jittered backoff is set to 0 by the ``no_backoff`` fixture (``tests/unit/conftest.py``) where a module
asks for it, so the timelines are deterministic; a test that could hang runs under :func:`guarded`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from connector import handler, pipeline
from connector.budget import SharedBudget
from connector.config import Settings, load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from tests.factories import DATASET_ARN, dynamodb_record, event
from tests.fakes import Answer, FakeSQS, Wire

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"
THROTTLE: Answer = ("ThrottlingException", "Rate exceeded")
HANG_S = 5.0


def settings() -> Settings:
    return load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})


def sink_for(wire: Wire, in_flight: int, *, rate: float = 1e6, worst_call_ms: float = 1.0) -> PutItemsSink:
    """A sink paced locally at ``rate`` calls/s (no sleeping at all above 1e5/s)."""
    sleep: Callable[[float], None] = time.sleep if rate < 1e5 else (lambda _: None)
    return PutItemsSink(
        wire.client, DATASET_ARN, worst_call_ms=worst_call_ms, pacer=Pacer(rate, sleep=sleep), in_flight=in_flight
    )


def shared_runtime(wire: Wire, dynamodb: Any, quota: int, in_flight: int = 3) -> tuple[handler.Runtime, SharedBudget]:
    """The handler's runtime with the shared budget in ``dynamodb``'s table ``state`` (``moto_state_table``), and
    that budget."""
    env = {
        "DATASET_ARN": DATASET_ARN,
        "DLQ_URL": DLQ,
        "STATE_TABLE": "state",
        "QUOTA_CALLS_PER_SECOND": str(quota),
        "PUT_ITEMS_IN_FLIGHT": str(in_flight),
    }
    rt = handler.build_runtime(load_settings(env), personalize=wire.client, sqs=FakeSQS(), dynamodb=dynamodb)
    assert rt.budget is not None and rt.sink.in_flight == in_flight
    return rt, rt.budget


def records_for(n: int, bad: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """``n`` DynamoDB inserts of items ``s0``..; those in ``bad`` carry ``bad`` (``Script`` refuses them)."""
    return [
        dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", **({"bad": True} if f"s{i}" in bad else {})})
        for i in range(n)
    ]


def run(
    records: list[dict[str, Any]], sink: PutItemsSink, sqs: FakeSQS | None = None, **kwargs: Any
) -> pipeline.Result:
    kwargs.setdefault("deadline", Deadline.unbounded())
    sqs = sqs if sqs is not None else FakeSQS()
    return pipeline.run(event(*records), settings=settings(), sink=sink, sqs=sqs, **kwargs)


def run_rt(rt: handler.Runtime, records: list[dict[str, Any]], sqs: FakeSQS | None = None) -> pipeline.Result:
    """:func:`run` with a runtime's settings and sink (``shared_runtime``)."""
    return pipeline.run(
        event(*records), settings=rt.settings, sink=rt.sink, sqs=sqs or FakeSQS(), deadline=Deadline.unbounded()
    )


def guarded(sink: PutItemsSink, fn: Callable[[], Any], timeout: float = HANG_S) -> Any:
    """Run ``fn`` on a daemon thread; fail the test if it has not returned after ``timeout`` seconds (after
    freeing the gate, so that the sink's sender threads end and the interpreter can exit)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        gate = sink._gate
        with gate._cond:
            stuck = len(gate._retried)
            gate._retried.clear()
            gate._cond.notify_all()
        thread.join(timeout)
        pytest.fail(f"the batch hung for {timeout} s: {stuck} call(s) left marked as retried in the gate")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Script:
    """A wire rule: the n-th attempt of the call whose item ids are exactly ``ids`` (keyed by its first item id)
    waits ``latency`` and answers ``answer`` (``plans[first id][n]``); other attempts: ``default``. A callable
    answer is called (it may raise); a ``bad`` item makes any call holding it an ``InvalidInputException``."""

    def __init__(
        self,
        plans: dict[str, list[tuple[float, Any]]],
        default_latency: float = 0.0,
        size: int = 10,
    ) -> None:
        self.plans = plans
        self.default_latency = default_latency
        self.size = size
        self.seen: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def __call__(self, items: list[dict[str, Any]]) -> Answer:
        ids = tuple(i["itemId"] for i in items)
        with self._lock:
            n = self.seen.get(ids, 0)
            self.seen[ids] = n + 1
        plan = self.plans.get(ids[0], []) if len(ids) == self.size else []
        latency, answer = plan[n] if n < len(plan) else (self.default_latency, None)
        time.sleep(latency)
        if callable(answer):
            answer = answer()
        if answer is None and any(json.loads(i.get("properties", "{}")).get("bad") for i in items):
            return ("InvalidInputException", "Invalid item")
        return answer


def failures(result: pipeline.Result) -> list[int]:
    """The sequence numbers the batch response reports for a retry."""
    return [int(str(f["itemIdentifier"])) for f in result.response["batchItemFailures"]]


def dead_lettered(sqs: FakeSQS) -> set[str]:
    """The sequence numbers of the records in the DLQ."""
    return {str(json.loads(m)["sequenceNumber"]) for m in sqs.messages}


def busiest_second(wire: Wire) -> int:
    """The most attempts that reached the wire within any 1 s."""
    starts = wire.starts()
    return max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
