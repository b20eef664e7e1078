"""Bulk conversion: a DynamoDB point-in-time export data file → rows of the Personalize Items CSV.

One image becomes one item whatever the path: every row is built by the stream's own code. Each exported item
is wrapped in the :class:`~connector.source.SourceRecord` an ``INSERT`` from DynamoDB Streams would carry (the
table's key attributes as ``Keys``, the item as ``NewImage``), then goes through ``change.from_record`` (the item
id rules: the mapping's ``itemId`` attribute, else the single key attribute, else the composite key escaped and
``#``-joined), ``item.build`` (the schema's coercions and poison rules) and ``putitems.check_limits`` (the id and
properties limits). So a row holds exactly the properties that PutItems would have received for the same image
(``tests/unit/test_bulk.py`` proves it with hypothesis against the stream path), and a record that would be
poison on the stream is a *reject* here: written to the rejects report (JSON lines ``{"line", "key", "itemId",
"reason"}``), never silently dropped. Reasons name fields and types, never values (as in the DLQ).

The CSV (Personalize's bulk format for the Items dataset):

* the header is the schema's field names, in schema order (``ITEM_ID`` where the schema puts it);
* categorical lists are ``|``-joined (``item.coerce`` does it), booleans ``true``/``false``, integers in decimal,
  floats in their shortest round-trip form, ``CREATION_TIMESTAMP`` in epoch seconds (``item.coerce`` again);
* a field without a value is an empty cell. A CSV cannot tell an empty string from a missing value, so an empty
  string in a *nullable* field becomes "no value" (the stream would send ``""``), and an empty string in a
  *required* string field is a reject (the stream would send ``""``; the import would see a missing value).
  That is the one place where a bulk row and a PutItems call can differ.

A schema is required: Personalize cannot import a CSV into a dataset without one, and without a schema the
mapping has no column list. :class:`BulkConfigError` says so before any record is read.

Soft deletes: an export holds only live items (a deleted item is simply absent), so there is nothing to convert
for ``onRemove``; an item the stream soft-deleted earlier stays as the PutItems layer wrote it.

Speed (issue 9: at least 50,000 records/s per core, ``bench/bench_bulk.py``): a row is first tried on a fast
path (:meth:`Converter._fast_row`) that skips the per-record ``SourceRecord``/``Change``/``PendingItem`` and
property map: the item id is read as ``change`` reads it for ``S``/``N`` keys, the values come from the runtime's
compiled schema plan (``item.SchemaPlan``, the same code ``item.build`` runs first for the stream's upserts), the
cells are written straight from them, and the properties limit is checked with an upper bound of their JSON
length (6 characters per cell character at most, plus the keys' fixed overhead), measured exactly only near the
limit. Whenever the fast path is not a plain success it returns ``None`` and the reference path above builds the
row or the reject, so rejects and their reasons have one source; ``tests/unit/test_bulk.py`` holds the fast row
to the reference row with hypothesis.

Memory is constant: the data file is read line by line from a gzip stream, and rows are written as they are
built. The Lambda entry :func:`handler` is what a Step Functions Distributed Map calls once per data file; the
stream handler never imports this module (its cold start is unchanged).

Why the CSV and JSON steps are not a library's: ``csv.writer`` (C) writes the rows; the only hand-written part is
the cell text of a typed property value (:func:`cell`), four lines that keep float and boolean spelling exact.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import boto3

from connector import change, ddbjson, item
from connector.change import Poison, _escape
from connector.config import ConfigError, ItemMapping, load_settings
from connector.putitems import ITEM_ID_MAX, PROPERTIES_MAX, Group, PendingItem, check_limits
from connector.source import DYNAMODB, Format, SourceRecord

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - the asset may be built without it
    _orjson = None  # type: ignore[assignment]

DATA_SUFFIXES = (".json.gz", ".gz", ".json")
REJECTS_SUFFIX = ".rejects.jsonl"
#: Rejects go beside the CSV folder, never inside it: an import job reads every object under its folder.
REJECTS_PREFIX_SUFFIX = "-rejects"
PROGRESS_EVERY = 10_000
_EMPTY: dict[str, Any] = {}
_BOOL_TEXT = {True: "true", False: "false"}


class BulkConfigError(ConfigError):
    """The mapping cannot drive a bulk import (no schema)."""


@dataclass(slots=True)
class Stats:
    rows: int = 0
    rejects: int = 0

    @property
    def records(self) -> int:
        return self.rows + self.rejects


def cell(value: Any) -> str:
    """The CSV text of one property value as :func:`connector.item.coerce` made it (``None``: empty cell)."""
    if value is None:
        return ""
    cls = value.__class__
    if cls is str:
        return value
    if cls is bool:
        return "true" if value else "false"
    return repr(value)  # int: decimal; float: the shortest text that reads back to the same float


class Converter:
    """Turns exported DynamoDB items into CSV rows through the stream's mapping code."""

    def __init__(self, mapping: ItemMapping, key_names: Sequence[str]) -> None:
        if mapping.schema is None:
            raise BulkConfigError(
                "the mapping has no 'schema': a bulk import needs the dataset's Avro schema (Personalize "
                "imports a CSV only into a dataset with a schema, and the schema gives the CSV's columns); "
                "add the dataset's schema to the mapping document"
            )
        if not key_names and mapping.item_id is None:
            raise BulkConfigError("no key attribute names: pass the table's key attributes, or set 'itemId'")
        self.mapping = mapping
        self.key_names = tuple(key_names)
        self.header = [f.name for f in mapping.schema]
        # (property key, required string field) per column; None for ITEM_ID
        self._columns: list[tuple[str, bool] | None] = [
            None if f.name == "ITEM_ID" else (item.camel_case(f.name), f.type == "string" and not f.nullable)
            for f in mapping.schema
        ]
        # The fast path (:meth:`_fast_row`): the attributes the id is read from are the same for every record
        # (the mapping's itemId, else all the key attributes), so the item step's skip set is fixed too.
        self._id_names = (mapping.item_id,) if mapping.item_id is not None else tuple(sorted(self.key_names))
        self._skip = mapping.exclude.union(self._id_names)
        self._plan = item.schema_plan(mapping)
        fields = [f for f in mapping.schema if f.name != "ITEM_ID"]
        self._id_column = self.header.index("ITEM_ID")
        self._required_strings = [i for i, f in enumerate(fields) if f.type == "string" and not f.nullable]
        # An upper bound of the properties' JSON length beyond the cells' text (each character of which takes
        # at most 6 in JSON, \u00XX): braces, and per key its quotes, colon, comma and a value's quotes.
        self._json_overhead = 2 + sum(len(key) + 6 for key in self._plan.keys)

    def properties(self, image: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``(item id, property map)`` for one exported item (DynamoDB JSON), exactly as the stream builds it
        for an INSERT of that image; raises :class:`Poison` for a reject."""
        keys = {n: image[n] for n in self.key_names if n in image}
        if len(keys) != len(self.key_names) and self.mapping.item_id is None:
            missing = [n for n in self.key_names if n not in image]
            raise Poison(f"no item id: key attribute(s) {missing} missing from the exported item")
        record = SourceRecord(0, _EMPTY, DYNAMODB, None, None, Format.DYNAMODB_STREAM, "INSERT", keys, image)
        parsed = change.from_record(record, self.mapping)
        props = item.build(parsed, self.mapping)
        if props is None:  # pragma: no cover - an INSERT always builds
            raise Poison("nothing to write")
        reason = check_limits(PendingItem(Group(parsed.item_id, [parsed]), parsed, item.serialize(props)))
        if reason is not None:
            raise Poison(reason)
        return parsed.item_id, props

    def row(self, image: dict[str, Any]) -> list[str]:
        """The CSV row of one exported item, or :class:`Poison` (the reason for the rejects report)."""
        fast = self._fast_row(image)
        if fast is not None:
            return fast
        return self.reference_row(image)

    def reference_row(self, image: dict[str, Any]) -> list[str]:
        """:meth:`row` through :meth:`properties` (the stream's Change, item and limits steps), always: the
        answer for every reject, and what ``tests/unit/test_bulk.py`` holds the fast path to."""
        item_id, props = self.properties(image)
        out = []
        for column in self._columns:
            if column is None:
                out.append(item_id)
                continue
            key, required_string = column
            text = cell(props.get(key))
            if not text and required_string:
                raise Poison(
                    f"field {self.header[len(out)]}: empty string in a required field; "
                    "a CSV cell cannot tell it from a missing value"
                )
            out.append(text)
        return out

    def _fast_row(self, image: dict[str, Any]) -> list[str] | None:
        """The row :meth:`row` builds through :meth:`properties`, without the per-record Change, PendingItem and
        property map, or ``None`` when the reference path must decide (every reject, and anything unusual). The
        values come from the runtime's compiled schema plan (``item.SchemaPlan``, which ``item.build`` uses too).
        """
        item_id = self._fast_id(image)
        if item_id is None or len(item_id) > ITEM_ID_MAX:
            return None
        values = self._plan.values(image, self._skip)
        if values is None:
            return None
        texts = [
            v
            if v.__class__ is str
            else ""
            if v is None
            else ("true" if v else "false")
            if v.__class__ is bool
            else repr(v)
            for v in values
        ]
        for i in self._required_strings:
            if not texts[i]:
                return None
        if 6 * sum(map(len, texts)) + self._json_overhead > PROPERTIES_MAX:  # then measure it exactly
            props = {k: v for k, v in zip(self._plan.keys, values, strict=True) if v is not None}
            if len(item.serialize(props)) > PROPERTIES_MAX:
                return None
        texts.insert(self._id_column, item_id)
        return texts

    def _fast_id(self, image: dict[str, Any]) -> str | None:
        """``change``'s item id for the common cases (``S`` or valid ``N`` values), else ``None``."""
        names = self._id_names
        if len(names) == 1:
            return _id_text(image.get(names[0]))
        parts = []
        for name in names:
            text = _id_text(image.get(name))
            if text is None:
                return None
            parts.append(_escape(text))
        return "#".join(parts)

    def convert(
        self,
        lines: Iterable[bytes],
        out: IO[str],
        rejects: IO[str],
        *,
        header: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> Stats:
        """Convert JSON lines (``{"Item": {...}}``, bytes) into CSV rows on ``out``; rejects go to ``rejects``.

        ``progress`` is called with the number of records read since its last call, every 10,000 and at the end.
        """
        writer = csv.writer(out)  # RFC 4180: CRLF rows, so a field holding \r or \n is quoted
        if header:
            writer.writerow(self.header)
        stats = Stats()
        loads = _orjson.loads if _orjson is not None else json.loads
        row, writerow = self.row, writer.writerow
        reported = number = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            image: Any = None
            try:
                doc = loads(line)
                image = doc.get("Item") if isinstance(doc, dict) else None
                if not isinstance(image, dict):
                    raise Poison('line is not an export record {"Item": {...}}')
                writerow(row(image))
                stats.rows += 1
            except Poison as exc:
                self._reject(rejects, number, image, str(exc))
                stats.rejects += 1
            except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError are ValueErrors
                self._reject(rejects, number, None, "line is not valid JSON")
                stats.rejects += 1
            except Exception as exc:  # one malformed record must never stop the file
                self._reject(rejects, number, image, f"the item cannot be built: unexpected {type(exc).__name__}")
                stats.rejects += 1
            if progress is not None and number - reported >= PROGRESS_EVERY:
                progress(number - reported)
                reported = number
        if progress is not None and number > reported:
            progress(number - reported)
        return stats

    def _reject(self, rejects: IO[str], number: int, image: Any, reason: str) -> None:
        key = None
        item_id = None
        if isinstance(image, dict):
            key = {n: image[n] for n in self.key_names if n in image} or None
            if self.mapping.item_id is not None and self.mapping.item_id in image:
                item_id = image[self.mapping.item_id]
        entry = {"line": number, "key": key, "reason": reason}
        if item_id is not None:
            entry["itemId"] = item_id
        rejects.write(json.dumps(entry, separators=(",", ":")) + "\n")  # ASCII: safe for any line reader


def _id_text(attr: Any) -> str | None:
    """The id text ``change`` reads from an ``S`` or ``N`` key value, or ``None`` (let ``change`` decide)."""
    if attr.__class__ is not dict or len(attr) != 1:
        return None
    text = attr.get("S")
    if text is None:
        text = attr.get("N")
        if text.__class__ is not str:
            return None
        try:
            ddbjson.number(text)
        except ddbjson.DynamoDBJSONError:
            return None
    return text if text.__class__ is str and text else None


def open_data_file(raw: IO[bytes], name: str) -> IO[bytes]:
    """A data file's lines as bytes: gunzipped when ``name`` ends in ``.gz`` (an export's data files do)."""
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def part_name(data_key: str) -> str:
    """The base name of a data file without ``.json.gz`` (``data/abc.json.gz`` → ``abc``)."""
    base = data_key.rsplit("/", 1)[-1]
    for suffix in DATA_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def output_keys(output_prefix: str, data_key: str) -> tuple[str, str]:
    """``(csv key, rejects key)`` for one data file: the CSV inside the import folder, the rejects beside it."""
    prefix = output_prefix.strip("/")
    name = part_name(data_key)
    csv_key = f"{prefix}/{name}.csv" if prefix else f"{name}.csv"
    rejects_folder = f"{prefix}{REJECTS_PREFIX_SUFFIX}" if prefix else "rejects"
    rejects_key = f"{rejects_folder}/{name}{REJECTS_SUFFIX}"
    return csv_key, rejects_key


def convert_stream(
    converter: Converter,
    raw: IO[bytes],
    name: str,
    csv_out: IO[bytes],
    rejects_out: IO[bytes],
    *,
    progress: Callable[[int], None] | None = None,
) -> Stats:
    """Convert one data file (``raw``, gzipped when ``name`` ends in ``.gz``) into binary ``csv_out`` and
    ``rejects_out`` (UTF-8), streaming."""
    out = io.TextIOWrapper(csv_out, encoding="utf-8", newline="")
    rej = io.TextIOWrapper(rejects_out, encoding="utf-8", newline="")
    try:
        lines = open_data_file(raw, name)
        stats = converter.convert(lines, out, rej, progress=progress)
    finally:
        out.flush()
        rej.flush()
        out.detach()
        rej.detach()
    return stats


# ------------------------------------------------------------------------------------------ Lambda entry

_converter_cache: dict[tuple[str, ...], Converter] = {}


def _converter(keys: Sequence[str]) -> Converter:
    cached = _converter_cache.get(tuple(keys))
    if cached is None:
        cached = _converter_cache[tuple(keys)] = Converter(load_settings().mapping, keys)
    return cached


def handler(event: dict[str, Any], context: Any = None, *, s3: Any = None) -> dict[str, Any]:
    """Convert one export data file: ``{"bucket", "key", "keys", "outputBucket", "outputPrefix"}`` →
    ``{"rows", "rejects", "csvKey", "rejectsKey"}`` (``rejectsKey`` is ``None`` when nothing was rejected).

    The mapping comes from the runtime's settings (``CONNECTOR_CONFIG`` / ``CONNECTOR_CONFIG_FILE``, with
    ``DATASET_ARN``). Temporary files live in ``/tmp`` (or ``TMPDIR``); memory stays constant.
    """
    for name in ("bucket", "key", "keys", "outputBucket", "outputPrefix"):
        if name not in event:
            raise ValueError(f"bulk event has no {name!r}: expected bucket, key, keys, outputBucket, outputPrefix")
    keys = event["keys"]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("bulk event 'keys' must be a list of key attribute names")
    converter = _converter(keys)
    if s3 is None:
        s3 = boto3.client("s3")
    csv_key, rejects_key = output_keys(event["outputPrefix"], event["key"])
    body = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"]
    tmp = os.environ.get("TMPDIR") or None
    with tempfile.TemporaryFile(dir=tmp) as csv_file, tempfile.TemporaryFile(dir=tmp) as rejects_file:
        stats = convert_stream(converter, body, event["key"], csv_file, rejects_file)
        csv_file.seek(0)
        s3.upload_fileobj(csv_file, event["outputBucket"], csv_key)
        if stats.rejects:
            rejects_file.seek(0)
            s3.upload_fileobj(rejects_file, event["outputBucket"], rejects_key)
    return {
        "rows": stats.rows,
        "rejects": stats.rejects,
        "csvKey": csv_key,
        "rejectsKey": rejects_key if stats.rejects else None,
    }
