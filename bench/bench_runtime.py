"""Runtime benchmark: the connector against a naive baseline, measured in the same run.

The baseline is Powertools' per-record pattern: each record is deserialized through the data classes
(``DynamoDBStreamEvent`` → ``new_image``), dumped with ``json.dumps`` and sent in its own PutItems call.

Figures (medians over repeats; ratios against the baseline of the same run):

* items per PutItems call on unique keys;
* calls ÷ the minimum on a Zipf hot-key workload (minimum = ⌈distinct items per batch / 10⌉);
* transform throughput, DynamoDB image → item JSON, in records/s;
* the handler module's import time over bare boto3 + Powertools.

No network: PutItems goes to an in-process fake that accepts everything (tests/fakes.py). Run with
``make bench`` or ``.venv/bin/python -m bench.bench_runtime``; results go to ``bench/results/runtime.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "lambda_src"), str(ROOT)]
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent  # noqa: E402

from connector import item, pipeline  # noqa: E402
from connector.config import load_settings  # noqa: E402
from connector.deadline import Deadline  # noqa: E402
from connector.putitems import Pacer, PutItemsSink  # noqa: E402
from tests.factories import DATASET_ARN, dynamodb_record, event  # noqa: E402
from tests.fakes import FakePersonalize, FakeSQS  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def catalog_image(n: int, rng: random.Random) -> dict[str, Any]:
    """A 10-attribute catalog item, the shape DESIGN.md's transform figures use."""
    return {
        "sku": f"sku-{n}",
        "title": f"Product {n} " + "x" * rng.randint(5, 40),
        "price": Decimal(str(round(rng.uniform(1, 500), 2))),
        "number_of_ratings": rng.randint(0, 10_000),
        "in_stock": rng.random() > 0.2,
        "genres": {rng.choice(["a", "b", "c", "d", "e"]) for _ in range(3)},
        "brand": rng.choice(["acme", "globex", "initech"]),
        "created_at": 1_760_000_000 + n,
        "rating": Decimal(str(round(rng.uniform(0, 5), 1))),
        "dims": {"width": rng.randint(1, 100), "unit": "cm"},
    }


def records_for(keys: list[int], rng: random.Random) -> list[dict[str, Any]]:
    return [dynamodb_record("MODIFY", {"sku": f"sku-{k}"}, catalog_image(k, rng)) for k in keys]


def zipf_keys(count: int, universe: int, rng: random.Random, s: float = 1.2) -> list[int]:
    weights = [1 / (k**s) for k in range(1, universe + 1)]
    return rng.choices(range(universe), weights=weights, k=count)


# --- the two ways to send ---------------------------------------------------------------------------------


def connector_calls(batches: list[list[dict[str, Any]]]) -> tuple[int, int]:
    fake = FakePersonalize()
    settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q"})
    sink = PutItemsSink(fake.client, DATASET_ARN, worst_call_ms=0, pacer=Pacer(1e9))
    for batch in batches:
        pipeline.run(event(*batch), settings=settings, sink=sink, sqs=FakeSQS(), deadline=Deadline.unbounded())
    return len(fake.calls), sum(len(c) for c in fake.calls)


def baseline_calls(batches: list[list[dict[str, Any]]]) -> tuple[int, int]:
    fake = FakePersonalize()
    for batch in batches:
        for record in DynamoDBStreamEvent(event(*batch)).records:
            assert record.dynamodb is not None
            image = record.dynamodb.new_image
            item_id = str(image.pop("sku"))
            fake.client.put_items(
                datasetArn=DATASET_ARN, items=[{"itemId": item_id, "properties": json.dumps(image, default=_jsonable)}]
            )
    return len(fake.calls), sum(len(c) for c in fake.calls)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return "|".join(sorted(str(v) for v in value))
    raise TypeError(type(value).__name__)


def minimum_calls(batches: list[list[dict[str, Any]]]) -> int:
    return sum(math.ceil(len({r["dynamodb"]["Keys"]["sku"]["S"] for r in b}) / 10) for b in batches)


# --- transform throughput ---------------------------------------------------------------------------------


def transform_connector(records: list[dict[str, Any]]) -> None:

    skip = frozenset({"sku"})
    for r in records:
        item.serialize(item.schemaless(r["dynamodb"]["NewImage"], skip, dynamodb_json=True))


def transform_baseline(records: list[dict[str, Any]]) -> None:
    for record in DynamoDBStreamEvent({"Records": records}).records:
        assert record.dynamodb is not None
        image = record.dynamodb.new_image
        image.pop("sku")
        json.dumps(image, default=_jsonable)


def rate(fn: Any, records: list[dict[str, Any]], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(records)
        times.append(time.perf_counter() - start)
    return len(records) / statistics.median(times)


# --- import time ------------------------------------------------------------------------------------------

IMPORT_PROBE = """
import time
t0 = time.perf_counter()
import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
Logger(); Metrics(namespace="x"); Tracer()
t1 = time.perf_counter()
import connector.handler
t2 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000)
"""


def import_ms(repeats: int) -> tuple[float, float]:
    """Median ms for bare boto3 + Powertools, and what importing the handler adds on top, in fresh interpreters."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lambda_src"), "POWERTOOLS_TRACE_DISABLED": "true"}
    base, extra = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=env, check=True, capture_output=True, text=True)
        b, e = (float(x) for x in out.stdout.split())
        base.append(b)
        extra.append(e)
    return statistics.median(base), statistics.median(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (for CI smoke runs)")
    parser.add_argument("--no-orjson", action="store_true", help="serialize with the standard library's json")
    args = parser.parse_args(argv)
    if args.no_orjson:
        item._orjson = None  # type: ignore[assignment]
    rng = random.Random(7)
    n_batches, batch_size, repeats = (5, 200, 3) if args.quick else (20, 500, 7)

    print(f"workloads: {n_batches} batches × {batch_size} records", flush=True)
    unique = [records_for(list(range(b * batch_size, (b + 1) * batch_size)), rng) for b in range(n_batches)]
    hot = [records_for(zipf_keys(batch_size, 5_000, rng), rng) for _ in range(n_batches)]

    print("items per call on unique keys …", flush=True)
    c_calls, c_items = connector_calls(unique)
    b_calls, b_items = baseline_calls(unique)
    print("calls ÷ minimum on Zipf hot keys …", flush=True)
    hot_min = minimum_calls(hot)
    start = time.perf_counter()
    hc_calls, _ = connector_calls(hot)
    hot_conn_rate = sum(map(len, hot)) / (time.perf_counter() - start)
    start = time.perf_counter()
    hb_calls, _ = baseline_calls(hot)
    hot_base_rate = sum(map(len, hot)) / (time.perf_counter() - start)

    print("transform throughput …", flush=True)
    sample = [r for batch in unique for r in batch][:5_000]
    t_conn = rate(transform_connector, sample, repeats)
    t_base = rate(transform_baseline, sample, repeats)

    print("handler import time …", flush=True)
    imp_base, imp_extra = import_ms(max(repeats, 9))

    rows = [
        (
            "items per PutItems call, unique keys",
            f"{c_items / c_calls:.2f}",
            f"{b_items / b_calls:.2f}",
            f"{(c_items / c_calls) / (b_items / b_calls):.1f}×",
            "≥ 9.5",
        ),
        (
            "calls ÷ minimum, Zipf hot keys",
            f"{hc_calls / hot_min:.3f}",
            f"{hb_calls / hot_min:.3f}",
            f"{hb_calls / hc_calls:.1f}× fewer calls",
            "≤ 1.05",
        ),
        (
            "whole batch CPU, records/s, Zipf hot keys (PutItems faked)",
            f"{hot_conn_rate:,.0f}",
            f"{hot_base_rate:,.0f}",
            f"{hot_conn_rate / hot_base_rate:.1f}×",
            "",
        ),
        (
            "transform, records/s (10-attribute image → JSON)",
            f"{t_conn:,.0f}",
            f"{t_base:,.0f}",
            f"{t_conn / t_base:.2f}×",
            "≥ 2× baseline",
        ),
        (
            "cold import ms: the handler on top of boto3 + Powertools (baseline column)",
            f"+{imp_extra:.1f}",
            f"{imp_base:.0f}",
            f"+{100 * imp_extra / imp_base:.0f} %",
            "≤ +30 ms",
        ),
    ]
    table = ["| figure | connector | baseline (per-record Powertools) | ratio | goal |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(table)
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = (
        f"Runtime benchmark ({'quick' if args.quick else 'full'}: {n_batches}×{batch_size} records, "
        f"{repeats} repeats, Python {sys.version.split()[0]}, {'json' if item._orjson is None else 'orjson'})\n\n"
    )
    (RESULTS / "runtime.md").write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
