"""PUT_ITEMS_IN_FLIGHT: one invocation keeps several PutItems calls on the wire, each sent in its own slot.

A call that waits for its answer no longer holds back the next one: with calls sent one after the other, an
invocation could make at most 1 / latency calls a second, under the quota as soon as PutItems answers in more
than about 100 ms (AWS documents no latency). The pacer still spaces every attempt; the promise is checked with
calls in flight together by ``tests/property/test_convergence.py``.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from connector import pipeline
from connector.config import ConfigError, load_settings
from connector.deadline import Deadline
from connector.putitems import HOLD_SHARE, Pacer, PutItemsSink
from tests.factories import DATASET_ARN, dynamodb_record, event
from tests.fakes import FakeSQS, Wire

LATENCY_S = 0.15
RATE = 20.0  # calls/s: slots 50 ms apart, three to a round trip


def most_at_once(wire: Wire) -> int:
    """The most calls on the wire at the same moment."""
    edges = sorted([(start, 1) for start, _, _, _ in wire.calls] + [(end, -1) for _, end, _, _ in wire.calls])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _slow_service() -> Wire:
    return Wire(latency=lambda _: LATENCY_S)


def _run(in_flight: int, calls: int = 9) -> tuple[Wire, pipeline.Result, float]:
    service = _slow_service()
    sink = PutItemsSink(service.client, DATASET_ARN, worst_call_ms=1_000, pacer=Pacer(RATE), in_flight=in_flight)
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q"})
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "title": "t"}) for i in range(10 * calls)]
    began = time.monotonic()
    result = pipeline.run(event(*records), settings=settings, sink=sink, sqs=FakeSQS(), deadline=Deadline.unbounded())
    return service, result, time.monotonic() - began


def test_calls_overlap_on_the_wire_and_every_one_keeps_its_slot() -> None:
    service, result, _ = _run(in_flight=3)
    assert result.response == {"batchItemFailures": []}
    assert result.report.calls == 9 and result.report.items_sent == 90 and result.report.attempts == 9
    assert 2 <= most_at_once(service) <= 3
    starts = service.starts()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 1 / RATE - 0.005, gaps  # the pacer's spacing holds with three senders


def test_one_in_flight_sends_one_call_after_the_other() -> None:
    service, result, _ = _run(in_flight=1)
    assert result.response == {"batchItemFailures": []} and result.report.calls == 9
    assert most_at_once(service) == 1


def test_a_deadline_stop_waits_for_the_calls_already_out_and_reports_the_rest_for_retry() -> None:
    """The deadline allows about three calls; the calls already on the wire are answered and land (put), every
    record not sent is retried, and nothing is both."""
    service = _slow_service()
    worst_ms = 100.0
    sink = PutItemsSink(service.client, DATASET_ARN, worst_call_ms=worst_ms, pacer=Pacer(RATE), in_flight=3)
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q"})
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "title": "t"}) for i in range(90)]
    # 250 ms from the first call on: how long parsing and building take on a busy machine does not matter
    end: list[float] = []

    def first_call(**_: object) -> None:
        if not end:
            end.append(time.monotonic() + 0.25)

    service.client.meta.events.register("before-parameter-build.personalize-events.PutItems", first_call)
    deadline = Deadline(lambda: (end[0] - time.monotonic()) * 1000 if end else 60_000.0, margin_ms=0)
    result = pipeline.run(event(*records), settings=settings, sink=sink, sqs=FakeSQS(), deadline=deadline)
    assert result.report.stopped == "deadline"
    put = {i.item_id for i in result.report.put}
    assert 1 <= len(service.calls) < 9 and len(put) == 10 * len(service.calls)  # every call out was answered
    failures = [int(str(f["itemIdentifier"])) for f in result.response["batchItemFailures"]]
    assert failures, "the records not sent are reported for a retry"
    lowest = min(failures)  # Lambda redelivers from the lowest reported record on
    for record in records:
        seq, sku = int(record["dynamodb"]["SequenceNumber"]), record["dynamodb"]["Keys"]["sku"]["S"]
        assert sku in put or seq >= lowest, f"{sku} was neither put nor redelivered"


@pytest.mark.parametrize("raw", ["0", "11", "2.5", "many"])
def test_put_items_in_flight_must_be_a_whole_number_from_1_to_10(raw: str) -> None:
    with pytest.raises(ConfigError, match="PUT_ITEMS_IN_FLIGHT"):
        load_settings({"DATASET_ARN": DATASET_ARN, "PUT_ITEMS_IN_FLIGHT": raw})


def test_put_items_in_flight_defaults_to_3() -> None:
    assert load_settings({"DATASET_ARN": DATASET_ARN}).put_items_in_flight == 3
    assert load_settings({"DATASET_ARN": DATASET_ARN, "PUT_ITEMS_IN_FLIGHT": "1"}).put_items_in_flight == 1


@pytest.mark.parametrize("latency_s", [0.02, 0.15])
def test_the_next_call_is_prepared_once_the_last_is_answered_or_out_for_the_hold_and_fast_answers_go_inline(
    latency_s: float,
) -> None:
    """Preparing the next call the moment the last takes its slot competes with that send for the CPU: the next
    call is prepared (its parameters built) after the last one's answer when it comes within the hold (the calls
    stay one after the other), else after the hold (they overlap, as above)."""
    service = Wire(latency=lambda _: latency_s)
    sink = PutItemsSink(service.client, DATASET_ARN, worst_call_ms=1_000, pacer=Pacer(RATE), in_flight=3)
    assert sink.hold_s == pytest.approx(HOLD_SHARE / RATE)
    prepared: list[float] = []
    threads: list[str] = []

    def prepare(**_: object) -> None:
        prepared.append(time.monotonic())
        threads.append(threading.current_thread().name)

    service.client.meta.events.register("before-parameter-build.personalize-events.PutItems", prepare)
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q"})
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "title": "t"}) for i in range(60)]
    result = pipeline.run(event(*records), settings=settings, sink=sink, sqs=FakeSQS(), deadline=Deadline.unbounded())
    assert result.report.calls == 6
    calls = sorted(service.calls)
    for previous, ready in zip(calls[:-1], prepared[1:], strict=True):
        start, end, _, _ = previous
        assert ready >= min(end, start + sink.hold_s) - 0.002, (ready - start, end - start)
    fast = latency_s < sink.hold_s
    assert (most_at_once(service) == 1) == fast  # overlapped only when slower than the hold
    # The first call goes to a sender thread (the latency is not known yet); once answers are known to come within
    # the hold, the calls are sent on the caller's thread, as one after the other.
    assert threads[0].startswith("putitems")
    assert all((name == threading.current_thread().name) == fast for name in threads[1:]), threads
