"""End to end: the synthesized stack on the local cloud, a short version of ``make demo``.

One synth per session, one demo run per module (about 150 DynamoDB items with hot updates and deletes, about 30
Kinesis documents, about 30 CDC records with out-of-order and duplicate deliveries, and the 8 bad records), then:

* convergence: every item in the emulator equals the independent model's expectation, no other item;
* the DLQ holds exactly the bad records, listed here by hand (item id or Kinesis sequence number, reason prefix);
* zero lost records: every record written was checkpointed, every delivered record got exactly one outcome
  (the runner's ledger, the handler's own accounting, the emulator and the DLQ agree), nothing went on-failure;
* the check itself can fail: fed a landed state or a DLQ with one thing wrong, it reports exactly that.
"""

from __future__ import annotations

import copy
import io
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from localcloud.demo import DemoResult, check, compare_items, dlq_key, run_demo, synthesize
from localcloud.workload import WorkloadSpec

pytestmark = pytest.mark.e2e

SPEC = WorkloadSpec(items=150, documents=30, cdc_items=12, rounds=6, seed=11)

# The bad records of the workload, by hand: (source, item id, reason prefix). Kinesis entries are also matched
# by the sequence number the writer got back from PutRecords.
EXPECTED_DLQ = {
    ("aws:dynamodb", "bad-price-00001", "field PRICE: a non-numeric str cannot be coerced to float"),
    ("aws:dynamodb", "bad-genres-00001", "field GENRES: categorical value over 1000 characters"),
    ("aws:dynamodb", "bad-undated-00001", "field CREATION_TIMESTAMP: required"),
    ("aws:kinesis", None, "data is not JSON"),
    ("aws:kinesis", None, "no item id: attribute 'sku' is missing"),
    ("aws:kinesis", "doc-bad-price", "field PRICE: a non-numeric str cannot be coerced to float"),
    ("aws:kinesis", "doc-bad-status", "field STATUS: categorical value over 1000 characters"),
    ("aws:kinesis", "cdc-bad-ratings", "field NUMBER_OF_RATINGS: a fractional number cannot fill an int field"),
}


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("cdk") / "cdk.out")


@pytest.fixture(scope="module", params=["calm", "faulty", "faulty-partial-not-a-retry"])
def demo(
    request: pytest.FixtureRequest, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoResult, float]]:
    """One run as configured (10 calls/s, 50 ms), one with injected throttles and 5xx (retries, redeliveries)
    and the mapping's onRemove set to "ignore", and the faulty one again with the other reading of an
    undocumented rule: a partial response that moved the checkpoint does not count against
    MaximumRetryAttempts (the runner's default counts it: pessimistic)."""
    faults: dict[str, object] = {"throttle_rate": 0.3, "error_rate": 0.1} if request.param != "calm" else {}
    if request.param == "faulty-partial-not-a-retry":
        faults["runner_options"] = {"partial_counts_as_retry": False}
    output = io.StringIO()
    began = time.monotonic()
    result = run_demo(
        replace(SPEC, on_remove="ignore") if request.param == "faulty" else SPEC,
        template=template,
        fast=True,
        timeout=45,
        console=Console(file=output, width=140),
        live=False,
        cloud_options={"log_dir": tmp_path_factory.mktemp("logs"), **faults},
    )
    yield result, time.monotonic() - began


def test_converges_to_the_sources_final_state(demo: tuple[DemoResult, float]) -> None:
    result, seconds = demo
    assert result.check.problems == []
    assert result.converged
    assert result.actual_items == result.expected_items
    w = result.workload
    # GIVEN a workload that exercised every path
    assert w.counters.ddb_updates > 50 and w.counters.ddb_deletes > 0
    assert w.counters.kinesis_documents >= 30 and w.counters.kinesis_cdc >= 25
    assert w.cdc_out_of_order > 0 and w.cdc_duplicates > 0 and w.cdc_late > 0
    soft_deleted = any(p.get("status") == "deleted" for p in w.expected_items().values())
    assert soft_deleted == (w.spec.on_remove == "soft")  # under "ignore", deleted items keep their last image
    assert seconds < 60


def test_dlq_holds_exactly_the_bad_records(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    sequence_by_label = {b.label: b.sequence_number for b in result.workload.bad if b.source == "kinesis"}
    found = set()
    for message in result.dlq:
        prefix = next(
            (
                p
                for source, item_id, p in EXPECTED_DLQ
                if source == message["source"] and item_id == message["itemId"] and message["reason"].startswith(p)
            ),
            None,
        )
        assert prefix is not None, f"unexpected DLQ entry {message['itemId']!r}: {message['reason']}"
        found.add((message["source"], message["itemId"], prefix))
        if message["source"] == "aws:kinesis":
            assert message["sequenceNumber"] in sequence_by_label.values()
            assert message["record"]["kinesis"]["sequenceNumber"] == message["sequenceNumber"]
        else:
            assert message["record"]["dynamodb"]["Keys"] == {"sku": {"S": message["itemId"]}}
    assert found == EXPECTED_DLQ
    # Each bad record is there once per delivery at most (it is delivered once unless its batch was retried).
    deliveries = Counter(s for inv in result.ledger if not inv.failed for s in inv.sequence_numbers)
    for seq, n in Counter(m["sequenceNumber"] for m in result.dlq).items():
        assert n <= deliveries[seq]
    assert result.on_failure == []


def test_zero_lost_records(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    stats, totals, ledger = result.stats, result.totals, result.ledger
    written = sum(len(seqs) for seqs in result.source_records.values())
    assert written == result.workload.counters.changes  # the table's stream holds one record per write
    # Every record the runner delivered got exactly one outcome from the handler ...
    delivered = sum(inv.batch_size for inv in ledger)
    assert stats.records_delivered == delivered >= written
    assert stats.function_errors == 0 and stats.records_to_on_failure == 0 and stats.on_failure_messages == 0
    assert totals.records == delivered
    assert sum(totals.outcomes.values()) == delivered
    # ... a record is delivered again only after a retry: each partial answer reported exactly its retry records,
    # and Lambda redelivered from the lowest of them (a failed invocation redelivers its whole batch).
    assert stats.records_filtered == 0
    partial = [inv for inv in ledger if inv.outcome == "partial"]
    reported = sum(len(inv.response["batchItemFailures"]) for inv in partial)
    assert reported == totals.outcomes["retry"]
    redelivered = sum(inv.batch_size - inv.sequence_numbers.index(inv.detail) for inv in partial)
    redelivered += sum(inv.batch_size for inv in ledger if inv.failed)
    assert delivered == written + redelivered
    # ... the poison ones are exactly the DLQ, and every written record was checkpointed.
    assert totals.outcomes["poison"] == totals.dead_lettered == len(result.dlq)
    assert stats.records_succeeded == written
    emulator = result.emulator_stats
    assert emulator["invalid"] == 0 and emulator["not_found"] == 0  # no call was ever rejected
    assert emulator["datasets"] == {next(iter(emulator["datasets"])): result.expected_items}


def test_the_check_catches_divergence(demo: tuple[DemoResult, float]) -> None:
    """The same run, with one thing wrong at a time: the check must say so."""
    result, _ = demo
    w = result.workload
    expected = w.expected_items()
    item_id = next(i for i, p in expected.items() if isinstance(p.get("price"), float))

    landed = copy.deepcopy(expected)
    del landed[item_id]
    assert compare_items(expected, landed).missing == [item_id]

    landed = copy.deepcopy(expected)
    landed[item_id]["price"] = int(landed[item_id]["price"])  # 20.0 landed as 20: a type change counts
    assert item_id in compare_items(expected, landed).different

    landed = copy.deepcopy(expected)
    landed["sku-99999"] = {"creationTimestamp": 1}
    assert compare_items(expected, landed).unexpected == ["sku-99999"]

    def run_check(**changes: object) -> list[str]:
        args: dict[str, object] = {
            "actual_items": expected,
            "dlq": result.dlq,
            "on_failure": result.on_failure,
            "ledger": result.ledger,
            "stats": result.stats,
            "totals": result.totals,
            "source_records": result.source_records,
        }
        args.update(changes)
        return check(w, **args).problems  # type: ignore[arg-type]

    assert run_check() == []
    # Drop every copy of one entry: under faults a poison record can be dead-lettered once per delivery.
    first = dlq_key(result.dlq[0])
    assert any("not in the DLQ" in p for p in run_check(dlq=[m for m in result.dlq if dlq_key(m) != first]))
    stray = {**result.dlq[0], "itemId": "sku-00001", "source": "aws:dynamodb"}
    assert any("unexpected DLQ entry" in p for p in run_check(dlq=[*result.dlq, stray]))
    assert any("on-failure" in p for p in run_check(on_failure=[{"requestContext": {}}]))
    lost = {k: [*v, "999999999999"] for k, v in result.source_records.items()}
    assert any("never checkpointed" in p for p in run_check(source_records=lost))
