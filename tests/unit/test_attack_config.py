"""Attack: defect 4 asks for an Items dataset ARN "at config time"; only the runtime checks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError as RuntimeConfigError
from connector.config import load_settings
from infra.config import ConfigError, load_config

USERS = "arn:aws:personalize:us-east-1:111122223333:dataset/catalog/USERS"


def test_attack_the_cdk_app_deploys_a_users_dataset_that_fails_every_invocation() -> None:
    """``cdk deploy`` accepts a USERS dataset ARN; the deployed function then raises ConfigError on every
    invocation, Lambda retries the batches until the records age out, and the on-failure queue gets only their
    coordinates: every change is lost, which is what checking "at config time" was meant to prevent."""
    with pytest.raises(RuntimeConfigError):
        load_settings({"DATASET_ARN": USERS})
    with pytest.raises(ConfigError, match="Items dataset"):
        load_config({"datasetArn": USERS, "kinesis": {"source": "new"}}, base_dir=Path("."))


def test_attack_a_30_minute_outage_exhausts_the_default_retry_count() -> None:
    """Issue 8, "A Personalize or IAM outage must lose nothing": retries must be bounded by record age, not by
    count. The stack still defaults to ``retryAttempts: 10`` (and refuses -1). During an outage every
    invocation returns the whole batch as failures and OutageBackoff waits at most 1+2+4+…+60 s, so ten
    retries take about five minutes; then Lambda sends the batch's coordinates to the on-failure queue and
    moves the checkpoint past records that never landed."""
    from connector.deadline import OutageBackoff
    from infra.config import EsmSettings, _esm

    backoff = OutageBackoff()
    waited = sum(min(backoff.base_s * 2**n, backoff.max_s) for n in range(EsmSettings().retry_attempts + 1))
    assert EsmSettings().retry_attempts == -1 or waited >= 30 * 60, f"retries exhausted after {waited:.0f} s"
    assert _esm("kinesis.esm", {"retryAttempts": -1}, EsmSettings()).retry_attempts == -1  # refused today
