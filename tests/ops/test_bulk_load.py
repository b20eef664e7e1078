"""``python -m ops bulk-load`` end to end on moto's server and the emulator: from a table ARN (export started,
completed by the local cloud, converted, imported), FULL then FULL again, INCREMENTAL only with
--streams-paused, dry run, and the clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localcloud import export
from ops.cli import main
from tests.factories import DATASET_ARN
from tests.localcloud.test_import_jobs import BUCKET, ROLE, SCHEMA, cloud, moto_url, put, table_state  # noqa: F401

pytestmark = pytest.mark.usefixtures("env")


@pytest.fixture
def env(cloud: dict[str, Any], moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE", cloud["emu"].endpoint_url)


def cli(*args: str) -> int:
    return main(["bulk-load", "--poll-seconds", "0.02", *args])


def test_from_a_table_arn_to_an_active_full_import_then_full_again(cloud: dict[str, Any], capsys: Any) -> None:  # noqa: F811
    for n in range(25):
        put(cloud, f"i{n}", 1)
    cloud["ddb"].put_item(TableName=cloud["table"], Item={"sku": {"S": "bad"}, "title": {"S": "t"}})  # no VERSION
    args = ["--table-arn", cloud["table_arn"], "--export-bucket", BUCKET, "--output", f"s3://{BUCKET}/ops/"]
    with export.ExportCompleter(cloud["ddb"], cloud["s3"], cloud["table_arn"], items_per_file=10):
        assert cli(*args, "--role-arn", ROLE, "--job-name", "ops-first") == 0
        jobs = cloud["personalize"].list_dataset_import_jobs(datasetArn=DATASET_ARN)["datasetImportJobs"]
        assert [(j["jobName"], j["importMode"], j["status"]) for j in jobs] == [("ops-first", "FULL", "ACTIVE")]
        expected = {k: v for k, v in table_state_lenient(cloud).items() if k != "bad"}
        assert cloud["emu"].items(DATASET_ARN) == expected
        parts = cloud["s3"].list_objects_v2(Bucket=BUCKET, Prefix="ops/ops-first/")["Contents"]
        assert len(parts) == 3 and all(p["Key"].endswith(".csv") for p in parts)  # one part per data file
        rejects = cloud["s3"].list_objects_v2(Bucket=BUCKET, Prefix="ops/ops-first-rejects/")["Contents"]
        report = [json.loads(cloud["s3"].get_object(Bucket=BUCKET, Key=r["Key"])["Body"].read()) for r in rejects]
        assert [(r["key"], "VERSION" in r["reason"]) for r in report] == [({"sku": {"S": "bad"}}, True)]
        err = capsys.readouterr().err
        assert "rejects" in err and "ops-first" in err and "ACTIVE" in err

        put(cloud, "i0", 2)
        assert cli(*args, "--role-arn", ROLE, "--job-name", "ops-second") == 0  # auto: FULL again (safe)
        jobs = cloud["personalize"].list_dataset_import_jobs(datasetArn=DATASET_ARN)["datasetImportJobs"]
        assert jobs[0]["jobName"] == "ops-second" and jobs[0]["importMode"] == "FULL"
        assert cloud["emu"].items(DATASET_ARN)["i0"]["version"] == 2

        code = cli(*args, "--role-arn", ROLE, "--job-name", "ops-inc", "--mode", "INCREMENTAL")
        assert code == 2 and "--streams-paused" in capsys.readouterr().err
        assert cli(*args, "--role-arn", ROLE, "--job-name", "ops-inc", "--streams-paused") == 0
        jobs = cloud["personalize"].list_dataset_import_jobs(datasetArn=DATASET_ARN)["datasetImportJobs"]
        assert jobs[0]["jobName"] == "ops-inc" and jobs[0]["importMode"] == "INCREMENTAL"


def table_state_lenient(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    items = c["ddb"].scan(TableName=c["table"])["Items"]
    return {
        i["sku"]["S"]: {"title": i["title"]["S"], "version": int(i["version"]["N"])} for i in items if "version" in i
    }


def test_dry_run_converts_and_imports_nothing(cloud: dict[str, Any], tmp_path: Path, capsys: Any) -> None:  # noqa: F811
    for n in range(5):
        put(cloud, f"d{n}", 1)
    arn, _ = export.export_table(cloud["ddb"], cloud["s3"], cloud["table_arn"], BUCKET, items_per_file=2)
    assert cli("--export-arn", arn, "--dry-run", "--work-dir", str(tmp_path)) == 0
    csvs = sorted(tmp_path.glob("*.csv"))
    assert len(csvs) == 3
    rows = [line for p in csvs for line in p.read_text().splitlines()[1:]]
    assert len(rows) == 5
    assert cloud["personalize"].list_dataset_import_jobs(datasetArn=DATASET_ARN)["datasetImportJobs"] == []
    assert "dry run" in capsys.readouterr().err
    folder = export.export_folder("exports", arn)
    assert cli("--s3-uri", f"s3://{BUCKET}/{folder}", "--dry-run", "--work-dir", str(tmp_path / "b")) == 0


def test_clear_errors(cloud: dict[str, Any], tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    assert cli("--s3-uri", f"s3://{BUCKET}/nowhere/", "--dry-run") == 2
    assert "no export manifest" in capsys.readouterr().err
    # moto answers a missing export with a 500 (a KeyError; AWS: ExportNotFoundException): still one clear line
    assert cli("--export-arn", cloud["table_arn"] + "/export/nope", "--dry-run") == 2
    assert "DescribeExport" in capsys.readouterr().err
    assert cli("--export-arn", "x", "--output", f"s3://{BUCKET}/o/") == 2
    assert "--role-arn" in capsys.readouterr().err
    schemaless = tmp_path / "m.json"
    schemaless.write_text("{}")
    assert cli("--export-arn", "x", "--dry-run", "--config-file", str(schemaless)) == 2
    assert "no 'schema'" in capsys.readouterr().err
    cloud["ddb"].update_continuous_backups(
        TableName=cloud["table"], PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False}
    )
    assert cli("--table-arn", cloud["table_arn"], "--export-bucket", BUCKET, "--dry-run") == 2
    assert "point-in-time recovery is off" in capsys.readouterr().err
