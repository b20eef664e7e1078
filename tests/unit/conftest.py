"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from tests.fakes import moto_state_table
from tests.unit.test_budget import TABLE, Clock


@pytest.fixture
def clock() -> Clock:
    """The simulated clock the budget tests drive by hand."""
    return Clock()


@pytest.fixture
def ddb() -> Iterator[Any]:
    """A moto DynamoDB client with the shared budget's state table (``TABLE``), for the budget tests."""
    with moto_state_table(TABLE) as client:
        yield client


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's standard mode waits ``random() * 2 ** attempt`` seconds before a retry: 0 here, so the timelines
    of the tests on the wire are deterministic (``pytestmark = pytest.mark.usefixtures("no_backoff")``)."""
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
