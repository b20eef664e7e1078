"""The published JSON Schema of the context: current, valid, and it accepts cdk.json and refuses mistakes."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from infra.context_schema import SCHEMA_PATH, render
from infra.synth import CDK_JSON
from tests.infra.conftest import VARIANTS

pytestmark = pytest.mark.infra


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_published_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == render(), "run: .venv/bin/python -m infra.context_schema"


def test_cdk_json_and_the_test_variants_validate() -> None:
    validator = _validator()
    document = json.loads(CDK_JSON.read_text())
    assert list(validator.iter_errors(document)) == []
    for name, overrides in VARIANTS.items():
        context = {**document["context"], **{k: v for k, v in overrides.items() if v is not None}}
        if overrides.get("datasetArn", "") is None:
            context.pop("datasetArn")
        errors = [e.message for e in validator.iter_errors({**document, "context": context})]
        assert errors == [], name


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("esm", "batchSize"), 0),
        (("lambda", "memroyMb"), 1024),
        (("dynamodb", "source"), "table"),
        (("stateTable", "removalPolicy"), "snapshot"),
        (("monitoring", "alarmTopicArn"), "ops"),
        (("onFailure", "destination"), "sns"),
        (("bulkLoad", "maxConcurrency"), 0),
    ],
)
def test_schema_refuses_what_the_app_refuses(path: tuple[str, ...], value: Any) -> None:
    document = copy.deepcopy(json.loads(CDK_JSON.read_text()))
    section = document["context"].setdefault(path[0], {})
    section[path[1]] = value
    assert list(_validator().iter_errors(document)), path
