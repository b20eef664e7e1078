"""End to end: the demo's first act, a catalog that exists before the stack, loaded while the stream flows.

A small version of ``make demo`` (300 catalog items written with no stream records before the event source
mappings start, then about 150 streamed items, ~10 % of the catalog updated through the stream), once with the
catalog loaded by ``backfill`` (``ops.backfill``, share 0.5 of the shared PutItems budget) and once by
``bulk-load`` (export → CSV → FULL import job, the mappings started before the export time). The convergence
check covers the whole catalog: every catalog item, updated or not, equals the table's final state.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from localcloud.demo import DemoResult, compare_items, run_demo
from localcloud.workload import WorkloadSpec

pytestmark = pytest.mark.e2e

CATALOG = 300
SPEC = WorkloadSpec(items=150, documents=20, cdc_items=10, rounds=6, seed=5, catalog=CATALOG, write_seconds=4)


@pytest.fixture(scope="module", params=["backfill", "bulk-load"])
def demo(
    request: pytest.FixtureRequest, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoResult, float]]:
    output = io.StringIO()
    began = time.monotonic()
    result = run_demo(
        SPEC,
        template=template,
        fast=True,
        timeout=60,
        console=Console(file=output, width=160),
        live=False,
        cloud_options={"log_dir": tmp_path_factory.mktemp("logs")},
        catalog_load=request.param,
        catalog_share=0.5,
    )
    yield result, time.monotonic() - began


def test_the_whole_catalog_converges(demo: tuple[DemoResult, float]) -> None:
    result, seconds = demo
    assert result.check.problems == []
    assert result.ok
    w = result.workload
    expected = w.expected_items()
    catalog_ids = {f"cat-{i:05d}" for i in range(1, CATALOG + 1)}
    # GIVEN a catalog that predates the stream, part of it updated through the stream while it was loaded
    assert w.counters.catalog_items == CATALOG and catalog_ids <= set(expected)
    assert w.counters.catalog_updates >= 1  # how many depends on how fast the load ends (a busy machine: fewer)
    # ... whose items made no stream record (the stream holds exactly the workload's own writes)
    assert sum(len(s) for s in result.source_records.values()) == w.counters.changes
    assert result.actual_items == result.expected_items == len(expected)
    assert seconds < 120


def test_the_load_itself(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    load = result.catalog
    assert load is not None and load.done and load.error is None
    if load.method == "backfill":
        # The stream's invocations ran beside it: the handler put records while the backfill was running.
        assert load.loaded >= CATALOG and load.put >= CATALOG
        assert result.totals.outcomes["put"] > 0
    else:
        # The ordering rule, proved: the mappings started before the export's point in time, and the FULL import
        # holds the catalog in the bulk layer (items the stream wrote since show their PutItems version).
        assert load.esm_started is not None and load.export_time is not None
        assert load.esm_started < load.export_time
        assert load.job_status == "ACTIVE"
        assert load.rows >= CATALOG and load.bulk_layer == load.rows
        # every reject is one of the workload's bad DynamoDB items (the stream dead-letters the same ones)
        assert load.poison <= sum(1 for b in result.workload.bad if b.source == "dynamodb")


def test_the_check_sees_a_missing_catalog_item(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    expected = result.workload.expected_items()
    landed = copy.deepcopy(expected)
    del landed["cat-00007"]
    assert compare_items(expected, landed).missing == ["cat-00007"]
    updated = next(iter(sorted(result.workload.catalog_ids)))
    landed = copy.deepcopy(expected)
    landed[updated] = {**landed[updated], "price": -1.0}
    assert updated in compare_items(expected, landed).different
