"""``python -m ops quota-probe``: find out how PutItems counts its quota, on a scratch dataset.

AWS documents "10 PutItems calls per second per dataset group" and the ``ThrottlingException`` that answers more,
not how the service counts (DESIGN.md). The local cloud offers four readings of it
(:mod:`localcloud.emulator.quota`: sliding window, fixed window, token bucket, strict spacing), and the benchmark's
figures belong to the reading they were measured under: the shared budget misses 95 items/s only under strict
spacing. This command settles which reading an account follows. It sends one-item calls in fixed patterns
(three bursts, two bursts 0.5 s apart, two paces over the quota, one control pace under it), each after a rest long
enough for every model to forget the last, records when each attempt left (botocore's ``before-send``) and whether
it was throttled, then replays those departure times through every model and counts how many throttles each
predicts per pattern. The model whose counts match is the one to benchmark under (``--quota-model`` of the local
cloud). Every model throttles part of the largest burst, so a probe that sees no throttle says the quota is higher
than ``--quota`` instead of naming a model; a verdict is clear only when no other model comes within ``MARGIN``
calls, except the other window (the sliding and the fixed window both count calls per second).

**Run it only against a dataset group nothing else writes to.** It bypasses the shared budget on purpose (it must go
over the quota to see how it is counted), so a connector writing to the same dataset group would be throttled by it
and would make its counts meaningless. It refuses the dataset group of ``DATASET_ARN`` when that is set, and it
names another writer when the control pattern (a call every ``1/quota`` + 40 ms, which every model admits, strict
spacing behind 40 ms of jitter included) is throttled or the closest model falls short of the observed throttles
(:func:`report`). Each accepted call writes one item, ids ``quota-probe-<run>-<n>`` (175 calls at 10 calls/s, 50-160
of them accepted depending on the model), with ``--properties`` as their properties (a dataset whose schema requires
fields needs them).

Counts, not per-call outcomes, are compared: concurrent calls of a burst reach the service in an order the client
cannot see. A fixed window's edges are wherever the service's seconds start, so that model is replayed at every
phase (10 ms steps) and the best phase is kept. Hand-written because no library measures a rate limiter's shape;
the models are the local cloud's own, so the verdict names the emulator setting that reproduces the account.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from rich.table import Table

from connector.config import ConfigError, dataset_group_arn
from connector.putitems import THROTTLE_ERRORS
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
MAX_QUOTA = 50.0  # calls/s: three times this many threads and connections at once for the largest burst
DEFAULT_REST_S = 2.5
MIN_REST_S = 2.0  # a window forgets in 1 s; a bucket of burst 2 × quota refills from empty in 2 s
PHASE_STEP_S = 0.01
# The control's calls are 1/quota + this apart: every model admits them all, strict spacing included, behind this
# much jitter or late thread release (a fixed share of the quota left 25 ms at 10/s and 5 ms at 50/s).
CONTROL_SPARE_S = 0.040
MARGIN = 2  # calls: a model this close to the observed counts matches (a few ms of jitter move a call or two)
WINDOWS = {"sliding-window", "fixed-window"}  # the one pair allowed to stay undecided: both count calls per second
INTERRUPTED = "[yellow]interrupted[/]: the probe keeps nothing; a new run starts over (and writes new items)"


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

    gap = 1 / quota + CONTROL_SPARE_S
    control_offsets = tuple(i * gap for i in range(round(2.0 / gap)))

    return [
        Pattern(f"warm-up: {3 * q} at once (opens the connections; not scored)", (0.0,) * (3 * q), scored=False),
        Pattern(f"burst: {q} at once", (0.0,) * q),
        Pattern(f"burst: {2 * q} at once", (0.0,) * (2 * q)),
        Pattern(f"burst: {3 * q} at once", (0.0,) * (3 * q)),
        Pattern(f"two bursts of {q}, 0.5 s apart", (0.0,) * q + (0.5,) * q),
        Pattern("paced at 1.5 × quota for 1 s", paced(1.5, 1.0)),
        Pattern("paced at 1.2 × quota for 3 s", paced(1.2, 3.0)),
        Pattern(f"control: a call every {gap * 1000:.0f} ms for 2 s", control_offsets, control=True),
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

    def scored(self) -> list[int]:
        """The indices of the patterns that are compared (all but the warm-up)."""
        return [i for i, p in enumerate(self.patterns) if p.scored]


@dataclass(frozen=True)
class Candidate:
    """One reading of the quota: a model built for one replay (at a fixed-window phase, which the others ignore),
    and the local cloud's setting that reproduces it."""

    name: str
    build: Callable[[float], QuotaModel]
    setting: str
    phases: tuple[float, ...] = (0.0,)  # replayed at each, the best kept (a fixed window's edges: every 10 ms)


def candidates(quota: float) -> list[Candidate]:
    tps = "" if quota == DEFAULT_QUOTA else f"--tps {quota:g} "  # the local cloud's rate, 10 by default
    return [
        Candidate("sliding-window", lambda _: SlidingWindow(quota), f"{tps}--quota-model sliding-window"),
        Candidate(
            "fixed-window",
            lambda phase: _Shifted(FixedWindow(quota), phase),
            f"{tps}--quota-model fixed-window",
            tuple(k * PHASE_STEP_S for k in range(round(1 / PHASE_STEP_S))),
        ),
        Candidate(
            f"token-bucket, burst {quota:g}", lambda _: TokenBucket(quota, quota), f"{tps}--quota-model token-bucket"
        ),
        Candidate(
            f"token-bucket, burst {2 * quota:g}",
            lambda _: TokenBucket(quota, 2 * quota),
            f"{tps}--quota-model token-bucket --quota-burst {2 * quota:g}",
        ),
        Candidate("strict-spacing", lambda _: StrictSpacing(quota), f"{tps}--quota-model strict-spacing"),
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
    scored = probe.scored()
    observed = probe.observed()

    def off(predicted: list[int]) -> int:
        return sum(abs(predicted[i] - observed[i]) for i in scored)

    scores = []
    for c in candidates(probe.quota):
        predicted, phase = min(((predict(c.build, probe.sent, ph), ph) for ph in c.phases), key=lambda f: off(f[0]))
        scores.append(Score(c, predicted, off(predicted), phase if len(c.phases) > 1 else None))
    return sorted(scores, key=lambda sc: sc.off)


def send(pe: Any, dataset_arn: str, pattern: Pattern, *, run_id: str, first: int, properties: str | None) -> list[Sent]:
    """One pattern: a thread per call, each released at its offset; no retries (each attempt is one outcome). An
    error other than a throttle (or a thread that cannot start) ends the probe with one line."""
    left: dict[int, float] = {}
    outcome: dict[int, bool] = {}
    errors: list[Exception] = []
    local = threading.local()

    def mark(**_: Any) -> None:
        left[local.n] = time.monotonic()

    start = time.monotonic() + 0.05  # every thread started and waiting before the first offset
    ready = threading.Barrier(len(pattern.offsets) + 1)

    def call(n: int, offset: float) -> None:
        local.n = n
        item: dict[str, str] = {"itemId": f"quota-probe-{run_id}-{first + n}"}
        if properties is not None:
            item["properties"] = properties
        try:
            ready.wait()
        except threading.BrokenBarrierError:  # another thread could not start: send nothing
            return
        time.sleep(max(0.0, start + offset - time.monotonic()))
        try:
            pe.put_items(datasetArn=dataset_arn, items=[item])
            outcome[n] = False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in THROTTLE_ERRORS:
                outcome[n] = True
            else:
                errors.append(exc)
        except BotoCoreError as exc:  # no answer: no connection, no credentials, a read timeout
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n, o), daemon=True) for n, o in enumerate(pattern.offsets)]
    pe.meta.events.register("before-send.personalize-events.PutItems", mark)
    try:
        started = []
        try:
            for t in threads:
                t.start()
                started.append(t)
            ready.wait()
        except RuntimeError as exc:  # "can't start new thread"
            ready.abort()
            raise OpsError(f"could not start {len(threads)} threads at once ({exc}); lower --quota") from None
        finally:
            for t in started:
                t.join()
    finally:
        pe.meta.events.unregister("before-send.personalize-events.PutItems", mark)
    if errors:
        raise OpsError(_describe(errors[0]))
    return [Sent(left[n], outcome[n]) for n in range(len(pattern.offsets))]


def _describe(exc: Exception) -> str:
    if not isinstance(exc, ClientError):
        return str(exc)
    text = describe_client_error(exc)
    message = exc.response.get("Error", {}).get("Message", "").lower()
    if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
        text += " (a server error leaves the counts incomplete: run it again)"
    elif any(word in message for word in ("propert", "schema", "field")):
        text += " (if the dataset's schema requires fields, pass them with --properties)"
    return text


def experiment(pe: Any, dataset_arn: str, probe: Probe, rest_s: float, properties: str | None) -> None:
    """Send every pattern of ``probe``, a rest before each but the first, into ``probe.sent``."""
    run_id = uuid.uuid4().hex[:8]
    first = 0
    for i, pattern in enumerate(probe.patterns):
        if i:
            time.sleep(rest_s)
        console.print(f"[bold]{pattern.name}[/]: {len(pattern.offsets)} calls")
        probe.sent.append(send(pe, dataset_arn, pattern, run_id=run_id, first=first, properties=properties))
        first += len(pattern.offsets)
        console.print(f"  throttled {probe.observed()[-1]} of {len(pattern.offsets)}")


def _calls(n: int) -> str:
    return f"{n} call" + ("" if n == 1 else "s")


def report(probe: Probe, scores: list[Score]) -> tuple[Table, list[str], bool]:
    """The table (observed and predicted throttles per pattern), the verdict lines, and whether the verdict is
    clear: a model within ``MARGIN`` calls, no other model that close but the other window, and the control pattern
    throttled at most once more than that model predicts.

    Another writer (or a quota other than ``--quota``) shows in one of two ways: the control pattern is throttled, or
    the closest model falls short of the observed throttles by more than ``MARGIN`` calls and never predicts more
    than was seen: jitter moves counts both ways, a share of the quota taken by someone else only adds throttles.
    The control alone misses it where the other writer keeps its slots: evenly spaced under a sliding window, its
    call at ``t`` finds its own call of ``t - 1 s`` just gone, so the control's extra call may be its to lose."""
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
    matched = best.off <= MARGIN
    scored = probe.scored()
    if not any(observed[i] for i in scored):
        lines = [f"nothing was throttled: this account's quota is above --quota {probe.quota:g}/s; no model named"]
        matched = False
    elif not matched:
        lines = [f"no model matches; closest: {setting}, {_calls(best.off)} off"]
    else:
        lines = [f"consistent with {setting}" + (f", {_calls(best.off)} off" if best.off else "")]
    apart = {best.candidate.name, *(sc.candidate.name for sc in close)} <= WINDOWS
    if close:
        lines.append(
            f"within {_calls(MARGIN)} of it: "
            + ", ".join(f"{sc.candidate.name} ({sc.off} off)" for sc in close)
            + (
                "; the two windows both count calls per second, and the shared budget treats them alike"
                if apart
                else "; these patterns cannot tell them apart: run it again"
            )
        )
    control = next(i for i, p in enumerate(probe.patterns) if p.control)
    # one throttle more than predicted is jitter's: threads released tens of ms late on a loaded machine, then a
    # few ms of transit, bring two control calls under 1/quota apart at the service though not on departure
    control_held = observed[control] <= best.predicted[control] + 1
    writer = "another writer is using this dataset group's quota"
    more = sum(max(0, observed[i] - best.predicted[i]) for i in scored)
    if not control_held:
        lines.append(
            f"the control pattern (under the quota) was throttled {observed[control]} times where "
            f"{best.candidate.name} predicts {best.predicted[control]}: {writer}, or the quota is lower than --quota; "
            "run it again"
        )
    elif more > MARGIN and all(observed[i] >= best.predicted[i] for i in scored):
        lines.append(
            f"{_calls(more)} more throttled than {best.candidate.name} predicts, and in no pattern fewer: {writer}, "
            "its quota is not --quota, or it counts in a way none of these models does; run it again"
        )
    return t, lines, matched and (apart or not close) and control_held


def register(sub: Any) -> None:
    p = sub.add_parser(
        "quota-probe",
        help="measure how PutItems counts its quota (on a scratch dataset group nothing else writes to)",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--dataset-arn", required=True, help="an Items dataset in a dataset group nothing else writes to")
    p.add_argument(
        "--quota", type=float, default=DEFAULT_QUOTA, help=f"the account's calls/s, 1-{MAX_QUOTA:g} (default 10)"
    )
    p.add_argument(
        "--rest",
        type=float,
        default=DEFAULT_REST_S,
        help=f"seconds between patterns, at least {MIN_REST_S:g} (default {DEFAULT_REST_S:g})",
    )
    p.add_argument("--properties", help="the probe items' properties, a JSON object (if the schema requires fields)")
    p.add_argument("--json", type=Path, help="also write every attempt and the scores to this file")
    p.set_defaults(run=run, interrupted=INTERRUPTED)


def check(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Everything that can be refused before a call is sent."""
    if not (math.isfinite(args.quota) and 1 <= args.quota <= MAX_QUOTA):
        raise OpsError(f"--quota must be a number of calls/s from 1 to {MAX_QUOTA:g}, not {args.quota:g}")
    if not (math.isfinite(args.rest) and args.rest >= MIN_REST_S):
        raise OpsError(
            f"--rest must be at least {MIN_REST_S:g} s (a bucket of burst 2 × quota refills in 2 s), not {args.rest:g}"
        )
    try:
        group = dataset_group_arn(args.dataset_arn)
    except ConfigError as exc:
        raise OpsError(f"--dataset-arn: {exc}") from None
    try:
        connector = dataset_group_arn(env.get("DATASET_ARN", ""))
    except ConfigError:
        connector = None
    if group == connector:
        raise OpsError(
            f"--dataset-arn is in the connector's dataset group (DATASET_ARN: {group}): the probe would throttle the "
            "connector and the connector would spoil the counts; use a scratch dataset group"
        )
    if args.properties is not None:
        try:
            if not isinstance(json.loads(args.properties), dict):
                raise ValueError
        except ValueError:
            raise OpsError('--properties must be a JSON object, e.g. \'{"genre": "drama"}\'') from None
    if args.json is not None and not args.json.parent.is_dir():
        raise OpsError(f"--json: {args.json.parent} is not a directory")


def run(args: argparse.Namespace) -> int:
    check(args, dict(os.environ))
    probe = Probe(args.quota, patterns(args.quota))
    # A client of its own: no retries (one attempt, one outcome) and a connection for every call of the largest burst.
    pool = max(len(p.offsets) for p in probe.patterns) + 2
    pe = boto3.client(
        "personalize-events",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=pool),
    )
    console.print(
        f"[yellow]quota-probe[/]: sends {sum(len(p.offsets) for p in probe.patterns)} one-item calls to "
        f"{args.dataset_arn} (each accepted one writes an item, ids quota-probe-<run>-<n>); run it only where "
        "nothing else writes to the dataset group"
    )
    experiment(pe, args.dataset_arn, probe, args.rest, args.properties)
    scores = score(probe)
    table, lines, clear = report(probe, scores)
    console.print(table)
    for line in lines:
        console.print(("[bold green]" if clear else "[bold yellow]") + line + "[/]")
    if args.json:
        t0 = min(s.left for calls in probe.sent for s in calls)
        document = {
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
                    "phase_s": None if sc.phase is None else round(sc.phase, 2),
                }
                for sc in scores
            ],
            "verdict": lines,
            "clear": clear,
        }
        try:
            args.json.write_text(json.dumps(document, indent=2))
        except OSError as exc:
            raise OpsError(f"--json: could not write {args.json}: {exc.strerror}") from None
    return 0 if clear else 1
