"""End to end under chaos: a short version of ``python -m localcloud chaos``.

One run per module (about 1,000 changes, ~1 % of them bad records) on the synthesized stack, with every fault
kind of the full scenario: the emulator throttles ~20 % of calls, answers ~5 % with 5xx and delays some past
the function's (shortened) timeout; the runner kills handler processes mid-batch and freezes one, which only
the function timeout ends. Then:

* the faults happened: at least one kill and one real timeout (from the runner's stats and ledger), throttles,
  5xx and slow responses (from the emulator's), and no timeout was the handler's own overrun;
* convergence: the emulator's items equal the workload's independent model;
* the DLQ holds exactly the bad records, each with its reason;
* no record lost: the runner's ledger, the handler's ``Batch done`` lines (matched by request id), the EMF
  metrics and the checkpoints agree, and nothing went on-failure;
* the checks can fail: fed the same run with one thing wrong, they say so.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from localcloud.chaos import ChaosConfig, ChaosResult, chaos_checks, figures, report, run_chaos
from localcloud.demo import check, dlq_key, synthesize

pytestmark = pytest.mark.e2e

CONFIG = ChaosConfig(
    changes=1_000,
    seed=11,
    write_seconds=6,
    rounds=12,
    timeout=120,  # a frozen sandbox stalls its shard for a whole function timeout
    slow_rate=0.06,
    slow_ms=19_000,
    kill_worker_probability=0.05,
    kill_window_s=1.0,
    hang_worker_probability=0.0,  # one forced freeze: a timeout costs the shard a whole function timeout
    force_kills=1,
    force_hangs=1,
    batch_size=60,
    batching_window_s=0.2,
    function_timeout_s=18.0,  # the worst PutItems call (2 attempts, 1.5 s budget waits, retry-after) is 14 s
    put_items_timeout_s=0.5,
    put_items_max_attempts=2,
    deadline_margin_ms=300,
)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("cdk") / "cdk.out")


@pytest.fixture(scope="module")
def chaos(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChaosResult, float, str]]:
    output = io.StringIO()
    console = Console(file=output, width=140)
    began = time.monotonic()
    result = run_chaos(CONFIG, template=template, console=console, live=False, log_dir=tmp_path_factory.mktemp("logs"))
    seconds = time.monotonic() - began
    report(result, console)
    yield result, seconds, output.getvalue()


def test_every_fault_kind_happened(chaos: tuple[ChaosResult, float, str]) -> None:
    result, seconds, _ = chaos
    stats, ledger, emulator = result.demo.stats, result.demo.ledger, result.demo.emulator_stats
    # The runner killed at least one handler mid-batch, and at least one invocation really ran into the function
    # timeout (a frozen sandbox) and was killed by the runner then.
    assert stats.kills >= 1
    assert any(inv.outcome == "killed" and inv.error and "fault hook" in inv.error["errorMessage"] for inv in ledger)
    assert stats.timeouts >= 1 and stats.hangs >= 1
    timed_out = [inv for inv in ledger if inv.outcome == "timeout"]
    assert timed_out and all(inv.fault == "hang" for inv in timed_out)  # never the handler's own overrun
    for inv in timed_out:
        assert inv.error is not None and inv.error["errorType"] == "Sandbox.Timedout"
        assert inv.duration_ms >= CONFIG.function_timeout_s * 1000 * 0.95
    # The emulator throttled, failed and delayed calls (and the slow ones were cut by the client).
    assert emulator["throttled_injected"] > 0 and emulator["server_errors"] > 0
    assert emulator["slow_responses"] > 0
    assert CONFIG.slow_ms / 1000 > CONFIG.function_timeout_s > CONFIG.put_items_timeout_s
    # Partial batches and redeliveries happened, and the run stayed bounded. Not short: with reserved concurrency 1
    # an invoke that finds the slot taken is throttled and its shard backs off (1 s doubling to 30 s), so a frozen
    # sandbox holding the slot for the 8 s timeout leaves the other source waiting out a long backoff, and the
    # handler gets MemorySize/1769 of a core, as on Lambda (measured: 94 s on the shared 2-core machine).
    assert stats.partial_failures > 0 and stats.records_delivered > sum(map(len, result.demo.source_records.values()))
    assert seconds < 150


def test_converges_with_nothing_lost(chaos: tuple[ChaosResult, float, str]) -> None:
    result, _, output = chaos
    assert result.problems == [], output
    assert result.ok and result.demo.converged
    fig = result.figures
    assert fig.items_landed == fig.items_expected > 400
    assert fig.bad_records == 10 and fig.changes >= 900  # ~1 % poison, known exactly
    assert fig.on_failure == 0 and fig.timeouts_unexplained == 0
    # Every delivery is an outcome of an answered invocation or part of a batch lost to a kill or a timeout.
    assert sum(fig.outcomes.values()) + fig.lost_to_function_errors == fig.deliveries
    assert fig.deliveries == fig.changes + fig.redeliveries
    assert "CONVERGED UNDER CHAOS" in output


def test_dlq_holds_exactly_the_bad_records_with_their_reasons(chaos: tuple[ChaosResult, float, str]) -> None:
    result, _, _ = chaos
    bad = {b.key(): b for b in result.demo.workload.bad}
    seen = Counter(dlq_key(m) for m in result.demo.dlq)
    assert set(seen) == set(bad)
    for message in result.demo.dlq:
        assert message["reason"].startswith(bad[dlq_key(message)].reason_prefix)
    deliveries = Counter(s for inv in result.demo.ledger for s in inv.sequence_numbers)
    for message in result.demo.dlq:
        assert seen[dlq_key(message)] <= deliveries[message["sequenceNumber"]]


def test_the_checks_catch_loss_and_divergence(chaos: tuple[ChaosResult, float, str]) -> None:
    """The same run with one thing wrong at a time: the checks must say so."""
    result, _, _ = chaos
    demo = result.demo

    def problems(actual: object = None, **changes: object) -> list[str]:
        broken = dataclasses.replace(demo, **changes)  # type: ignore[arg-type]
        args = {
            "actual_items": actual if actual is not None else demo.workload.expected_items(),
            "dlq": broken.dlq,
            "on_failure": broken.on_failure,
            "ledger": broken.ledger,
            "stats": broken.stats,
            "totals": broken.totals,
            "source_records": broken.source_records,
        }
        found = check(demo.workload, **args).problems  # type: ignore[arg-type]
        return found + chaos_checks(broken, figures(broken), CONFIG)

    assert problems() == []
    # an item lost, or landed stale
    landed = copy.deepcopy(demo.workload.expected_items())
    lost_id = next(iter(landed))
    del landed[lost_id]
    assert any("missing" in p for p in problems(landed))
    landed = copy.deepcopy(demo.workload.expected_items())
    landed[lost_id]["creationTimestamp"] += 1
    assert any("differ" in p for p in problems(landed))
    # a bad record missing from the DLQ (every copy of it)
    first = dlq_key(demo.dlq[0])
    assert any("not in the DLQ" in p for p in problems(dlq=[m for m in demo.dlq if dlq_key(m) != first]))
    # a record dead-lettered that is not bad
    stray = {**demo.dlq[0], "source": "aws:dynamodb", "itemId": "sku-00001"}
    assert any("unexpected DLQ entry" in p for p in problems(dlq=[*demo.dlq, stray]))
    # an answered invocation whose records the handler did not all account for
    answered = next(inv for inv in demo.ledger if not inv.failed)
    totals = copy.deepcopy(demo.totals)
    totals.by_request[answered.request_id][0]["records_put"] -= 1
    totals.outcomes["put"] -= 1
    found = problems(totals=totals)
    assert any(answered.request_id in p for p in found)
    # a record that was never checkpointed (lost between deliveries)
    lost = {k: [*v, "999999999999"] for k, v in demo.source_records.items()}
    assert any("never checkpointed" in p for p in problems(source_records=lost))
    # a timeout that no frozen sandbox explains
    hung = next(inv for inv in demo.ledger if inv.fault == "hang")
    ledger = [dataclasses.replace(inv, fault=None) if inv is hung else inv for inv in demo.ledger]
    assert any("overran its own deadline" in p for p in problems(ledger=ledger))
    # the faults did not happen
    calm = dataclasses.replace(demo.stats, kills=0)
    assert any("no kills happened" in p for p in problems(stats=calm))
