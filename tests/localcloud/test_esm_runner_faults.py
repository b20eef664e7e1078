"""The runner's chaos knobs: a function ``Timeout`` override, and the hang (frozen sandbox) and forced fault hooks."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.localcloud import test_esm_runner as base

moto_url = base.moto_url  # the module-scoped moto server fixture


def test_a_frozen_sandbox_ends_at_the_overridden_timeout_and_the_batch_is_retried(
    moto_url: str, tmp_path: Path
) -> None:
    # GIVEN a template timeout of 60 s, run with a 2 s override, and one forced freeze
    template = base.make_template("sleepy_once.handler", kinesis={}, timeout=60)
    with base.harness(moto_url, tmp_path, template, env={"SLEEP_S": "0.5"}, function_overrides={"timeout_s": 2.0}) as h:
        h.runner.set_faults(hang_next=1)
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        stats, ledger = h.runner.stats(), h.runner.ledger()

    # THEN the first invocation froze and was killed at the overridden timeout, not the template's
    frozen, retried = ledger
    assert frozen.outcome == "timeout" and frozen.fault == "hang"
    assert frozen.error is not None and frozen.error["errorType"] == "Sandbox.Timedout"
    assert 1900 <= frozen.duration_ms < 4000
    assert next(iter(h.runner.functions.values())).timeout_s == 2.0
    # AND the batch was retried in a fresh worker and succeeded
    assert retried.outcome == "success" and retried.fault is None and retried.cold_start
    assert stats.hangs == 1 and stats.timeouts == 1 and stats.kills == 0 and stats.records_succeeded == 1


def test_forced_kill_fires_on_the_next_invocation(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("recorder.handler", kinesis={})
    with base.harness(moto_url, tmp_path, template, seed=3) as h:
        h.runner.set_faults(kill_next=1)
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        stats, ledger = h.runner.stats(), h.runner.ledger()

    assert [e.outcome for e in ledger] == ["killed", "success"]
    assert ledger[0].fault == "kill" and stats.kills == 1 and stats.records_succeeded == 1


def _spans(tmp_path: Path) -> list[tuple[float, float]]:
    import json

    lines = (tmp_path / "state" / "spans.jsonl").read_text().splitlines()
    return sorted((s["start"], s["end"]) for s in map(json.loads, lines))


def _overlapping(spans: list[tuple[float, float]]) -> bool:
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def _two_shard_run(moto_url: str, tmp_path: Path, reserved: int | None) -> list[tuple[float, float]]:
    template = base.make_template("slow.handler", kinesis={"BatchSize": 10})
    template["Resources"]["Stream"]["Properties"]["ShardCount"] = 2
    if reserved is not None:
        template["Resources"]["Fn"]["Properties"]["ReservedConcurrentExecutions"] = reserved
    # One PutRecords (both shards have records before either polls), and each invocation lasts longer than the
    # pollers' cadence (about 1 s per shard, jittered): without the limit the two invocations must overlap. With
    # single puts and 0.6 s, the shards could poll 0.7 s apart and run one after the other (a flaky control).
    with base.harness(moto_url, tmp_path, template, env={"SLEEP_S": "1.5"}) as h:
        kinesis = h.client("kinesis")
        records = [{"Data": b'{"itemId": "x"}', "PartitionKey": f"key-{i}"} for i in range(12)]  # both shards
        assert kinesis.put_records(StreamName=h.stream_name, Records=records)["FailedRecordCount"] == 0
        h.wait_idle()
    return _spans(tmp_path)


def test_reserved_concurrency_serializes_invocations_across_shards(moto_url: str, tmp_path: Path) -> None:
    # GIVEN two shards with records and ReservedConcurrentExecutions = 1
    spans = _two_shard_run(moto_url, tmp_path, reserved=1)
    # THEN both shards were served, one invocation at a time
    assert len(spans) >= 2
    assert not _overlapping(spans)


def test_without_reserved_concurrency_shards_run_at_once(moto_url: str, tmp_path: Path) -> None:
    # the control: the same run without the limit overlaps, so the test above can fail
    assert _overlapping(_two_shard_run(moto_url, tmp_path, reserved=None))
