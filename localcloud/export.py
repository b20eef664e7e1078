"""Complete moto's DynamoDB point-in-time exports into the layout AWS writes.

What moto 5.2.5 writes (``moto/dynamodb/models/table_export.py``, ``TableExport._backup_to_s3_file``): one
gzipped DynamoDB-JSON-lines file, ``<S3Prefix>/AWSDynamoDB/<uuid>/data/<uuid>.gz``, whose folder uuid is *not*
the export id of the ARN; no ``manifest-summary.json``, no ``manifest-files.json``, no ``_started`` marker, no
md5 files; ``DescribeExport`` has no ``ExportManifest``, ``ExportTime``, ``StartTime`` or ``EndTime``; the table is
read when moto's export thread runs, not at a point in time; and its export ARN reads
``arn:...:table/<table ARN>/import/<id>`` (the table ARN nested, "import" for "export").

What AWS writes (DynamoDB developer guide, "DynamoDB table export output format"): under
``<S3Prefix>/AWSDynamoDB/<export id>/`` (the export id is the last segment of the export ARN):
``_started``, ``manifest-summary.json`` (one JSON object: ``exportArn``, ``exportTime``, ``tableArn``,
``s3Bucket``, ``s3Prefix``, ``manifestFilesS3Key``, ``itemCount``, ``outputFormat``, ...),
``manifest-summary.md5``, ``manifest-files.json`` (JSON lines: ``itemCount``, ``md5Checksum``, ``etag``,
``dataFileS3Key``), ``manifest-files.md5`` and ``data/<random>.json.gz`` data files (several for a larger table),
one ``{"Item": {...}}`` per line.

:func:`complete_export` rewrites moto's single file into that layout: it splits the items into several
``data/*.json.gz`` files (``items_per_file``), writes both manifests, the md5 files and ``_started``, and deletes
moto's own folder, so that a reader written for AWS (``ops bulk-load``, the bulk Lambda) reads it unchanged.
``exportTime`` is the moment the completer saw the export finished (moto has no point in time: see above), so a
test of the ordering rule must not write to the table while moto's export thread runs.

:class:`ExportCompleter` does that in the background for every finished export of a table (a thread polling
``ListExports``), which is how ``ops bulk-load --table-arn`` works against the local cloud: it reads the manifest
a moment after the export reports COMPLETED.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

DEFAULT_ITEMS_PER_FILE = 1_000
MANIFEST_SUMMARY = "manifest-summary.json"
MANIFEST_FILES = "manifest-files.json"


def export_id(export_arn: str) -> str:
    """The export id: the ARN's last segment (AWS names the export's S3 folder after it)."""
    return export_arn.rstrip("/").rsplit("/", 1)[-1]


def export_folder(prefix: str | None, export_arn: str) -> str:
    """``<prefix>/AWSDynamoDB/<export id>/`` (no leading slash when the prefix is empty)."""
    head = (prefix or "").strip("/")
    return f"{head}/AWSDynamoDB/{export_id(export_arn)}/" if head else f"AWSDynamoDB/{export_id(export_arn)}/"


def wait_export(dynamodb: Any, export_arn: str, *, timeout_s: float = 60.0, poll_s: float = 0.1) -> dict[str, Any]:
    """``DescribeExport`` until the export is no longer IN_PROGRESS; returns the description."""
    deadline = time.monotonic() + timeout_s
    while True:
        desc: dict[str, Any] = dynamodb.describe_export(ExportArn=export_arn)["ExportDescription"]
        if desc["ExportStatus"] != "IN_PROGRESS":
            return desc
        if time.monotonic() > deadline:
            raise TimeoutError(f"export {export_arn} still IN_PROGRESS after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _keys(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(page.get("Contents", []))
    return out


def is_complete(s3: Any, bucket: str, prefix: str | None, export_arn: str) -> bool:
    folder = export_folder(prefix, export_arn)
    return any(o["Key"] == folder + MANIFEST_SUMMARY for o in _keys(s3, bucket, folder))


def _moto_data_file(s3: Any, bucket: str, prefix: str | None, item_count: int) -> str | None:
    """The data file moto wrote for an export: a ``.gz`` under ``AWSDynamoDB/<uuid>/data/`` of a folder that has
    no manifest; with several candidates, the one holding ``item_count`` items, else the newest."""
    root = f"{(prefix or '').strip('/')}/AWSDynamoDB/" if (prefix or "").strip("/") else "AWSDynamoDB/"
    objects = _keys(s3, bucket, root)
    completed = {o["Key"].rsplit("/", 1)[0] for o in objects if o["Key"].endswith("/" + MANIFEST_SUMMARY)}
    candidates = [
        o
        for o in objects
        if o["Key"].endswith(".gz") and "/data/" in o["Key"] and o["Key"].split("/data/")[0] not in completed
    ]
    if not candidates:
        return None
    if len(candidates) > 1:
        matching = [o for o in candidates if _count_lines(s3, bucket, o["Key"]) == item_count]
        candidates = matching or candidates
    return str(max(candidates, key=lambda o: o["LastModified"])["Key"])


def _count_lines(s3: Any, bucket: str, key: str) -> int:
    raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return sum(1 for line in gzip.decompress(raw).splitlines() if line.strip())


def complete_export(
    dynamodb: Any, s3: Any, export_arn: str, *, items_per_file: int = DEFAULT_ITEMS_PER_FILE
) -> dict[str, Any]:
    """Rewrite moto's output of ``export_arn`` into AWS's layout (see the module docstring); returns the
    manifest summary. Idempotent: an export already completed is left as it is."""
    if items_per_file < 1:
        raise ValueError("items_per_file must be at least 1")
    desc = wait_export(dynamodb, export_arn)
    if desc["ExportStatus"] != "COMPLETED":
        raise RuntimeError(f"export {export_arn} is {desc['ExportStatus']}: {desc.get('FailureMessage')}")
    bucket, prefix = desc["S3Bucket"], desc.get("S3Prefix")
    folder = export_folder(prefix, export_arn)
    if is_complete(s3, bucket, prefix, export_arn):
        summary: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=folder + MANIFEST_SUMMARY)["Body"].read())
        return summary
    source = _moto_data_file(s3, bucket, prefix, int(desc.get("ItemCount") or 0))
    lines: list[bytes] = []
    if source is not None:
        raw = gzip.decompress(s3.get_object(Bucket=bucket, Key=source)["Body"].read())
        lines = [line for line in raw.splitlines() if line.strip()]
    started = datetime.now(UTC)
    s3.put_object(Bucket=bucket, Key=folder + "_started", Body=b"")
    manifest_lines = []
    for start in range(0, len(lines), items_per_file):
        chunk = b"\n".join(lines[start : start + items_per_file]) + b"\n"
        body = gzip.compress(chunk)
        key = f"{folder}data/{uuid.uuid4().hex[:26]}.json.gz"
        etag = s3.put_object(Bucket=bucket, Key=key, Body=body).get("ETag", "").strip('"')
        manifest_lines.append(
            {
                "itemCount": len(lines[start : start + items_per_file]),
                "md5Checksum": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
                "etag": etag,
                "dataFileS3Key": key,
            }
        )
    files_body = "".join(json.dumps(m) + "\n" for m in manifest_lines).encode()
    s3.put_object(Bucket=bucket, Key=folder + MANIFEST_FILES, Body=files_body)
    s3.put_object(Bucket=bucket, Key=folder + "manifest-files.md5", Body=_md5_hex(files_body))
    ended = datetime.now(UTC)
    summary = {
        "version": "2020-06-30",
        "exportArn": export_arn,
        "startTime": started.isoformat(),
        "endTime": ended.isoformat(),
        "tableArn": desc.get("TableArn"),
        "tableId": None,
        "exportTime": started.isoformat(),
        "s3Bucket": bucket,
        "s3Prefix": prefix,
        "s3SseAlgorithm": "AES256",
        "s3SseKmsKeyId": None,
        "manifestFilesS3Key": folder + MANIFEST_FILES,
        "billedSizeBytes": int(desc.get("BilledSizeBytes") or 0),
        "itemCount": len(lines),
        "outputFormat": "DYNAMODB_JSON",
        "exportType": "FULL_EXPORT",
    }
    summary_body = json.dumps(summary).encode()
    s3.put_object(Bucket=bucket, Key=folder + MANIFEST_SUMMARY, Body=summary_body)
    s3.put_object(Bucket=bucket, Key=folder + "manifest-summary.md5", Body=_md5_hex(summary_body))
    if source is not None:
        moto_folder = source.split("/data/")[0] + "/"
        for o in _keys(s3, bucket, moto_folder):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
    return summary


def _md5_hex(body: bytes) -> bytes:
    return hashlib.md5(body, usedforsecurity=False).hexdigest().encode()


def export_table(
    dynamodb: Any,
    s3: Any,
    table_arn: str,
    bucket: str,
    prefix: str = "exports",
    *,
    items_per_file: int = DEFAULT_ITEMS_PER_FILE,
) -> tuple[str, dict[str, Any]]:
    """Start a point-in-time export (enabling PITR if needed), wait, complete it: ``(export ARN, summary)``."""
    table_name = table_arn.rsplit("/", 1)[-1]
    with contextlib.suppress(Exception):  # already enabled, or the caller's table needs no change
        dynamodb.update_continuous_backups(
            TableName=table_name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    arn = dynamodb.export_table_to_point_in_time(TableArn=table_arn, S3Bucket=bucket, S3Prefix=prefix)[
        "ExportDescription"
    ]["ExportArn"]
    return arn, complete_export(dynamodb, s3, arn, items_per_file=items_per_file)


class ExportCompleter:
    """A background thread that completes every finished export of ``table_arn`` (see the module docstring)."""

    def __init__(
        self,
        dynamodb: Any,
        s3: Any,
        table_arn: str,
        *,
        items_per_file: int = DEFAULT_ITEMS_PER_FILE,
        poll_s: float = 0.1,
    ) -> None:
        self.dynamodb, self.s3, self.table_arn = dynamodb, s3, table_arn
        self.items_per_file, self.poll_s = items_per_file, poll_s
        self.completed: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="export-completer", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                summaries = self.dynamodb.list_exports(TableArn=self.table_arn).get("ExportSummaries", [])
            except Exception as exc:  # the endpoint went away: keep trying until stopped
                self.errors.append(str(exc))
                continue
            for s in summaries:
                arn = s["ExportArn"]
                if s.get("ExportStatus") != "COMPLETED" or arn in self.completed:
                    continue
                try:
                    complete_export(self.dynamodb, self.s3, arn, items_per_file=self.items_per_file)
                    self.completed.append(arn)
                except Exception as exc:
                    self.errors.append(f"{arn}: {exc}")

    def __enter__(self) -> ExportCompleter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def read_data_file(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """The items of one data file (DynamoDB JSON), for checks."""
    raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
        return [json.loads(line)["Item"] for line in fh if line.strip()]
