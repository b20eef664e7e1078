"""Shared PutItems budget benchmark: N concurrent invocations under four quota models, three strategies, one run.

Figures, not a timed test. Each simulated invocation is a thread with an endless backlog that sends PutItems
*attempts* (about 50 ms round trip: 20 ms + jitter to reach the service, 30 ms back) through a pacer, the way
``putitems.instrument`` does: ``pacer.wait()`` before every attempt, ``pacer.throttled()`` (if the pacer has it)
after a throttled one, and botocore's standard retries (3 attempts, backoff ``random() × 2^i`` s). The service
is one of four in-process quota models, 10 calls/s each, counting accepted calls only (the service's real
counting is undocumented; these bracket it):

* ``sliding``: at most 10 accepted calls in any 1 s sliding window;
* ``bucket``: a token bucket, 10 tokens/s, burst 10;
* ``fixed``: at most 10 accepted calls per wall-clock second;
* ``spacing``: accepted calls at least 100 ms apart.

Strategies, compared in the same run:

* ``shared``: :class:`connector.budget.SharedBudget`, one per invocation (each with its own boto3 client, as
  separate Lambda containers would be), all on one state table: moto's DynamoDB, in-process;
* ``alone/N``: each invocation paces itself with ``putitems.Pacer`` at 9.7/N calls/s (the static split);
* ``alone``: each invocation paces itself at 9.7 calls/s (no coordination at all).

Plus a foreign writer that sends 2 calls/s (20 % of the quota) evenly, outside any budget.

Reported per cell (median over repeats, measured after a warm-up): accepted calls/s (× 10 = items/s), the
share of attempts throttled, and state-table requests per accepted PutItems call. Threads stand in for Lambda
containers, so the GIL and this shared 2-core machine add wake-up jitter that separate containers would not.

Run ``.venv/bin/python -m bench.bench_budget [--quick]``; ``--shards``, ``--models``, ``--strategies`` and
``--foreign on|off`` select cells (default: all).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.offline import offline

offline()

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from connector.budget import BudgetTimeout, SharedBudget  # noqa: E402
from connector.putitems import Pacer  # noqa: E402

QUOTA = 10.0
SAFE_RATE = 9.7
REQUEST_S, RESPONSE_S = 0.020, 0.030  # one-way times: about 50 ms per attempt
MAX_ATTEMPTS = 3  # botocore standard mode
FOREIGN_SHARE = 0.2
TABLE = "bench-state"


# --- quota models ---------------------------------------------------------------------------------------------


class Model:
    name = ""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def admit(self, t: float) -> bool:
        with self.lock:
            return self._admit(t)

    def _admit(self, t: float) -> bool:
        raise NotImplementedError


class Sliding(Model):
    name = "sliding"

    def __init__(self) -> None:
        super().__init__()
        self.accepted: deque[float] = deque()

    def _admit(self, t: float) -> bool:
        while self.accepted and self.accepted[0] <= t - 1.0:
            self.accepted.popleft()
        if len(self.accepted) >= QUOTA:
            return False
        self.accepted.append(t)
        return True


class Bucket(Model):
    name = "bucket"

    def __init__(self, burst: float = 10) -> None:
        super().__init__()
        self.burst = burst
        self.tokens = burst
        self.at: float | None = None

    def _admit(self, t: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (t - self.at) * QUOTA)
        self.at = t
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Fixed(Model):
    name = "fixed"

    def __init__(self) -> None:
        super().__init__()
        self.second = -1
        self.count = 0

    def _admit(self, t: float) -> bool:
        if int(t) != self.second:
            self.second, self.count = int(t), 0
        if self.count >= QUOTA:
            return False
        self.count += 1
        return True


class Spacing(Model):
    name = "spacing"

    def __init__(self) -> None:
        super().__init__()
        self.last = float("-inf")

    def _admit(self, t: float) -> bool:
        if t - self.last < 1 / QUOTA:
            return False
        self.last = t
        return True


MODELS: dict[str, Callable[[], Model]] = {m.name: m for m in (Sliding, Bucket, Fixed, Spacing)}


class Serialized:
    """A DynamoDB client whose calls run one at a time. moto's in-process DynamoDB applies a conditional update
    without a lock, so two threads can both pass the same condition; real DynamoDB serializes writes to an item."""

    lock = threading.Lock()

    def __init__(self, client: Any) -> None:
        self.client = client

    def update_item(self, **kwargs: Any) -> Any:
        with self.lock:
            return self.client.update_item(**kwargs)


# --- invocations ----------------------------------------------------------------------------------------------


class PacerLike(Protocol):
    def wait(self) -> float: ...


@dataclass
class Record:
    attempts: list[tuple[float, bool]] = field(default_factory=list)  # (arrival at the service, accepted)
    timeouts: int = 0


def attempt(model: Model, jitter_s: float, rng: random.Random) -> tuple[float, bool]:
    time.sleep(REQUEST_S + rng.random() * jitter_s)
    arrival = time.time()
    ok = model.admit(arrival)
    time.sleep(RESPONSE_S)
    return arrival, ok


def invocation(pacer: PacerLike, model: Model, stop: threading.Event, rec: Record, jitter_s: float) -> None:
    rng = random.Random()
    throttled = getattr(pacer, "throttled", None)
    while not stop.is_set():
        for i in range(MAX_ATTEMPTS):
            try:
                pacer.wait()
            except BudgetTimeout:
                rec.timeouts += 1
                break
            arrival, ok = attempt(model, jitter_s, rng)
            rec.attempts.append((arrival, ok))
            if ok:
                break
            if throttled is not None:
                throttled()
            if i < MAX_ATTEMPTS - 1 and stop.wait(rng.random() * 2**i):
                return


def foreign(model: Model, stop: threading.Event, rec: Record, jitter_s: float) -> None:
    rng = random.Random(7)
    period = 1 / (QUOTA * FOREIGN_SHARE)
    nxt = time.time() + rng.random() * period
    while not stop.is_set():
        delay = nxt - time.time()
        if delay > 0 and stop.wait(delay):
            return
        rec.attempts.append(attempt(model, jitter_s, rng))
        nxt += period


# --- one run ----------------------------------------------------------------------------------------------------


@dataclass
class Result:
    calls_s: float  # our accepted calls per second
    throttled: float  # share of our attempts throttled
    requests_per_call: float  # state-table requests per accepted call (shared only)
    foreign_calls_s: float = 0.0
    foreign_throttled: float = 0.0
    timeouts: int = 0


_run_id = 0


def run_once(
    strategy: str, n: int, model_name: str, *, seconds: float, warmup: float, foreign_writer: bool, jitter_s: float
) -> Result:
    global _run_id  # noqa: PLW0603 - a fresh budget item per run
    _run_id += 1
    model = MODELS[model_name]()
    group = f"arn:aws:personalize:us-east-1:123456789012:dataset-group/bench-{_run_id}"
    pacers: list[Any] = []
    for _ in range(n):
        if strategy == "shared":
            client = Serialized(boto3.client("dynamodb", region_name="us-east-1"))
            pacers.append(SharedBudget(client, TABLE, group, quota=QUOTA, max_wait_s=10))
        elif strategy == "alone/N":
            pacers.append(Pacer(SAFE_RATE / n))
        else:
            pacers.append(Pacer(SAFE_RATE))
    stop = threading.Event()
    recs = [Record() for _ in range(n)]
    threads = [
        threading.Thread(target=invocation, args=(p, model, stop, r, jitter_s), daemon=True)
        for p, r in zip(pacers, recs, strict=True)
    ]
    frec = Record()
    if foreign_writer:
        threads.append(threading.Thread(target=foreign, args=(model, stop, frec, jitter_s), daemon=True))
    t0 = time.time()
    for t in threads:
        t.start()
    time.sleep(warmup + seconds)
    stop.set()
    for t in threads:
        t.join()
    lo, hi = t0 + warmup, t0 + warmup + seconds
    ours = [a for r in recs for a in r.attempts if lo <= a[0] < hi]
    theirs = [a for a in frec.attempts if lo <= a[0] < hi]
    accepted_all = sum(ok for r in recs for _, ok in r.attempts)
    requests = sum(p.stats.requests for p in pacers if isinstance(p, SharedBudget))
    if os.environ.get("BENCH_DEBUG") and strategy == "shared":
        keys = (
            "attempts",
            "requests",
            "conflicts",
            "reservations",
            "wasted",
            "throttles",
            "cuts",
            "restores",
            "local",
            "timeouts",
        )
        print({k: sum(getattr(p.stats, k) for p in pacers) for k in keys}, file=sys.stderr)
    return Result(
        calls_s=sum(ok for _, ok in ours) / seconds,
        throttled=sum(not ok for _, ok in ours) / max(1, len(ours)),
        requests_per_call=requests / max(1, accepted_all),
        foreign_calls_s=sum(ok for _, ok in theirs) / seconds,
        foreign_throttled=sum(not ok for _, ok in theirs) / max(1, len(theirs)),
        timeouts=sum(r.timeouts for r in recs),
    )


def median_result(results: list[Result]) -> Result:
    def med(f: Callable[[Result], float]) -> float:
        return statistics.median(f(r) for r in results)

    return Result(
        calls_s=med(lambda r: r.calls_s),
        throttled=med(lambda r: r.throttled),
        requests_per_call=med(lambda r: r.requests_per_call),
        foreign_calls_s=med(lambda r: r.foreign_calls_s),
        foreign_throttled=med(lambda r: r.foreign_throttled),
        timeouts=max(r.timeouts for r in results),
    )


# --- the table ----------------------------------------------------------------------------------------------------

STRATEGIES = ("shared", "alone/N", "alone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat of 3 s per cell (about 8 minutes)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument(
        "--foreign-warmup", type=float, default=8.0, help="warm-up with the foreign writer (time to learn its share)"
    )
    parser.add_argument("--jitter-ms", type=float, default=2.0, help="request-side network jitter, uniform 0..J")
    parser.add_argument("--shards", default="1,2,4,8")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help=f"a subset of {','.join(STRATEGIES)} (default: all)"
    )
    parser.add_argument(
        "--foreign",
        choices=("both", "on", "off"),
        default="both",
        help="cells with the foreign writer (on), without (off), or both (default)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    seconds = args.seconds or (3.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else 2.0
    shards = [int(s) for s in args.shards.split(",")]
    models = args.models.split(",")
    strategies = [s for s in STRATEGIES if s in args.strategies.split(",")]
    sys.setswitchinterval(0.0005)  # threads stand in for processes: keep GIL hand-offs short

    cells: list[tuple[str, int, str, bool]] = []
    for model in models:
        for n in shards:
            if args.foreign != "on":
                cells.extend((s, n, model, False) for s in strategies)
            if args.foreign != "off":
                foreign_strategies = STRATEGIES if n == 4 else ("shared",)  # baselines under the foreign writer: N=4
                cells.extend((s, n, model, True) for s in foreign_strategies if s in strategies)
    total = repeats * sum(seconds + (args.foreign_warmup if fw else warmup) for *_, fw in cells)
    print(f"{len(cells)} cells × {repeats} repeat(s): about {total / 60:.0f} min", file=sys.stderr)

    results: dict[tuple[str, int, str, bool], list[Result]] = {c: [] for c in cells}
    with mock_aws():
        boto3.client("dynamodb", region_name="us-east-1").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        order = [c for _ in range(repeats) for c in cells]  # repeats interleaved: drifts in machine load spread out
        for i, (strategy, n, model, fw) in enumerate(order, 1):
            r = run_once(
                strategy,
                n,
                model,
                seconds=seconds,
                warmup=args.foreign_warmup if fw else warmup,
                foreign_writer=fw,
                jitter_s=args.jitter_ms / 1000,
            )
            results[(strategy, n, model, fw)].append(r)
            print(
                f"[{i}/{len(order)}] {model:8} N={n} {strategy:8}{' +foreign' if fw else ''}: "
                f"{r.calls_s:.2f} calls/s, {100 * r.throttled:.1f} % throttled",
                file=sys.stderr,
            )

    print(
        f"\nShared PutItems budget: quota {QUOTA:g} calls/s, ~50 ms attempts, jitter 0-{args.jitter_ms:g} ms, "
        f"median of {repeats} × {seconds:g} s (after {warmup:g} s warm-up)\n"
    )
    if args.foreign != "on":
        print("| model | N | strategy | calls/s | items/s | throttled | state req/call |")
        print("|---|---|---|---|---|---|---|")
    for model in models:
        for n in shards:
            for s in STRATEGIES:
                if (s, n, model, False) not in results:
                    continue
                r = median_result(results[(s, n, model, False)])
                rpc = f"{r.requests_per_call:.2f}" if s == "shared" else "-"
                timeouts = f" ({r.timeouts} timeouts)" if r.timeouts else ""
                print(
                    f"| {model} | {n} | {s} | {r.calls_s:.2f} | {10 * r.calls_s:.0f} | "
                    f"{100 * r.throttled:.1f} %{timeouts} | {rpc} |"
                )
    if args.foreign == "off":
        return 0
    print(f"\nWith a foreign writer at {FOREIGN_SHARE:.0%} of the quota (2 calls/s, outside the budget)\n")
    print(
        "| model | N | strategy | our calls/s | our throttled | foreign calls/s | foreign throttled | total calls/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model in models:
        for n in shards:
            for s in STRATEGIES:
                if (s, n, model, True) not in results:
                    continue
                r = median_result(results[(s, n, model, True)])
                total_s = r.calls_s + r.foreign_calls_s
                print(
                    f"| {model} | {n} | {s} | {r.calls_s:.2f} | {100 * r.throttled:.1f} % | "
                    f"{r.foreign_calls_s:.2f} | {100 * r.foreign_throttled:.1f} % | {total_s:.2f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
