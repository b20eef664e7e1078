"""Settings and the mapping document, read from the environment once per container.

Everything a user can get wrong is checked here, before any record is touched, and reported as a
:class:`ConfigError` whose message names the variable or key and what is allowed. The runtime contract
(``DATASET_ARN``, ``DLQ_URL``, ``CONNECTOR_CONFIG`` / ``CONNECTOR_CONFIG_FILE``) is in DESIGN.md; the other
variables are tuning knobs with safe defaults.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASET_ARN_PATTERN = re.compile(r"arn:([a-z\d-]+):personalize:.*:.*:.+")
# Only an Items dataset takes PutItems: arn:<partition>:personalize:<region>:<account>:dataset/<group>/ITEMS.
ITEMS_DATASET_ARN = re.compile(r"(arn:[a-z\d-]+:personalize:[^:]*:[^:]*:)dataset/([^/]+)/ITEMS")
DATASET_ARN_MAX = 256
MAX_IN_FLIGHT = 10  # PUT_ITEMS_IN_FLIGHT: more would only queue for slots (10 calls/s is the quota)

AVRO_SCALARS = frozenset({"string", "int", "long", "float", "double", "boolean"})
MAPPING_KEYS = frozenset({"itemId", "schema", "fields", "exclude", "onRemove"})


class ConfigError(ValueError):
    """The connector is misconfigured; the message says which variable or key and what is allowed."""


@dataclass(frozen=True, slots=True)
class SchemaField:
    """One field of a flat Avro Items schema."""

    name: str
    type: str
    nullable: bool
    categorical: bool
    textual: bool = False


@dataclass(frozen=True, slots=True)
class ItemMapping:
    """The parsed mapping document (see DESIGN.md, "The mapping document")."""

    item_id: str | None = None
    schema: tuple[SchemaField, ...] | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    on_remove: Mapping[str, Any] | None = None  # None means "ignore"
    #: Plans that ``item`` compiles from this mapping on first use (per-field coercers, attribute routes); a
    #: cache, never part of equality or ``repr``.
    compiled: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the pipeline needs from the environment."""

    dataset_arn: str
    dlq_url: str | None
    mapping: ItemMapping
    max_calls_per_second: float = 9.7
    deadline_margin_ms: int = 5_000
    put_items_max_attempts: int = 3
    put_items_timeout_s: float = 5.0
    put_items_retry_mode: str = "standard"
    put_items_in_flight: int = 3  # PUT_ITEMS_IN_FLIGHT: calls one invocation may have waiting for their answer
    state_table: str | None = None  # STATE_TABLE: the shared PutItems budget and the CDC version guard
    quota_calls_per_second: float = 10.0  # QUOTA_CALLS_PER_SECOND: the dataset group's PutItems quota
    skip_ttl_deletes: bool = False  # SKIP_TTL_DELETES: REMOVE records made by DynamoDB TTL are skipped
    budget_max_wait_s: float = 5.0  # BUDGET_MAX_WAIT_S: the longest an attempt waits for a shared-budget slot

    @property
    def dataset_group_arn(self) -> str:
        """The dataset group the quota belongs to (``…:dataset-group/<group>``)."""
        return dataset_group_arn(self.dataset_arn)


def dataset_group_arn(dataset_arn: str) -> str:
    match = ITEMS_DATASET_ARN.fullmatch(dataset_arn)
    if match is None:
        raise ConfigError(f"{dataset_arn!r} is not an Items dataset ARN")
    return f"{match.group(1)}dataset-group/{match.group(2)}"


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read :class:`Settings` from ``env`` (default: ``os.environ``); raise :class:`ConfigError` if wrong."""
    env = os.environ if env is None else env
    arn = env.get("DATASET_ARN", "")
    if not arn:
        raise ConfigError("DATASET_ARN is required: the ARN of the Personalize Items dataset")
    if len(arn) > DATASET_ARN_MAX or not DATASET_ARN_PATTERN.fullmatch(arn):
        raise ConfigError(
            f"DATASET_ARN={arn!r} is not a Personalize dataset ARN "
            "(arn:<partition>:personalize:<region>:<account>:dataset/<group>/ITEMS, at most 256 characters)"
        )
    if not ITEMS_DATASET_ARN.fullmatch(arn):
        raise ConfigError(
            f"DATASET_ARN={arn!r} is not an Items dataset: PutItems writes only to "
            "arn:<partition>:personalize:<region>:<account>:dataset/<group>/ITEMS"
        )
    return Settings(
        dataset_arn=arn,
        dlq_url=env.get("DLQ_URL") or None,
        mapping=parse_mapping(_mapping_document(env)),
        max_calls_per_second=_number(env, "MAX_CALLS_PER_SECOND", 9.7, minimum=0.1),
        deadline_margin_ms=int(_number(env, "DEADLINE_MARGIN_MS", 5_000, minimum=0)),
        put_items_max_attempts=int(_number(env, "PUT_ITEMS_MAX_ATTEMPTS", 3, minimum=1)),
        put_items_timeout_s=_number(env, "PUT_ITEMS_TIMEOUT_S", 5.0, minimum=0.1),
        put_items_retry_mode=_retry_mode(env),
        put_items_in_flight=_in_flight(env),
        state_table=env.get("STATE_TABLE") or None,
        quota_calls_per_second=_number(env, "QUOTA_CALLS_PER_SECOND", 10.0, minimum=0.1),
        skip_ttl_deletes=_flag(env, "SKIP_TTL_DELETES"),
        budget_max_wait_s=_number(env, "BUDGET_MAX_WAIT_S", 5.0, minimum=0.1),
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "false").strip().lower()
    if raw not in ("true", "false"):
        raise ConfigError(f"{name}={env.get(name)!r}: allowed: 'true', 'false'")
    return raw == "true"


def _in_flight(env: Mapping[str, str]) -> int:
    value = _number(env, "PUT_ITEMS_IN_FLIGHT", 3.0, minimum=1)
    if not value.is_integer() or value > MAX_IN_FLIGHT:
        raise ConfigError(
            f"PUT_ITEMS_IN_FLIGHT={env['PUT_ITEMS_IN_FLIGHT']!r}: a whole number from 1 to {MAX_IN_FLIGHT}"
        )
    return int(value)


def _retry_mode(env: Mapping[str, str]) -> str:
    mode = env.get("PUT_ITEMS_RETRY_MODE") or "standard"
    if mode not in ("standard", "adaptive"):
        raise ConfigError(f"PUT_ITEMS_RETRY_MODE={mode!r}: allowed: 'standard', 'adaptive'")
    return mode


def _mapping_document(env: Mapping[str, str]) -> Any:
    inline = env.get("CONNECTOR_CONFIG")
    path = env.get("CONNECTOR_CONFIG_FILE")
    if inline and path:
        raise ConfigError("set CONNECTOR_CONFIG or CONNECTOR_CONFIG_FILE, not both")
    if inline:
        try:
            return json.loads(inline)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CONNECTOR_CONFIG is not valid JSON: {exc}") from None
    if path:
        resolved = Path(path)
        if not resolved.is_absolute():
            resolved = Path(env.get("LAMBDA_TASK_ROOT") or ".") / resolved
        try:
            return json.loads(resolved.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"CONNECTOR_CONFIG_FILE={path!r} cannot be read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CONNECTOR_CONFIG_FILE={path!r} is not valid JSON: {exc}") from None
    return {}


def parse_mapping(doc: Any) -> ItemMapping:
    """Validate a mapping document (already JSON-decoded) and return it parsed."""
    if not isinstance(doc, dict):
        raise ConfigError("the mapping document must be a JSON object")
    unknown = sorted(set(doc) - MAPPING_KEYS)
    if unknown:
        raise ConfigError(f"unknown mapping key(s) {unknown}; allowed: {sorted(MAPPING_KEYS)}")

    item_id = doc.get("itemId")
    if item_id is not None and (not isinstance(item_id, str) or not item_id):
        raise ConfigError("mapping key 'itemId' must be a non-empty attribute name")

    fields = doc.get("fields", {})
    if not isinstance(fields, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in fields.items()
    ):
        raise ConfigError("mapping key 'fields' must map schema field names to attribute names (strings)")

    exclude = doc.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        raise ConfigError("mapping key 'exclude' must be a list of attribute names")

    on_remove = doc.get("onRemove", "ignore")
    if on_remove == "ignore":
        on_remove = None
    elif not isinstance(on_remove, dict) or not on_remove:
        raise ConfigError(
            "mapping key 'onRemove' must be \"ignore\" or a non-empty object of properties to write, "
            'for example {"STATUS": "deleted"}'
        )

    schema = _parse_schema(doc["schema"]) if "schema" in doc else None
    if schema is not None:
        names = {f.name for f in schema}
        stray = sorted(set(fields) - names)
        if stray:
            raise ConfigError(f"mapping 'fields' names {stray}, which are not fields of the schema")
        if on_remove:
            stray = sorted(set(on_remove) - names)
            if stray:
                raise ConfigError(f"mapping 'onRemove' names {stray}, which are not fields of the schema")
    return ItemMapping(
        item_id=item_id,
        schema=schema,
        fields=dict(fields),
        exclude=frozenset(exclude),
        on_remove=on_remove,
    )


def _parse_schema(schema: Any) -> tuple[SchemaField, ...]:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"mapping 'schema' is a string but not JSON: {exc}") from None
    if not isinstance(schema, dict) or schema.get("type") != "record" or not isinstance(schema.get("fields"), list):
        raise ConfigError('mapping \'schema\' must be an Avro record: {"type": "record", "fields": [...]}')
    parsed: list[SchemaField] = []
    for raw in schema["fields"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ConfigError(f"schema field {raw!r} has no name")
        name, ftype = raw["name"], raw.get("type")
        types = ftype if isinstance(ftype, list) else [ftype]
        non_null = [t for t in types if t != "null"]
        if len(non_null) != 1 or non_null[0] not in AVRO_SCALARS:
            raise ConfigError(
                f"schema field {name!r} has type {ftype!r}; allowed: one of {sorted(AVRO_SCALARS)}, "
                'optionally in a union with "null"'
            )
        parsed.append(
            SchemaField(
                name=name,
                type=non_null[0],
                nullable=len(non_null) != len(types),
                categorical=bool(raw.get("categorical", False)),
                textual=bool(raw.get("textual", False)),
            )
        )
    if not any(f.name == "ITEM_ID" for f in parsed):
        raise ConfigError("an Items schema must have an ITEM_ID field")
    return tuple(parsed)
