"""Attacks on quota-probe's verdict and its "another writer" rule (``ops.quota_probe.report``).

Replays only, no network: the probe's patterns go through a model standing in for the service, with transit
jitter, late thread releases, a quota other than ``--quota``, models outside the candidates, and foreign writers of
other shapes than the emulator's evenly spaced one (helper 29). A docstring starting "Found, fixed" is a break
that failed on 2f6d95b and passes now; "Known limit" is a strict xfail, documented in docs/ops/quota-probe.md;
"Holds" pins down where the verdict holds in a hard case."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import pytest

from localcloud.emulator.quota import FixedWindow, QuotaModel, SlidingWindow, StrictSpacing, TokenBucket
from ops.quota_probe import MARGIN, Probe, Sent, patterns, report, score
from tests.ops.test_quota_probe import replayed

WRITER = "another writer"
WINDOWS = {"sliding-window", "fixed-window"}

Draw = Callable[[random.Random], float]
Foreign = Callable[[random.Random, float, float], list[float]]  # (rng, from, to) -> a foreign writer's call times


def no_delay(_: random.Random) -> float:
    return 0.0


def uniform(lo_s: float, hi_s: float) -> Draw:
    return lambda rng: rng.uniform(lo_s, hi_s)


def replay(
    service: QuotaModel,
    seed: int,
    delay: Draw,
    *,
    quota: float = 10.0,
    late: Draw = no_delay,
    foreign: Foreign | None = None,
    rest_s: float = 2.5,
) -> Probe:
    """The probe's patterns (at ``--quota quota``) through ``service``: each thread released ``late`` after its
    offset (the probe records that departure), each call arriving ``delay`` after it left; beside a foreign writer
    whose calls go through the same service (throttled ones dropped)."""
    rng = random.Random(seed)
    probe = Probe(quota, patterns(quota))
    t = 1000.0 + rng.random()
    ours: list[tuple[float, int, int]] = []
    for i, pattern in enumerate(probe.patterns):
        t += rest_s if i else 0.0
        left = [t + o + late(rng) for o in pattern.offsets]
        probe.sent.append([Sent(x, False) for x in left])
        ours += [(x + delay(rng), i, j) for j, x in enumerate(left)]
        t += max(pattern.offsets)
    theirs = [(x, -1, -1) for x in foreign(rng, 999.0, t + 1.0)] if foreign else []
    for at, i, j in sorted(theirs + ours):
        admitted = service.try_acquire(at)
        if i >= 0:
            probe.sent[i][j].throttled = not admitted
    return probe


def verdict(probe: Probe) -> tuple[str, bool, list[str]]:
    """The closest model's name, whether the verdict is clear (exit 0), and the verdict lines."""
    scores = score(probe)
    _, lines, clear = report(probe, scores)
    return scores[0].candidate.name, clear, lines


def names_writer(lines: list[str]) -> bool:
    return any(WRITER in line for line in lines)


def evenly(share: float, *, quota: float = 10.0, after_s: float = 0.0) -> Foreign:
    """Evenly spaced at ``share`` x quota, random phase, from ``after_s`` into the probe."""

    def calls(rng: random.Random, start: float, end: float) -> list[float]:
        interval = 1.0 / (share * quota)
        t = start + after_s + rng.uniform(0.0, interval)
        out = []
        while t < end:
            out.append(t)
            t += interval
        return out

    return calls


def poisson(share: float, *, quota: float = 10.0) -> Foreign:
    def calls(rng: random.Random, start: float, end: float) -> list[float]:
        out, t = [], start + rng.expovariate(share * quota)
        while t < end:
            out.append(t)
            t += rng.expovariate(share * quota)
        return out

    return calls


def groups(share: float, size: int, *, quota: float = 10.0) -> Foreign:
    """``size`` calls at once, the groups evenly spaced (a batch job, a backfill with ``size`` threads)."""

    def calls(rng: random.Random, start: float, end: float) -> list[float]:
        interval = size / (share * quota)
        t = start + rng.uniform(0.0, interval)
        out: list[float] = []
        while t < end:
            out += [t] * size
            t += interval
        return out

    return calls


class CountsThrottledCalls:
    """A sliding window of 10/s that also counts the calls it refuses (a naive counter): not a candidate."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.seen: deque[float] = deque()

    def try_acquire(self, now: float) -> bool:
        while self.seen and self.seen[0] <= now - 1.0:
            self.seen.popleft()
        admitted = len(self.seen) < self.rate
        self.seen.append(now)
        return admitted


# ------------------------------------------------------------------------------ a quota other than --quota


@pytest.mark.parametrize(
    "service",
    [lambda: SlidingWindow(20.0), lambda: FixedWindow(20.0), lambda: TokenBucket(20.0, 20.0)],
    ids=["sliding-window-20", "fixed-window-20", "token-bucket-20"],
)
@pytest.mark.xfail(
    strict=True,
    reason="known limit (docs/ops/quota-probe.md, Limits): "
    "the probe assumes the rate is --quota; a doubled rate looks like a bucket of burst 20",
)
def test_a_doubled_quota_is_not_named_a_token_bucket_of_burst_20_with_exit_0(
    service: Callable[[], QuotaModel],
) -> None:
    """Known limit: an account whose quota was raised to 20/s (the first Service Quotas increase anyone asks for), run
    with the default ``--quota 10``. Every pattern but the 30-at-once burst stays under 20/s, and that burst loses
    exactly 10, which is what a bucket of burst 20 refilling at 10/s predicts. The probe says "consistent with
    token-bucket, burst 20 (... --quota-burst 20)", 0 calls off, exit 0, in 40 of 40 seeds measured (10 here; 0-10
    ms of jitter), for a sliding window, a fixed window and a bucket (rate = burst) alike; 21-22/s do the same.
    Neither the model nor the rate it names is the account's, and nothing hints at a higher quota."""
    wrong = []
    for seed in range(10):
        name, clear, lines = verdict(replay(service(), seed, uniform(0.0, 0.010)))
        if clear and name == "token-bucket, burst 20":
            wrong.append((seed, lines[0]))
    assert not wrong, wrong


@pytest.mark.parametrize(
    "service",
    [lambda: SlidingWindow(17.0), lambda: FixedWindow(17.0), lambda: TokenBucket(16.0, 16.0)],
    ids=["sliding-window-17", "fixed-window-17", "token-bucket-16"],
)
def test_a_higher_quota_is_not_called_only_a_writer_or_a_lower_quota(service: Callable[[], QuotaModel]) -> None:
    """Found, fixed (the line now names a quota other than --quota and a rule none of the models follows, not
    "lower"): a quota of 16-18/s (no other writer) under ``--quota 10`` makes the bucket of burst 20 the closest
    model (it predicts the fewest throttles), the observed bursts lose a few more than it predicts and no pattern
    fewer, so the new sign fires: "N calls more throttled than token-bucket, burst 20 predicts ...: another writer
    is using this dataset group's quota, or the quota is lower than --quota", in 40 of 40 seeds measured for each
    service here (10 run here; 3 ms of jitter). The account's quota is higher, the opposite of what the line says."""
    blamed = []
    for seed in range(10):
        _, clear, lines = verdict(replay(service(), seed, uniform(0.0, 0.003)))
        said = [line for line in lines if WRITER in line]
        if said and (clear or "quota is not --quota" not in said[-1] or "lower than --quota" in said[-1]):
            blamed.append((seed, said[-1]))
    assert not blamed, blamed


@pytest.mark.parametrize(
    "service",
    [lambda: TokenBucket(8.0, 20.0), lambda: TokenBucket(8.0, 8.0)],
    ids=["rate-8-burst-20", "rate-8-burst-8"],
)
@pytest.mark.xfail(
    strict=True,
    reason="known limit (docs/ops/quota-probe.md, Limits): "
    "a bucket refilling below --quota fits a bucket of burst 20 or no model",
)
def test_a_lower_quota_under_a_bucket_is_named(service: Callable[[], QuotaModel]) -> None:
    """Known limit: a token bucket refilling at 8/s (20 % under ``--quota 10``). With a burst of 20 every pattern fits
    in the burst plus 8/s of refill (36 calls in 2.9 s of the longest), so the probe says "consistent with token-
    bucket, burst 20", exit 0, in 40 of 40 seeds measured (10 here), and the operator benchmarks a rate the account
    does not have. With a burst of 8 the verdict is "no model matches; closest: fixed-window" (40 of 40), and the
    lower quota goes unnamed because the fixed window predicts more throttles than seen in the two-bursts pattern."""
    missed = []
    for seed in range(10):
        name, clear, lines = verdict(replay(service(), seed, uniform(0.0, 0.003)))
        if clear or not any("lower than --quota" in line for line in lines):
            missed.append((seed, name, clear, lines[0]))
    assert not missed, missed


@pytest.mark.parametrize("rate", [7.0, 8.0, 9.0])
def test_holds_a_lower_quota_under_a_sliding_window_is_named(rate: float) -> None:
    """Holds: a sliding window at 7-9/s under ``--quota 10`` is always unclear and names "another writer ..., or
    the quota is lower than --quota" (10 of 10 seeds each, 3 ms of jitter)."""
    for seed in range(10):
        _, clear, lines = verdict(replay(SlidingWindow(rate), seed, uniform(0.0, 0.003)))
        assert not clear and any("lower than --quota" in line or "quota is not --quota" in line for line in lines), (
            seed,
            lines,
        )


# ------------------------------------------------------------------------------ a rule none of the candidates follows


@pytest.mark.parametrize(
    "service",
    [
        lambda: TokenBucket(10.0, 15.0),
        lambda: SlidingWindow(5.0, 0.5),
        lambda: SlidingWindow(20.0, 2.0),
        lambda: CountsThrottledCalls(10.0),
    ],
    ids=["bucket-burst-15", "sliding-5-per-half-second", "sliding-20-per-2s", "window-counting-throttled-calls"],
)
def test_a_rule_outside_the_candidates_is_not_called_only_a_writer(service: Callable[[], QuotaModel]) -> None:
    """Found, fixed (the line now also names a rule none of the models follows): nothing else writes, the quota is
    10/s, but the service counts it in a way none of the five candidates does: a bucket of burst 15, 5 calls per
    half second, 20 calls per 2 s, or a window that counts the calls it refuses. The closest candidate predicts
    fewer throttles than seen and in no pattern more, so every one of these (40 of 40 seeds each measured, 10 here;
    3 ms of jitter) gets "another writer is using this dataset group's quota, or the quota is lower than --quota"
    next to "no model matches". Both causes it names are false; "no model matches" alone (the account follows some
    other rule) was right."""
    blamed = []
    for seed in range(10):
        _, clear, lines = verdict(replay(service(), seed, uniform(0.0, 0.003)))
        said = [line for line in lines if WRITER in line]
        if said and (clear or "none of these models" not in said[-1]):
            blamed.append((seed, said[-1]))
    assert not blamed, blamed


# ------------------------------------------------------------------------------ foreign writers


@pytest.mark.parametrize("burst", [None, 20.0], ids=["bucket-burst-10", "bucket-burst-20"])
@pytest.mark.xfail(
    strict=True,
    reason="known limit (docs/ops/quota-probe.md, Limits): "
    "a writer at 50-60 % beside a bucket gives no match, the writer unnamed",
)
def test_a_writer_at_half_the_quota_beside_a_bucket_is_named(burst: float | None) -> None:
    """Known limit: the emulator's own evenly spaced writer at 50 % of the quota beside a token bucket: "no model
    matches; closest: fixed-window" (or token-bucket, burst 10) and no writer named, in 40 of 40 seeds measured for
    either burst (20 here; 3 ms of jitter). The docs read "no model matches" as "the account follows some other
    rule". The rule is not monotonic in the share: beside a bucket of burst 20 a 40 % writer is named in 40 of 40
    seeds, a 50 % or 60 % one in none of 40, because the closest model is then a window or the bucket of burst 10,
    which predict more throttles than seen in some pattern (the two bursts 0.5 s apart, the 20 at once), so "in no
    pattern fewer" fails: the rule trusts the closest model to be the account's."""
    missed = []
    for seed in range(20):
        probe = replayed("token-bucket", burst, seed, 0.003, foreign=0.5)
        name, _, lines = verdict(probe)
        if not names_writer(lines):
            missed.append((seed, name, probe.observed()))
    assert not missed, missed


@pytest.mark.xfail(
    strict=True,
    reason="known limit (docs/ops/quota-probe.md, Limits): "
    "a bucket of burst 20 beside a writer can be named another model with exit 0",
)
def test_a_bucket_of_burst_20_beside_a_writer_is_not_named_another_model_with_exit_0() -> None:
    """Known limit: a bucket of burst 20 beside the emulator's evenly spaced writer at 60 % of the quota is named
    "consistent with fixed-window", clear, exit 0, no writer mentioned, in 16 of 100 seeds (3 ms of jitter). A
    writer that sends 10 calls at once every 2.5 s (40 %) makes it "consistent with token-bucket, burst 10",
    0 calls off, exit 0, in 6 of 100. Either setting reproduces an account that admits half the burst it has."""
    wrong = []
    for seed in range(100):
        name, clear, _ = verdict(replayed("token-bucket", 20.0, seed, 0.003, foreign=0.6))
        if clear and name != "token-bucket, burst 20":
            wrong.append(("even 60 %", seed, name))
        name, clear, _ = verdict(replay(TokenBucket(10.0, 20.0), seed, uniform(0.0, 0.003), foreign=groups(0.4, 10)))
        if clear and name != "token-bucket, burst 20":
            wrong.append(("10 at once, 40 %", seed, name))
    assert not wrong, (len(wrong), wrong)


@pytest.mark.xfail(
    strict=True,
    reason="known limit (docs/ops/quota-probe.md, Limits): "
    "a bucket of burst 10 beside a writer can be named a window with exit 0",
)
def test_a_bucket_of_burst_10_beside_a_bursty_writer_at_the_default_rest_is_not_a_clear_window() -> None:
    """Known limit (a little worse than the docs said on 2f6d95b): a bucket of burst 10 beside a writer sending 10 at
    once every 3.3 s (30 %) is named a window with a clear verdict, writer unmentioned, in 8 of 100 seeds (17 of
    200: 11 the fixed window, 6 the sliding one) at the default 2.5 s rest and 3 ms of jitter. The docs report 3-6
    of 100 only for the shortest rests and 5 ms of jitter, and only the fixed window."""
    wrong = []
    for seed in range(100):
        probe = replay(TokenBucket(10.0, 10.0), seed, uniform(0.0, 0.003), foreign=groups(0.3, 10))
        name, clear, _ = verdict(probe)
        if clear and name in WINDOWS:
            wrong.append((seed, name))
    assert not wrong, (len(wrong), wrong)


@pytest.mark.parametrize(
    "foreign",
    [groups(0.2, 10), groups(0.1, 5), groups(0.1, 3), poisson(0.1)],
    ids=["10-at-once-20pct", "5-at-once-10pct", "3-at-once-10pct", "poisson-10pct"],
)
def test_holds_a_bursty_writer_the_rule_misses_leaves_a_right_verdict(foreign: Foreign) -> None:
    """Holds, with a caveat for the docs: under the sliding window a writer in groups is missed far more often than
    an evenly spaced one (clear, writer unmentioned: 10 at once at 20 % in 22 of 100 seeds, 5 at once at 10 % in
    34, 3 at once at 10 % in 32, Poisson at 10 % in 4; evenly spaced at 10 %: 0), so "10-40 % named in every seed"
    is true of evenly spaced writers only. But every miss names a window, and the writer moved the throttle
    counts of the scored patterns by at most MARGIN calls from the same run without it (its groups fell in the
    rests or the unscored warm-up)."""
    for seed in range(50):
        probe = replay(SlidingWindow(10.0), seed, uniform(0.0, 0.003), foreign=foreign)
        name, clear, lines = verdict(probe)
        if clear and not names_writer(lines):
            alone = replay(SlidingWindow(10.0), seed, uniform(0.0, 0.003)).observed()
            scored = probe.scored()
            moved = sum(abs(probe.observed()[i] - alone[i]) for i in scored)
            assert name in WINDOWS and moved <= MARGIN, (seed, name, moved)


@pytest.mark.parametrize(
    "after_s",
    [
        pytest.param(16.0, id="from-the-1.2x-pattern"),
        pytest.param(
            21.5,
            id="from-the-rest-before-the-control",
            marks=pytest.mark.xfail(
                strict=True,
                reason="known limit (docs/ops/quota-probe.md, Limits): "
                "the control leaves 29 % of the quota (40 ms "
                "over 1/quota per call, so strict spacing behind jitter is not called a writer); a 20 % writer "
                "that starts after every other pattern goes unnamed",
            ),
        ),
    ],
)
def test_holds_a_writer_that_starts_mid_probe_is_named_under_the_sliding_window(after_s: float) -> None:
    """Holds: under the sliding window an evenly spaced 20 % writer that starts only at the 1.2 x pattern, or only
    in the rest before the control, is named in 20 of 20 seeds (3 ms of jitter)."""
    for seed in range(20):
        probe = replay(SlidingWindow(10.0), seed, uniform(0.0, 0.003), foreign=evenly(0.2, after_s=after_s))
        _, clear, lines = verdict(probe)
        assert not clear and names_writer(lines), (seed, probe.observed(), lines)


# ------------------------------------------------------------------------------ alone: jitter, late threads


@pytest.mark.parametrize(
    "service",
    [
        lambda: SlidingWindow(10.0),
        lambda: FixedWindow(10.0),
        lambda: TokenBucket(10.0, 10.0),
        lambda: TokenBucket(10.0, 20.0),
    ],
    ids=["sliding-window", "fixed-window", "token-bucket-10", "token-bucket-20"],
)
def test_holds_alone_no_writer_is_named_behind_tens_of_ms_of_jitter_or_late_threads(
    service: Callable[[], QuotaModel],
) -> None:
    """Holds: alone on the dataset group, the windows and both buckets never get a writer line with 0-40 ms or
    10-40 ms of transit jitter (reordering the bursts), 25 +- 10 ms (Gaussian), or threads released up to 50 ms
    late (a loaded 2-core machine; the probe records the late departure) behind 5-15 ms of transit: 10 seeds each
    here (60 each when measured)."""
    cases: list[tuple[str, Draw, Draw]] = [
        ("0-40 ms", uniform(0.0, 0.040), no_delay),
        ("10-40 ms", uniform(0.010, 0.040), no_delay),
        ("25 +- 10 ms", lambda rng: max(0.0, rng.gauss(0.025, 0.010)), no_delay),
        ("late 0-50 ms", uniform(0.005, 0.015), uniform(0.0, 0.050)),
    ]
    for label, delay, late in cases:
        for seed in range(10):
            _, _, lines = verdict(replay(service(), seed, delay, late=late))
            assert not names_writer(lines), (label, seed, lines)


@pytest.mark.parametrize(
    ("quota", "jitter_s"), [(20.0, 0.020), (50.0, 0.008)], ids=["quota-20-jitter-20ms", "quota-50-jitter-8ms"]
)
def test_strict_spacing_at_a_higher_quota_is_not_blamed_on_another_writer(quota: float, jitter_s: float) -> None:
    """Found, fixed (the control's calls are now 1/quota + 40 ms apart): the control's slack under strict spacing is
    0.25 / quota s (25 ms at 10/s, 12.5 ms at 20/s, 5 ms at 50/s), so at ``--quota 20`` 0-20 ms of jitter, and at
    ``--quota 50`` 0-8 ms, throttle the control and name another writer in 39 of 40 and 40 of 40 seeds, alone on
    the dataset group (also --quota 30 with 0-10 ms: 21 of 40; --quota 40 with 0-8 ms: 33 of 40; --quota 10 with
    0-20 ms: 0 of 40)."""
    blamed = []
    for seed in range(20):
        _, _, lines = verdict(replayed("strict-spacing", None, seed, jitter_s, quota=quota))
        if names_writer(lines):
            blamed.append(seed)
    assert not blamed, (len(blamed), blamed)


def test_strict_spacing_with_late_threads_is_not_blamed_on_another_writer() -> None:
    """Found, fixed (one control throttle more than predicted is now taken for jitter): strict spacing alone, threads
    released 0-50 ms late (recorded, so the model itself predicts a few control throttles) and 5-15 ms of transit.
    The control rule tolerates no difference at all, so one call more than predicted names another writer: 8 of 40
    seeds (25 of 100). 0-30 ms late behind 0-3 ms of transit: 6 of 100; late threads with no transit jitter: 0 of
    100."""
    blamed = []
    for seed in range(40):
        probe = replay(StrictSpacing(10.0), seed, uniform(0.005, 0.015), late=uniform(0.0, 0.050))
        _, _, lines = verdict(probe)
        if names_writer(lines):
            blamed.append(seed)
    assert not blamed, (len(blamed), blamed)


@pytest.mark.parametrize("quota", [2.0, 5.0, 7.5, 25.0, 50.0])
def test_holds_alone_at_other_quotas_and_the_shortest_rest_no_writer_is_named(quota: float) -> None:
    """Holds: at --quota 2-50 and the shortest rest (2 s), the windows and both buckets alone with 0-10 ms of
    jitter never get a writer line (5 seeds each)."""
    builds: list[Callable[[], QuotaModel]] = [
        lambda: SlidingWindow(quota),
        lambda: FixedWindow(quota),
        lambda: TokenBucket(quota, quota),
        lambda: TokenBucket(quota, 2 * quota),
    ]
    for build in builds:
        for seed in range(5):
            _, _, lines = verdict(replay(build(), seed, uniform(0.0, 0.010), quota=quota, rest_s=2.0))
            assert not names_writer(lines), (quota, seed, lines)
