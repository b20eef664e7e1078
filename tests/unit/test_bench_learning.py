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
    assert out.read_text().splitlines()[-1].endswith("| 0 of 2 |")
    assert bench_learning.main([*argv, "--collapse", "1.5"]) == 0  # 1.5 × the leftover: every run "collapsed"
    assert out.read_text().splitlines()[-1].endswith("| 2 of 2 |")


@pytest.mark.parametrize("bad", [["--models", "bucket"], ["--seconds", "30"], ["--foreign", "10"]])
def test_bad_options_are_refused(bad: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_learning.main([*bad, "--out", str(tmp_path / "x.md")])
    assert exc.value.code == 2
