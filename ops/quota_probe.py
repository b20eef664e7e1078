"""``python -m ops quota-probe``: find out how PutItems counts its quota, on a scratch dataset.

AWS documents "10 PutItems calls per second per dataset group" and the ``ThrottlingException`` that answers more,
not how the service counts (DESIGN.md). The local cloud offers four readings of it
(:mod:`localcloud.emulator.quota`: sliding window, fixed window, token bucket, strict spacing), and the benchmark's
figures belong to the reading they were measured under: the shared budget misses 95 items/s only under strict
spacing. This command settles which reading an account follows. It sends one-item calls in fixed patterns (two
bursts, two paces over the quota, one control pace under it), each after a rest long enough for every model to
forget the last, records when each attempt left (botocore's ``before-send``) and whether it was throttled, then
replays those departure times through every model and counts how many throttles each predicts per pattern. The
model whose counts match is the one to benchmark under (``--quota-model`` of the local cloud).

**Run it only against a dataset group nothing else writes to.** It bypasses the shared budget on purpose (it must
go over the quota to see how it is counted), so a connector writing to the same dataset group would be throttled
by it and would make its counts meaningless; the control pattern (paced at 0.97 × quota, which every model admits)
says so if it is throttled. It writes one item per call, ids ``quota-probe-<run>-<n>`` (about 110 items), with
``--properties`` as their properties (a dataset whose schema requires fields needs them).

Counts, not per-call outcomes, are compared: concurrent calls of a burst reach the service in an order the client
cannot see. A fixed window's edges are wherever the service's seconds start, so that model is replayed at every
phase (10 ms steps) and the best phase is kept. Hand-written because no library measures a rate limiter's shape;
the models are the local cloud's own, so the verdict names the emulator setting that reproduces the account.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from rich.table import Table

from localcloud.emulator.quota import FixedWindow, QuotaModel, SlidingWindow, StrictSpacing, TokenBucket
from ops.common import OpsError, console, describe_client_error

__all__ = [
    "Candidate",
    "Pattern",
    "Probe",
    "Score",
    "Sent",
    "candidates",
    "patterns",
    "predict",
    "register",
    "run",
    "score",
]

DEFAULT_QUOTA = 10.0
DEFAULT_REST_S = 2.5  # > 1 s (a window forgets) and > 2 × quota / quota s (a bucket of burst 2 × quota refills)
PHASE_STEP_S = 0.01
MARGIN = 2  # calls: a model this close to the observed counts matches (a few ms of jitter move a call or two)
THROTTLE_CODES = {"ThrottlingException", "TooManyRequestsException", "Throttling"}


@dataclass(frozen=True)
class Pattern:
    """Calls leaving at ``offsets`` seconds after the pattern's start (equal offsets: at once, one thread each)."""

    name: str
    offsets: tuple[float, ...]
    scored: bool = True
    control: bool = False


def patterns(quota: float) -> list[Pattern]:
    """The experiment: what each model admits differs in at least one pattern (see :func:`predict`)."""
    q = max(1, round(quota))

    def paced(share: float, seconds: float) -> tuple[float, ...]:
        return tuple(i / (share * quota) for i in range(round(share * quota * seconds)))

    return [
        Pattern(f"warm-up: {2 * q} at once (opens the connections; not scored)", (0.0,) * (2 * q), scored=False),
        Pattern(f"burst: {q} at once", (0.0,) * q),
        Pattern(f"burst: {2 * q} at once", (0.0,) * (2 * q)),
        Pattern(f"two bursts of {q}, 0.5 s apart", (0.0,) * q + (0.5,) * q),
        Pattern("paced at 1.5 × quota for 1 s", paced(1.5, 1.0)),
        Pattern("paced at 1.2 × quota for 3 s", paced(1.2, 3.0)),
        Pattern("control: paced at 0.97 × quota for 2 s", paced(0.97, 2.0), control=True),
    ]


@dataclass
class Sent:
    """One attempt: when it left (monotonic seconds) and how it ended."""

    left: float
    throttled: bool


@dataclass
class Probe:
    """What the experiment saw, pattern by pattern (``sent[i]`` belongs to ``patterns[i]``)."""

    quota: float
    patterns: list[Pattern]
    sent: list[list[Sent]] = field(default_factory=list)

    def observed(self) -> list[int]:
        return [sum(s.throttled for s in calls) for calls in self.sent]


@dataclass(frozen=True)
class Candidate:
    """One reading of the quota: a model built for one replay (at a fixed-window phase, which the others ignore),
    and the local cloud's setting that reproduces it."""

    name: str
    build: Callable[[float], QuotaModel]
    setting: str


def candidates(quota: float) -> list[Candidate]:
    return [
        Candidate("sliding-window", lambda _: SlidingWindow(quota), "--quota-model sliding-window"),
        Candidate("fixed-window", lambda phase: _Shifted(FixedWindow(quota), phase), "--quota-model fixed-window"),
        Candidate(f"token-bucket, burst {quota:g}", lambda _: TokenBucket(quota, quota), "--quota-model token-bucket"),
        Candidate(
            f"token-bucket, burst {2 * quota:g}",
            lambda _: TokenBucket(quota, 2 * quota),
            f"--quota-model token-bucket --quota-burst {2 * quota:g}",
        ),
        Candidate("strict-spacing", lambda _: StrictSpacing(quota), "--quota-model strict-spacing"),
    ]


class _Shifted:
    """A model whose clock is shifted by ``phase`` seconds (where a fixed window's edges fall)."""

    def __init__(self, model: QuotaModel, phase: float) -> None:
        self.model, self.phase = model, phase

    def try_acquire(self, now: float) -> bool:
        return self.model.try_acquire(now + self.phase)


def predict(build: Callable[[float], QuotaModel], sent: Sequence[Sequence[Sent]], phase: float = 0.0) -> list[int]:
    """Throttles per pattern that one model predicts for these departure times (all patterns replayed in order,
    through one model: the rests between them are part of the experiment)."""
    model = build(phase)
    calls = sorted((s.left, i) for i, pattern in enumerate(sent) for s in pattern)
    throttled = [0] * len(sent)
    for left, i in calls:
        if not model.try_acquire(left):
            throttled[i] += 1
    return throttled


@dataclass(frozen=True)
class Score:
    """One candidate against the probe: throttles it predicts per pattern, how many calls that is off in the
    scored patterns, and (fixed window) the phase that fits best."""

    candidate: Candidate
    predicted: list[int]
    off: int
    phase: float | None = None


def score(probe: Probe) -> list[Score]:
    """Every candidate, best first."""
    scored = [i for i, p in enumerate(probe.patterns) if p.scored]
    observed = probe.observed()

    def off(predicted: list[int]) -> int:
        return sum(abs(predicted[i] - observed[i]) for i in scored)

    scores = []
    for c in candidates(probe.quota):
        if c.name == "fixed-window":
            phases = [k * PHASE_STEP_S for k in range(round(1 / PHASE_STEP_S))]
            fits = [(predict(c.build, probe.sent, phase), phase) for phase in phases]
            predicted, phase = min(fits, key=lambda fit: off(fit[0]))
            scores.append(Score(c, predicted, off(predicted), phase))
        else:
            predicted = predict(c.build, probe.sent)
            scores.append(Score(c, predicted, off(predicted)))
    return sorted(scores, key=lambda sc: sc.off)


def send(pe: Any, dataset_arn: str, pattern: Pattern, *, run_id: str, first: int, properties: str | None) -> list[Sent]:
    """One pattern: a thread per call, each released at its offset; no retries (each attempt is one outcome)."""
    left: dict[int, float] = {}
    outcome: dict[int, bool] = {}
    errors: list[ClientError] = []
    local = threading.local()

    def mark(**_: Any) -> None:
        left[local.n] = time.monotonic()

    pe.meta.events.register("before-send.personalize-events.PutItems", mark)
    start = time.monotonic() + 0.05  # every thread started and waiting before the first offset
    ready = threading.Barrier(len(pattern.offsets) + 1)

    def call(n: int, offset: float) -> None:
        local.n = n
        item: dict[str, str] = {"itemId": f"quota-probe-{run_id}-{first + n}"}
        if properties is not None:
            item["properties"] = properties
        ready.wait()
        time.sleep(max(0.0, start + offset - time.monotonic()))
        try:
            pe.put_items(datasetArn=dataset_arn, items=[item])
            outcome[n] = False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in THROTTLE_CODES:
                outcome[n] = True
            else:
                errors.append(exc)
        left.setdefault(n, time.monotonic())

    threads = [threading.Thread(target=call, args=(n, o), daemon=True) for n, o in enumerate(pattern.offsets)]
    for t in threads:
        t.start()
    ready.wait()
    for t in threads:
        t.join()
    pe.meta.events.unregister("before-send.personalize-events.PutItems", mark)
    if errors:
        hint = ""
        if errors[0].response.get("Error", {}).get("Code") == "InvalidInputException":
            hint = " (if the dataset's schema requires fields, pass them with --properties)"
        raise OpsError(describe_client_error(errors[0]) + hint)
    return [Sent(left[n], outcome[n]) for n in range(len(pattern.offsets))]


def experiment(pe: Any, dataset_arn: str, quota: float, rest_s: float, properties: str | None) -> Probe:
    probe = Probe(quota, patterns(quota))
    run_id = uuid.uuid4().hex[:8]
    first = 0
    for i, pattern in enumerate(probe.patterns):
        if i:
            time.sleep(rest_s)
        console.print(f"[bold]{pattern.name}[/]: {len(pattern.offsets)} calls")
        probe.sent.append(send(pe, dataset_arn, pattern, run_id=run_id, first=first, properties=properties))
        first += len(pattern.offsets)
        console.print(f"  throttled {probe.observed()[-1]} of {len(pattern.offsets)}")
    return probe


def report(probe: Probe, scores: list[Score]) -> tuple[Table, list[str], bool]:
    """The table (observed and predicted throttles per pattern), the verdict lines, and whether the verdict is
    clear (a model within ``MARGIN`` calls, and the control pattern throttled no more than it predicts)."""
    observed = probe.observed()
    t = Table(title=f"Throttled calls per pattern: observed, and what each model predicts (quota {probe.quota:g}/s)")
    t.add_column("pattern")
    t.add_column("calls", justify="right")
    t.add_column("observed", justify="right")
    for sc in scores:
        phase = f" (edges at +{sc.phase:.2f} s)" if sc.phase is not None else ""
        t.add_column(sc.candidate.name + phase, justify="right")
    for i, pattern in enumerate(probe.patterns):
        t.add_row(pattern.name, str(len(pattern.offsets)), str(observed[i]), *[str(sc.predicted[i]) for sc in scores])
    t.add_row("calls off (scored patterns)", "", "", *[str(sc.off) for sc in scores])
    best = scores[0]
    close = [sc for sc in scores[1:] if sc.off <= best.off + MARGIN]
    setting = f"{best.candidate.name} (local cloud: {best.candidate.setting})"
    if best.off > MARGIN:
        lines = [f"no model matches; closest: {setting}, {best.off} calls off"]
    else:
        lines = [f"consistent with {setting}" + (f", {best.off} calls off" if best.off else "")]
    if close:
        lines.append(
            "within "
            + str(MARGIN)
            + " calls of it: "
            + ", ".join(f"{sc.candidate.name} ({sc.off} off)" for sc in close)
            + "; these patterns cannot tell them apart with confidence"
        )
    control = next(i for i, p in enumerate(probe.patterns) if p.control)
    control_held = observed[control] <= best.predicted[control]
    if not control_held:
        lines.append(
            f"the control pattern (under the quota) was throttled {observed[control]} times where "
            f"{best.candidate.name} predicts {best.predicted[control]}: another writer is using this dataset "
            "group's quota, the quota is lower than --quota, or (under strict spacing) a few milliseconds of "
            "network jitter; run it again"
        )
    return t, lines, best.off <= MARGIN and control_held


def register(sub: Any) -> None:
    p = sub.add_parser(
        "quota-probe",
        help="measure how PutItems counts its quota (on a scratch dataset group nothing else writes to)",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--dataset-arn", required=True, help="an Items dataset in a dataset group nothing else writes to")
    p.add_argument("--quota", type=float, default=DEFAULT_QUOTA, help="the documented calls/s (default 10)")
    p.add_argument(
        "--rest", type=float, default=DEFAULT_REST_S, help=f"seconds between patterns (default {DEFAULT_REST_S})"
    )
    p.add_argument("--properties", help="the probe items' properties, a JSON object (if the schema requires fields)")
    p.add_argument("--json", type=Path, help="also write every attempt and the scores to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.quota <= 0 or args.rest < 0:
        raise OpsError("--quota must be positive and --rest not negative")
    if args.properties is not None:
        try:
            if not isinstance(json.loads(args.properties), dict):
                raise ValueError
        except ValueError:
            raise OpsError('--properties must be a JSON object, e.g. \'{"genre": "drama"}\'') from None
    # A client of its own: no retries (one attempt, one outcome) and a connection for every call of a burst.
    burst = 2 * max(1, round(args.quota))
    pe = boto3.client(
        "personalize-events",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=burst + 2),
    )
    console.print(
        f"[yellow]quota-probe[/]: writes about {sum(len(p.offsets) for p in patterns(args.quota))} items "
        f"(ids quota-probe-*) to {args.dataset_arn}; run it only where nothing else writes to the dataset group"
    )
    probe = experiment(pe, args.dataset_arn, args.quota, args.rest, args.properties)
    scores = score(probe)
    table, lines, clear = report(probe, scores)
    console.print(table)
    for line in lines:
        console.print(("[bold green]" if clear else "[bold yellow]") + line + "[/]")
    if args.json:
        t0 = min(s.left for calls in probe.sent for s in calls)
        args.json.write_text(
            json.dumps(
                {
                    "quota": probe.quota,
                    "patterns": [
                        {
                            "name": p.name,
                            "scored": p.scored,
                            "control": p.control,
                            "calls": [{"left_s": round(s.left - t0, 4), "throttled": s.throttled} for s in calls],
                        }
                        for p, calls in zip(probe.patterns, probe.sent, strict=True)
                    ],
                    "models": [
                        {
                            "model": sc.candidate.name,
                            "local_cloud": sc.candidate.setting,
                            "predicted": sc.predicted,
                            "calls_off": sc.off,
                            "phase_s": sc.phase,
                        }
                        for sc in scores
                    ],
                    "verdict": lines,
                },
                indent=2,
            )
        )
    return 0 if clear else 1
