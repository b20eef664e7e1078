"""stream-to-personalize CDK app: a reusable ``StreamToPersonalize`` construct and the deployable stack.

Modules, one concern each:

* :mod:`infra.config`: cdk.json context -> validated :class:`ConnectorConfig` (:class:`ConfigError` otherwise);
* :mod:`infra.stream_to_personalize`: the connector construct (function, queues, IAM, event sources);
* :mod:`infra.sources`: new or imported DynamoDB table / Kinesis stream;
* :mod:`infra.personalize`: optional dataset group, schema and Items dataset;
* :mod:`infra.monitoring`: alarms, alarm topic and dashboard;
* :mod:`infra.stack`: the stack that wires them; :mod:`infra.synth`: build and synthesize (offline).
"""

from infra.config import ConfigError, ConnectorConfig, EsmSettings, load_config
from infra.stack import STACK_NAME, StreamToPersonalizeStack
from infra.stream_to_personalize import StreamToPersonalize, skip_ttl_deletes_filters
from infra.synth import build_app, cdk_json_context, synth

__all__ = [
    "STACK_NAME",
    "ConfigError",
    "ConnectorConfig",
    "EsmSettings",
    "StreamToPersonalize",
    "StreamToPersonalizeStack",
    "build_app",
    "cdk_json_context",
    "load_config",
    "skip_ttl_deletes_filters",
    "synth",
]
