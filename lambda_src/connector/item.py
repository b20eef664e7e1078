"""Step 3, item: a change's image → the Personalize property map (``properties`` of PutItems).

**Without a schema** every attribute except the id attribute(s) and ``exclude`` becomes a property:

* the key is the attribute name in camelCase (:func:`camel_case`);
* ``S``/``N``/``BOOL`` (and JSON strings, numbers, booleans) are kept; ``B`` stays base64 text;
* ``NULL`` and empty sets or lists are left out;
* a set or a list of scalars becomes one ``|``-joined string (booleans as ``true``/``false``); a list holding
  maps or lists becomes compact JSON text;
* a map is flattened into camelCase keys (``dims.width`` → ``dimsWidth``).

Two attributes that end up with the same key make the record poison rather than one silently winning.

**With a schema** the schema is the contract: each field (except ``ITEM_ID``) is filled from ``fields[FIELD]``
(an attribute name, or a dotted path into maps) or else from the attribute whose camelCase name equals the
field's, and coerced to the field's type by :func:`coerce`. Attributes the schema does not name are dropped.
A required field that is missing, or a value that cannot be coerced, makes the record poison.

**Removes** write nothing under ``onRemove: "ignore"``. Otherwise the item is built from the old image (when the
stream carries one) and the ``onRemove`` properties are laid over it: a soft delete that a Personalize filter
can exclude, and since PutItems replaces the whole item, the rest of its metadata survives.

Reasons for poison name fields and types, never values: they end up in logs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from connector import ddbjson

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - the asset may be built without it
    _orjson = None  # type: ignore[assignment]
from connector.change import Change, Kind, Poison
from connector.config import ItemMapping, SchemaField

STRING_MAX = 1_000  # categorical and non-categorical string metadata alike (item dataset requirements)
TEXTUAL_MAX = 20_000  # unstructured text fields ("textual": true); the emulator enforces the same
_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")
_LEADING_CAPS = re.compile(r"^[A-Z]+")
# Epoch values above these are milliseconds / microseconds rather than seconds.
_MS_THRESHOLD = 10**11
_US_THRESHOLD = 10**14

Scalar = str | int | float | bool


@lru_cache(maxsize=4096)
def camel_case(name: str) -> str:
    """``number_of_ratings``/``NUMBER_OF_RATINGS`` → ``numberOfRatings``, ``Message`` → ``message``.

    Words are split on anything that is not an ASCII letter or digit; an all-caps word is lowered; the first
    word starts lower-case (``HTTPCode`` → ``httpCode``) and the others upper-case. Returns ``""`` when the name
    has no ASCII letters or digits.
    """
    words = [w.lower() if w.isupper() else w for w in _SEPARATORS.split(name) if w]
    if not words:
        return ""
    first = words[0]
    caps = _LEADING_CAPS.match(first)
    if caps:
        run = caps.end() if caps.end() == len(first) else max(caps.end() - 1, 1)
        first = first[:run].lower() + first[run:]
    return first + "".join(w[0].upper() + w[1:] for w in words[1:])


def build(change: Change, mapping: ItemMapping) -> dict[str, Any] | None:
    """The property map for ``change``, or ``None`` when nothing is to be written (a remove under "ignore")."""
    if change.kind is Kind.REMOVE and mapping.on_remove is None:
        return None
    skip = mapping.exclude.union(change.id_attributes)
    ddb = change.record.image_is_dynamodb_json
    if ddb and mapping.schema is not None and change.kind is Kind.UPSERT:
        props = schema_properties(change.image, mapping, skip)
        if props is not None:
            return props
    try:
        if mapping.schema is None:
            props = schemaless(change.image, skip, dynamodb_json=ddb)
            if change.kind is Kind.REMOVE:
                props.update(schemaless(dict(mapping.on_remove or {}), frozenset()))
            return props
        image = ddbjson.image(change.image) if ddb else change.image
    except ddbjson.DynamoDBJSONError as exc:
        raise Poison(f"image is not valid DynamoDB JSON: {exc}") from None
    if change.kind is Kind.REMOVE:
        image = {**image, **(mapping.on_remove or {})}
        return with_schema(image, mapping, skip, overrides=frozenset(mapping.on_remove or ()))
    return with_schema(image, mapping, skip)


def serialize(props: dict[str, Any]) -> str:
    """Compact JSON text, as PutItems wants it (its length is measured in characters).

    orjson when the asset ships it (about 4× faster than ``json.dumps`` here); ``json`` otherwise, and for the
    integers beyond 64 bits that orjson refuses (DynamoDB numbers have up to 38 digits).
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(props).decode()
        except TypeError:  # orjson.JSONEncodeError subclasses TypeError
            pass
    return json.dumps(props, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- without a schema -------------------------------------------------------------------------------------


def schemaless(image: dict[str, Any], skip: frozenset[str], *, dynamodb_json: bool = False) -> dict[str, Any]:
    """Every attribute not in ``skip`` as a property; ``dynamodb_json`` images are converted on the way."""
    props: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in image.items():
        if name in skip:
            continue
        value = ddbjson.value(raw) if dynamodb_json else raw
        key = camel_case(name)
        cls = value.__class__
        if (cls is str or cls is int) and key and key not in props:  # the common case, inlined
            props[key] = value
            origin[key] = name
        else:
            _flatten(props, origin, key, name, value)
    return props


def _flatten(props: dict[str, Any], origin: dict[str, str], key: str, name: str, value: Any) -> None:
    cls = value.__class__
    if cls is str or cls is int or cls is bool:  # the common case first: this runs once per attribute
        pass
    elif value is None:
        return
    elif cls is float:
        if not math.isfinite(value):
            raise Poison(f"attribute {name!r} is not a finite number")
    elif cls is dict:
        for child, child_value in value.items():
            sub = camel_case(child)
            _flatten(props, origin, key + sub[:1].upper() + sub[1:] if sub else "", f"{name}.{child}", child_value)
        return
    elif cls is list:
        if not value:
            return
        value = _join(value) if all(_is_scalar(v) or v is None for v in value) else _json_text(value, name)
    elif not _is_scalar(value):
        raise Poison(f"attribute {name!r} has an unsupported type {cls.__name__}")
    if not key:
        raise Poison(f"attribute {name!r} has no ASCII letter or digit to make a property name; exclude it")
    if key in props:
        raise Poison(f"attributes {origin[key]!r} and {name!r} both become property {key!r}; exclude one")
    props[key] = value
    origin[key] = name


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float)  # bool is an int


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Poison("a list holds a number that is not finite")
        return repr(value)
    return str(value)


def _join(values: list[Any]) -> str:
    return "|".join(_text(v) for v in values if v is not None)


def _json_text(value: Any, name: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise Poison(f"attribute {name!r} holds a number that is not finite") from None


# --- with a schema ----------------------------------------------------------------------------------------


def with_schema(
    image: dict[str, Any],
    mapping: ItemMapping,
    skip: frozenset[str],
    overrides: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Fill each schema field from ``image``; ``overrides`` are field names present in ``image`` as-is.

    Two attributes whose camelCase names both match a field (``genres`` and ``GENRES``) make the record poison,
    as two attributes that become one property do without a schema: neither silently wins.
    """
    by_camel: dict[str, str] = {}
    clashes: dict[str, list[str]] = {}  # rare: kept apart so the common path stays one dict lookup
    for name in image:
        if name not in skip or name in overrides:
            key = camel_case(name)
            if key in by_camel:
                clashes.setdefault(key, [by_camel[key]]).append(name)
            else:
                by_camel[key] = name
    props: dict[str, Any] = {}
    assert mapping.schema is not None
    for field in mapping.schema:
        if field.name == "ITEM_ID":
            continue
        key = camel_case(field.name)
        if field.name in overrides:
            raw = image[field.name]
        elif field.name in mapping.fields:
            raw = _lookup(image, mapping.fields[field.name])
        else:
            if key in clashes:
                first, second = clashes[key][:2]
                raise Poison(
                    f"field {field.name}: attributes {first!r} and {second!r} both match it; "
                    "exclude one or name one in 'fields'"
                )
            source = by_camel.get(key)
            raw = image[source] if source is not None else None
        if raw is None or raw == []:
            if not field.nullable:
                raise Poison(f"field {field.name}: required, but the image has no value for it")
            continue
        props[key] = coerce(field, raw)
    return props


def _lookup(image: dict[str, Any], path: str) -> Any:
    if path in image:
        return image[path]
    node: Any = image
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def coerce(field: SchemaField, value: Any) -> Any:
    """Coerce ``value`` to the Avro type of ``field``, or raise :class:`Poison`."""
    kind = type(value).__name__
    if field.type == "string":
        if isinstance(value, list) and field.categorical and all(_is_scalar(v) or v is None for v in value):
            text = _join(value)
        elif _is_scalar(value):
            text = _text(value)
        else:
            raise Poison(f"field {field.name}: a {kind} cannot fill a string field")
        if field.textual:
            if len(text) > TEXTUAL_MAX:
                raise Poison(f"field {field.name}: textual value over {TEXTUAL_MAX} characters")
        elif len(text) > STRING_MAX:
            kind = "categorical" if field.categorical else "string"
            raise Poison(f"field {field.name}: {kind} value over {STRING_MAX} characters")
        return text
    if field.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise Poison(f"field {field.name}: a {kind} cannot be coerced to boolean")
    if field.type in ("int", "long"):
        if field.name == "CREATION_TIMESTAMP":
            return _epoch_seconds(field, value)
        number = _number(field, value)
        if isinstance(number, float):
            if not number.is_integer():
                raise Poison(f"field {field.name}: a fractional number cannot fill an {field.type} field")
            number = int(number)
        if field.type == "int" and not -(2**31) <= number < 2**31:
            raise Poison(f"field {field.name}: out of range for int")
        if not -(2**63) <= number < 2**63:
            raise Poison(f"field {field.name}: out of range for long")
        return number
    try:
        return float(_number(field, value))  # float, double
    except OverflowError:  # an integer beyond float's range
        raise Poison(f"field {field.name}: out of range for {field.type}") from None


def _number(field: SchemaField, value: Any) -> int | float:
    if isinstance(value, bool):
        raise Poison(f"field {field.name}: a bool cannot be coerced to {field.type}")
    if isinstance(value, str):
        try:
            value = ddbjson.number(value.strip())
        except ddbjson.DynamoDBJSONError:
            raise Poison(f"field {field.name}: a non-numeric str cannot be coerced to {field.type}") from None
    if not isinstance(value, int | float):
        raise Poison(f"field {field.name}: a {type(value).__name__} cannot be coerced to {field.type}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Poison(f"field {field.name}: not a finite number")
    return value


def _epoch_seconds(field: SchemaField, value: Any) -> int:
    """Epoch seconds from seconds, milliseconds, microseconds or an ISO 8601 date (naive means UTC)."""
    if isinstance(value, str):
        try:
            value = ddbjson.number(value.strip())
        except ddbjson.DynamoDBJSONError:
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError:
                raise Poison(f"field {field.name}: neither epoch time nor an ISO 8601 date") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return int(parsed.timestamp())
    number = _number(field, value)
    if abs(number) >= _US_THRESHOLD:
        seconds = number // 1_000_000  # floor division: exact for integers of any size, no OverflowError
    elif abs(number) >= _MS_THRESHOLD:
        seconds = number // 1_000
    else:
        seconds = number
    seconds = int(seconds)
    if not -(2**63) <= seconds < 2**63:
        raise Poison(f"field {field.name}: out of range for {field.type}")
    return seconds


# --- with a schema, compiled: DynamoDB JSON images -------------------------------------------------------------
#
# The stream's upserts and every bulk row take this path first. It is a cache of the reference path above
# (``ddbjson.image`` then :func:`with_schema`), never a second set of rules: the schema is compiled once per
# mapping into one converter per field (DynamoDB attribute → coerced value, specialised to the field's type for
# the common type tags, :func:`coerce` on ``ddbjson.value`` for the rest), and the attribute each field reads is
# resolved once per set of attribute names. Whenever the answer is not a plain success (an invalid attribute, a
# clash, a missing required field, a value that does not coerce, anything unusual) it returns ``None`` and the
# reference path decides, so poison reasons come from one place. ``tests/unit/test_item.py`` proves with
# hypothesis that a success equals the reference's property map.

_UNSET: Any = object()
_INF = math.inf
_ROUTES_MAX = 1_024  # distinct attribute-name sets remembered per mapping (then the cache starts over)
# A converter returns the coerced value, or None for no value (NULL, an empty list or set): coerce never
# returns None.
_Converter = Callable[[Any], Any]
# (nullable, source attribute or None, converter) per schema field but ITEM_ID, in schema order
_Step = tuple[bool, str | None, _Converter]
_Route = tuple[tuple[_Step, ...], tuple[str, ...]]  # (steps, attributes no field reads: validated only)


def schema_plan(mapping: ItemMapping) -> SchemaPlan:
    """The compiled plan of ``mapping`` (which must have a schema), built once and kept on the mapping."""
    plan = mapping.compiled.get("schema")
    if plan is None:
        plan = mapping.compiled["schema"] = SchemaPlan(mapping)
    return plan


def schema_properties(image: Any, mapping: ItemMapping, skip: frozenset[str]) -> dict[str, Any] | None:
    """The property map :func:`with_schema` builds from the DynamoDB JSON ``image`` of an upsert, or ``None``
    when the reference path must decide (every poison, and anything unusual)."""
    plan = schema_plan(mapping)
    values = plan.values(image, skip)
    if values is None:
        return None
    return {key: value for key, value in zip(plan.keys, values, strict=True) if value is not None}


class SchemaPlan:
    """A mapping's schema compiled for DynamoDB JSON images (see above)."""

    __slots__ = ("fields", "keys", "routes")

    def __init__(self, mapping: ItemMapping) -> None:
        assert mapping.schema is not None
        self.fields = [
            (field, mapping.fields.get(field.name), _field_converter(field))
            for field in mapping.schema
            if field.name != "ITEM_ID"
        ]
        #: the property key of each value :meth:`values` returns
        self.keys = tuple(camel_case(field.name) for field, _, _ in self.fields)
        self.routes: dict[tuple[frozenset[str], tuple[str, ...]], _Route | None] = {}

    def values(self, image: Any, skip: frozenset[str]) -> list[Any] | None:
        """The coerced value of each schema field but ``ITEM_ID`` (in schema order; ``None``: no value) that
        :func:`with_schema` would put in the property map, or ``None`` when the reference path must decide."""
        if image.__class__ is not dict:
            return None
        signature = (skip, tuple(image))
        route = self.routes.get(signature, _UNSET)
        if route is _UNSET:
            if len(self.routes) >= _ROUTES_MAX:
                self.routes.clear()
            route = self.routes[signature] = self._route(skip, signature[1])
        if route is None:
            return None
        steps, unread = route
        values: list[Any] = []
        append = values.append
        try:
            if unread:  # the reference converts the whole image: an invalid attribute is poison
                value = ddbjson.value
                for name in unread:
                    value(image[name])
            for nullable, source, convert in steps:
                result = None if source is None else convert(image[source])
                if result is None and not nullable:
                    return None
                append(result)
        except Exception:  # the reference path says why (or raises what it raises)
            return None
        return values

    def _route(self, skip: frozenset[str], names: tuple[str, ...]) -> _Route | None:
        by_camel: dict[str, list[str]] = {}
        for name in names:
            if name not in skip:
                by_camel.setdefault(camel_case(name), []).append(name)
        present = set(names)
        read: set[str] = set()
        steps: list[_Step] = []
        for (field, path, field_convert), key in zip(self.fields, self.keys, strict=True):
            convert = field_convert
            source: str | None = None
            if path is not None:  # mapping 'fields': an attribute name, or a dotted path into maps
                if path in present:
                    source = path
                else:
                    root, *rest = path.split(".")
                    if rest and root in present:
                        source, convert = root, _path_converter(field, rest)
            else:
                candidates = by_camel.get(key, ())
                if len(candidates) > 1:
                    return None  # a clash: the reference names it
                if candidates:
                    source = candidates[0]
            if source is not None:
                read.add(source)
            steps.append((field.nullable, source, convert))
        return tuple(steps), tuple(n for n in names if n not in read)


def _generic_converter(field: SchemaField) -> _Converter:
    def convert(attr: Any) -> Any:
        raw = ddbjson.value(attr)
        if raw is None or raw == []:
            return None
        return coerce(field, raw)

    return convert


def _path_converter(field: SchemaField, rest: list[str]) -> _Converter:
    """A field read through a dotted path: the root attribute converted, then walked as ``_lookup`` does."""

    def convert(attr: Any) -> Any:
        node = ddbjson.value(attr)
        for part in rest:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if node is None or node == []:
            return None
        return coerce(field, node)

    return convert


def _field_converter(field: SchemaField) -> _Converter:
    """DynamoDB attribute → the value :func:`coerce` gives for ``field``, for the common tags; the rest through
    ``ddbjson.value`` and :func:`coerce` themselves."""
    generic = _generic_converter(field)
    if field.type == "string":
        limit = TEXTUAL_MAX if field.textual else STRING_MAX
        categorical = field.categorical

        def string(attr: Any) -> Any:
            if attr.__class__ is dict and len(attr) == 1:
                text = attr.get("S")
                if text.__class__ is str and len(text) <= limit:
                    return text
                members = attr.get("SS") if categorical else None
                if members.__class__ is list and members and all(m.__class__ is str for m in members):
                    text = "|".join(sorted(members))
                    if len(text) <= limit:
                        return text
            return generic(attr)

        return string
    if field.type == "boolean":

        def boolean(attr: Any) -> Any:
            if attr.__class__ is dict and len(attr) == 1:
                flag = attr.get("BOOL")
                if flag.__class__ is bool:
                    return flag
            return generic(attr)

        return boolean
    if field.type in ("int", "long"):
        low, high = (-(2**31), 2**31) if field.type == "int" else (-(2**63), 2**63)
        timestamp = field.name == "CREATION_TIMESTAMP"

        def integer(attr: Any) -> Any:
            if attr.__class__ is dict and len(attr) == 1:
                text = attr.get("N")
                if text.__class__ is str:
                    try:
                        value = int(text)  # what ddbjson.number returns for a text int() reads
                    except ValueError:
                        return generic(attr)
                    if timestamp:
                        if abs(value) >= _US_THRESHOLD:
                            value //= 1_000_000
                        elif abs(value) >= _MS_THRESHOLD:
                            value //= 1_000
                        if -(2**63) <= value < 2**63:
                            return value
                    elif low <= value < high:
                        return value
            return generic(attr)

        return integer
    if field.type in ("float", "double"):

        def floating(attr: Any) -> Any:
            if attr.__class__ is dict and len(attr) == 1:
                text = attr.get("N")
                if text.__class__ is str:
                    # float(ddbjson.number(text)) for a finite non-zero value: float() rounds the decimal
                    # text correctly, as it does the int or Decimal that number() makes first. Zero (-0)
                    # and non-finite values take number()'s own way.
                    value = float(text)
                    if value != 0.0 and -_INF < value < _INF:
                        return value
            return generic(attr)

        return floating
    return generic  # pragma: no cover - config allows only the types above
