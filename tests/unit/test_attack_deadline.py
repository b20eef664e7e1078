"""Attack: the deadline (issue 8, defect 9) and the reserve the infrastructure leaves for it."""

from __future__ import annotations

from typing import Any

import pytest

from connector import handler, pipeline
from connector.config import load_settings
from connector.deadline import Deadline, OutageBackoff
from connector.putitems import Pacer, PutItemsSink
from connector.versions import VersionGuard
from infra.config import MIN_SENDING_WINDOW_MS, PUT_ITEMS_WORST_CALL_MS
from infra.config import _lambda as lambda_config  # the validation of cdk.json's "lambda" key
from tests.factories import DATASET_ARN, FakeContext, cdc_payload, dynamodb_record, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"


class Clock:
    def __init__(self) -> None:
        self.now_ms = 0.0


class SlowUnprocessedDynamoDB:
    """A state table that answers every BatchGetItem after ``per_request_ms`` (the worst case the guard reserves
    for one request) with every key unprocessed, as a throttled table does."""

    def __init__(self, clock: Clock, per_request_ms: float) -> None:
        self.clock, self.per_request_ms = clock, per_request_ms
        self.requests = 0

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        self.clock.now_ms += self.per_request_ms
        return {"Responses": {}, "UnprocessedKeys": RequestItems}


def test_attack_the_version_guard_read_can_run_past_the_deadline() -> None:
    """``_guard`` reserves one request's worst case per 100 items, but ``VersionGuard.stored`` makes up to five
    rounds for UnprocessedKeys (plus 0.75 s of sleeps): the invocation runs four worst cases past the time it
    reserved, and past the Lambda timeout."""
    clock = Clock()
    worst_ms, margin_ms, budget_ms = 22_000, 5_000, 30_000  # 30 s left when the batch starts
    guard = VersionGuard(
        SlowUnprocessedDynamoDB(clock, worst_ms),
        "state",
        DATASET_ARN,
        worst_ms=worst_ms,
        sleep=lambda s: setattr(clock, "now_ms", clock.now_ms + s * 1000),
    )
    deadline = Deadline(lambda: budget_ms - clock.now_ms, margin_ms)
    fake = FakePersonalize()
    sink = PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=1, pacer=Pacer(1e6, sleep=lambda _: None))
    record = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a"}), seq="1")
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})
    pipeline.run(event(record), settings=settings, sink=sink, sqs=FakeSQS(), deadline=deadline, guard=guard)
    assert deadline.remaining_ms() >= 0, f"ran {-deadline.remaining_ms():.0f} ms past the Lambda timeout"


class _NoTable:
    """A state-table client that is never reached (the batch holds no CDC record)."""


# The shortest timeout the CDK app accepts with the default margin: the runtime's reserve plus a sending window.
MIN_ACCEPTED_S = -(-(PUT_ITEMS_WORST_CALL_MS + MIN_SENDING_WINDOW_MS + 5_000) // 1000)


@pytest.mark.parametrize(
    ("timeout_s", "state_table"),
    [(MIN_ACCEPTED_S, None), (MIN_ACCEPTED_S, "state")],
    ids=["minimum-timeout-cdk-accepts", "with-STATE_TABLE"],
)
def test_attack_a_timeout_the_cdk_config_accepts_never_sends_anything(timeout_s: int, state_table: str | None) -> None:
    """infra/config.py sized the minimum timeout with a 24 s worst call (PUT_ITEMS_WORST_CALL_MS), but the
    runtime reserves 34.3 s before each PutItems call (retry-after, defect 9). A timeout that ``cdk deploy``
    accepted therefore left no room for one call: every record retried on every invocation, forever. The
    shortest accepted timeout must send (with and without STATE_TABLE)."""
    cfg = lambda_config({"timeoutSeconds": timeout_s})  # accepted by the CDK app's validation
    env = {
        "DATASET_ARN": DATASET_ARN,
        "DLQ_URL": DLQ,
        "DEADLINE_MARGIN_MS": str(cfg.deadline_margin_ms),
        "MAX_CALLS_PER_SECOND": f"{cfg.effective_max_calls_per_second:g}",
        **({"STATE_TABLE": state_table} if state_table else {}),
    }
    fake = FakePersonalize()
    runtime = handler.build_runtime(load_settings(env), personalize=fake.client, sqs=FakeSQS(), dynamodb=_NoTable())
    runtime.backoff = OutageBackoff(sleep=lambda _: None)
    handler.reset(runtime)
    try:
        records = [dynamodb_record("INSERT", {"sku": "a"}, {"sku": "a"}, seq="1")]
        response = handler.handler(event(*records), FakeContext(remaining_ms=cfg.timeout_seconds * 1000))
    finally:
        handler.reset()
    assert fake.items == {"a": {}}
    assert response == {"batchItemFailures": []}
