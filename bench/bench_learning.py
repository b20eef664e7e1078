"""How the shared rate learns a foreign writer's share: many seeded runs on simulated time, figures not tests.

``bench_budget`` runs the budget in real time, so a cell lasts seconds and a repeat is costly; ``bench_localcloud``
starts every cell with a fresh shared rate, so a 1,500-change cell is mostly the learning. This one drives
:class:`connector.budget.SharedBudget` on moto's DynamoDB with the unit tests' discrete-event loop and simulated
clock (``tests/unit/test_budget.py``: a 120 s run takes a few seconds), beside a foreign writer outside the budget
(evenly spaced, from a random phase), under two quota models: ``sliding`` (at most 10 accepted calls in any 1 s)
and ``spacing`` (accepted calls at least 100 ms apart), with 0-2 ms of request jitter (``--jitter-ms``). Per cell,
over ``--seeds`` runs:

* the throttled share of our attempts in the first 10 s, the first 20 s and the whole run (medians): the cost
  of learning, and the steady state;
* our accepted calls/s in the last 40 s (median and lowest);
* **collapsed**: runs whose last 40 s accepted fewer than ``--collapse`` × what the foreign writer leaves (under
  strict spacing a cut raises the share throttled by collisions, so a run of cuts can spiral down);
* cuts of the shared rate per run (median).

``--foreign-start S`` starts the foreign writer after S seconds at the ceiling (the first-10/20-s columns then
count from its start: what a limit that drops during a long hold costs); ``--grace-attempts 0`` builds the budgets
without the grace at the ceiling (every throttle there cuts at once, as before it), for an A/B in one sitting.

Why not the test loop alone: the tests check one seed each; the learning's cost and the spiral are rare-event
figures that need many seeds. Run ``.venv/bin/python -m bench.bench_learning [--quick]``; it writes
``bench/results/learning.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.offline import ROOT, offline

offline()

from connector.budget import GRACE_ATTEMPTS  # noqa: E402
from tests.fakes import moto_state_table  # noqa: E402
from tests.unit.test_budget import T0, TABLE, Meter, Spacing, beside_foreign  # noqa: E402

QUOTA = 10
LATE_S = 40.0  # the steady state: the last this many seconds of a run
MODELS: dict[str, Callable[[], Callable[[float], bool]]] = {
    "sliding": lambda: Meter(QUOTA),
    "spacing": lambda: Spacing(QUOTA),
}


@dataclass(frozen=True)
class Run:
    early10: float  # throttled share of our attempts in the first 10 s
    early20: float
    whole: float
    late_rate: float  # our accepted calls/s in the last LATE_S seconds
    cuts: int  # cuts of the shared rate, all holders together


def run_once(
    model: str,
    holders: int,
    seconds: float,
    foreign_rate: float,
    seed: int,
    *,
    foreign_start: float = 0.0,
    grace_attempts: float = GRACE_ATTEMPTS,
    jitter_ms: float = 2.0,
) -> Run:
    with moto_state_table(TABLE) as ddb:
        ours, hs = beside_foreign(
            ddb,
            MODELS[model](),
            holders=holders,
            seconds=seconds,
            foreign=foreign_rate,
            start=foreign_start,
            seed=seed,
            jitter=jitter_ms / 1000,
            grace_attempts=grace_attempts,
        )

    def lost(since: float, until: float) -> float:  # the throttled share of our attempts in [since, until) s
        window = [ok for t, ok in ours if T0 + since <= t < T0 + until]
        return sum(not ok for ok in window) / max(1, len(window))

    late = [ok for t, ok in ours if t > T0 + seconds - LATE_S]
    cuts = sum(h.budget.stats.cuts for h in hs)
    start = foreign_start  # the first 10 and 20 s count from the foreign writer's start
    return Run(lost(start, start + 10), lost(start, start + 20), lost(0, seconds), sum(late) / LATE_S, cuts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 seeds × 60 s (about a minute)")
    parser.add_argument("--models", default="sliding,spacing", help="comma-separated: sliding,spacing")
    parser.add_argument("--holders", default="1,2,4,8", help="comma-separated concurrent holders")
    parser.add_argument("--seeds", type=int, default=20, help="runs per cell (default 20)")
    parser.add_argument("--seconds", type=float, default=120.0, help="simulated seconds per run (default 120)")
    parser.add_argument("--foreign", type=float, default=2.0, help="the foreign writer's calls/s (default 2)")
    parser.add_argument(
        "--foreign-start",
        type=float,
        default=0.0,
        help="the foreign writer starts after this many seconds (at the ceiling till then); the first-10/20-s "
        "columns count from its start (default 0)",
    )
    parser.add_argument(
        "--grace-attempts",
        type=float,
        default=GRACE_ATTEMPTS,
        help=f"the budget's grace at the ceiling (default the runtime's {GRACE_ATTEMPTS:g}; 0: every throttle at the "
        "ceiling cuts at once, as before it)",
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=2.0,
        help="our calls reach the quota 0 to this many ms late (default 2; about 3.6 gives strict spacing the 1 %% "
        "of throttles at 9.7/s that the local cloud measures)",
    )
    parser.add_argument(
        "--collapse", type=float, default=0.75, help="a run collapsed below this share of what is left (0.75)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "learning.md"))
    args = parser.parse_args(argv)
    seeds, seconds = (5, 60.0) if args.quick else (args.seeds, args.seconds)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if (
        unknown
        or seeds < 1
        or seconds <= LATE_S
        or not 0 <= args.foreign < QUOTA
        or not 0 <= args.foreign_start < seconds - LATE_S
        or not (math.isfinite(args.grace_attempts) and args.grace_attempts >= 0)
        or not (math.isfinite(args.jitter_ms) and 0 <= args.jitter_ms < 100)
    ):
        wrong = (
            f"need --seeds ≥ 1, --seconds > {LATE_S:g}, 0 ≤ --foreign < {QUOTA}, 0 ≤ --foreign-start < --seconds − "
            f"{LATE_S:g}, --grace-attempts ≥ 0 and 0 ≤ --jitter-ms < 100"
        )
        parser.error(f"unknown model(s) {unknown}" if unknown else wrong)
    left = QUOTA * 0.97 if args.foreign == 0 else QUOTA - args.foreign
    rows = []
    began = time.monotonic()
    for model in models:
        for holders in [int(h) for h in args.holders.split(",")]:
            runs = [
                run_once(
                    model,
                    holders,
                    seconds,
                    args.foreign,
                    seed,
                    foreign_start=args.foreign_start,
                    grace_attempts=args.grace_attempts,
                    jitter_ms=args.jitter_ms,
                )
                for seed in range(seeds)
            ]
            collapsed = sum(r.late_rate < args.collapse * left for r in runs)
            row = (
                f"| {model} | {holders} | {statistics.median(r.early10 for r in runs):.1%} | "
                f"{statistics.median(r.early20 for r in runs):.1%} | {statistics.median(r.whole for r in runs):.1%} | "
                f"{statistics.median(r.late_rate for r in runs):.2f} (lowest {min(r.late_rate for r in runs):.2f}) | "
                f"{collapsed} of {seeds} | {statistics.median(r.cuts for r in runs):g} |"
            )
            rows.append(row)
            print(f"[{time.monotonic() - began:6.0f} s] {row}", flush=True)
    header = (
        f"Shared-rate learning on simulated time: {seeds} seeds × {seconds:g} s per cell, foreign writer "
        f"{args.foreign:g} calls/s from {args.foreign_start:g} s (leaves {left:g}), request jitter "
        f"0-{args.jitter_ms:g} ms, grace at the ceiling {args.grace_attempts:g} attempts, "
        f"collapsed below {args.collapse:g} × that in the last "
        f"{LATE_S:g} s. `python -m bench.bench_learning {' '.join(argv if argv is not None else sys.argv[1:])}`, "
        f"{time.monotonic() - began:.0f} s.\n\n"
        "| model | holders | throttled, first 10 s | first 20 s | whole run | accepted calls/s, last 40 s "
        "| collapsed | cuts |\n"
        "|---|---:|---:|---:|---:|---|---:|---:|\n"
    )
    Path(args.out).write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
