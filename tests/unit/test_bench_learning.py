"""The learning benchmark's figures come from the runs it simulates (short runs; the bench itself runs long ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_learning


def test_without_a_foreign_writer_nothing_is_throttled_and_the_ceiling_is_held() -> None:
    run = bench_learning.run_once("sliding", 2, 45.0, 0.0, seed=1)
    assert (run.early10, run.whole) == (0.0, 0.0)
    assert run.late_rate == pytest.approx(9.7, abs=0.15)


def test_a_foreign_writer_is_learned_by_throttles_then_its_leftover_is_filled() -> None:
    run = bench_learning.run_once("sliding", 1, 60.0, 2.0, seed=1)
    assert run.early10 > run.whole > 0  # the learning costs throttles early, the steady state fewer
    assert 0.85 * 8 <= run.late_rate <= 8.05  # what the foreign writer leaves, nearly filled, never over


def test_the_report_counts_collapsed_runs_per_cell(tmp_path: Path) -> None:
    out = tmp_path / "learning.md"
    argv = ["--models", "sliding", "--holders", "1", "--seeds", "2", "--seconds", "45", "--out", str(out)]
    assert bench_learning.main([*argv, "--collapse", "0.5"]) == 0
    assert "| 0 of 2 | " in out.read_text().splitlines()[-1]
    assert bench_learning.main([*argv, "--collapse", "1.5"]) == 0  # 1.5 × the leftover: every run "collapsed"
    assert "| 2 of 2 | " in out.read_text().splitlines()[-1]


def test_a_foreign_writer_starting_late_is_judged_from_its_start_and_the_grace_can_be_switched_off() -> None:
    """Strict spacing beside a foreign writer: with the grace at the ceiling the first throttles cut nothing, without
    it (every throttle at the ceiling cuts, as before) they cut; the first 10 s count from the writer's start."""
    graced = bench_learning.run_once("spacing", 1, 60.0, 2.0, seed=3, foreign_start=15.0)
    old = bench_learning.run_once("spacing", 1, 60.0, 2.0, seed=3, foreign_start=15.0, grace_attempts=0)
    assert graced.cuts < old.cuts
    quiet = bench_learning.run_once("sliding", 1, 60.0, 2.0, seed=1, foreign_start=15.0)
    assert quiet.early10 > 0  # the foreign writer's onset, not the quiet first 15 s


def test_request_jitter_gives_strict_spacing_its_throttle_floor() -> None:
    """With 0-3.6 ms of request jitter, strict spacing throttles about 1 % of calls at 9.7/s with no foreign writer
    (the floor the local cloud measures), at random moments, so the grace of one throttle per 100 attempts' time
    is spent and runs cut; with the default 0-2 ms nothing is throttled (the slots leave 3 ms)."""
    floor = bench_learning.run_once("spacing", 1, 90.0, 0.0, seed=2, jitter_ms=3.6)
    assert 0.003 <= floor.whole <= 0.02
    assert floor.cuts > 0
    calm = bench_learning.run_once("spacing", 1, 45.0, 0.0, seed=2)
    assert (calm.whole, calm.cuts) == (0.0, 0)


@pytest.mark.parametrize(
    "bad",
    [
        ["--models", "bucket"],
        ["--seconds", "30"],
        ["--foreign", "10"],
        ["--foreign-start", "90"],
        ["--grace-attempts", "-1"],
        ["--jitter-ms", "-1"],
    ],
)
def test_bad_options_are_refused(bad: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_learning.main([*bad, "--out", str(tmp_path / "x.md")])
    assert exc.value.code == 2
