"""``python -m localcloud chaos``: the catalog workload under injected faults, ending with a convergence proof.

The synthesized stack runs on the local cloud (:class:`localcloud.demo.LocalCloud`) while about 20,000 changes
are written (:class:`localcloud.workload.Workload`: hot and cold DynamoDB items with Zipf updates, deletes and
re-creations; Kinesis JSON documents and DynamoDB CDC records, out of order and duplicated) with about 1 % bad
records, each known exactly. Meanwhile every fault the connector must survive is injected:

* **the emulator** (Personalize Events): ~20 % of calls throttled, ~5 % answered with a 500/503, and a few
  responses delayed by ``slow_ms``, longer than the function's timeout. The function's PutItems client has a
  read timeout (``PUT_ITEMS_TIMEOUT_S``) shorter than that, so a slow call is cut by the client and retried by
  botocore (the items of a cut call have landed already: the emulator writes before it delays);
* **the runner** (the event source mapping): worker processes killed mid-batch (``kill_worker_probability``,
  at a random moment of the first ``kill_window_s`` seconds: a crashed sandbox) and workers frozen mid-batch
  (``hang_worker_probability``: a stuck sandbox), which only the function's **timeout** ends. The function
  runs with a short ``Timeout`` (``function_timeout_s``, a runner override) so that a timeout costs seconds,
  not the template's five minutes.

Why a frozen sandbox and not a slow response produces the timeouts: before each PutItems call the handler
checks that the call's worst case -- every attempt running into the connect and read timeouts, plus pacing
and backoff -- still ends ``DEADLINE_MARGIN_MS`` before its deadline (``connector.handler.put_items_worst_call_ms``).
A slow response is therefore always cut by the client's read timeout first, and the handler returns in time
with the rest reported as retry. Only something outside its own code can make it overrun; the scenario checks
that every runner timeout is one of the frozen ones (an overrun of its own would be a runtime bug).

The checks (exit code 1 when any fails), on top of :func:`localcloud.demo.check`:

* the emulator's items equal what the sources' final state implies (the workload's independent model);
* the DLQ holds exactly the bad records, each with its reason (a bad record may be there more than once only
  when it was delivered more than once, e.g. dead-lettered by an invocation that was killed afterwards);
* no record lost: every record written was checkpointed once; every answered invocation's ``Batch done`` line
  (matched by request id) accounts for each record of its batch as put, poison, retry or skipped, with as many
  retries as it reported to Lambda; every delivery is one of those or part of a batch lost to a kill or a
  timeout, and ``deliveries = records written + redeliveries``; the EMF metrics agree; nothing went to the
  on-failure destination;
* the faults really happened (throttles, 5xx, slow responses, kills, timeouts), and no timeout was the
  handler's own doing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from localcloud.demo import (
    ROOT,
    DemoResult,
    SetupError,
    dlq_key,
    run_command,
    run_demo,
    synthesize,
)
from localcloud.workload import WorkloadSpec

from connector.config import load_settings  # isort: skip - on sys.path through localcloud/__init__.py
from connector.handler import put_items_worst_call_ms  # isort: skip

__all__ = ["ChaosConfig", "ChaosResult", "Figures", "chaos_checks", "figures", "main", "run_chaos"]


@dataclass(frozen=True)
class ChaosConfig:
    """The scenario's knobs. The defaults are the full run; the e2e test uses a smaller one."""

    changes: int = 20_000
    seed: int = 7
    poison_share: float = 0.01
    write_seconds: float = 60.0  # spread the writes like a live stream
    rounds: int = 40
    # CDC versions swapped within a PutRecords call, and older versions delivered a round later: batch
    # boundaries (kills, bisects, partial redeliveries) fall anywhere, so only the version guard keeps order.
    cdc_out_of_order_share: float = 0.4
    cdc_late_share: float = 0.2
    # Chaos runs the mapping with onRemove "ignore" (the demo soft-deletes): REMOVEs must never hide upserts.
    on_remove: Literal["soft", "ignore"] = "ignore"
    timeout: float = 900.0  # seconds to converge after the last write
    # The emulator (10 calls/s, ~50 ms like the demo).
    tps: float = 10
    latency_ms: float = 50
    throttle_rate: float = 0.20
    error_rate: float = 0.05
    slow_rate: float = 0.02
    slow_ms: float = 22_000  # past the function timeout, and far past the client's read timeout
    # The runner.
    kill_worker_probability: float = 0.03
    kill_window_s: float = 3.0
    hang_worker_probability: float = 0.005
    hang_window_s: float = 3.0
    force_kills: int = 1  # the first invocations: at least this many kills and hangs, whatever the dice say
    force_hangs: int = 1
    batch_size: int = 100  # a short timeout needs small batches: about 10 calls each at 5 calls/s
    batching_window_s: float = 0.5
    # The function.
    function_timeout_s: float = 20.0
    put_items_timeout_s: float = 0.8
    put_items_max_attempts: int = 2
    deadline_margin_ms: int = 400
    max_calls_per_second: float | None = None  # None: the template's MAX_CALLS_PER_SECOND
    budget_max_wait_s: float = 1.5  # the longest wait for a shared-budget slot (a short timeout needs a short wait)

    def env_overrides(self) -> dict[str, str]:
        env = {
            "PUT_ITEMS_TIMEOUT_S": f"{self.put_items_timeout_s:g}",
            "PUT_ITEMS_MAX_ATTEMPTS": str(self.put_items_max_attempts),
            "DEADLINE_MARGIN_MS": str(self.deadline_margin_ms),
            "BUDGET_MAX_WAIT_S": f"{self.budget_max_wait_s:g}",
        }
        if self.max_calls_per_second is not None:
            env["MAX_CALLS_PER_SECOND"] = f"{self.max_calls_per_second:g}"
        return env

    def worst_call_s(self, calls_per_second: float) -> float:
        """The handler's own reserve for one PutItems call, in s, from the runtime itself: with the state table
        (the stack's default, and the larger reserve: each attempt may wait for a shared-budget slot)."""
        settings = load_settings(
            {
                "DATASET_ARN": "arn:aws:personalize:us-east-1:111122223333:dataset/chaos/ITEMS",
                "STATE_TABLE": "state",
                "MAX_CALLS_PER_SECOND": f"{calls_per_second:g}",
                **self.env_overrides(),
            }
        )
        return put_items_worst_call_ms(settings) / 1000

    def validate(self, calls_per_second: float) -> list[str]:
        """Problems with the timing model, in words (empty when the knobs make sense)."""
        problems = []
        window = self.function_timeout_s - self.worst_call_s(calls_per_second) - self.deadline_margin_ms / 1000
        if window <= 0.5:
            problems.append(
                f"the handler could send for only {window:.1f} s of a {self.function_timeout_s:g} s invocation "
                f"(worst call {self.worst_call_s(calls_per_second):.1f} s + margin): raise function_timeout_s"
            )
        if self.slow_ms / 1000 <= self.function_timeout_s:
            problems.append("slow_ms must exceed the function timeout")
        if self.slow_ms / 1000 <= self.put_items_timeout_s:
            problems.append("slow_ms must exceed PUT_ITEMS_TIMEOUT_S, so that the client cuts slow calls")
        return problems

    def cloud_options(self, log_dir: Path | None = None) -> dict[str, Any]:
        options: dict[str, Any] = {
            "tps": self.tps,
            "latency_ms": self.latency_ms,
            "throttle_rate": self.throttle_rate,
            "error_rate": self.error_rate,
            "slow_rate": self.slow_rate,
            "slow_ms": self.slow_ms,
            "batching_window_s": self.batching_window_s,
            "env_overrides": self.env_overrides(),
            "function_overrides": {"timeout_s": self.function_timeout_s},
            "mapping_overrides": {"batch_size": self.batch_size},
            "runner_options": {
                "kill_worker_probability": self.kill_worker_probability,
                "kill_window_s": self.kill_window_s,
                "hang_worker_probability": self.hang_worker_probability,
                "hang_window_s": self.hang_window_s,
            },
            "seed": self.seed,
        }
        if log_dir is not None:
            options["log_dir"] = log_dir
        return options

    def workload(self) -> WorkloadSpec:
        return WorkloadSpec.for_changes(
            self.changes,
            poison_share=self.poison_share,
            seed=self.seed,
            write_seconds=self.write_seconds,
            rounds=self.rounds,
            cdc_out_of_order_share=self.cdc_out_of_order_share,
            cdc_late_share=self.cdc_late_share,
            on_remove=self.on_remove,
        )


@dataclass
class Figures:
    """What the run did, from the workload, the runner, the emulator, the handler's logs and the DLQ."""

    changes: int = 0
    bad_records: int = 0
    deliveries: int = 0
    redeliveries: int = 0
    invocations: int = 0
    answered: int = 0
    partial: int = 0
    kills: int = 0
    hangs: int = 0
    timeouts: int = 0
    timeouts_unexplained: int = 0  # timeouts without a hang: the handler overran its own deadline
    other_function_errors: int = 0
    retries: int = 0
    bisects: int = 0
    cold_starts: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # over answered invocations
    lost_to_function_errors: int = 0  # deliveries in batches whose invocation was killed or timed out
    put_items_calls: int = 0  # every call that reached the emulator
    accepted_calls: int = 0
    items_per_call: float = 0.0
    throttles: int = 0
    throttles_injected: int = 0
    throttles_quota: int = 0
    server_errors: int = 0
    slow_responses: int = 0
    handler_throttles: int = 0  # throttled attempts the answered invocations saw (Batch done)
    dlq_entries: int = 0
    dlq_distinct: int = 0
    dlq_duplicates: int = 0
    on_failure: int = 0
    items_expected: int = 0
    items_landed: int = 0
    emf_records_in: int = 0
    max_iterator_age_s: float = 0.0
    write_seconds: float = 0.0
    seconds_to_converge: float | None = None
    seconds_after_last_write: float | None = None
    wall_seconds: float = 0.0


@dataclass
class ChaosResult:
    config: ChaosConfig
    demo: DemoResult
    figures: Figures
    problems: list[str]  # the demo's check and the chaos checks

    @property
    def ok(self) -> bool:
        return not self.problems


def figures(demo: DemoResult, *, wall_seconds: float = 0.0) -> Figures:
    w, stats, emu, totals, ledger = demo.workload, demo.stats, demo.emulator_stats, demo.totals, demo.ledger
    written = sum(len(seqs) for seqs in demo.source_records.values())
    answered = [inv for inv in ledger if not inv.failed]
    outcomes: Counter[str] = Counter()
    handler_throttles = 0
    for inv in answered:
        for line in totals.by_request.get(inv.request_id, [])[:1]:
            for outcome in ("put", "poison", "retry", "skipped"):
                outcomes[outcome] += int(line.get(f"records_{outcome}", 0))
            handler_throttles += int(line.get("throttles", 0))
    distinct = {dlq_key(m) for m in demo.dlq}
    timeouts = [inv for inv in ledger if inv.outcome == "timeout"]
    return Figures(
        changes=w.counters.changes,
        bad_records=len(w.bad),
        deliveries=stats.records_delivered,
        redeliveries=stats.records_delivered - written,
        invocations=stats.invocations,
        answered=len(answered),
        partial=stats.partial_failures,
        kills=stats.kills,
        hangs=stats.hangs,
        timeouts=stats.timeouts,
        timeouts_unexplained=sum(1 for inv in timeouts if inv.fault != "hang"),
        other_function_errors=stats.function_errors - stats.kills - stats.timeouts,
        retries=stats.retries,
        bisects=stats.bisects,
        cold_starts=stats.cold_starts,
        outcomes={k: outcomes[k] for k in ("put", "poison", "retry", "skipped")},
        lost_to_function_errors=sum(inv.batch_size for inv in ledger if inv.failed),
        put_items_calls=int(emu["calls"]),
        accepted_calls=int(emu["accepted"]),
        items_per_call=float(emu["items_per_call"]),
        throttles=int(emu["throttled"]),
        throttles_injected=int(emu.get("throttled_injected", 0)),
        throttles_quota=int(emu.get("throttled_quota", 0)),
        server_errors=int(emu["server_errors"]),
        slow_responses=int(emu["slow_responses"]),
        handler_throttles=handler_throttles,
        dlq_entries=len(demo.dlq),
        dlq_distinct=len(distinct),
        dlq_duplicates=len(demo.dlq) - len(distinct),
        on_failure=len(demo.on_failure),
        items_expected=demo.expected_items,
        items_landed=demo.actual_items,
        emf_records_in=int(totals.emf.get("RecordsIn", 0)),
        max_iterator_age_s=stats.max_iterator_age_ms / 1000,
        write_seconds=demo.write_seconds,
        seconds_to_converge=demo.seconds_to_converge,
        seconds_after_last_write=demo.seconds_after_last_write,
        wall_seconds=wall_seconds,
    )


def chaos_checks(demo: DemoResult, fig: Figures, config: ChaosConfig) -> list[str]:
    """The checks that :func:`localcloud.demo.check` does not make, or makes only without failed invocations."""
    problems: list[str] = []
    stats, ledger, totals = demo.stats, demo.ledger, demo.totals
    written = sum(len(seqs) for seqs in demo.source_records.values())
    # The ledger: each delivery is one outcome of an answered invocation, or part of a batch lost to a function
    # error (and redelivered); each redelivery follows a retry or such a loss; each record is checkpointed once.
    if written != demo.workload.counters.changes:
        problems.append(f"the sources hold {written} records for {demo.workload.counters.changes} changes written")
    if stats.records_delivered != sum(inv.batch_size for inv in ledger):
        problems.append("the runner's delivery counter disagrees with its ledger")
    accounted = sum(fig.outcomes.values()) + fig.lost_to_function_errors
    if accounted != stats.records_delivered:
        problems.append(
            f"{stats.records_delivered} deliveries, but {accounted} accounted for "
            f"(outcomes {fig.outcomes}, {fig.lost_to_function_errors} lost to function errors)"
        )
    # Lambda redelivers a partial batch from its lowest reported record (records after it that landed too).
    partial = [inv for inv in ledger if inv.outcome == "partial"]
    redelivered = sum(inv.batch_size - inv.sequence_numbers.index(str(inv.detail)) for inv in partial)
    redelivered += fig.lost_to_function_errors
    if stats.records_delivered != written + redelivered:
        problems.append(
            f"{stats.records_delivered} deliveries != {written} records written + {redelivered} redeliveries"
        )
    if stats.records_succeeded != written:
        problems.append(f"the runner checkpointed {stats.records_succeeded} records; {written} were written")
    if stats.records_filtered:
        problems.append(f"{stats.records_filtered} records were filtered out (the stack has no filter)")
    # The EMF metrics: every answered invocation flushed them; a killed one may have (after its Batch done line).
    answered_records = sum(inv.batch_size for inv in ledger if not inv.failed)
    if not answered_records <= totals.emf.get("RecordsIn", 0) <= totals.records:
        problems.append(
            f"EMF RecordsIn {totals.emf.get('RecordsIn', 0)} is not between the answered invocations' "
            f"{answered_records} records and the {totals.records} that 'Batch done' lines accounted for"
        )
    emf_outcomes = sum(totals.emf.get(k, 0) for k in ("RecordsPut", "RecordsPoison", "RecordsRetry", "RecordsSkipped"))
    if emf_outcomes != totals.emf.get("RecordsIn", 0):
        problems.append(f"EMF outcome metrics add up to {emf_outcomes}, RecordsIn is {totals.emf.get('RecordsIn', 0)}")
    # The DLQ: every bad record is there with its reason (the demo's check), each at most once per delivery.
    if fig.dlq_distinct != fig.bad_records:
        problems.append(
            f"the DLQ holds {fig.dlq_distinct} distinct records; {fig.bad_records} bad records were written"
        )
    # The faults happened, and the handler never overran its own deadline.
    happened = {
        "throttles": fig.throttles_injected if config.throttle_rate else 1,
        "5xx": fig.server_errors if config.error_rate else 1,
        "slow responses": fig.slow_responses if config.slow_rate else 1,
        "kills": fig.kills if config.kill_worker_probability or config.force_kills else 1,
        "timeouts": fig.timeouts if config.hang_worker_probability or config.force_hangs else 1,
    }
    for name, count in happened.items():
        if not count:
            problems.append(f"no {name} happened: the scenario did not test what it should")
    if fig.timeouts_unexplained:
        problems.append(
            f"{fig.timeouts_unexplained} invocations timed out without a frozen sandbox: "
            "the handler overran its own deadline"
        )
    if fig.other_function_errors:
        errors = [inv.error for inv in ledger if inv.outcome in ("error", "invalid_response")][:3]
        problems.append(f"{fig.other_function_errors} function errors besides kills and timeouts, e.g. {errors}")
    return problems


def run_chaos(
    config: ChaosConfig,
    *,
    template: Path | None = None,
    console: Console | None = None,
    live: bool = True,
    log_dir: Path | None = None,
) -> ChaosResult:
    """Boot the local cloud with the faults, write the workload, converge, check. Always cleans up."""
    console = console or Console()
    if template is None:
        with console.status("Synthesizing the CDK app (cdk.json) into .localcloud/cdk.out …"):
            began = time.monotonic()
            template = synthesize()
        console.print(f"[green]✓[/] synthesized {template.relative_to(ROOT)} in {time.monotonic() - began:.1f} s")
    rate = config.max_calls_per_second or _template_rate(template)
    problems = config.validate(rate)
    if problems:
        raise SetupError("; ".join(problems))
    spec = config.workload()
    console.print(
        f"[bold]chaos[/]: ~{config.changes:,} changes ({spec.items:,} DynamoDB items, {spec.bad_count} bad records), "
        f"seed {config.seed}; emulator {config.throttle_rate:.0%} throttles, {config.error_rate:.0%} 5xx, "
        f"{config.slow_rate:.0%} slow by {config.slow_ms / 1000:g} s; runner {config.kill_worker_probability:.1%} "
        f"kills, {config.hang_worker_probability:.1%} frozen sandboxes (+{config.force_kills} / "
        f"+{config.force_hangs} forced); function timeout {config.function_timeout_s:g} s, "
        f"PUT_ITEMS_TIMEOUT_S {config.put_items_timeout_s:g} s × {config.put_items_max_attempts} attempts "
        f"(worst call {config.worst_call_s(rate):.1f} s), DEADLINE_MARGIN_MS {config.deadline_margin_ms}, "
        f"batches of {config.batch_size}"
    )
    began = time.monotonic()

    def force_faults(cloud: Any) -> None:
        cloud._runner().set_faults(kill_next=config.force_kills, hang_next=config.force_hangs)
        scripted = [code for code, rate in (("ThrottlingException", config.throttle_rate),
                                            ("ServiceUnavailable", config.error_rate)) if rate]  # fmt: skip
        if scripted:  # one of each for sure, whatever the dice say
            cloud.emulator.inject(*scripted)

    demo = run_demo(
        spec,
        template=template,
        timeout=config.timeout,
        console=console,
        live=live,
        cloud_options=config.cloud_options(log_dir),
        settle_timeout=config.function_timeout_s * 4,
        on_start=force_faults,
    )
    fig = figures(demo, wall_seconds=time.monotonic() - began)
    problems = [*demo.check.problems, *chaos_checks(demo, fig, config)]
    return ChaosResult(config, demo, fig, problems)


def _template_rate(template: Path) -> float:
    body = json.loads(template.read_text())
    for spec in body.get("Resources", {}).values():
        if spec.get("Type") == "AWS::Lambda::Function":
            variables = (spec.get("Properties", {}).get("Environment") or {}).get("Variables") or {}
            if "MAX_CALLS_PER_SECOND" in variables:
                return float(variables["MAX_CALLS_PER_SECOND"])
    return 10.0  # the runtime's default


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def report(result: ChaosResult, console: Console) -> None:
    f, c = result.figures, result.config
    table = Table(title="Chaos figures", show_header=False, min_width=80)
    table.add_column("figure", style="bold")
    table.add_column("value")
    w = result.demo.workload
    table.add_row(
        "changes written",
        f"{f.changes:,} (DynamoDB {w.counters.ddb_writes:,}: {w.counters.ddb_updates:,} updates, "
        f"{w.counters.ddb_deletes:,} deletes; Kinesis {w.counters.kinesis_documents:,} documents, "
        f"{w.counters.kinesis_cdc:,} CDC) incl. {f.bad_records} bad records ({f.bad_records / max(1, f.changes):.2%})",
    )
    table.add_row("deliveries", f"{f.deliveries:,} ({f.redeliveries:,} redeliveries)")
    table.add_row(
        "invocations",
        f"{f.invocations:,} ({f.answered:,} answered, {f.partial:,} partial; {f.retries:,} retries, "
        f"{f.bisects} bisects, {f.cold_starts} cold starts)",
    )
    table.add_row("kills (mid-batch)", f"{f.kills}")
    table.add_row(
        "timeouts",
        f"{f.timeouts} (function timeout {c.function_timeout_s:g} s; {f.hangs} frozen sandboxes, "
        f"{f.timeouts_unexplained} overruns of the handler's own)",
    )
    table.add_row(
        "record outcomes (answered)",
        ", ".join(f"{k} {v:,}" for k, v in f.outcomes.items())
        + f"; {f.lost_to_function_errors:,} in batches lost to kills/timeouts",
    )
    table.add_row(
        "throttles",
        f"{f.throttles:,} of {f.put_items_calls:,} calls ({f.throttles / max(1, f.put_items_calls):.1%}: "
        f"{f.throttles_injected:,} injected, {f.throttles_quota:,} quota)",
    )
    table.add_row("5xx", f"{f.server_errors:,} ({f.server_errors / max(1, f.put_items_calls):.1%})")
    table.add_row(
        "slow responses",
        f"{f.slow_responses:,} delayed {c.slow_ms / 1000:g} s, each cut by the {c.put_items_timeout_s:g} s "
        "client read timeout",
    )
    table.add_row("PutItems calls", f"{f.put_items_calls:,} ({f.accepted_calls:,} accepted)")
    table.add_row("items/call", f"{f.items_per_call:.2f}")
    table.add_row(
        "DLQ entries",
        f"{f.dlq_entries} ({f.dlq_distinct} distinct = the {f.bad_records} bad records; "
        f"{f.dlq_duplicates} redelivered duplicates)",
    )
    table.add_row("on-failure messages", f"{f.on_failure}")
    table.add_row("items", f"{f.items_landed:,} landed, {f.items_expected:,} expected")
    table.add_row("EMF RecordsIn", f"{f.emf_records_in:,}")
    table.add_row("max iterator age", _s(f.max_iterator_age_s))
    table.add_row(
        "time to converge",
        f"{_s(f.seconds_to_converge)} from the first write ({_s(f.write_seconds)} writing, "
        f"{_s(f.seconds_after_last_write)} after the last write); {_s(f.wall_seconds)} in all",
    )
    console.print(table)
    if result.ok:
        console.print(
            Panel(
                f"[bold green]CONVERGED UNDER CHAOS[/]: {f.items_landed:,} items equal the sources' final state, "
                f"the DLQ holds exactly the {f.bad_records} bad records with their reasons, and every one of "
                f"{f.deliveries:,} deliveries is accounted for.",
                title="chaos check",
            )
        )
    else:
        lines = [f"[red]✗[/] {p}" for p in result.problems[:30]]
        for item_id, diffs in list(result.demo.check.different.items())[:10]:
            lines.append(f"  {item_id}: " + "; ".join(diffs[:4]))
        console.print(Panel(Group(*lines), title="[bold red]chaos check FAILED[/]"))


def main(
    *,
    changes: int,
    seed: int,
    timeout: float,
    write_seconds: float,
    on_remove: Literal["soft", "ignore"] = "ignore",
    live: bool = True,
    console: Console | None = None,
) -> int:
    """The ``chaos`` command: 0 when everything converged and every check passed, 1 otherwise, 2 on setup errors."""
    console = console or Console()
    config = ChaosConfig(changes=changes, seed=seed, timeout=timeout, write_seconds=write_seconds, on_remove=on_remove)
    return run_command(lambda: run_chaos(config, console=console, live=live), lambda r: report(r, console), console)


def as_dict(result: ChaosResult) -> dict[str, Any]:
    return {"config": asdict(result.config), "figures": asdict(result.figures), "problems": result.problems}
