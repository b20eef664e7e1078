"""End to end: the operator tools (``python -m ops ...`` as a subprocess, with the local cloud's environment)
against the running local cloud (the synthesized stack: moto, the emulator, the event source mapping runner).

* ``status --json`` returns the mappings, the DLQ depth, the on-failure depth and the shared budget;
* **redrive after a mapping fix**: items whose ``listPrice`` does not coerce under the stack's mapping land in
  the DLQ; a fixed mapping (``PRICE`` from ``salePrice``, a new ``--config-file``) accepts them; ``ops redrive``
  puts them and the DLQ is empty;
* **replay after an outage**: the dataset denies access (a systemic error: every record is retried) and the
  mapping retries once, so the batches go to the S3 on-failure destination; after the outage ``ops replay``
  puts them, and the replayed objects are moved under ``replayed/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from localcloud.demo import ROOT, LocalCloud
from tests.e2e.waiting import wait_for

pytestmark = pytest.mark.e2e

_ser = TypeSerializer()


def item(sku: str, price: Any, sale: Decimal) -> dict[str, Any]:
    image = {"sku": sku, "title": f"Title {sku}", "listPrice": price, "salePrice": sale, "createdAt": 1_700_000_000}
    return {k: _ser.serialize(v) for k, v in image.items()}


def ops(cloud: LocalCloud, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cloud.ops_environment(), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'lambda_src'}"}
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def on_failure_bucket(cloud: LocalCloud) -> str:
    arns = {m.on_failure_arn for m in cloud._runner().mappings if m.on_failure_arn}
    (arn,) = [a for a in arns if a.startswith("arn:aws:s3:::")]
    return arn.split(":::", 1)[1]


def keys(cloud: LocalCloud, bucket: str, prefix: str) -> list[str]:
    page = cloud.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in page.get("Contents", [])]


@pytest.fixture
def cloud(template: Path, tmp_path: Path) -> Iterator[LocalCloud]:
    with LocalCloud(template, batching_window_s=0.2, log_dir=tmp_path / "logs") as c:
        yield c


@pytest.fixture
def outage_cloud(template: Path, tmp_path: Path) -> Iterator[LocalCloud]:
    """Batches give up after one retry (instead of the stack's record age of a day)."""
    with LocalCloud(
        template,
        batching_window_s=0.2,
        log_dir=tmp_path / "logs",
        mapping_overrides={"max_retry_attempts": 1, "bisect_on_error": False},
    ) as c:
        yield c


def test_status_json(cloud: LocalCloud) -> None:
    ddb, table = cloud.client("dynamodb"), cloud.table_name
    for n in range(5):
        ddb.put_item(TableName=table, Item=item(f"s-{n}", "N/A" if n == 0 else Decimal("9.5"), Decimal("9.5")))
    wait_for("4 items and 1 DLQ entry", lambda: len(cloud.emulator.items(cloud.dataset_arn)) == 4)  # type: ignore[union-attr]
    wait_for("the DLQ entry", lambda: cloud.queue_depth(cloud.dlq_url) == 1)
    env = cloud.environment
    done = ops(
        cloud,
        "status",
        "--json",
        "--dlq-url",
        cloud.dlq_url,
        "--on-failure-bucket",
        on_failure_bucket(cloud),
        "--state-table",
        env["STATE_TABLE"],
        "--dataset-arn",
        cloud.dataset_arn,
        "--errors",
        "1",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"mappings", "dlq", "onFailure", "budget"} <= set(report)
    dlq, on_failure, budget = report["dlq"], report["onFailure"], report["budget"]
    assert dlq["visible"] + dlq["inFlight"] == 1, dlq
    assert dlq["newest"][0]["itemId"] == "s-0", dlq
    assert on_failure["kind"] == "s3" and on_failure["pending"] == 0, on_failure
    assert "error" not in budget and budget["datasetGroup"] and budget["ceiling"] > 0, budget
    assert isinstance(report["mappings"], dict | list)


def test_redrive_after_a_mapping_fix(cloud: LocalCloud, tmp_path: Path) -> None:
    ddb, table, emulator = cloud.client("dynamodb"), cloud.table_name, cloud.emulator
    assert emulator is not None
    for n in range(20):
        ddb.put_item(TableName=table, Item=item(f"good-{n:02d}", Decimal("12.5"), Decimal("12.5")))
    for n in range(5):
        ddb.put_item(TableName=table, Item=item(f"bad-{n:02d}", "N/A", Decimal("7.25")))
    wait_for("the good items", lambda: len(emulator.items(cloud.dataset_arn)) == 20)
    wait_for("5 DLQ entries", lambda: cloud.queue_depth(cloud.dlq_url) == 5)
    # The operator fixes the mapping: PRICE from salePrice (equal to listPrice on the good items).
    document = cloud._function_document()
    fixed = {**document, "fields": {**document.get("fields", {}), "PRICE": "salePrice"}}
    config = tmp_path / "fixed-mapping.json"
    config.write_text(json.dumps(fixed))

    done = ops(cloud, "redrive", "--config-file", str(config))
    assert done.returncode == 0, done.stderr

    landed = emulator.items(cloud.dataset_arn)
    assert len(landed) == 25
    assert all(landed[f"bad-{n:02d}"]["price"] == 7.25 for n in range(5))
    assert all(landed[f"good-{n:02d}"]["price"] == 12.5 for n in range(20))
    wait_for("an empty DLQ", lambda: cloud.queue_depth(cloud.dlq_url) == 0, timeout=10)


def test_replay_after_an_outage(outage_cloud: LocalCloud) -> None:
    cloud = outage_cloud
    ddb, table, emulator = cloud.client("dynamodb"), cloud.table_name, cloud.emulator
    assert emulator is not None
    schema = json.loads((ROOT / "examples" / "items-schema.json").read_text())
    emulator.register_dataset(cloud.dataset_arn, schema, access_denied=True)  # the outage: a systemic error
    for n in range(30):
        ddb.put_item(TableName=table, Item=item(f"o-{n:02d}", Decimal("3.5"), Decimal("3.5")))
    bucket = on_failure_bucket(cloud)
    wait_for("the on-failure destination", lambda: bool(keys(cloud, bucket, "aws/lambda/")), timeout=90)
    wait_for("the runner to give up", lambda: cloud._runner().wait_idle(timeout=1), timeout=60)
    assert emulator.items(cloud.dataset_arn) == {}
    emulator.register_dataset(cloud.dataset_arn, schema)  # the outage is over

    done = ops(cloud, "replay", "--bucket", bucket)
    assert done.returncode == 0, done.stderr

    landed = emulator.items(cloud.dataset_arn)
    assert sorted(landed) == [f"o-{n:02d}" for n in range(30)]
    assert keys(cloud, bucket, "aws/lambda/") == []
    assert keys(cloud, bucket, "replayed/")
