"""Personalize's control plane for bulk imports: ``CreateDatasetImportJob``, ``DescribeDatasetImportJob``,
``ListDatasetImportJobs``.

Protocol (botocore's ``personalize/2018-05-22/service-2.json``): JSON 1.1, ``POST /`` with
``X-Amz-Target: AmazonPersonalize.<Operation>``, SigV4 signing name ``personalize`` (the same scope check as the
events API). Errors are ``{"__type": code, "message": ...}`` with status 400, which botocore's JSON parser maps to
``client.exceptions.<code>``. So boto3's ``personalize`` client with ``AWS_ENDPOINT_URL_PERSONALIZE`` (or
``endpoint_url``) pointing at the emulator works unchanged.

A job goes ``CREATE PENDING`` → ``CREATE IN_PROGRESS`` → ``ACTIVE`` or ``CREATE FAILED`` (with
``failureReason``), one state every ``import_step_ms``, in a background thread. It reads the CSV from S3 through
a plain boto3 client: the emulator's ``s3_endpoint_url`` (``--s3-endpoint-url``; default: boto3's own resolution,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, which is moto's server in the local cloud and moto's in-process mock
in the tests).

Semantics (sources: the Personalize developer guide, "Importing bulk data ... with a dataset import job" and
"Import modes"; the API reference of ``CreateDatasetImportJob``):

* The dataset is modelled as two layers: the **bulk layer** (what import jobs wrote) and the **PutItems layer**
  (what PutItems wrote). What the dataset exposes for checks (``items``) is the PutItems version of an item when
  there is one, else its bulk version.
* ``FULL`` (the default) replaces the whole bulk layer and leaves the PutItems layer alone: "This doesn't replace
  data you imported individually, including events recorded in real time."
* ``INCREMENTAL`` adds to the bulk layer and replaces by id; it is refused (``InvalidInputException``) before the
  dataset has an ``ACTIVE`` import ("If you haven't imported bulk records yet ... you can only specify FULL").
  **Assumption** (AWS does not say): whether an ``INCREMENTAL`` record replaces an item written with PutItems.
  Emulated pessimistically: it does (the PutItems version of every imported id is dropped, so the imported
  version shows). Switch: ``incremental_replaces_put_items`` (``incrementalReplacesPutItems``).
* Sizes: ``FULL`` at most 100 GB, ``INCREMENTAL`` at most 1 GB (Personalize quotas page, "Maximum data size for
  a dataset import job"); configurable (``import_full_max_bytes``, ``import_incremental_max_bytes``) so that a
  test can cross them without writing gigabytes.
* ``dataLocation`` is one object, or a folder when it ends in ``/``. **Assumption**: every object under the folder
  (sub-folders too, as the API reference says for deletion jobs) must be a CSV with the schema's header; anything
  else fails the job. The connector's bulk converter writes its rejects report *beside* the folder for that reason.
* Validation (**assumption**, pessimistic: AWS documents no error budget): the first bad row fails the whole job.
  Each file's header must hold ``ITEM_ID`` and every required field, and only schema fields. Each cell is read as
  its field's type (``int``/``long``: a decimal integer, ``float``/``double``: a finite number, ``boolean``:
  lower-case ``true``/``false``, ``string``: the text); an empty cell is a missing value; then the row's
  properties go through the same schema rules as PutItems (:meth:`Schema.validate`: lengths, ranges,
  ``CREATION_TIMESTAMP`` in seconds). ``ITEM_ID`` is 1 to 256 characters.
* One job at a time per dataset (**assumption**: a second ``CreateDatasetImportJob`` while one is pending or in
  progress gets ``ResourceInUseException``). A job name is unique per account (``ResourceAlreadyExistsException``).
* No IAM: ``roleArn`` is checked for its pattern only.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from localcloud.emulator.state import Dataset, EmulatorState

TARGET_PREFIX = "AmazonPersonalize."
OPERATIONS = ("CreateDatasetImportJob", "DescribeDatasetImportJob", "ListDatasetImportJobs")
GB = 1024**3
FULL_MAX_BYTES = 100 * GB
INCREMENTAL_MAX_BYTES = 1 * GB
ID_MAX = 256
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9\-_]*")
_ARN_RE = re.compile(r"arn:([a-z\d-]+):personalize:.*:.*:.+")
_ROLE_RE = re.compile(r"arn:([a-z\d-]+):iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
_LOCATION_RE = re.compile(r"(s3|http|https)://.+")
_INT_RE = re.compile(r"[+-]?\d+")
PENDING, IN_PROGRESS, ACTIVE, FAILED = "CREATE PENDING", "CREATE IN_PROGRESS", "ACTIVE", "CREATE FAILED"


class ControlPlaneError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class ImportFailed(Exception):
    """The job fails with this failureReason."""


@dataclass
class ImportJob:
    name: str
    arn: str
    dataset_arn: str
    data_location: str
    role_arn: str | None
    mode: str
    status: str
    created: float
    updated: float
    failure_reason: str | None = None
    rows: int = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobName": self.name,
            "datasetImportJobArn": self.arn,
            "datasetArn": self.dataset_arn,
            "dataSource": {"dataLocation": self.data_location},
            "status": self.status,
            "creationDateTime": self.created,
            "lastUpdatedDateTime": self.updated,
            "importMode": self.mode,
            "publishAttributionMetricsToS3": False,
        }
        if self.role_arn:
            out["roleArn"] = self.role_arn
        if self.failure_reason:
            out["failureReason"] = self.failure_reason
        return out

    def summary(self) -> dict[str, Any]:
        keys = ("jobName", "datasetImportJobArn", "status", "creationDateTime", "lastUpdatedDateTime", "importMode")
        d = self.describe()
        out = {k: d[k] for k in keys}
        if self.failure_reason:
            out["failureReason"] = self.failure_reason
        return out


class ImportJobs:
    """The import jobs of one emulator (its :class:`EmulatorState`)."""

    def __init__(self, state: EmulatorState, *, s3_endpoint_url: str | None = None) -> None:
        self.state = state
        self.s3_endpoint_url = s3_endpoint_url
        self._jobs: dict[str, ImportJob] = {}
        self._threads: list[threading.Thread] = []

    # ---- wire --------------------------------------------------------------------------------------------
    def handle(self, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one control-plane call: ``(status, JSON body)``."""
        operation = target[len(TARGET_PREFIX) :]
        try:
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                raise ControlPlaneError("SerializationException", "Request body is not valid JSON") from None
            if not isinstance(doc, dict):
                raise ControlPlaneError("SerializationException", "Request body must be a JSON object")
            if operation == "CreateDatasetImportJob":
                return 200, self.create(doc)
            if operation == "DescribeDatasetImportJob":
                return 200, self.describe(doc)
            if operation == "ListDatasetImportJobs":
                return 200, self.list(doc)
            raise ControlPlaneError("UnknownOperationException", f"Operation {operation} is not emulated")
        except ControlPlaneError as err:
            return 400, {"__type": err.code, "message": err.message}

    # ---- operations ----------------------------------------------------------------------------------------
    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        name, arn, source = doc.get("jobName"), doc.get("datasetArn"), doc.get("dataSource")
        role, mode = doc.get("roleArn"), doc.get("importMode", "FULL")
        problems = []
        if not isinstance(name, str) or not 1 <= len(name) <= 63 or not _NAME_RE.fullmatch(name):
            problems.append("jobName must be 1 to 63 characters of [a-zA-Z0-9-_], starting with a letter or digit")
        if not isinstance(arn, str) or len(arn) > 256 or not _ARN_RE.fullmatch(arn):
            problems.append("datasetArn is not a Personalize ARN")
        location = source.get("dataLocation") if isinstance(source, dict) else None
        if not isinstance(location, str) or len(location) > 256 or not _LOCATION_RE.fullmatch(location):
            problems.append("dataSource.dataLocation must match (s3|http|https)://.+")
        if role is not None and (not isinstance(role, str) or not _ROLE_RE.fullmatch(role)):
            problems.append("roleArn is not an IAM role ARN")
        if mode not in ("FULL", "INCREMENTAL"):
            problems.append("importMode must be FULL or INCREMENTAL")
        if problems:
            raise ControlPlaneError("InvalidInputException", "; ".join(problems))
        assert isinstance(name, str) and isinstance(arn, str) and isinstance(location, str)
        with self.state._lock:
            ds = self.state._datasets.get(arn)
            if ds is None:
                raise ControlPlaneError("ResourceNotFoundException", f"Could not find the dataset: {arn}")
            job_arn = _job_arn(arn, name)
            if job_arn in self._jobs:
                raise ControlPlaneError("ResourceAlreadyExistsException", f"A dataset import job {name} exists")
            mine = [j for j in self._jobs.values() if j.dataset_arn == arn]
            if any(j.status in (PENDING, IN_PROGRESS) for j in mine):
                raise ControlPlaneError("ResourceInUseException", f"The dataset {arn} has an import job in progress")
            if mode == "INCREMENTAL" and not any(j.status == ACTIVE for j in mine):
                raise ControlPlaneError(
                    "InvalidInputException",
                    "INCREMENTAL import mode needs an earlier bulk import into the dataset; use FULL first",
                )
            now = time.time()
            job = ImportJob(name, job_arn, arn, location, role, mode, PENDING, now, now)
            self._jobs[job_arn] = job
        thread = threading.Thread(target=self._run, args=(job,), name=f"import-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return {"datasetImportJobArn": job_arn}

    def describe(self, doc: dict[str, Any]) -> dict[str, Any]:
        arn = doc.get("datasetImportJobArn")
        with self.state._lock:
            job = self._jobs.get(arn) if isinstance(arn, str) else None
            if job is None:
                raise ControlPlaneError("ResourceNotFoundException", f"Could not find the dataset import job: {arn}")
            return {"datasetImportJob": job.describe()}

    def list(self, doc: dict[str, Any]) -> dict[str, Any]:
        arn = doc.get("datasetArn")
        max_results = doc.get("maxResults", 100)
        if not isinstance(max_results, int) or not 1 <= max_results <= 100:
            raise ControlPlaneError("InvalidInputException", "maxResults must be between 1 and 100")
        token = doc.get("nextToken")
        start = 0
        if token is not None:
            if not isinstance(token, str) or not token.isdigit():
                raise ControlPlaneError("InvalidNextTokenException", "The next token is not valid")
            start = int(token)
        with self.state._lock:
            jobs = sorted(
                (j for j in self._jobs.values() if arn is None or j.dataset_arn == arn),
                key=lambda j: j.created,
                reverse=True,
            )
            page = jobs[start : start + max_results]
            out: dict[str, Any] = {"datasetImportJobs": [j.summary() for j in page]}
            if start + max_results < len(jobs):
                out["nextToken"] = str(start + max_results)
            return out

    def reset(self) -> None:
        with self.state._lock:
            self._jobs.clear()

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Wait for every job thread to finish (tests)."""
        for t in list(self._threads):
            t.join(timeout_s)

    # ---- the job -------------------------------------------------------------------------------------------
    def _set(self, job: ImportJob, status: str, reason: str | None = None) -> None:
        with self.state._lock:
            job.status, job.updated = status, time.time()
            if reason is not None:
                job.failure_reason = reason

    def _run(self, job: ImportJob) -> None:
        step = self.state.config.import_step_ms / 1000.0
        time.sleep(step)
        self._set(job, IN_PROGRESS)
        time.sleep(step)
        try:
            rows = self._read(job)
        except ImportFailed as exc:
            self._set(job, FAILED, str(exc))
            return
        except Exception as exc:  # S3 unreachable, access denied, ...
            self._set(job, FAILED, f"Input data could not be read: {type(exc).__name__}: {str(exc)[:300]}")
            return
        with self.state._lock:
            ds = self.state._datasets.get(job.dataset_arn)
            if ds is None:
                job.status, job.failure_reason = FAILED, "The dataset was deleted"
                return
            _apply(ds, job.mode, rows, replaces_put_items=self.state.config.incremental_replaces_put_items)
            job.rows = len(rows)
            job.status, job.updated = ACTIVE, time.time()

    def _read(self, job: ImportJob) -> dict[str, dict[str, Any]]:
        if not job.data_location.startswith("s3://"):
            raise ImportFailed("Only s3:// data locations are emulated")
        bucket, _, key = job.data_location[len("s3://") :].partition("/")
        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint_url)
        if not key or key.endswith("/"):
            objects: list[tuple[str, int]] = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                contents = page.get("Contents", [])
                objects.extend((o["Key"], int(o["Size"])) for o in contents if not o["Key"].endswith("/"))
        else:
            head = s3.head_object(Bucket=bucket, Key=key)
            objects = [(key, int(head["ContentLength"]))]
        if not objects:
            raise ImportFailed(f"No data found at {job.data_location}")
        total = sum(size for _, size in objects)
        config = self.state.config
        limit = config.import_full_max_bytes if job.mode == "FULL" else config.import_incremental_max_bytes
        if total > limit:
            raise ImportFailed(f"The input data is {total} bytes; a {job.mode} import takes at most {limit} bytes")
        with self.state._lock:
            ds = self.state._datasets[job.dataset_arn]
            schema = ds.schema
        if schema is None:
            raise ImportFailed("The dataset has no schema")
        rows: dict[str, dict[str, Any]] = {}
        for object_key, _ in sorted(objects):
            body = s3.get_object(Bucket=bucket, Key=object_key)["Body"]
            _read_csv(schema, object_key, codecs.iterdecode(body.iter_lines(keepends=True), "utf-8"), rows)
        return rows


def _job_arn(dataset_arn: str, name: str) -> str:
    parts = dataset_arn.split(":")
    region, account = (parts[3], parts[4]) if len(parts) > 4 else ("us-east-1", "000000000000")
    return f"arn:{parts[1] if len(parts) > 1 else 'aws'}:personalize:{region}:{account}:dataset-import-job/{name}"


def _apply(ds: Dataset, mode: str, rows: dict[str, dict[str, Any]], *, replaces_put_items: bool) -> None:
    if mode == "FULL":
        ds.bulk = dict(rows)
        return
    ds.bulk.update(rows)
    if replaces_put_items:
        for item_id in rows:
            ds.records.pop(item_id, None)


def _read_csv(schema: Any, name: str, lines: Any, rows: dict[str, dict[str, Any]]) -> None:
    """Parse one CSV file into ``rows`` (id → properties), or raise :class:`ImportFailed` at the first problem."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFailed(f"{name}: the file is empty (no header row)") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ImportFailed(f"{name}: not a UTF-8 CSV file: {exc}") from None
    id_field = schema.id_field
    by_name = {spec.name: spec for spec in schema.fields.values()}
    unknown = [h for h in header if h != id_field and h not in by_name]
    if id_field not in header or unknown or len(set(header)) != len(header):
        raise ImportFailed(
            f"{name}: the header must hold {id_field} and the schema's field names once each "
            f"(unknown or repeated: {unknown or sorted({h for h in header if header.count(h) > 1})})"
        )
    missing = [s.name for s in by_name.values() if not s.nullable and s.name not in header]
    if missing:
        raise ImportFailed(f"{name}: required field(s) {missing} have no column")
    columns = [(i, by_name.get(h)) for i, h in enumerate(header)]
    id_at = header.index(id_field)
    line = 1
    try:
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ImportFailed(f"{name} line {line}: {len(row)} values for {len(header)} columns")
            item_id = row[id_at]
            if not 1 <= len(item_id) <= ID_MAX:
                raise ImportFailed(f"{name} line {line}: {id_field} must be 1 to {ID_MAX} characters")
            props: dict[str, Any] = {}
            for i, spec in columns:
                if spec is None or row[i] == "":
                    continue
                props[spec.key] = _typed(spec, row[i], name, line)
            problem = schema.validate(props, f"{name} line {line}", strict_types=True)
            if problem:
                raise ImportFailed(problem)
            rows[item_id] = props
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ImportFailed(f"{name} line {line}: not a valid UTF-8 CSV row: {exc}") from None


def _typed(spec: Any, text: str, name: str, line: int) -> Any:
    where = f"{name} line {line}: field {spec.name}"
    kind = spec.types[0]
    if kind == "string":
        return text
    if kind == "boolean":
        if text not in ("true", "false"):
            raise ImportFailed(f"{where}: a boolean must be lower-case true or false")
        return text == "true"
    if kind in ("int", "long"):
        if not _INT_RE.fullmatch(text):
            raise ImportFailed(f"{where}: not an integer")
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise ImportFailed(f"{where}: not a number") from None
    if not math.isfinite(value):
        raise ImportFailed(f"{where}: not a finite number")
    return value
