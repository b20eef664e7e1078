"""The deadline (issue 5): with every call throttled, an invocation returns before its deadline and reports
every unsent record, whatever the remaining time it starts with."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from connector import handler
from connector.config import load_settings
from localcloud.personalize_emulator import PersonalizeEmulator
from tests.factories import DATASET_ARN, event, kinesis_record
from tests.fakes import FakeSQS

pytestmark = pytest.mark.integration


class ClockContext:
    """A Lambda context whose remaining time runs down with the wall clock."""

    aws_request_id = "req-deadline"
    function_name = "connector"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:111122223333:function:connector"

    def __init__(self, remaining_s: float) -> None:
        self.end = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self.end - time.monotonic()) * 1000)


@pytest.fixture(scope="module")
def throttling_emulator() -> Iterator[PersonalizeEmulator]:
    with PersonalizeEmulator(tps=10, throttle_rate=1.0, latency_ms=20) as emu:
        emu.register_dataset(DATASET_ARN)
        yield emu


# The worst case of one call here is 3 × (2 s connect + 0.5 s read + 0.1 s pacing) + backoffs of up to 1 s and
# 2 s, each raised by up to 5 s by x-amz-retry-after (botocore 1.44) = 20.8 s: with 1.5 s or 20 s left nothing is
# sent; with 22 s, one call is tried (three throttled attempts) and then stops (and the handler backs off ≤ 1 s).
@pytest.mark.parametrize(("remaining_s", "attempts"), [(1.5, 0), (20.0, 0), (22.0, 3)])
def test_returns_before_the_deadline_and_reports_every_unsent_record(
    throttling_emulator: PersonalizeEmulator, monkeypatch: pytest.MonkeyPatch, remaining_s: float, attempts: int
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", throttling_emulator.endpoint_url)
    settings = load_settings(
        {
            "DATASET_ARN": DATASET_ARN,
            "DLQ_URL": "https://sqs/q",
            "DEADLINE_MARGIN_MS": "500",
            "PUT_ITEMS_TIMEOUT_S": "0.5",
            "PUT_ITEMS_MAX_ATTEMPTS": "3",
        }
    )
    handler.reset(handler.build_runtime(settings, sqs=FakeSQS()))
    records = [kinesis_record({"id": f"i{n}", "v": n}, seq=str(1000 + n)) for n in range(95)]
    context = ClockContext(remaining_s)
    before = throttling_emulator.stats()["calls"]
    try:
        response = handler.handler(event(*records), context)
    finally:
        handler.reset()
    left_ms = context.get_remaining_time_in_millis()
    assert left_ms > 0, "the invocation ran past its deadline"
    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        r["kinesis"]["sequenceNumber"] for r in records
    )
    assert throttling_emulator.stats()["calls"] - before == attempts  # after a failed call the rest is not sent
