"""``ops backfill``: every item through the runtime's mapping, resumable, quota-sharing, never regressing an item."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest

from connector import pipeline
from connector.deadline import Deadline
from connector.handler import build_runtime
from ops import cli
from ops.backfill import Backfill, Checkpoints
from ops.common import OpsError
from tests.factories import DATASET_ARN
from tests.fakes import FakePersonalize
from tests.ops.conftest import STATE, TABLE, Cloud


def backfill(cloud: Cloud, **kwargs: Any) -> Backfill:
    settings = kwargs.pop("settings", None) or cloud.settings()
    kwargs.setdefault("segments", 3)
    kwargs.setdefault("page_size", 10)
    return Backfill(
        settings,
        TABLE,
        dynamodb=cloud.ddb,
        personalize=kwargs.pop("personalize", cloud.personalize.client),
        sqs=cloud.sqs,
        show_progress=False,
        **kwargs,
    )


def fill(cloud: Cloud, n: int) -> None:
    for i in range(n):
        cloud.put(f"s{i:04d}", title=f"t{i}", price=i)


def test_every_item_lands_through_the_mapping_and_poison_goes_to_the_dlq(cloud: Cloud) -> None:
    fill(cloud, 95)
    cloud.put("bad", title="x" * 40_000)  # over PutItems' 32,000-character properties limit
    report = backfill(cloud).run()

    expected = cloud.table_as_items()
    del expected["bad"]
    assert cloud.personalize.items == expected
    assert (report.scanned, report.tally.put, report.tally.poison) == (96, 95, 1)
    [message] = cloud.dlq()
    assert message["itemId"] == "bad" and "32000" in message["reason"].replace(",", "")
    assert message["eventSourceARN"].endswith(f":table/{TABLE}")  # redrive re-reads the table by these keys
    # Packing: pages of 10 items become one call each (some pages are shorter: segments split the table).
    assert report.tally.calls <= 96 / 10 + 3 * 2


def test_resume_after_an_interruption_at_a_page_boundary_puts_only_the_rest(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(cloud, 120)
    stop = threading.Event()
    saves = 0
    real_save = Checkpoints.save

    def save_then_stop(self: Checkpoints, cp: Any) -> None:
        nonlocal saves
        real_save(self, cp)
        saves += 1
        if saves == 4:
            stop.set()  # Ctrl-C right after a checkpoint: the next page has not been read yet

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    first = backfill(cloud, segments=1, stop=stop).run()
    assert first.interrupted and first.scanned == 40
    assert len(cloud.personalize.items) == 40
    monkeypatch.setattr(Checkpoints, "save", real_save)

    second = backfill(cloud, segments=1).run()
    assert second.resumed == 1 and second.scanned == 80
    sent = sum(len(c) for c in cloud.personalize.accepted)
    assert sent == 120  # nothing written twice
    assert cloud.personalize.items == cloud.table_as_items()

    third = backfill(cloud, segments=1).run()  # every checkpoint says done
    assert third.scanned == 0 and sum(len(c) for c in cloud.personalize.accepted) == 120


def test_resume_after_an_interruption_mid_segment(cloud: Cloud) -> None:
    fill(cloud, 150)
    stop = threading.Event()
    calls = 0

    def stop_midway(items: list[dict[str, Any]]) -> tuple[str, str] | None:
        nonlocal calls
        calls += 1
        if calls == 5:
            stop.set()  # Ctrl-C while segments are writing
            return ("ThrottlingException", "Rate exceeded")  # this call does not land
        return None

    interrupted = FakePersonalize(stop_midway)
    interrupted.items = cloud.personalize.items
    first_run = backfill(cloud, stop=stop, personalize=interrupted.client)
    first = first_run.run()
    assert first.interrupted
    assert 0 < len(cloud.personalize.items) < 150
    # Which segments had saved a page before the stop depends on how the three threads were scheduled.
    saved = sum(first_run.checkpoints.load(i) is not None for i in range(3))
    assert saved >= 1

    second = backfill(cloud).run()
    assert second.resumed == saved
    assert cloud.personalize.items == cloud.table_as_items()
    # Only the pages under way when it stopped are written again.
    again = sum(len(c) for c in interrupted.accepted) + sum(len(c) for c in cloud.personalize.accepted) - 150
    assert 0 <= again <= 3 * 10


def test_a_different_segment_count_is_refused_while_a_checkpoint_exists_and_restart_starts_over(cloud: Cloud) -> None:
    fill(cloud, 30)
    backfill(cloud, segments=2).run()
    with pytest.raises(OpsError, match="--segments 2"):
        backfill(cloud, segments=3)._prepare()
    again = backfill(cloud, segments=3, restart=True).run()
    assert again.scanned == 30 and again.resumed == 0
    old = cloud.ddb.get_item(TableName=STATE, Key={"pk": {"S": f"backfill#{TABLE}#{DATASET_ARN}#seg0"}})["Item"]
    assert old["total"]["N"] == "3" and old["done"]["BOOL"] is True


def test_dry_run_maps_and_counts_but_writes_nothing(cloud: Cloud) -> None:
    fill(cloud, 25)
    cloud.put("bad", title="x" * 40_000)
    report = backfill(cloud, dry_run=True).run()
    assert (report.scanned, report.would_put, report.would_poison) == (26, 25, 1)
    assert cloud.personalize.calls == [] and cloud.dlq_depth() == 0
    assert cloud.ddb.scan(TableName=STATE)["Count"] == 0  # no checkpoint either


def test_a_write_that_lands_before_the_backfills_stale_image_is_not_regressed(cloud: Cloud) -> None:
    """The interleaving that put-then-verify exists for: the backfill reads v1, the item changes to v2 and the
    stream writes v2, then the backfill's PutItems of v1 lands. The verifying read sees v2 and writes it again."""
    cloud.put("a", title="v1")
    stream_wrote = False

    def concurrent_update(items: list[dict[str, Any]]) -> None:
        nonlocal stream_wrote
        if not stream_wrote:
            stream_wrote = True
            cloud.put("a", title="v2")
            cloud.personalize.items["a"] = {"title": "v2"}  # what the stream's invocation writes, first

    cloud.personalize.rule = concurrent_update
    report = backfill(cloud, segments=1).run()
    assert cloud.personalize.items["a"] == {"title": "v2"}
    assert report.tally.rewritten == 1


def test_an_item_deleted_under_the_backfill_is_written_as_a_remove(cloud: Cloud) -> None:
    cloud.put("a", title="v1")
    deleted = False

    def concurrent_delete(items: list[dict[str, Any]]) -> None:
        nonlocal deleted
        if not deleted:
            deleted = True
            cloud.ddb.delete_item(TableName=TABLE, Key={"sku": {"S": "a"}})

    cloud.personalize.rule = concurrent_delete
    backfill(cloud, segments=1).run()
    assert cloud.personalize.items["a"] == {"title": "v1", "deleted": True}  # onRemove: {"deleted": true}


def stream_records(cloud: Cloud) -> Any:
    """The table's DynamoDB stream, read as the event source mapping would: Lambda-shaped records, in order."""
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    arn = cloud.ddb.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]

    def poll() -> list[dict[str, Any]]:
        nonlocal it
        got = streams.get_records(ShardIterator=it, Limit=100)
        it = got["NextShardIterator"]
        return [{**r, "eventSourceARN": arn} for r in got["Records"]]

    return poll


def test_concurrent_writer_and_stream_the_dataset_ends_equal_to_the_table(cloud: Cloud) -> None:
    fill(cloud, 200)
    poll = stream_records(cloud)
    poll()  # the stream starts after the catalog exists (the backfill's job is everything before)
    stream_personalize = FakePersonalize()
    stream_personalize.items = cloud.personalize.items  # one dataset, two writers
    stream_rt = build_runtime(cloud.settings(), personalize=stream_personalize.client, sqs=cloud.sqs)
    writing = threading.Event()
    writing.set()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            n = 0
            while writing.is_set():
                n += 1
                i = n * 7 % 200
                if n % 11 == 0:
                    cloud.ddb.delete_item(TableName=TABLE, Key={"sku": {"S": f"s{i:04d}"}})
                else:
                    cloud.put(f"s{i:04d}", title=f"update {n}", price=n)
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    def stream() -> None:
        try:
            idle = 0
            while writing.is_set() or idle < 2:
                records = poll()
                idle = 0 if records else idle + 1
                if records:
                    result = pipeline.run(
                        {"Records": records},
                        settings=stream_rt.settings,
                        sink=stream_rt.sink,
                        sqs=stream_rt.sqs,
                        deadline=Deadline.unbounded(),
                    )
                    assert not result.response["batchItemFailures"]
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    def slow_call(items: list[dict[str, Any]]) -> None:
        time.sleep(0.03)  # the backfill's PutItems takes a while: the stream overtakes it now and then

    cloud.personalize.rule = slow_call
    threads = [threading.Thread(target=writer), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    try:
        report = backfill(cloud, segments=4).run()
    finally:
        writing.clear()
        for t in threads:
            t.join(60)
    assert not errors
    live = cloud.table_as_items()
    dataset = {k: v for k, v in cloud.personalize.items.items() if not v.get("deleted")}
    assert dataset == live
    assert report.tally.put >= 1


def test_the_cli_runs_a_backfill_and_prints_a_summary(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(cloud, 12)
    for name, value in cloud.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("ops.common.client", lambda service, **_: boto3.client(service, region_name="us-east-1"))
    monkeypatch.setattr("ops.backfill.client", lambda service, **_: boto3.client(service, region_name="us-east-1"))
    monkeypatch.setattr("connector.handler.boto3.client", _fake_personalize_factory(cloud))
    assert cli.main(["backfill", "--table", TABLE, "--segments", "2"]) == 0
    assert len(cloud.personalize.items) == 12
    assert cli.main(["backfill", "--table", "missing"]) == 2
    assert cli.main(["backfill", "--table", TABLE, "--share", "1.5"]) == 2


def _fake_personalize_factory(cloud: Cloud) -> Any:
    real = boto3.client

    def factory(service: str, **kwargs: Any) -> Any:
        if service == "personalize-events":
            return cloud.personalize.client
        return real(service, region_name="us-east-1", **{k: v for k, v in kwargs.items() if k != "region_name"})

    return factory


def test_checkpoint_layout(cloud: Cloud) -> None:
    fill(cloud, 5)
    backfill(cloud, segments=1, page_size=3).run()
    row = cloud.ddb.get_item(TableName=STATE, Key={"pk": {"S": f"backfill#{TABLE}#{DATASET_ARN}#seg0"}})["Item"]
    assert row["total"] == {"N": "1"} and row["scanned"] == {"N": "5"} and row["put"] == {"N": "5"}
    assert "last_key" not in row and row["done"] == {"BOOL": True}
    assert json.loads(json.dumps(row))  # plain DynamoDB JSON


def test_a_dataset_that_refuses_every_item_ends_the_backfill_with_that_error_and_keeps_the_checkpoints(
    cloud: Cloud,
) -> None:
    from ops.feed import Systemic

    fill(cloud, 40)

    def wrong_schema(items: list[dict[str, Any]]) -> tuple[str, str]:
        return ("InvalidInputException", "properties do not match the dataset's schema")

    job = backfill(cloud, personalize=FakePersonalize(wrong_schema).client)
    assert job.feeder is not None
    job.feeder._backoff = (0.001, 0.002)
    # The cause is raised (not the Stopped of the other segments it stopped), and the CLI prints it in one line.
    with pytest.raises(Systemic, match="schema"):
        job.run()
    assert cloud.personalize.items == {} and cloud.dlq_depth() == 0  # retried, never dead-lettered one by one
    assert backfill(cloud).run().tally.put == 40  # the schema fixed: a rerun loads everything
