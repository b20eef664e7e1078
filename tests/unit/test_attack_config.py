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
