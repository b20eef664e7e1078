"""The local-cloud benchmark's repeats: one row per cell, per-field medians, the spread kept beside."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest

from bench import bench_localcloud
from bench.bench_localcloud import (
    RunResult,
    conclusion,
    connector,
    late_rate,
    late_share,
    make_workload,
    medians,
    pacing_table,
)


def run(
    shards: int,
    mode: str,
    items_per_s: float,
    throttled: float,
    *,
    foreign: float = 0.0,
    offered: float = 150.0,
    in_flight: int | None = None,
) -> RunResult:
    return RunResult(
        workload=make_workload("shards", 40, shards=shards),
        deployment=connector(mode, shards, 256, in_flight),
        seconds=30.0,
        converged=True,
        visible=40,
        expected=40,
        items_per_s=items_per_s,
        items_per_s_span=items_per_s * 0.8,
        items_per_call=10.0,
        calls_over_min=1.0,
        accepted_calls=4,
        minimum_calls=4,
        throttled_share=throttled,
        throttled=round(throttled * 100),
        calls=100,
        p50_s=10.0,
        p99_s=20.0,
        handler_s_per_1k=12.0,
        handler_estimated=False,
        redeliveries=0,
        function_errors=0,
        dlq=0,
        max_attempts_in_1s=10,
        foreign_share=foreign,
        memory_mb=256,
        offered_per_s=offered,
    )


def test_a_cell_run_once_is_its_own_row() -> None:
    runs = [run(1, "shared", 90.0, 0.0), run(1, "serial", 93.0, 0.01)]
    assert medians(runs) == runs


def test_repeats_become_one_row_of_medians_with_their_spread() -> None:
    runs = [
        run(2, "shared", 80.0, 0.03),
        run(2, "serial", 91.0, 0.0),
        run(2, "shared", 92.0, 0.0),
        run(2, "shared", 88.0, 0.01),
        run(2, "shared", 85.0, 0.0, foreign=0.2),  # another cell: the foreign writer
    ]
    rows = medians(runs)
    assert [(r.deployment.pacing, r.foreign_share, r.runs) for r in rows] == [
        ("shared", 0.0, 3),
        ("serial", 0.0, 1),
        ("shared", 0.2, 1),
    ]
    shared = rows[0]
    assert shared.items_per_s == 88.0  # not the first run's 80, not the mean
    assert shared.throttled_share == 0.01 and shared.throttled == 1  # per-field medians
    assert shared.items_per_s_range == (80.0, 92.0)
    assert shared.throttled_max == 0.03
    table = pacing_table(rows)
    assert "| 88.0 (80.0-92.0) |" in table and "1.0% (≤ 3.0%)" in table
    assert math.isnan(rows[1].throttled_max) and "(≤" not in table.splitlines()[3]


def test_an_in_flight_a_b_keeps_its_cells_apart_and_deploys_each_value() -> None:
    runs = [run(2, "shared", rate, 0.0, in_flight=n) for rate, n in ((90.0, 1), (85.0, 3), (92.0, 1), (86.0, 3))]
    rows = medians(runs)
    assert [(r.label, r.runs, r.items_per_s_range) for r in rows] == [
        ("connector, shared budget (STATE_TABLE), 1 in flight", 2, (90.0, 92.0)),
        ("connector, shared budget (STATE_TABLE), 3 in flight", 2, (85.0, 86.0)),
    ]
    assert rows[1].deployment.env == {"PUT_ITEMS_IN_FLIGHT": "3"}
    alone = connector("alone", 4, 256, 1)
    assert alone.env == {"PUT_ITEMS_IN_FLIGHT": "1", "MAX_CALLS_PER_SECOND": "2.425"}
    assert connector("shared", 1, 256).env == {}  # unnamed: the runtime's default


def test_a_cell_converged_only_if_every_repeat_did() -> None:
    slow = run(4, "shared", 70.0, 0.0)
    slow.converged = False
    rows = medians([run(4, "shared", 90.0, 0.0), slow, run(4, "shared", 91.0, 0.0)])
    assert len(rows) == 1 and not rows[0].converged


def test_the_verdicts_judge_each_cell_by_its_median_not_its_worst_run() -> None:
    runs = [run(1, "shared", rate, throttled) for rate, throttled in ((96.0, 0.0), (80.0, 0.05), (95.5, 0.01))]
    text = conclusion(medians(runs))
    assert "throttled at most 1.0%, at least 95.5 items/s, end to end at least 76.4 → meets both goals" in text
    assert "at least 80.0" in conclusion(runs)  # the runs one by one: the worst run decides


def test_below_the_quota_the_items_per_s_goal_does_not_apply_and_cost_is_reported_per_load() -> None:
    light = [run(4, "shared", 48.0, 0.0, offered=50.0), run(4, "serial", 49.0, 0.0, offered=50.0)]
    heavy = [run(4, "shared", 90.0, 0.0), run(4, "serial", 93.0, 0.0)]
    light[0].handler_s_per_1k, heavy[0].handler_s_per_1k = 18.0, 48.0  # serial: 12 s per 1k changes
    rows = medians([*heavy, *light])
    assert len(rows) == 4  # the offered rate is part of a cell
    table = pacing_table(rows)
    assert "sliding-window, 50 changes/s offered" in table
    assert "✅ < 3 % throttled (sub-quota load)" in table  # 48 items/s is the writer's pace, not a miss
    assert "❌ < 95 items/s" in table  # the saturated shared run at 90 items/s still misses
    text = conclusion(rows)
    assert "at 50 changes/s offered, below the quota (4 shards): throttled at most 0.0% → meets" in text
    assert "at least 90.0 items/s" in text and "at least 48.0" not in text
    assert "(saturated;" in text and "4.00-4.00x" in text
    assert "(50 changes/s offered, below the quota;" in text and "1.50-1.50x" in text


def test_combine_renders_one_report_from_runs_saved_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_localcloud, "RESULTS", tmp_path / "results")
    saved = []
    for name, rows, header in (
        ("heavy", [run(2, "shared", 90.0, 0.0), run(2, "serial", 93.0, 0.0)], "saturated run"),
        ("light", [run(2, "shared", 48.0, 0.0, offered=50.0)], "sub-quota run"),
    ):
        path = tmp_path / f"{name}.pickle"
        path.write_bytes(pickle.dumps({"results": [], "pacing": rows, "header": header}))
        saved.append(str(path))
    assert bench_localcloud.main(["--combine", *saved]) == 0
    text = (tmp_path / "results" / "localcloud.md").read_text()
    assert "- saturated run" in text and "- sub-quota run" in text
    assert text.count("| 2 | sliding-window") == 3 and "50 changes/s offered" in text
    with pytest.raises(SystemExit):
        bench_localcloud.main(["--combine", str(tmp_path / "missing.pickle")])


def test_the_second_half_share_counts_this_datasets_put_items_attempts_after_the_middle_of_their_span() -> None:
    arn, other = "arn:ds/items", "arn:ds/users"

    def call(ts: float, outcome: str = "ok", operation: str = "PutItems", dataset: str = arn) -> dict[str, object]:
        return {"ts": ts, "operation": operation, "dataset_arn": dataset, "outcome": outcome}

    calls = [
        *(call(t, "throttled") for t in (0.0, 1.0, 2.0)),  # learning: all in the first half
        *(call(t) for t in (3.0, 4.0, 6.0, 7.0, 8.0)),
        call(9.0, "throttled"),
        call(10.0),  # the span is 0-10 s: the second half starts at 5 s
        call(6.5, "throttled", dataset=other),  # another dataset
        call(6.6, "throttled", operation="PutUsers"),
    ]
    assert late_share(calls, arn) == pytest.approx(1 / 5)
    assert math.isnan(late_share([], arn))
    runs = [run(2, "shared", 70.0, 0.05, foreign=0.2) for _ in range(3)]
    for r, late in zip(runs, (0.02, 0.0, 0.01), strict=True):
        r.throttled_late = late
    assert "5.0% (≤ 5.0%); 2nd half 1.0% |" in pacing_table(medians(runs))  # the median of the halves
    assert "2nd half" not in pacing_table([run(1, "shared", 90.0, 0.0)])  # runs saved before it: not shown


def test_the_second_half_rate_counts_the_items_accepted_after_the_middle_over_the_time_a_handler_ran() -> None:
    def accepted(ts: float, items: int = 10) -> dict[str, object]:
        return {"ts": ts, "items": [[f"i{ts}-{n}", {}] for n in range(items)]}

    calls = [accepted(t) for t in (0.0, 1.0, 2.0, 4.0, 6.0, 8.0)] + [accepted(10.0, 4)]  # middle: 5 s
    # a cold first invocation (0-5.5 s), then two overlapping ones and a gap with no handler running (7.5-8 s)
    intervals = [(-1.0, 5.5), (5.2, 7.0), (6.0, 7.5), (8.0, 10.1)]
    busy_after_middle = (7.5 - 5.0) + (10.1 - 8.0)
    assert late_rate(calls, intervals) == pytest.approx((10 + 10 + 4) / busy_after_middle)
    assert math.isnan(late_rate(calls[:1], intervals))
    assert math.isnan(late_rate(calls, [(-1.0, 4.0)]))  # no handler after the middle: nothing to divide by
    runs = [run(1, "shared", 90.0, 0.0) for _ in range(3)]
    for r, late in zip(runs, (96.0, 94.0, 95.5), strict=True):
        r.items_per_s_late = late
    rows = medians(runs)
    assert "90.0 (90.0-90.0); 2nd half 95.5 |" in pacing_table(rows)
    assert "(in the second half of each run at least 95.5 items/s)" in conclusion(rows)
    assert "2nd half" not in pacing_table([run(1, "shared", 90.0, 0.0)])  # runs saved before it: not shown


def test_the_capped_strategy_is_the_shared_budget_at_reserved_concurrency_2_and_its_cost_is_set_against_serial() -> (
    None
):
    capped = connector("capped", 8, 256)
    assert (capped.pacing, capped.reserved, capped.state_table) == ("capped", 2, True)
    runs = [run(8, "shared", 93.0, 0.0), run(8, "capped", 94.0, 0.0), run(8, "serial", 95.0, 0.0)]
    runs[0].handler_s_per_1k, runs[1].handler_s_per_1k = 72.0, 22.0  # serial: 12 s per 1k changes
    text = conclusion(medians(runs))
    assert "- **capped** (8 shards): throttled at most 0.0%, at least 94.0 items/s, end to end at least 75.2" in text
    assert "the shared budget costs 6.00-6.00x the serial design" in text
    assert "the shared budget at reserved concurrency 2 costs 1.83-1.83x the serial design" in text
    assert "→ within 2x." in text
