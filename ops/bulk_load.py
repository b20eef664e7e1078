"""``python -m ops bulk-load``: a DynamoDB point-in-time export → the Items CSV → a Personalize import job.

Steps, each with progress and a clear error:

1. the export: start one from ``--table-arn`` (``ExportTableToPointInTime``, PITR must be on) and wait, or take an
   existing one (``--export-arn``, or ``--s3-uri`` of its ``AWSDynamoDB/<export id>/`` folder);
2. its ``manifest-summary.json`` and ``manifest-files.json`` (JSON lines: ``dataFileS3Key``, ``itemCount``);
3. every data file, converted by the asset's converter (:mod:`connector.bulk`, the stream's own mapping code, the
   same as the bulk Lambda), uploaded as one CSV part under ``--output``/<job name>/; rejects (records the stream
   would dead-letter) go to a JSON-lines report beside that folder, never inside it;
4. ``CreateDatasetImportJob`` over the folder, then ``DescribeDatasetImportJob`` until ``ACTIVE`` or
   ``CREATE FAILED``; a summary at the end.

The mode: ``FULL`` when the dataset has no ``ACTIVE`` import yet (``ListDatasetImportJobs``). After that, ``auto``
picks ``FULL`` again: a FULL import replaces only the earlier *bulk* data and never an item the stream wrote
with PutItems, so it is safe at any time under the ordering rule (the event source mappings run before the
export's point in time). ``INCREMENTAL`` may replace PutItems-written items (AWS does not say; the local cloud
assumes it does), which would roll back every change the stream made after the export time; so it is only used
with ``--streams-paused``: the operator disabled the event source mappings *before* the export's point in time
and enables them again once the import is ``ACTIVE``, and the stream then re-puts every change since the export.
The size limits are checked while converting: FULL at most 100 GB, INCREMENTAL at most 1 GB of CSV.

``--dry-run`` converts every file and reports rows and rejects (the CSV parts and the rejects report stay in a
local folder) without uploading or importing anything.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from connector.bulk import BulkConfigError, Converter, Stats, convert_stream, output_keys
from ops.common import OpsError, add_settings_arguments, client, console, describe_client_error, progress, settings_from

GB = 1024**3
LIMITS = {"FULL": 100 * GB, "INCREMENTAL": 1 * GB}
MANIFEST_SUMMARY = "manifest-summary.json"
TERMINAL = ("ACTIVE", "CREATE FAILED")


@dataclass
class Report:
    records: int = 0
    rows: int = 0
    rejects: int = 0
    csv_bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    csv_location: str | None = None
    rejects_location: str | None = None
    job_arn: str | None = None
    status: str | None = None
    failure_reason: str | None = None
    mode: str | None = None
    export_time: str | None = None
    parts: list[str] = field(default_factory=list)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bulk-load",
        help="load a whole table through a DynamoDB export and a Personalize import job",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Ordering rule: enable the event source mappings before the export's point in time "
        "(docs/ops/bulk-load.md).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--table-arn", help="start a point-in-time export of this table (PITR must be enabled)")
    src.add_argument("--export-arn", help="use this completed export")
    src.add_argument("--s3-uri", help="use the export at s3://bucket/prefix/AWSDynamoDB/<export id>/")
    p.add_argument("--export-bucket", help="with --table-arn: the bucket the export writes to")
    p.add_argument("--export-prefix", default="exports", help="with --table-arn: the export's S3 prefix")
    p.add_argument("--output", help="s3://bucket/prefix/ for the CSV parts (a folder per job under it)")
    p.add_argument("--role-arn", help="the IAM role Personalize assumes to read the CSV from S3")
    p.add_argument("--mode", choices=("auto", "FULL", "INCREMENTAL"), default="auto", help="import mode")
    p.add_argument(
        "--streams-paused",
        action="store_true",
        help="allow INCREMENTAL: the event source mappings were disabled before the export's point in time "
        "and will be enabled after the import (INCREMENTAL may replace items the stream wrote)",
    )
    p.add_argument("--keys", nargs="+", metavar="ATTR", help="the table's key attributes (default: DescribeTable)")
    p.add_argument("--job-name", help="the import job's name (default: bulk-<time>)")
    p.add_argument("--work-dir", type=Path, help="local folder for the CSV parts (default: a temporary folder)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the import job to finish")
    p.add_argument("--poll-seconds", type=float, default=10.0, help="status poll interval (default 10 s)")
    p.add_argument("--timeout-minutes", type=float, default=240.0, help="give up waiting after this long")
    p.add_argument(
        "--manifest-wait-seconds",
        type=float,
        default=30.0,
        help="how long to wait for the manifest of an export this command started (the local cloud writes it "
        "a moment after the export reports COMPLETED)",
    )
    p.add_argument("--dry-run", action="store_true", help="convert and report; upload and import nothing")
    add_settings_arguments(p)
    p.set_defaults(run=run)


def parse_s3_uri(uri: str, what: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or len(uri) <= len("s3://"):
        raise OpsError(f"{what} must be an s3://bucket/prefix URI, not {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise OpsError(f"{what} has no bucket: {uri!r}")
    return bucket, key


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if not args.dry_run:
        if not args.output:
            raise OpsError("--output s3://bucket/prefix/ is required (where the CSV parts go), or use --dry-run")
        if not args.role_arn:
            raise OpsError("--role-arn is required: Personalize reads the CSV from S3 with that role")
        parse_s3_uri(args.output, "--output")
    if args.mode == "INCREMENTAL" and not args.streams_paused:
        raise OpsError(
            "INCREMENTAL may replace items the stream wrote with PutItems: disable the event source mappings "
            "before the export's point in time, pass --streams-paused, and enable them after the import "
            "(or use FULL, which is always safe)"
        )
    try:
        Converter(settings.mapping, args.keys or ["_"])  # the schema check, before any AWS call
    except BulkConfigError as exc:
        raise OpsError(str(exc)) from None

    s3, dynamodb = client("s3"), client("dynamodb")
    personalize = None if args.dry_run else client("personalize")
    bucket, folder, started_here = locate_export(args, dynamodb, s3)
    summary = read_json(s3, bucket, folder + MANIFEST_SUMMARY, wait_s=args.manifest_wait_seconds if started_here else 0)
    files = manifest_files(s3, bucket, summary, folder)
    keys = args.keys or table_keys(dynamodb, summary)
    try:
        converter = Converter(settings.mapping, keys)
    except BulkConfigError as exc:
        raise OpsError(str(exc)) from None

    report = Report(export_time=summary.get("exportTime"))
    report.mode = choose_mode(args, personalize, settings.dataset_arn)
    job_name = args.job_name or f"bulk-{time.strftime('%Y%m%d-%H%M%S')}"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bulk-load-"))
    work.mkdir(parents=True, exist_ok=True)
    out_bucket, out_prefix = ("", "") if args.dry_run else parse_s3_uri(args.output, "--output")
    job_prefix = f"{out_prefix.strip('/')}/{job_name}".strip("/")

    convert_all(
        args,
        s3,
        converter=converter,
        bucket=bucket,
        files=files,
        work=work,
        out_bucket=out_bucket,
        job_prefix=job_prefix,
        report=report,
    )
    if args.dry_run:
        report.csv_location = str(work)
        print_summary(report, dry_run=True)
        return 0
    assert personalize is not None
    report.csv_location = f"s3://{out_bucket}/{job_prefix}/"
    report.job_arn = personalize.create_dataset_import_job(
        jobName=job_name,
        datasetArn=settings.dataset_arn,
        dataSource={"dataLocation": report.csv_location},
        roleArn=args.role_arn,
        importMode=report.mode,
    )["datasetImportJobArn"]
    if args.no_wait:
        report.status = "CREATE PENDING"
    else:
        wait_job(personalize, report, poll_s=args.poll_seconds, timeout_s=args.timeout_minutes * 60)
    print_summary(report, dry_run=False)
    return 0 if args.no_wait or report.status == "ACTIVE" else 1


# ---------------------------------------------------------------------------------------------- the export


def locate_export(args: argparse.Namespace, dynamodb: Any, s3: Any) -> tuple[str, str, bool]:
    """``(bucket, folder of the export, started here)``; the folder ends with ``/``."""
    if args.s3_uri:
        bucket, key = parse_s3_uri(args.s3_uri, "--s3-uri")
        if key.endswith(MANIFEST_SUMMARY):
            key = key[: -len(MANIFEST_SUMMARY)]
        return bucket, key.rstrip("/") + "/" if key else "", False
    if args.table_arn:
        if not args.export_bucket:
            raise OpsError("--export-bucket is required with --table-arn (the bucket the export writes to)")
        if args.dry_run:
            console.print("[yellow]dry run[/]: an export is still started (it only reads the table)")
        try:
            desc = dynamodb.export_table_to_point_in_time(
                TableArn=args.table_arn,
                S3Bucket=args.export_bucket,
                S3Prefix=args.export_prefix,
                ExportFormat="DYNAMODB_JSON",
            )["ExportDescription"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "PointInTimeRecoveryUnavailableException":
                raise OpsError(
                    f"point-in-time recovery is off for {args.table_arn}: enable it "
                    "(aws dynamodb update-continuous-backups --point-in-time-recovery-specification "
                    "PointInTimeRecoveryEnabled=true) and run again"
                ) from None
            if code in ("TableNotFoundException", "ResourceNotFoundException"):
                raise OpsError(f"table {args.table_arn} not found") from None
            raise
        export_arn, started_here = desc["ExportArn"], True
    else:
        export_arn, started_here = args.export_arn, False
    desc = wait_export(dynamodb, export_arn)
    if desc["ExportStatus"] != "COMPLETED":
        raise OpsError(f"export {export_arn} is {desc['ExportStatus']}: {desc.get('FailureMessage') or 'no reason'}")
    bucket = desc["S3Bucket"]
    manifest = desc.get("ExportManifest")
    if manifest:
        return bucket, manifest.rsplit("/", 1)[0] + "/", started_here
    prefix = (desc.get("S3Prefix") or "").strip("/")
    export_id = export_arn.rstrip("/").rsplit("/", 1)[-1]
    return bucket, (f"{prefix}/" if prefix else "") + f"AWSDynamoDB/{export_id}/", started_here


def wait_export(dynamodb: Any, export_arn: str, *, poll_s: float = 2.0) -> dict[str, Any]:
    try:
        with _spinner() as bar:
            task = bar.add_task(f"export {export_arn.rsplit('/', 1)[-1]}", status="IN_PROGRESS")
            while True:
                desc: dict[str, Any] = dynamodb.describe_export(ExportArn=export_arn)["ExportDescription"]
                bar.update(task, status=desc["ExportStatus"])
                if desc["ExportStatus"] != "IN_PROGRESS":
                    return desc
                time.sleep(poll_s)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ExportNotFoundException", "ResourceNotFoundException"):
            raise OpsError(f"export {export_arn} not found") from None
        raise


def read_json(s3: Any, bucket: str, key: str, *, wait_s: float = 0.0) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            doc: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            return doc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("NoSuchKey", "404", "NoSuchBucket"):
                raise
            if time.monotonic() >= deadline:
                raise OpsError(
                    f"no export manifest at s3://{bucket}/{key}: pass the export's folder "
                    "(s3://bucket/prefix/AWSDynamoDB/<export id>/) or a completed export's ARN"
                ) from None
            time.sleep(0.2)
        except ValueError:
            raise OpsError(f"s3://{bucket}/{key} is not JSON") from None


def manifest_files(s3: Any, bucket: str, summary: dict[str, Any], folder: str) -> list[dict[str, Any]]:
    key = summary.get("manifestFilesS3Key") or folder + "manifest-files.json"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except ClientError as exc:
        raise OpsError(f"cannot read s3://{bucket}/{key}: {describe_client_error(exc)}") from None
    files = []
    for n, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            files.append({"dataFileS3Key": str(entry["dataFileS3Key"]), "itemCount": int(entry.get("itemCount", 0))})
        except (ValueError, KeyError, TypeError):
            raise OpsError(f"s3://{bucket}/{key} line {n} is not a manifest entry with dataFileS3Key") from None
    return files


def table_keys(dynamodb: Any, summary: dict[str, Any]) -> list[str]:
    table_arn = summary.get("tableArn")
    if not table_arn:
        raise OpsError("the manifest names no table: pass --keys with the table's key attribute names")
    try:
        schema = dynamodb.describe_table(TableName=table_arn.rsplit("/", 1)[-1])["Table"]["KeySchema"]
    except ClientError as exc:
        raise OpsError(f"{describe_client_error(exc)} (or pass --keys)") from None
    return [k["AttributeName"] for k in schema]


def choose_mode(args: argparse.Namespace, personalize: Any, dataset_arn: str) -> str:
    if personalize is None:  # dry run: no call; say what auto would pick at best
        return "FULL" if args.mode == "auto" else str(args.mode)
    jobs = []
    for page in personalize.get_paginator("list_dataset_import_jobs").paginate(datasetArn=dataset_arn):
        jobs.extend(page.get("datasetImportJobs", []))
    if any(j.get("status") in ("CREATE PENDING", "CREATE IN_PROGRESS") for j in jobs):
        raise OpsError("the dataset has an import job in progress: wait for it to finish")
    has_bulk = any(j.get("status") == "ACTIVE" for j in jobs)
    if args.mode == "INCREMENTAL" and not has_bulk:
        raise OpsError("INCREMENTAL needs an earlier successful import: the first import must be FULL")
    if args.mode != "auto":
        return str(args.mode)
    if has_bulk and args.streams_paused:
        return "INCREMENTAL"
    return "FULL"


# ------------------------------------------------------------------------------------------- conversion


def convert_all(
    args: argparse.Namespace,
    s3: Any,
    *,
    converter: Converter,
    bucket: str,
    files: list[dict[str, Any]],
    work: Path,
    out_bucket: str,
    job_prefix: str,
    report: Report,
) -> None:
    limit = LIMITS[report.mode or "FULL"]
    total = sum(f["itemCount"] for f in files) or None
    started = time.monotonic()
    with progress() as bar:
        task = bar.add_task("convert", total=total, rate="")
        for f in files:
            data_key = f["dataFileS3Key"]
            csv_key, rejects_key = output_keys(job_prefix, data_key)
            csv_path, rejects_path = work / Path(csv_key).name, work / Path(rejects_key).name

            def advance(n: int) -> None:
                report.records += n
                elapsed = max(time.monotonic() - started, 1e-9)
                bar.update(task, advance=n, rate=f"{report.records / elapsed:,.0f} rec/s")

            try:
                body = s3.get_object(Bucket=bucket, Key=data_key)["Body"]
            except ClientError as exc:
                raise OpsError(
                    f"cannot read data file s3://{bucket}/{data_key}: {describe_client_error(exc)}"
                ) from None
            with csv_path.open("wb") as out, rejects_path.open("wb") as rej:
                stats: Stats = convert_stream(converter, body, data_key, out, rej, progress=advance)
            report.files += 1
            report.rows += stats.rows
            report.rejects += stats.rejects
            report.csv_bytes += csv_path.stat().st_size
            if report.csv_bytes > limit:
                raise OpsError(
                    f"the CSV is over {report.csv_bytes / GB:.2f} GB, more than a {report.mode} import takes "
                    f"({limit // GB} GB): split the load" + ("" if report.mode == "FULL" else " or use FULL")
                )
            if args.dry_run:
                if stats.rejects:
                    report.rejects_location = str(work)
                else:
                    rejects_path.unlink()
                continue
            s3.upload_file(str(csv_path), out_bucket, csv_key)
            report.parts.append(csv_key)
            if stats.rejects:
                s3.upload_file(str(rejects_path), out_bucket, rejects_key)
                report.rejects_location = f"s3://{out_bucket}/{rejects_key.rsplit('/', 1)[0]}/"
            csv_path.unlink()
            rejects_path.unlink()
    report.seconds = time.monotonic() - started


def wait_job(personalize: Any, report: Report, *, poll_s: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with _spinner() as bar:
        task = bar.add_task(f"import {report.mode}", status="CREATE PENDING")
        while True:
            job = personalize.describe_dataset_import_job(datasetImportJobArn=report.job_arn)["datasetImportJob"]
            report.status, report.failure_reason = job["status"], job.get("failureReason")
            bar.update(task, status=report.status)
            if report.status in TERMINAL:
                return
            if time.monotonic() > deadline:
                raise OpsError(f"import job {report.job_arn} still {report.status} after {timeout_s / 60:.0f} min")
            time.sleep(poll_s)


def _spinner() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )


def print_summary(report: Report, *, dry_run: bool) -> None:
    table = Table(title="bulk-load" + (" (dry run: nothing uploaded or imported)" if dry_run else ""))
    table.add_column("")
    table.add_column("")
    rate = report.records / report.seconds if report.seconds else 0.0
    rows = [
        ("export time", report.export_time or "?"),
        ("data files", str(report.files)),
        ("records read", f"{report.records:,} ({rate:,.0f}/s)"),
        ("rows", f"{report.rows:,}"),
        ("rejects", f"{report.rejects:,}" + (f" → {report.rejects_location}" if report.rejects else "")),
        ("CSV", f"{report.csv_bytes:,} bytes at {report.csv_location}"),
        ("mode", report.mode or "?"),
    ]
    if not dry_run:
        rows += [("job", report.job_arn or "?"), ("status", report.status or "?")]
        if report.failure_reason:
            rows.append(("failure", report.failure_reason))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if report.rejects:
        console.print(
            f"[yellow]{report.rejects} record(s) rejected[/] (the stream would dead-letter them): "
            f"see {report.rejects_location}"
        )
