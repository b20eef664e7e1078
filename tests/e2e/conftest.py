"""Shared by the end-to-end tests: one synthesized template per session (a module may define its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcloud.demo import synthesize


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("cdk") / "cdk.out")
