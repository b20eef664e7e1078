"""End to end: a Personalize outage, then a deleted dataset and a missing IAM grant, then recovery (issue 8).

While changes stream in, every PutItems call fails: 5xx for a stretch, then ``ResourceNotFoundException`` (a
dataset deleted and re-created), then ``AccessDeniedException`` (a grant that is fixed). Then the service comes
back. The synthesized stack retries by record age (``MaximumRetryAttempts: -1``), and the handler backs off
while a dependency is broken. Afterwards the dataset must equal the sources' final state, the DLQ must hold
exactly the bad records, and nothing may have reached the on-failure queue.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from localcloud.demo import run_demo, synthesize
from localcloud.workload import WorkloadSpec

pytestmark = pytest.mark.e2e

SPEC = WorkloadSpec(items=80, documents=15, cdc_items=8, rounds=4, write_seconds=4, seed=5)
# (seconds into the run, error rate, HTTP status of the injected error)
PHASES = [(0.0, 1.0, 503), (12.0, 1.0, 404), (20.0, 1.0, 403), (28.0, 0.0, None)]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("cdk") / "cdk.out")


def test_an_outage_ends_with_everything_landed_and_both_queues_empty(
    template: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    timers: list[threading.Timer] = []
    calls_during_outage: list[int] = []

    def outage(cloud: Any) -> None:
        def phase(rate: float, status: int | None) -> None:
            if rate == 0.0:
                calls_during_outage.append(cloud.emulator.stats()["calls"])
            cloud.emulator.set_faults(error_rate=rate, error_status=status)

        cloud.emulator.set_faults(error_rate=PHASES[0][1], error_status=PHASES[0][2])
        for at, rate, status in PHASES[1:]:
            timer = threading.Timer(at, phase, args=(rate, status))
            timer.daemon = True
            timer.start()
            timers.append(timer)

    output = io.StringIO()
    try:
        result = run_demo(
            SPEC,
            template=template,
            fast=True,
            timeout=120,
            console=Console(file=output, width=140),
            live=False,
            cloud_options={"log_dir": tmp_path_factory.mktemp("logs")},
            on_start=outage,
        )
    finally:
        for timer in timers:
            timer.cancel()
    assert calls_during_outage, "the outage never ended: the run finished first"
    assert result.check.problems == [], output.getvalue()[-3000:]
    assert result.converged and result.actual_items == result.expected_items
    assert result.on_failure == []  # retried by record age: nothing skipped to the on-failure destination
    # Not a hot loop: botocore's retries and the handler's outage backoff keep it to a few dozen attempts in 28 s
    # (the backoff itself is measured in tests/unit/test_promise.py).
    assert 0 < calls_during_outage[0] < 200
