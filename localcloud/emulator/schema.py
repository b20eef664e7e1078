"""Schema validation: a dataset's flat Avro schema, compiled, and the item dataset rules (types, lengths,
lower-case booleans, defaults, CREATION_TIMESTAMP in seconds). See localcloud.emulator for the full list."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_WORD_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")
_LEADING_CAPS = re.compile(r"^[A-Z]+")
CATEGORICAL_MAX = 1000
STRING_MAX = 1000  # any other (non-categorical, non-textual) string value
TEXTUAL_MAX = 20000
TEXTUAL_CJK_MAX = 7000  # textual values in Chinese or Japanese

#: CREATION_TIMESTAMP is in epoch *seconds*; from this value on it can only be milliseconds (year 5138 in seconds)
MILLIS_THRESHOLD = 100_000_000_000

# Han ideographs, Hiragana, Katakana (and their half-width forms): text the service reads as Chinese or Japanese
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)


def _jlen(text: str) -> int:
    """A string's length for the model's ``min``/``max``: Unicode code points (Smithy's ``@length`` rule).

    botocore counts the minimums the same way (``len``). An emoji counts 1, not 2 UTF-16 code units.
    """
    return len(text)


def property_key(field_name: str) -> str:
    """The PutItems property key of an Avro field: ``NUMBER_OF_RATINGS`` -> ``numberOfRatings``.

    Words are split on anything but ASCII letters and digits; an all-upper-case word is lower-cased; the first
    word starts lower-case (a leading run of capitals is lowered as one acronym: ``HTTPCode`` -> ``httpCode``)
    and the others start upper-case. So ``creationTimestamp`` and ``number_of_ratings`` map as expected.
    This matches ``connector.item.camel_case``; the service documents only the UPPER_SNAKE example.
    """
    words = [w.lower() if w.isupper() else w for w in _WORD_SEPARATORS.split(field_name) if w]
    if not words:
        return field_name
    first = words[0]
    caps = _LEADING_CAPS.match(first)
    if caps:
        run = caps.end() if caps.end() == len(first) else max(caps.end() - 1, 1)
        first = first[:run].lower() + first[run:]
    return first + "".join(w[0].upper() + w[1:] for w in words[1:])


# --------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldSpec:
    """One Avro field as PutItems sees it."""

    name: str
    key: str
    types: tuple[str, ...]
    nullable: bool
    has_default: bool
    categorical: bool
    textual: bool


_SCALARS = frozenset({"string", "int", "long", "float", "double", "boolean"})
_INT_STR_RE = re.compile(r"[+-]?\d+")
_FLOAT_STR_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class Schema:
    """A flat Avro record schema of a Personalize dataset, compiled for property validation."""

    def __init__(self, avro: Mapping[str, Any], *, id_field: str = "ITEM_ID") -> None:
        fields = avro.get("fields")
        if avro.get("type", "record") != "record" or not isinstance(fields, list):
            raise ValueError("schema must be an Avro record with a 'fields' list")
        self.avro = dict(avro)
        self.id_field = id_field
        self.fields: dict[str, FieldSpec] = {}
        for f in fields:
            if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
                raise ValueError(f"schema field must be an object with a name: {f!r}")
            if f["name"] in (id_field, "ITEM_ID", "USER_ID"):
                continue
            types, nullable = _parse_avro_type(f["name"], f.get("type"))
            spec = FieldSpec(
                name=f["name"],
                key=property_key(f["name"]),
                types=types,
                nullable=nullable,
                has_default="default" in f,
                categorical=bool(f.get("categorical")),
                textual=bool(f.get("textual")),
            )
            self.fields[spec.key] = spec

    @classmethod
    def load(cls, document: Mapping[str, Any] | str | None, *, id_field: str = "ITEM_ID") -> Schema | None:
        """Accept an Avro schema (dict or JSON text), a connector mapping document, or None."""
        if document is None:
            return None
        if isinstance(document, str):
            document = json.loads(document)
        if not isinstance(document, Mapping):
            raise ValueError("schema must be a JSON object")
        if not isinstance(document.get("fields"), list) and "schema" in document:
            return cls.load(document["schema"], id_field=id_field)
        return cls(document, id_field=id_field)

    def validate(self, props: Mapping[str, Any], where: str, *, strict_types: bool = False) -> str | None:
        """Return why ``props`` breaks the schema (never quoting a value), or None if it conforms."""
        for key in props:
            if key not in self.fields:
                return f"{where}: property '{key}' is not a field of the dataset schema"
        for key, spec in self.fields.items():
            if key not in props:
                if spec.nullable:  # an Avro default does not make a field optional in PutItems
                    continue
                return f"{where}: required property '{key}' ({spec.name}) is missing"
            problem = _check_value(spec, props[key], strict_types)
            if problem:
                return f"{where}: property '{key}' ({spec.name}) {problem}"
        return None


def _parse_avro_type(name: str, avro_type: Any) -> tuple[tuple[str, ...], bool]:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    types: list[str] = []
    nullable = False
    for b in branches:
        t = b.get("type") if isinstance(b, Mapping) else b
        if t == "null":
            nullable = True
        elif t in _SCALARS:
            types.append(t)
        else:
            raise ValueError(f"field {name}: unsupported Avro type {b!r} (flat scalar schemas only)")
    if not types:
        raise ValueError(f"field {name}: needs a non-null type")
    return tuple(types), nullable


def _check_value(spec: FieldSpec, value: Any, strict: bool) -> str | None:
    if value is None:
        return None if spec.nullable else "must not be null"
    for t in spec.types:
        if _matches(t, value, strict):
            if t == "string":
                return _check_string(spec, value)
            if spec.name == "CREATION_TIMESTAMP" and abs(float(value)) >= MILLIS_THRESHOLD:
                return "must be in epoch seconds; the value is in milliseconds"
            return None
    return f"must be of type {' or '.join(spec.types)}, got {type(value).__name__}"


def _check_string(spec: FieldSpec, value: str) -> str | None:
    length = _jlen(value)
    if spec.categorical:
        if length > CATEGORICAL_MAX:
            return f"is a categorical value longer than {CATEGORICAL_MAX} characters"
    elif spec.textual:
        if length > TEXTUAL_MAX:
            return f"is a textual value longer than {TEXTUAL_MAX} characters"
        if length > TEXTUAL_CJK_MAX and _CJK_RE.search(value):
            return f"is Chinese or Japanese textual value longer than {TEXTUAL_CJK_MAX} characters"
    elif length > STRING_MAX:
        return f"is a non-categorical string longer than {STRING_MAX} characters"
    return None


def _matches(avro_type: str, value: Any, strict: bool) -> bool:
    if avro_type == "string":
        return isinstance(value, str)
    if avro_type == "boolean":
        # JSON true/false, or (not strict) the strings "true"/"false": booleans are lower-case only
        return isinstance(value, bool) or (not strict and value in ("true", "false"))
    if isinstance(value, bool):
        return False
    if avro_type in ("int", "long"):
        lo, hi = INT_RANGE if avro_type == "int" else LONG_RANGE
        if isinstance(value, float) and value.is_integer() and not strict:
            value = int(value)
        if not strict and isinstance(value, str) and _INT_STR_RE.fullmatch(value.strip()):
            value = int(value)
        return isinstance(value, int) and lo <= value <= hi
    # float / double
    if isinstance(value, int | float):
        return math.isfinite(value)
    if not strict and isinstance(value, str) and _FLOAT_STR_RE.fullmatch(value.strip()):
        return math.isfinite(float(value))
    return False
