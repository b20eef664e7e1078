"""Infra test fixtures: every synth is session-scoped, so each variant is synthesized once per run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import pytest
from aws_cdk.assertions import Template

from infra import synth

EXISTING_TABLE_STREAM_ARN = "arn:aws:dynamodb:us-east-1:111122223333:table/catalog/stream/2024-01-01T00:00:00.000"
EXISTING_KINESIS_ARN = "arn:aws:kinesis:us-east-1:111122223333:stream/catalog-events"
EXISTING_TOPIC_ARN = "arn:aws:sns:us-east-1:111122223333:ops-alarms"
POWERTOOLS_LAYER_ARN = "arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python313-arm64:7"

#: A few variants beside the example cdk.json, chosen to cover every source mode in three synths.
VARIANTS: dict[str, dict[str, Any]] = {
    # Existing DynamoDB stream only; the mapping shipped as a file in the asset; an alarm email topic; no state
    # table but reserved concurrency (the old serial design); the example dataset ARN explicitly allowed; the
    # on-failure destination an SQS queue of coordinates (the option beside the default S3 bucket).
    "existing_table": {
        "onFailure": {"destination": "sqs"},
        "dynamodb": {"source": "existing", "streamArn": EXISTING_TABLE_STREAM_ARN},
        "kinesis": {"source": "none"},
        "configDelivery": "file",
        "monitoring": {"alarmEmail": "ops@example.com"},
        "stateTable": {"enabled": False},
        "lambda": {"reservedConcurrency": 1},
        "allowExampleDatasetArn": True,
    },
    # Existing Kinesis stream only, with a filter; the Personalize dataset created from the schema.
    "existing_stream_new_dataset": {
        "datasetArn": None,
        "createDataset": {"datasetGroupName": "catalog"},
        "dynamodb": {"source": "none"},
        "kinesis": {
            "source": "existing",
            "streamArn": EXISTING_KINESIS_ARN,
            "filters": [{"data": {"type": ["product"]}}],
            "esm": {"startingPosition": "LATEST", "parallelizationFactor": 2},
        },
        "monitoring": {"alarmTopicArn": EXISTING_TOPIC_ARN, "dashboard": False, "notifyOnOk": True},
        "lambda": {"powertoolsLayerArn": POWERTOOLS_LAYER_ARN},
    },
    # New composite-key table with its own filter, new on-demand stream, unreserved concurrency; the bulk load;
    # X-Ray tracing on (off by default).
    "new_on_demand": {
        "dynamodb": {
            "source": "new",
            "partitionKey": "pk",
            "sortKey": "sk",
            "filters": [{"dynamodb": {"NewImage": {"entityType": {"S": ["PRODUCT"]}}}}],
        },
        "kinesis": {"source": "new", "capacity": "onDemand"},
        "lambda": {"reservedConcurrency": "none", "maxCallsPerSecond": 10, "tracing": True},
        "bulkLoad": {"enabled": True, "exportBucketName": "catalog-exports"},
    },
}


@dataclass(frozen=True)
class Synthesized:
    """One synthesized app: the template (assertions and raw JSON) and its cloud assembly directory."""

    outdir: Path
    template_path: Path
    template: Template

    @property
    def raw(self) -> dict[str, Any]:
        """The template as JSON."""
        return json.loads(self.template_path.read_text())

    def validation_report(self) -> dict[str, Any]:
        """CDK's policy validation report (cdk-nag's findings)."""
        return json.loads((self.outdir / "validation-report.json").read_text())


def _synth(outdir: Path, context: Mapping[str, Any] | None) -> Synthesized:
    path = synth(outdir, context)
    return Synthesized(outdir=outdir, template_path=path, template=Template.from_json(json.loads(path.read_text())))


@pytest.fixture(scope="session")
def default_app(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The example cdk.json as shipped: a new table and a new Kinesis stream."""
    return _synth(tmp_path_factory.mktemp("cdk-default"), None)


@pytest.fixture(scope="session")
def variant_app(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Synthesized]:
    """Synthesize a named variant of :data:`VARIANTS` on first use, once per session."""
    cache: dict[str, Synthesized] = {}

    def get(name: str) -> Synthesized:
        if name not in cache:
            cache[name] = _synth(tmp_path_factory.mktemp(f"cdk-{name}"), VARIANTS[name])
        return cache[name]

    return get
