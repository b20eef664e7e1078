"""Bulk conversion benchmark: records/s per core of the asset's converter (``connector.bulk``) on realistic
10-attribute exported items, against a naive baseline measured in the same run (gzip + ``json.loads`` + boto3's
``TypeDeserializer`` + the ``csv`` module, no mapping rules beyond the columns). One process, one core; medians
over several runs. Results are appended to ``bench/results/bulk.md``.

Run: ``.venv/bin/python -m bench.bench_bulk [--quick]``. Goal: at least 50,000 records/s per core.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "lambda_src"), str(ROOT)]
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

from boto3.dynamodb.types import TypeDeserializer  # noqa: E402

from connector import bulk  # noqa: E402
from connector.config import parse_mapping  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bulk.md"
SCHEMA = {
    "type": "record",
    "name": "Items",
    "fields": [
        {"name": "ITEM_ID", "type": "string"},
        {"name": "TITLE", "type": "string"},
        {"name": "GENRES", "type": ["null", "string"], "categorical": True},
        {"name": "BRAND", "type": ["null", "string"], "categorical": True},
        {"name": "PRICE", "type": ["null", "float"]},
        {"name": "NUMBER_OF_RATINGS", "type": ["null", "int"]},
        {"name": "RATING", "type": ["null", "double"]},
        {"name": "IN_STOCK", "type": ["null", "boolean"]},
        {"name": "CREATION_TIMESTAMP", "type": "long"},
        {"name": "DESCRIPTION", "type": ["null", "string"], "textual": True},
    ],
}


def export_file(n: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    genres = ["action", "comedy", "drama", "horror", "kids", "docs", "sci-fi"]
    lines = []
    for i in range(n):
        item = {
            "sku": {"S": f"sku-{i:08d}"},
            "title": {"S": f"Product {i} {rng.choice(genres)} edition"},
            "genres": {"SS": rng.sample(genres, rng.randint(1, 3))},
            "brand": {"S": rng.choice(["acme", "globex", "initech", "umbrella"])},
            "price": {"N": f"{rng.uniform(1, 500):.2f}"},
            "number_of_ratings": {"N": str(rng.randint(0, 100_000))},
            "rating": {"N": f"{rng.uniform(1, 5):.3f}"},
            "in_stock": {"BOOL": rng.random() < 0.8},
            "creation_timestamp": {"N": str(1_600_000_000_000 + rng.randint(0, 10**11))},
            "description": {"S": " ".join(rng.choice(genres) for _ in range(12))},
        }
        lines.append(json.dumps({"Item": item}).encode())
    return gzip.compress(b"\n".join(lines) + b"\n")


def run_converter(data: bytes) -> int:
    conv = bulk.Converter(parse_mapping({"schema": SCHEMA}), ["sku"])
    stats = bulk.convert_stream(conv, io.BytesIO(data), "part.json.gz", io.BytesIO(), io.BytesIO())
    return stats.rows


def run_naive(data: bytes) -> int:
    deser = TypeDeserializer()
    out = io.StringIO()
    writer = csv.writer(out)
    header = [f["name"] for f in SCHEMA["fields"]]  # type: ignore[index]
    writer.writerow(header)
    rows = 0
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
        for line in fh:
            image = {k: deser.deserialize(v) for k, v in json.loads(line)["Item"].items()}
            row = []
            for name in header:
                value = image.get("sku" if name == "ITEM_ID" else name.lower())
                if isinstance(value, set):
                    value = "|".join(sorted(value))
                elif isinstance(value, bool):
                    value = "true" if value else "false"
                elif name == "CREATION_TIMESTAMP":
                    value = int(str(value)) // 1000
                row.append("" if value is None else str(value))
            writer.writerow(row)
            rows += 1
    return rows


def measure(fn: Any, data: bytes, n: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.process_time()  # CPU time of this process: per core, unaffected by other load's waiting
        assert fn(data) == n
        rates.append(n / (time.process_time() - start))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="20,000 records, 3 runs (default 100,000, 5 runs)")
    args = parser.parse_args()
    n, repeats = (20_000, 3) if args.quick else (100_000, 5)
    data = export_file(n)
    naive = measure(run_naive, data, n, repeats)
    ours = measure(run_converter, data, n, repeats)
    ratio = ours / naive
    line = (
        f"| {time.strftime('%Y-%m-%d %H:%M')} | {n:,} | {repeats} | {ours:,.0f} | {naive:,.0f} | {ratio:.2f}x | "
        f"{'yes' if ours >= 50_000 else 'no'} |"
    )
    print(f"converter: {ours:,.0f} records/s per core (CPU time), naive: {naive:,.0f}, ratio {ratio:.2f}x")
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Bulk conversion (bench/bench_bulk.py)\n\n"
            "Records/s per core (process CPU time, median), 10-attribute items, gzip JSON lines → Items CSV.\n\n"
            "| when | records | runs | converter rec/s | naive rec/s | ratio | ≥ 50,000 |\n"
            "|---|---|---|---|---|---|---|\n"
        )
    with RESULTS.open("a") as fh:
        fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
