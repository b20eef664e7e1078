"""The runner as Lambda does it: reserved-concurrency throttles, poll cadence per source, split DynamoDB shards,
TTL deletes, the partial-response retry switch, iterator age at the end of a batch, never-invoked on-failure."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from localcloud.esm_runner import POLL_INTERVAL_S, build_on_failure_message
from tests.localcloud import test_esm_runner as base

moto_url = base.moto_url  # the module-scoped moto server fixture

FAST_THROTTLE: dict[str, Any] = {"throttle_backoff_s": 0.1, "max_throttle_backoff_s": 0.4}


def _spans(tmp_path: Path) -> list[tuple[float, float]]:
    lines = (tmp_path / "state" / "spans.jsonl").read_text().splitlines()
    return sorted((s["start"], s["end"]) for s in map(json.loads, lines))


def _two_shards(template: dict[str, Any], reserved: int | None = 1) -> dict[str, Any]:
    template["Resources"]["Stream"]["Properties"]["ShardCount"] = 2
    if reserved is not None:
        template["Resources"]["Fn"]["Properties"]["ReservedConcurrentExecutions"] = reserved
    return template


def _put_on_both_shards(h: base.Harness, n: int = 12) -> None:
    kinesis = h.client("kinesis")
    for i in range(n):  # these partition keys hash onto both shards
        kinesis.put_record(StreamName=h.stream_name, Data=b'{"itemId": "x"}', PartitionKey=f"key-{i}")


# ------------------------------------------------------------------------------------- reserved concurrency


def test_an_invoke_beyond_reserved_concurrency_is_throttled_and_retried_without_using_retry_attempts(
    moto_url: str, tmp_path: Path
) -> None:
    # GIVEN two shards with records, ReservedConcurrentExecutions = 1 and a handler that takes 0.6 s
    template = _two_shards(base.make_template("slow.handler", kinesis={"BatchSize": 10, "MaximumRetryAttempts": 0}))
    with base.harness(
        moto_url, tmp_path, template, env={"SLEEP_S": "0.6"}, before_start=_put_on_both_shards, **FAST_THROTTLE
    ) as h:
        h.wait_idle()
        stats, ledger = h.runner.stats(), h.runner.ledger()

    # THEN the second shard's invoke was rejected (Lambda Throttles) and retried until a slot was free
    assert stats.throttles >= 1
    # AND throttles are not retries: no attempt was counted, nothing went on-failure despite MaximumRetryAttempts 0
    assert stats.retries == 0 and stats.function_errors == 0 and stats.on_failure_messages == 0
    assert all(e.attempt == 0 and e.outcome == "success" for e in ledger)
    assert stats.records_succeeded == 12 and len({e.shard_id for e in ledger}) == 2
    # AND never two invocations at once
    assert not any(b[0] < a[1] for a, b in itertools.pairwise(_spans(tmp_path)))


def test_throttled_records_keep_ageing_and_expire_without_an_invoke(moto_url: str, tmp_path: Path) -> None:
    # GIVEN reserved concurrency 1, a handler busy for 2.5 s and a 1 s maximum record age
    esm = {"BatchSize": 10, "MaximumRecordAgeInSeconds": 1}
    template = _two_shards(base.make_template("slow.handler", kinesis=esm))
    with base.harness(
        moto_url,
        tmp_path,
        template,
        env={"SLEEP_S": "2.5"},
        poll_interval=0.05,  # both shards see their records at once, well within the 1 s
        throttle_backoff_s=0.2,
        max_throttle_backoff_s=0.2,
    ) as h:
        _put_on_both_shards(h)
        h.wait_idle()
        stats = h.runner.stats()
        messages = h.on_failure_messages()

    # THEN the shard that never got a slot sent its batch on-failure as too old, never invoked
    assert stats.throttles >= 1 and stats.records_expired >= 1
    expired = [m for m in messages if m["requestContext"]["condition"] == "RecordAgeExceeded"]
    assert expired
    assert all(m["requestContext"]["approximateInvokeCount"] == 0 for m in expired)
    assert all("responseContext" not in m for m in expired)  # never invoked: no response


def test_throttle_backoff_is_jittered_exponential_and_capped(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("recorder.handler", kinesis={})
    with base.harness(moto_url, tmp_path, template, seed=1) as h:
        runner = h.runner
        # the pessimistic defaults: 1 s doubling to 30 s, each wait stretched by up to 50 %
        assert (runner.throttle_backoff_s, runner.max_throttle_backoff_s, runner.throttle_jitter) == (1.0, 30.0, 0.5)
        for n, base_s in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (20, 30.0)):
            waits = [runner.throttle_delay(n) for _ in range(50)]
            assert all(base_s <= w <= base_s * 1.5 for w in waits)
            assert max(waits) - min(waits) > 0.0


# ------------------------------------------------------------------------------------------------ polling


def test_poll_cadence_is_lambdas_per_source_with_jitter(moto_url: str, tmp_path: Path) -> None:
    assert POLL_INTERVAL_S == {"kinesis": 1.0, "dynamodb": 0.25}
    template = base.make_template("recorder.handler", kinesis={}, dynamodb={})
    with base.harness(moto_url, tmp_path, template, seed=2) as h:
        pollers: dict[str, Any] = {p.mapping.source: p for p in h.runner._pollers.values()}
        for source, interval in POLL_INTERVAL_S.items():
            waits = [pollers[source]._poll_wait() for _ in range(200)]
            assert all(interval * 0.8 <= w <= interval * 1.2 for w in waits)
            assert abs(sum(waits) / len(waits) - interval) < interval * 0.05


def test_poll_interval_is_configurable(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("recorder.handler", kinesis={}, dynamodb={})
    with base.harness(moto_url, tmp_path, template, poll_interval={"kinesis": 0.5}, poll_jitter=0.0) as h:
        assert h.runner.poll_interval == {"kinesis": 0.5, "dynamodb": 0.25}
        assert {p._poll_wait() for p in h.runner._pollers.values()} == {0.5, 0.25}


# ------------------------------------------------------------------------------------ DynamoDB specifics


def test_ttl_deletes_carry_the_service_user_identity_and_records_are_version_1_1(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("recorder.handler", dynamodb={"BatchSize": 10})
    with base.harness(moto_url, tmp_path, template) as h:
        h.put_items(base.ddb_item("expiring"), base.ddb_item("deleted"))
        h.wait_idle()
        h.runner.ttl_delete(h.table_name, {"pk": {"S": "expiring"}})
        h.client("dynamodb").delete_item(TableName=h.table_name, Key={"pk": {"S": "deleted"}})
        h.wait_idle()

    records = [r for call in h.calls() for r in call["event"]["Records"]]
    assert all(r["eventVersion"] == "1.1" for r in records)
    removes = {r["dynamodb"]["Keys"]["pk"]["S"]: r for r in records if r["eventName"] == "REMOVE"}
    assert removes["expiring"]["userIdentity"] == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert "userIdentity" not in removes["deleted"]  # a user's delete has none


def test_a_dynamodb_shard_can_be_split_by_key_like_a_table_with_more_partitions(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("recorder.handler", dynamodb={"BatchSize": 5})
    with base.harness(moto_url, tmp_path, template, dynamodb_shards=2) as h:
        for round_ in range(2):
            h.put_items(*(base.ddb_item(f"k{i}", n={"N": str(round_)}) for i in range(10)))
        h.wait_idle()
        ledger = h.runner.ledger()

    shards = {e.shard_id for e in ledger}
    assert len(shards) == 2 and all("#" in s for s in shards)
    owner: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    shard_of = {e.request_id: e.shard_id for e in ledger}
    calls = h.calls()
    assert len(calls) == len(ledger)
    for call in calls:  # paired by request id: two shards' invocations finish in either order
        for r in call["event"]["Records"]:
            key = r["dynamodb"]["Keys"]["pk"]["S"]
            shard = shard_of[call["context"]["aws_request_id"]]
            assert owner.setdefault(key, shard) == shard  # one shard per key
            seen.setdefault(key, []).append(r["dynamodb"]["NewImage"]["n"]["N"])
    assert len(seen) == 10 and all(v == ["0", "1"] for v in seen.values())  # every change, in order per key


# ----------------------------------------------------------------------------------- batch policy details


@pytest.mark.parametrize(("counts", "expect_on_failure"), [(True, True), (False, False)])
def test_partial_response_that_moved_the_checkpoint_counts_as_a_retry_only_if_switched_on(
    moto_url: str, tmp_path: Path, counts: bool, expect_on_failure: bool
) -> None:
    # GIVEN a handler that always fails the batch's second record, and MaximumRetryAttempts 1
    template = base.make_template("partial_always.handler", kinesis={"BatchSize": 4, "MaximumRetryAttempts": 1})
    with base.harness(
        moto_url,
        tmp_path,
        template,
        partial_counts_as_retry=counts,
        before_start=lambda h: h.put_docs(*({"itemId": f"i{i}"} for i in range(4))),
    ) as h:
        h.wait_idle()
        stats = h.runner.stats()

    if expect_on_failure:  # pessimistic: two partial answers exhaust one retry, the last two records are dropped
        assert stats.on_failure_messages == 1 and stats.records_to_on_failure == 2
    else:  # each answer moved the checkpoint: a new batch each time, until the last record succeeds alone
        assert stats.on_failure_messages == 0 and stats.records_succeeded == 4
        assert [len(b) for b in h.delivered()] == [4, 3, 2, 1]


def test_iterator_age_is_measured_when_the_batch_finishes(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("slow.handler", kinesis={})
    with base.harness(moto_url, tmp_path, template, env={"SLEEP_S": "0.8"}) as h:
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        (entry,) = h.runner.ledger()
    assert entry.iterator_age_ms >= 800  # includes the handler's own 0.8 s


def test_on_failure_message_of_a_never_invoked_batch_has_no_response_context(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("recorder.handler", kinesis={})
    with base.harness(moto_url, tmp_path, template) as h:
        mapping = h.runner.mappings[0]
    common: dict[str, Any] = {
        "mapping": mapping,
        "shard_id": "shardId-000000000000",
        "sequence_numbers": ["1", "2"],
        "arrivals": [1.0, 2.0],
        "condition": "RecordAgeExceeded",
        "request_id": "r",
        "function_error": None,
    }
    assert "responseContext" not in build_on_failure_message(invoke_count=0, **common)
    invoked = build_on_failure_message(invoke_count=2, **common)
    assert invoked["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
