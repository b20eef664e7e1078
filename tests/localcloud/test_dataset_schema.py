"""The schema oracle: the emulator validates against what the *dataset* has, never the function's own config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localcloud import demo
from localcloud.demo import LocalCloud, SetupError, dataset_schema
from tests.factories import items_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA: dict[str, Any] = items_schema({"name": "PRICE", "type": "float"})


def write_template(tmp_path: Path, *, with_schema: bool) -> Path:
    resources: dict[str, Any] = {"Fn": {"Type": "AWS::Lambda::Function", "Properties": {}}}
    if with_schema:
        resources["Schema"] = {"Type": "AWS::Personalize::Schema", "Properties": {"Schema": json.dumps(SCHEMA)}}
    path = tmp_path / "Stack.template.json"
    path.write_text(json.dumps({"Resources": resources}))
    return path


def test_the_template_s_personalize_schema_comes_first(tmp_path: Path) -> None:
    schema, source = dataset_schema(write_template(tmp_path, with_schema=True))
    assert schema == SCHEMA and "AWS::Personalize::Schema" in source


def test_else_cdk_json_s_schema_file(tmp_path: Path) -> None:
    context = json.loads((REPO / "cdk.json").read_text())["context"]
    schema, source = dataset_schema(write_template(tmp_path, with_schema=False))
    assert schema == json.loads((REPO / context["schemaFile"]).read_text())
    assert "schemaFile" in source


def test_a_given_schema_wins(tmp_path: Path) -> None:
    given = tmp_path / "s.json"
    given.write_text(json.dumps(SCHEMA))
    assert dataset_schema(write_template(tmp_path, with_schema=False), given) == (SCHEMA, str(given))


def _cloud(tmp_path: Path, function_schema: Any, monkeypatch: pytest.MonkeyPatch, **options: Any) -> LocalCloud:
    cloud = LocalCloud(write_template(tmp_path, with_schema=options.pop("with_schema", True)), **options)
    monkeypatch.setattr(cloud, "_function_schema", lambda: function_schema)
    return cloud


def test_the_function_s_schema_is_never_the_oracle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = _cloud(tmp_path, SCHEMA, monkeypatch)
    assert cloud._schema() == SCHEMA
    assert "AWS::Personalize::Schema" in cloud.schema_source


def test_a_function_schema_that_differs_from_the_dataset_s_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = {**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "GENRES", "type": ["null", "string"]}]}
    cloud = _cloud(tmp_path, theirs, monkeypatch)
    with pytest.raises(SetupError, match=r"differs from the dataset's.*only in the function's: \['GENRES'\]"):
        cloud._schema()


def test_a_schema_less_dataset_is_refused_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "ROOT", tmp_path)  # no cdk.json, so no schemaFile
    with pytest.raises(SetupError, match="--allow-schemaless"):
        _cloud(tmp_path, None, monkeypatch, with_schema=False)._schema()
    cloud = _cloud(tmp_path, None, monkeypatch, with_schema=False, allow_schemaless=True)
    assert cloud._schema() is None and "schema-less" in cloud.schema_source
