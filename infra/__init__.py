"""stream-to-personalize CDK app: a reusable ``StreamToPersonalize`` construct and the deployable stack.

Modules, one concern each:

* :mod:`infra.config`: cdk.json context -> validated :class:`ConnectorConfig` (:class:`ConfigError` otherwise),
  pydantic models per context object; :mod:`infra.context_schema` publishes their JSON Schema;
* :mod:`infra.stream_to_personalize`: the connector construct (function, queues, IAM, event sources);
* :mod:`infra.sources`: new or imported DynamoDB table / Kinesis stream;
* :mod:`infra.state_table`: the connector's state table (shared PutItems budget, CDC version guard);
* :mod:`infra.personalize`: optional dataset group, schema and Items dataset;
* :mod:`infra.monitoring`: alarms, alarm topic and dashboard;
* :mod:`infra.stack`: the stack that wires them; :mod:`infra.synth`: build and synthesize (offline).
"""

from infra.config import ConfigError, ConnectorConfig, EsmSettings, load_config
from infra.stack import STACK_NAME, StreamToPersonalizeStack
from infra.state_table import StateTable
from infra.stream_to_personalize import StreamToPersonalize
from infra.synth import build_app, cdk_json_context, synth

__all__ = [
    "STACK_NAME",
    "ConfigError",
    "ConnectorConfig",
    "EsmSettings",
    "StateTable",
    "StreamToPersonalize",
    "StreamToPersonalizeStack",
    "build_app",
    "cdk_json_context",
    "load_config",
    "synth",
]
