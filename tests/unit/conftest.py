"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

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
