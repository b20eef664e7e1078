"""Backfill beside a busy stream, on the local cloud: how the two share the PutItems quota.

The demo's first act (:class:`localcloud.demo.CatalogLoad`) with a catalog that predates the stream, loaded by the
code of ``python -m ops backfill`` at ``--share`` of the shared budget, while the stream updates a share of the
catalog (``catalog_update_share``). Measured from the emulator's call log over the act (from the backfill's start
to its end): PutItems items/s of everything together, of the backfill and of the stream, and the share of
attempts throttled. The baseline, in the same run: the same backfill with no stream traffic (it may take the whole
budget). The second act is kept small; the demo's convergence check must pass for a run to count.

Run ``.venv/bin/python -m bench.bench_backfill [--quick]``; results go to ``bench/results/backfill.md``.
Goal (issue 9): backfill and stream together ≥ 95 items/s at the quota.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from localcloud.demo import run_demo  # noqa: E402
from localcloud.workload import WorkloadSpec  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "backfill.md"


def one(catalog: int, update_share: float, share: float, console: Console) -> dict[str, Any]:
    emulators: list[Any] = []  # the running cloud's emulator (the cloud drops it when it stops; its state stays)
    spec = WorkloadSpec(items=200, catalog=catalog, catalog_update_share=update_share)
    wall_offset = time.time() - time.monotonic()
    result = run_demo(
        spec,
        console=console,
        live=False,
        on_start=lambda cloud: emulators.append(cloud.emulator),
        catalog_share=share,
        timeout=600.0,
    )
    load = result.catalog
    if not result.ok or load is None or load.started is None or load.finished is None:
        raise SystemExit(f"the demo did not converge or act 1 did not run: {result.check}")
    start, end = load.started + wall_offset, load.finished + wall_offset
    calls = [c for c in emulators[0].state.calls() if c["operation"] == "PutItems" and start <= c["ts"] <= end]
    accepted = sum(c["records"] for c in calls if c["outcome"] == "ok")
    throttled = sum(1 for c in calls if c["outcome"] == "throttled")
    seconds = end - start
    return {
        "catalog": catalog,
        "updates": int(catalog * update_share),
        "share": share,
        "seconds": seconds,
        "total": accepted / seconds,
        "backfill": load.put / seconds,
        "stream": max(0, accepted - load.put) / seconds,
        "throttled": throttled / len(calls) if calls else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1,000-item catalog (default 3,000)")
    parser.add_argument("--share", type=float, default=0.5, help="the backfill's --share (default 0.5)")
    args = parser.parse_args(argv)
    catalog = 1_000 if args.quick else 3_000
    console = Console(stderr=True)
    rows = []
    for label, update_share in (("backfill alone (baseline)", 0.0), ("backfill + busy stream", 1.0)):
        console.print(f"[bold]{label}[/]: catalog {catalog:,}, stream updates {update_share:.0%} of it")
        r = one(catalog, update_share, args.share, console)
        rows.append((label, r))
        console.print(
            f"  act 1 {r['seconds']:.1f} s: together {r['total']:.1f} items/s (backfill {r['backfill']:.1f}, "
            f"stream {r['stream']:.1f}), {r['throttled']:.1%} of attempts throttled"
        )
    lines = [
        f"Backfill beside the stream ({time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}; "
        f"`.venv/bin/python -m bench.bench_backfill{' --quick' if args.quick else ''}`; one run each, 2-core "
        f"machine; backfill --share {args.share:g}). Items/s over act 1 (the backfill's start to its end).",
        "",
        "| run | catalog | stream updates | act 1 s | together items/s | backfill items/s | stream items/s | "
        "throttled | ≥ 95 together |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['catalog']:,} | {r['updates']:,} | {r['seconds']:.1f} | {r['total']:.1f} | "
            f"{r['backfill']:.1f} | {r['stream']:.1f} | {r['throttled']:.1%} | {'yes' if r['total'] >= 95 else 'no'} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    console.print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
