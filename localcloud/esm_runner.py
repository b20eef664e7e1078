"""The local event source mapping runner (see :mod:`localcloud.esm`): this module keeps the public names
importable from where the tests, the bench and the demo import them."""

from __future__ import annotations

from localcloud.esm.batch_policy import Outcome, build_on_failure_message, evaluate_batch_response
from localcloud.esm.config import EsmConfigError, FunctionConfig, MappingConfig, parse_template
from localcloud.esm.ledger import Invocation, RunnerStats
from localcloud.esm.poller import POLL_INTERVAL_S
from localcloud.esm.runner import EsmRunner

__all__ = [
    "POLL_INTERVAL_S",
    "EsmConfigError",
    "EsmRunner",
    "FunctionConfig",
    "Invocation",
    "MappingConfig",
    "Outcome",
    "RunnerStats",
    "build_on_failure_message",
    "evaluate_batch_response",
    "parse_template",
]
