"""PutItems step: coalescing, packing, limits, pacing, bisecting, systemic and transient errors, the deadline."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from connector.change import from_record, newest_first
from connector.config import parse_mapping
from connector.deadline import Deadline, worst_call_ms
from connector.putitems import (
    Group,
    Pacer,
    PendingItem,
    PutItemsSink,
    SendReport,
    check_limits,
    coalesce,
)
from connector.source import parse_event
from tests.factories import DATASET_ARN, cdc_payload, dynamodb_record, event, kinesis_record
from tests.fakes import FakePersonalize, reject_ids

MAPPING = parse_mapping({})


def changes(*records: dict[str, Any]) -> list[Any]:
    return [from_record(p, MAPPING) for p in parse_event(event(*records))]


def pending(*ids: str, props: str | None = '{"a":1}') -> list[PendingItem]:
    out = []
    for i in ids:
        (c,) = changes(kinesis_record({"id": i}))
        out.append(PendingItem(Group(i, [c]), c, props))
    return out


class NoWait(Pacer):
    def __init__(self) -> None:
        super().__init__(10, clock=lambda: 0.0, sleep=lambda _: None)


def sink(client: Any, worst_ms: float = 1_000) -> PutItemsSink:
    return PutItemsSink(client, DATASET_ARN, worst_call_ms=worst_ms, pacer=NoWait())


def send(fake: FakePersonalize, items: list[PendingItem], deadline: Deadline | None = None) -> SendReport:
    return sink(fake.client).send(items, deadline or Deadline.unbounded())


# --- coalescing -------------------------------------------------------------------------------------------


def test_coalesce_last_write_wins_in_stream_order() -> None:
    recs = [dynamodb_record("MODIFY", {"sku": "a"}, {"sku": "a", "v": v}) for v in (1, 2, 3)]
    recs.insert(1, dynamodb_record("INSERT", {"sku": "b"}, {"sku": "b"}))
    groups = coalesce(changes(*recs))
    assert [g.item_id for g in groups] == ["a", "b"]  # first-seen order
    assert newest_first(groups[0].changes)[0].record.new_image == {"sku": {"S": "a"}, "v": {"N": "3"}}
    assert [c.position for c in newest_first(groups[0].changes)] == [3, 2, 0]


def test_coalesce_cdc_by_creation_time_not_arrival() -> None:
    newest = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2}, ts=3_000))
    older = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 1}, ts=2_000))
    duplicate = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2}, ts=3_000))
    (group,) = coalesce(changes(newest, older, duplicate))
    winner = newest_first(group.changes)[0]
    assert (winner.record.new_image or {})["v"] == {"N": "2"}
    assert winner.record.position == 2  # equal times: the later sequence number wins
    assert [c.position for c in newest_first(group.changes)] == [2, 0, 1]


def test_coalesce_falls_back_to_position_when_a_cdc_change_has_no_time() -> None:
    no_ts = cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 1})
    del no_ts["dynamodb"]["ApproximateCreationDateTime"]
    timed = kinesis_record(cdc_payload("MODIFY", {"sku": "a"}, {"sku": "a", "v": 2}, ts=3_000))
    (group,) = coalesce(changes(timed, kinesis_record(no_ts)))
    assert [c.position for c in newest_first(group.changes)] == [1, 0]


# --- packing and limits -----------------------------------------------------------------------------------


def test_packs_exactly_ten_per_call() -> None:
    fake = FakePersonalize()
    report = send(fake, pending(*[f"i{n}" for n in range(35)]))
    assert [len(c) for c in fake.calls] == [10, 10, 10, 5]
    assert report.calls == 4 and report.items_sent == 35 and len(report.put) == 35
    assert fake.calls[0][0] == {"itemId": "i0", "properties": '{"a":1}'}


def test_item_without_properties_sends_no_properties_field() -> None:
    fake = FakePersonalize()
    send(fake, pending("x", props=None))
    assert fake.calls == [[{"itemId": "x"}]]


@pytest.mark.parametrize(
    ("item_id", "props", "reason"),
    [
        ("x" * 257, "{}", "itemId is 257 characters; the limit is 256"),
        (
            "ok",
            json.dumps({"a": "é" * 31_992}, ensure_ascii=False),
            "properties are 32001 characters; the limit is 32000",
        ),
    ],
)
def test_limits(item_id: str, props: str, reason: str) -> None:
    assert check_limits(pending(item_id, props=props)[0]) == reason


def test_limits_at_the_maximum_pass() -> None:
    assert check_limits(pending("x" * 256, props="p" * 32_000)[0]) is None


# --- rejected calls are bisected --------------------------------------------------------------------------


def test_bisect_isolates_the_rejected_item_and_lands_the_rest() -> None:
    fake = FakePersonalize(reject_ids("i6"))
    report = send(fake, pending(*[f"i{n}" for n in range(10)]))
    assert [(p.item_id, r) for p, r in report.poison] == [("i6", "PutItems rejected the item: Invalid item i6")]
    assert sorted(p.item_id for p in report.put) == sorted(f"i{n}" for n in range(10) if n != 6)
    assert set(fake.items) == {f"i{n}" for n in range(10)} - {"i6"}
    assert [len(c) for c in fake.calls] == [10, 5, 5, 2, 1, 1, 3]
    assert report.rejected_calls == 4


def test_bisect_finds_two_bad_items() -> None:
    fake = FakePersonalize(reject_ids("i0", "i9"))
    report = send(fake, pending(*[f"i{n}" for n in range(10)]))
    assert sorted(p.item_id for p, _ in report.poison) == ["i0", "i9"]
    assert len(report.put) == 8


# --- systemic and transient errors ------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["ResourceNotFoundException", "AccessDeniedException", "ResourceInUseException"])
def test_systemic_error_retries_everything_and_logs_once(code: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakePersonalize(lambda _: (code, "dataset gone"))
    report = send(fake, pending(*[f"i{n}" for n in range(25)]))
    assert len(fake.calls) == 1  # stops at the first answer
    assert len(report.retry) == 25 and not report.put and not report.poison
    assert report.stopped == code
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].error_code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", ["ThrottlingException", "InternalServerError"])
def test_transient_failure_stops_and_retries_the_rest(code: str) -> None:
    answers = iter([None, (code, "slow down")])
    fake = FakePersonalize(lambda _: next(answers))
    report = send(fake, pending(*[f"i{n}" for n in range(30)]))
    assert len(fake.calls) == 2  # the third call is not sent: Lambda would redeliver it anyway
    assert len(report.put) == 10 and len(report.retry) == 20
    assert report.stopped == code


# --- deadline ---------------------------------------------------------------------------------------------


def test_deadline_stops_sending_and_retries_the_rest() -> None:
    checks = []

    def remaining() -> float:
        checks.append(1)
        return 10_000 if len(checks) <= 2 else 1_499  # the third check finds too little time

    deadline = Deadline(remaining, margin_ms=500)
    fake = FakePersonalize()
    report = sink(fake.client, worst_ms=1_000).send(pending(*[f"i{n}" for n in range(30)]), deadline)
    assert len(fake.calls) == 2
    assert len(report.retry) == 10 and report.stopped == "deadline"


def test_worst_call_covers_every_attempt_and_backoff() -> None:
    # 3 attempts × (2 s connect + 5 s read + 0.1 s pacing) + backoff (1 s + 5 s retry-after) + (2 s + 5 s)
    assert worst_call_ms(3, 2, 5, 0.1) == pytest.approx(34_300)
    # adaptive mode: each attempt may also wait 2 s for the client's token bucket (0.5 tokens/s at least)
    assert worst_call_ms(3, 2, 5, 0.1, adaptive=True) == pytest.approx(40_300)


# --- pacing -----------------------------------------------------------------------------------------------


def test_pacer_spaces_calls_at_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pacer = Pacer(10, clock=lambda: now[0], sleep=sleep)
    starts = []
    for _ in range(5):
        pacer.wait()
        starts.append(now[0])
    assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    now[0] += 5  # idle time does not bank a burst
    pacer.wait()
    pacer.wait()
    assert slept[-1] == pytest.approx(0.1)


# --- the wire format, through botocore's Stubber ------------------------------------------------------------


def test_wire_parameters_with_stubber() -> None:
    client = boto3.client("personalize-events", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response(
            "put_items",
            {},
            {"datasetArn": DATASET_ARN, "items": [{"itemId": "a", "properties": '{"a":1}'}, {"itemId": "b"}]},
        )
        stub.add_client_error("put_items", "InvalidInputException", "bad", 400)
        items = pending("a") + pending("b", props=None)
        report = sink(client).send(items, Deadline.unbounded())
        assert report.calls == 1
        report = sink(client).send(pending("c"), Deadline.unbounded())
        assert [r for _, r in report.poison] == ["PutItems rejected the item: bad"]
        stub.assert_no_pending_responses()


def test_an_isolated_throttle_is_retried_at_its_next_slot_and_a_congestion_event_after_the_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under the shared budget, a throttle the budget tolerates (isolated: the rate holds) is retried at the call's
    next slot: botocore's backoff (``random() × 2^attempt`` s, up to 1 s for the first retry) would only stall the
    batch, since every attempt waits for a slot anyway. A throttle that cuts the rate (a congestion event) keeps
    the backoff. Found in the strict-spacing runs of ``bench_localcloud``: one isolated throttle left the sender
    idle for 0.6 s (a missed slot "asked late" by 629 ms)."""
    from botocore.retries.standard import ExponentialBackoff

    from tests.fakes import Wire, moto_state_table
    from tests.unit.wire_batches import THROTTLE, records_for, run_rt, shared_runtime

    # botocore's backoff, made 2 s so that "at the next slot" (about 0.1 s) and "after the backoff" stay apart on a
    # loaded machine: a clean-clone CI run measured 0.54 s for the next slot (a table request in between)
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 2.0)
    seen: list[int] = [0]

    def rule(items: list[dict[str, Any]]) -> Any:
        seen[0] += 1
        return THROTTLE if seen[0] in (2, 3) else None  # the second call: throttled twice, accepted the third time

    wire = Wire(rule, attempts=3)
    with moto_state_table("state") as ddb:
        rt, budget = shared_runtime(wire, ddb, quota=10, in_flight=1)
        result = run_rt(rt, records_for(40))
    assert result.response == {"batchItemFailures": []} and len(wire.items) == 40
    starts = wire.starts()
    assert [code for _, _, _, code in sorted(wire.calls)][:4] == [
        None,
        "ThrottlingException",
        "ThrottlingException",
        None,
    ]
    assert starts[2] - starts[1] < 1.0  # the isolated throttle: at the next slot (about 0.1 s), not after 2 s
    assert starts[3] - starts[2] >= 2.0  # the second, soon after: a cut, and botocore's backoff
    assert (budget.stats.cuts, rt.sink.counters.throttles) == (1, 2)


def test_an_isolated_throttle_on_the_last_attempt_is_not_retried_past_max_attempts() -> None:
    """The immediate retry answers botocore's ``needs-retry`` before its retry handler: botocore's endpoint loop has
    no cap of its own, so the sink must stop at ``total_max_attempts`` itself."""
    from tests.fakes import Wire
    from tests.unit.wire_batches import THROTTLE

    class Tolerant(Pacer):
        """A pacer that tolerates every throttle (as the shared budget does an isolated one)."""

        def throttled(self) -> bool:
            return True

    for attempts in (1, 2, 3):
        wire = Wire(lambda items: THROTTLE, attempts=attempts)
        sink = PutItemsSink(wire.client, DATASET_ARN, worst_call_ms=1_000, pacer=Tolerant(1e6))
        report = sink.send(pending("a", "b"), Deadline.unbounded())
        assert (len(wire.calls), sink.counters.throttles) == (attempts, attempts)
        assert [p.group.item_id for p in report.retry] == ["a", "b"]
