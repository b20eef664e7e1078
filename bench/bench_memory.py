"""Memory sizing: the peak memory and CPU of one batch through the whole pipeline, to size the function.

Lambda gives CPU in proportion to memory (1,769 MB = one vCPU), and concurrent invocations that wait for
PutItems slots are billed for their memory while they wait, so the function should be as small as its largest
batch allows. Each measurement runs in a fresh interpreter (``ru_maxrss`` is a high-water mark): the handler
module is imported, then one batch of ``N`` catalog records (``bench_runtime.catalog_image``, unique keys) goes
through ``pipeline.run`` against an in-process PutItems that accepts everything. The baseline is the same
interpreter after the import, before the batch: what the runtime costs before any record.

Run ``.venv/bin/python -m bench.bench_memory``; results go to ``bench/results/memory.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "memory.md"
LAMBDA_MB_PER_VCPU = 1769

CHILD = r"""
import json, os, random, resource, sys, time
sys.path[:0] = [{lambda_src!r}, {root!r}]
os.environ.update(POWERTOOLS_TRACE_DISABLED="true", POWERTOOLS_METRICS_NAMESPACE="bench",
                  AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
from connector import handler, pipeline
from connector.config import load_settings
from connector.deadline import Deadline
from tests.fakes import FakePersonalize
from bench.bench_runtime import catalog_image
from tests.factories import dynamodb_record, event
rng = random.Random(7)
records = [dynamodb_record("INSERT", {{"sku": f"sku-{{i}}"}}, catalog_image(i, rng)) for i in range({n})]
body = json.dumps(event(*records))
del records
settings = load_settings({{"DATASET_ARN": "arn:aws:personalize:us-east-1:123456789012:dataset/g/ITEMS",
                          "MAX_CALLS_PER_SECOND": "100000"}})
rt = handler.build_runtime(settings, personalize=FakePersonalize().client, sqs=object())
base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cpu0 = time.process_time()
result = pipeline.run(json.loads(body), settings=rt.settings, sink=rt.sink, sqs=rt.sqs, deadline=Deadline.unbounded())
cpu = time.process_time() - cpu0
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert result.counts[next(iter(result.counts))] >= 0
print(json.dumps({{"base_mb": base_kb / 1024, "peak_mb": peak_kb / 1024, "cpu_s": cpu, "event_mb": len(body) / 2**20}}))
"""


def measure(n: int) -> dict[str, float]:
    code = CHILD.format(lambda_src=str(ROOT / "lambda_src"), root=str(ROOT), n=n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run per size, sizes up to 1,000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sizes, repeats = ((100, 1_000), 1) if args.quick else ((100, 1_000, 10_000), args.repeats)
    rows = []
    for n in sizes:
        runs = [measure(n) for _ in range(repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((n, med))
        print(
            f"{n:>6,} records: event {med['event_mb']:.1f} MB, baseline {med['base_mb']:.0f} MB, "
            f"peak {med['peak_mb']:.0f} MB (+{med['peak_mb'] - med['base_mb']:.0f}), CPU {med['cpu_s']:.2f} s "
            f"at one core",
            flush=True,
        )
    lines = [
        f"Memory sizing ({time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}; medians of {repeats}; "
        "`.venv/bin/python -m bench.bench_memory`). CPU at a Lambda memory size = CPU at one core × "
        f"{LAMBDA_MB_PER_VCPU} / memory.",
        "",
        "| records | event JSON MB | baseline MB (after import) | peak MB | CPU s at 1 core | CPU s at 512 MB | "
        "CPU s at 256 MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, m in rows:
        lines.append(
            f"| {n:,} | {m['event_mb']:.1f} | {m['base_mb']:.0f} | {m['peak_mb']:.0f} | {m['cpu_s']:.2f} | "
            f"{m['cpu_s'] * LAMBDA_MB_PER_VCPU / 512:.1f} | {m['cpu_s'] * LAMBDA_MB_PER_VCPU / 256:.1f} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
