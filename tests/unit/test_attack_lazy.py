"""Attack on the lazy building of ``pipeline._send`` (commit eec0a05, "build items as they are sent").

The three finds failed before the fix (fallbacks in rounds of their own again; nothing built after a stop) and
pass now; the probes (``test_attack_probe_*``) held and are kept because they can fail: they assert on
outcomes, item states, DLQ contents and call counts. "Old" is ``pipeline.py`` as it was before the commit
(``git show 8c6ee05:lambda_src/connector/pipeline.py``), loaded into a module of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector import item, pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from connector.putitems import Pacer, PutItemsSink
from connector.response import Outcome
from connector.versions import VersionGuard
from tests.factories import DATASET_ARN, cdc_payload, dynamodb_record, event, kinesis_record
from tests.fakes import FakePersonalize, FakeSQS, moto_state_table

DLQ = "https://sqs.us-east-1.amazonaws.com/111122223333/poison"
BEFORE_LAZY = "8c6ee05e0d41fea374977fb0f6ddbfcbe5758064"  # the parent of the lazy-building commit
ROOT = Path(__file__).resolve().parents[2]
SETTINGS = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": DLQ})


def _load_old() -> Any:
    name = "connector_pipeline_before_lazy"
    if name in sys.modules:
        return sys.modules[name]
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE_LAZY}:lambda_src/connector/pipeline.py"],
        capture_output=True,
        text=True,
        check=False,
    )
    if shown.returncode != 0:  # a shallow clone, or no git: the comparisons need the history
        pytest.skip(f"the pipeline before lazy building is not in this clone's history ({BEFORE_LAZY[:7]})")
    text = shown.stdout
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(text, "pipeline_before_lazy.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


@pytest.fixture(scope="module")
def old() -> Any:
    return _load_old()


def rejecting(items: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The service rejects an item whose properties carry ``reject``."""
    if any(json.loads(i.get("properties", "{}")).get("reject") for i in items):
        return ("InvalidInputException", "Invalid item")
    return None


def sink_for(fake: FakePersonalize, worst_call_ms: float = 1) -> PutItemsSink:
    """A fresh sink (its systemic-rejection streak starts at zero)."""
    return PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=worst_call_ms, pacer=Pacer(1e6, sleep=lambda _: None))


def ddb(ops: list[tuple[int, bool]]) -> list[dict[str, Any]]:
    """One DynamoDB MODIFY per ``(key, rejected)``, sequence numbers 1, 2, 3 …"""
    records = []
    for n, (key, rejected) in enumerate(ops):
        image: dict[str, Any] = {"sku": f"k{key}", "v": n}
        if rejected:
            image["reject"] = True
        records.append(dynamodb_record("MODIFY", {"sku": f"k{key}"}, image, seq=str(n + 1)))
    return records


def run_with(
    module: Any,
    records: list[dict[str, Any]],
    rule: Callable[[list[dict[str, Any]]], tuple[str, str] | None] = rejecting,
    *,
    deadline: Deadline | None = None,
    worst_call_ms: float = 1,
    guard: VersionGuard | None = None,
    respond: bool = True,
) -> tuple[pipeline.Result, FakePersonalize, FakeSQS]:
    fake, sqs = FakePersonalize(rule), FakeSQS()
    kwargs: dict[str, Any] = {} if respond else {"respond": False}
    result = module.run(
        event(*records),
        settings=SETTINGS,
        sink=sink_for(fake, worst_call_ms),
        sqs=sqs,
        deadline=deadline or Deadline.unbounded(),
        guard=guard,
        **kwargs,
    )
    assert sum(result.counts.values()) == len(records)
    return result, fake, sqs


def dead_lettered(sqs: FakeSQS) -> list[int]:
    return sorted(int(json.loads(m)["sequenceNumber"]) for m in sqs.messages)


# --- finds ----------------------------------------------------------------------------------------------------


def test_attack_a_rejected_fallback_is_bisected_inside_a_full_call_of_good_items(old: Any) -> None:
    """Every call full, no call wasted: the lazy ``_send`` sends MORE PutItems calls than the old one.

    Input: item k0 with 20 changes that the service rejects (a property value the dataset refuses, kept by every
    update of that item), then 299 other items. Each rejected change of k0 is dead-lettered and its next older
    change queued as a fallback. The old code sent the fallbacks in rounds of their own, so each rejected
    fallback cost one 1-item call; the new code appends each fallback to ``ready`` behind fresh items, so it
    rides in a full call with 9 good items, the whole call is rejected and bisected (7 calls to isolate one item
    out of 10). Expected: calls(new) <= calls(old) = 55. Actual: 137 (2.5x the quota spent for the same batch).
    The smallest case hypothesis found: k0 with 2 rejected changes among 11 items, 9 calls old vs 10 new; with
    30 items, 10 vs 16."""
    records = ddb([(0, True)] * 20 + [(k, False) for k in range(1, 300)])
    before, old_fake, _ = run_with(old, records)
    after, new_fake, _ = run_with(pipeline, records)
    assert new_fake.items == old_fake.items and after.outcomes == before.outcomes  # same result …
    assert len(old_fake.calls) == 55
    assert len(new_fake.calls) <= len(old_fake.calls)  # … for more calls: 137


def test_attack_a_systemic_rejection_dead_letters_the_call_that_carries_a_fallback(old: Any) -> None:
    """A systemic rejection must retry everything, never dead-letter good records one by one (DESIGN.md; the sink
    admits at most SYSTEMIC_REJECTION_STREAK - 1 items "rejected in earlier calls").

    Input: k0 has a good change (seq 1) and a newer rejected one (seq 2), then k1..k39 are good. Call 1 carries
    k0's rejected change, is bisected (7 calls); k0's older change becomes a fallback, appended to ``ready``
    behind k10..k19. From the 9th PutItems call on the dataset refuses every item (its schema was changed).
    Old: call 9 holds ten fresh items (k20..k29): ten distinct items rejected in a row, SystemicRejection, every
    record retried, nothing good dead-lettered. New: call 9 is [k0 fallback, k20..k28]; fallbacks do not count
    in the streak, so only 9 distinct items are rejected, the sink does not stop and all ten go to the DLQ,
    k0's good change (seq 1) among them. Expected: no good record dead-lettered; actual: seqs 1, 22..30."""
    records = ddb([(0, False), (0, True)] + [(k, False) for k in range(1, 40)])

    def onset_at_call_9() -> Callable[[list[dict[str, Any]]], tuple[str, str] | None]:
        calls = [0]

        def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
            calls[0] += 1
            if calls[0] >= 9:
                return ("InvalidInputException", "Invalid item: the dataset's schema does not have field v")
            return rejecting(items)

        return rule

    before, _, old_sqs = run_with(old, records, onset_at_call_9())
    assert before.report.stopped == "SystemicRejection"
    assert dead_lettered(old_sqs) == [2]  # only k0's rejected change, before the onset
    after, _, new_sqs = run_with(pipeline, records, onset_at_call_9())
    assert after.report.stopped == "SystemicRejection"
    assert dead_lettered(new_sqs) == [2]  # actual: [1, 2, 22, 23, …, 30]


def test_attack_the_rest_built_after_a_deadline_stop_overruns_the_deadline(
    old: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline promise: stop sending with a safety margin and return before the timeout.

    The sink stops when the next call's worst case would end within DEADLINE_MARGIN_MS (5 s) of the deadline.
    The old code had built the whole batch before its first call, so that check accounted for the building. The
    new code then builds every group it had not built yet ("so that every change is validated"): time that
    no check reserves, proportional to the unsent part of the batch. Input: 10,000 records (the maximum batch),
    building at 1.2 ms per record (the commit's own figure, "a few hundred milliseconds" per 1,000 records at
    512 MB, times 4 for the 128 MB that ``memoryMb`` allows), 100 ms per PutItems call, 2 s worst call, a
    20 s budget left. Old: builds 12 s, sends 10 calls, returns with 7 s left. New: sends 116 calls, stops
    with 7 s left, then builds the other 8,820 records for 10.6 s: the invocation times out (Lambda
    redelivers the whole batch, which times out the same way). Expected: time left >= 0 at return; actual:
    -3.6 s."""
    clock_ms = [0.0]
    budget_ms, margin_ms = 20_000.0, 5_000.0
    real_build = item.build

    def slow_build(*args: Any, **kwargs: Any) -> Any:
        clock_ms[0] += 1.2
        return real_build(*args, **kwargs)

    def slow_call(_: list[dict[str, Any]]) -> None:
        clock_ms[0] += 100

    monkeypatch.setattr(item, "build", slow_build)
    records = [
        dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}", "v": i}, seq=str(i + 1)) for i in range(10_000)
    ]

    def left_after(module: Any) -> float:
        clock_ms[0] = 0.0
        deadline = Deadline(lambda: budget_ms - clock_ms[0], margin_ms)
        result, _, _ = run_with(module, records, slow_call, deadline=deadline, worst_call_ms=2_000)
        assert result.report.stopped == "deadline"
        return budget_ms - clock_ms[0]

    assert left_after(old) >= 0  # the old code returns in time (7 s left)
    assert left_after(pipeline) >= 0  # actual: -3.6 s, the function is killed


# --- probes that held -------------------------------------------------------------------------------------------

OPS = st.lists(st.tuples(st.integers(0, 40), st.sampled_from([False] * 5 + [True])), min_size=0, max_size=80)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    ops=OPS, stop_after=st.one_of(st.none(), st.integers(0, 15)), throttle_at=st.lists(st.integers(1, 15), max_size=3)
)
def test_attack_probe_outcomes_items_and_dlq_match_the_old_pipeline(
    old: Any, ops: list[tuple[int, bool]], stop_after: int | None, throttle_at: list[int]
) -> None:
    """Random batches (up to 80 records over 41 items, rejected changes anywhere, so fallbacks cross the 10 and
    20 boundaries), a deadline after any call, throttles that fail calls: the records' outcomes, the dataset and
    the DLQ are the old pipeline's (only the call counts differ, see the first find). Held."""
    records = ddb(ops)

    def outcome_of(module: Any) -> tuple[list[Outcome], dict[str, Any], list[int], Any]:
        fake_calls = [0]

        def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
            fake_calls[0] += 1
            if fake_calls[0] in throttle_at:
                return ("ThrottlingException", "Rate exceeded")
            return rejecting(items)

        left = (lambda: 10_000.0) if stop_after is None else (lambda: 10_000.0 if fake_calls[0] < stop_after else 0.0)
        result, fake, sqs = run_with(module, records, rule, deadline=Deadline(left, 0), worst_call_ms=1)
        return result.outcomes, fake.items, dead_lettered(sqs), result.response

    assert outcome_of(pipeline) == outcome_of(old)


def test_attack_probe_a_deadline_while_ready_holds_a_fallback_retries_it_and_redelivery_lands_it() -> None:
    """k0's newest change (seq 12) is rejected in call 1 (bisected: 7 calls) and its older change (seq 1) waits
    in ``ready``; the deadline stops the sink right after. Expected and held: seq 12 dead-lettered, seq 1
    retried (the response starts there), and the redelivered batch lands k0's older change."""
    records = ddb([(0, False)] + [(k, False) for k in range(1, 11)] + [(0, True)] + [(k, False) for k in range(11, 25)])
    calls = [0]

    def rule(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        calls[0] += 1
        return rejecting(items)

    deadline = Deadline(lambda: 10_000 if calls[0] < 7 else 0, margin_ms=0)
    result, fake, sqs = run_with(pipeline, records, rule, deadline=deadline, worst_call_ms=1)
    assert result.report.stopped == "deadline"
    assert dead_lettered(sqs) == [12]
    assert result.outcomes[0] is Outcome.RETRY and result.outcomes[11] is Outcome.POISON
    assert result.response["batchItemFailures"][0]["itemIdentifier"] == "1"
    assert "k0" not in fake.items
    again, fake2, sqs2 = run_with(pipeline, records)  # Lambda redelivers from seq 1: the whole batch
    assert fake2.items["k0"] == {"v": 0}
    assert dead_lettered(sqs2) == [12] and again.response["batchItemFailures"] == []


def test_attack_probe_an_empty_batch_and_10000_records() -> None:
    """No records: no call, no outcome. 10,000 distinct items: 1,000 calls, all full. Held."""
    result, fake, _ = run_with(pipeline, [])
    assert fake.calls == [] and result.outcomes == [] and result.response == {"batchItemFailures": []}
    records = [dynamodb_record("INSERT", {"sku": f"s{i}"}, {"sku": f"s{i}"}, seq=str(i + 1)) for i in range(10_000)]
    result, fake, _ = run_with(pipeline, records)
    assert [len(c) for c in fake.calls] == [10] * 1_000
    assert result.counts[Outcome.PUT] == 10_000


def test_attack_probe_an_exception_in_item_build_for_one_record_makes_it_poison(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """item.build raising (not Poison) for the newest change of k3, inside the second ready window: that record is
    dead-lettered, k3's older change lands instead, nothing else moves. Held."""
    real_build = item.build

    def flaky(change: Any, mapping: Any) -> Any:
        if change.record.sequence_number == "40":
            raise KeyError("boom")
        return real_build(change, mapping)

    monkeypatch.setattr(item, "build", flaky)
    records = ddb([(k, False) for k in range(39)] + [(3, False)])
    result, fake, sqs = run_with(pipeline, records)
    assert dead_lettered(sqs) == [40]
    assert fake.items["k3"] == {"v": 3}
    assert result.counts == {Outcome.PUT: 39, Outcome.POISON: 1, Outcome.RETRY: 0, Outcome.SKIPPED: 0}


def test_attack_probe_respond_false_gives_per_record_outcomes_after_a_stop() -> None:
    """The operator tools' path (``respond=False``): a systemic error after two calls leaves an empty response
    and one outcome per record, the unsent ones retry (also the ones built after the stop). Held."""
    calls = [0]

    def rule(_: list[dict[str, Any]]) -> tuple[str, str] | None:
        calls[0] += 1
        return ("ResourceNotFoundException", "no dataset") if calls[0] == 3 else None

    records = ddb([(k, False) for k in range(45)])
    result, fake, _ = run_with(pipeline, records, rule, respond=False)
    assert result.response == {"batchItemFailures": []}
    assert result.outcomes == [Outcome.PUT] * 20 + [Outcome.RETRY] * 25
    assert len(fake.calls) == 3 and result.report.systemic == "ResourceNotFoundException"


@pytest.fixture
def state() -> Iterator[Any]:
    with moto_state_table("state") as client:
        yield client


def cdc(key: str, v: int, seq: int, ts_ms: int) -> dict[str, Any]:
    payload = cdc_payload("MODIFY", {"sku": key}, {"sku": key, "v": v}, ts=ts_ms)
    payload["eventID"] = f"e{seq}"
    return kinesis_record(payload, seq=str(seq))


def test_attack_probe_the_deadline_at_the_second_windows_read_retries_that_window_and_redelivery_converges(
    state: Any,
) -> None:
    """150 CDC items; from call 9 on the deadline leaves room for PutItems (100 ms) but no longer for a
    state-table request (2 s): the read of the second window (groups 100..) fails, and so does recording the
    versions of the calls still sent (written, then retried). Held: no item of the second window is sent
    unguarded, every record is put or retry, the put ones are exactly the landed items whose versions were
    recorded, and redelivering from the lowest retried record lands the rest; a stale older copy of i5 in the
    redelivery is skipped."""
    calls = [0]

    def rule(_: list[dict[str, Any]]) -> None:
        calls[0] += 1

    guard = VersionGuard(state, "state", DATASET_ARN, worst_ms=2_000)
    records = [cdc(f"i{n}", 1, n + 1, 1_764_000_000_000 + n) for n in range(150)]
    deadline = Deadline(lambda: 10_000 if calls[0] < 9 else 1_500, margin_ms=0)
    result, fake, _ = run_with(pipeline, records, rule, deadline=deadline, worst_call_ms=100, guard=guard)
    assert result.state_errors >= 1
    assert set(fake.items) <= {f"i{n}" for n in range(100)}
    assert set(result.outcomes) <= {Outcome.PUT, Outcome.RETRY}
    put = [n for n, o in enumerate(result.outcomes) if o is Outcome.PUT]
    assert put == list(range(80)) and set(fake.items) >= {f"i{n}" for n in put}
    lowest = int(str(result.response["batchItemFailures"][0]["itemIdentifier"]))
    assert lowest == 81
    stale = cdc("i5", 0, 1_000, 1_763_999_999_000)  # older than what was written for i5
    again, fake2, _ = run_with(pipeline, [*records[lowest - 1 :], stale], guard=guard)
    assert sorted(fake2.items) == sorted(f"i{n}" for n in range(80, 150))
    assert again.stale == 1 and again.outcomes[-1] is Outcome.SKIPPED
    assert again.response["batchItemFailures"] == []


def test_attack_probe_a_failed_read_of_the_second_window_never_blocks_the_first_windows_fallbacks(state: Any) -> None:
    """i0's newest change is rejected in call 1; its fallback rides in a later call, after the read of the
    second window (groups 100..) failed. Held: the fallback (already guarded in window 1) is sent and lands, the
    second window is retried, i0's rejected change is dead-lettered."""
    reads = [0]
    real = state.batch_get_item

    def flaky(**kwargs: Any) -> Any:
        reads[0] += 1
        if reads[0] == 2:
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "BatchGetItem")
        return real(**kwargs)

    state.batch_get_item = flaky
    guard = VersionGuard(state, "state", DATASET_ARN)
    bad = cdc_payload("MODIFY", {"sku": "i0"}, {"sku": "i0", "reject": True}, ts=1_764_000_000_500)
    bad["eventID"] = "e-bad"
    records = [
        cdc("i0", 1, 1, 1_764_000_000_000),
        kinesis_record(bad, seq="2"),
        *[cdc(f"i{n}", 1, n + 2, 1_764_000_000_000 + n) for n in range(1, 130)],
    ]
    result, fake, sqs = run_with(pipeline, records, guard=guard)
    assert reads[0] == 2 and result.state_errors == 1
    assert fake.items["i0"] == {"v": 1}
    assert dead_lettered(sqs) == [2]
    assert sorted(fake.items) == sorted(f"i{n}" for n in range(100))
    assert result.outcomes[:2] == [Outcome.PUT, Outcome.POISON]
    assert result.outcomes[101:] == [Outcome.RETRY] * 30
