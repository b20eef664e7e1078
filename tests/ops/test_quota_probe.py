"""``python -m ops quota-probe``: it names the quota model the emulator was started with, from what it observes.

The replay tests feed the probe's own patterns through each model as the "service" (with jitter) and check that the
scoring picks it out; the end-to-end tests run the command over HTTP against the emulator under each model, with
real threads and clocks, and check its verdict, its JSON and the items it wrote."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from localcloud.emulator.quota import Quotas, QuotaSettings
from localcloud.personalize_emulator import PersonalizeEmulator
from ops.cli import main
from ops.quota_probe import MARGIN, Pattern, Probe, Sent, patterns, report, score, send
from tests.factories import items_schema

ARN = "arn:aws:personalize:us-east-1:111122223333:dataset/probe/ITEMS"
REST_S = "2.05"  # the shortest rest that lets a bucket of burst 20 refill from empty (2 s at 10/s)

# (emulator model, burst) -> the probe's name for it
MODELS = {
    ("sliding-window", None): "sliding-window",
    ("fixed-window", None): "fixed-window",
    ("token-bucket", None): "token-bucket, burst 10",
    ("token-bucket", 20.0): "token-bucket, burst 20",
    ("strict-spacing", None): "strict-spacing",
}
# Told apart from every other model by more than MARGIN calls (the two windows differ by fewer: see the docstring of
# test_the_replay_names_the_model_it_came_from).
DISTINCT = {"token-bucket, burst 10", "token-bucket, burst 20", "strict-spacing"}


def replayed(
    model: str, burst: float | None, seed: int, jitter_s: float, *, quota: float = 10.0, foreign: float = 0.0
) -> Probe:
    """The probe's patterns sent through one model (the "service"): departures exactly on their offsets, up to
    ``jitter_s`` on the way to the service (so arrivals may reorder); beside the emulator's foreign writer at
    ``foreign`` x quota (evenly spaced, seeded phase)."""
    rng = random.Random(seed)
    service = Quotas(QuotaSettings(quota, model, burst, foreign), random.Random(seed))
    probe = Probe(quota, patterns(quota))
    t = 1000.0 + rng.random()
    for i, pattern in enumerate(probe.patterns):
        t += 2.5 if i else 0.0
        left = [t + o for o in pattern.offsets]
        arrivals = sorted((x + rng.uniform(0, jitter_s), j) for j, x in enumerate(left))
        throttled = {j: not service.try_acquire(ARN, a) for a, j in arrivals}
        probe.sent.append([Sent(x, throttled[j]) for j, x in enumerate(left)])
        t += max(pattern.offsets)
    return probe


@pytest.mark.parametrize(("model", "burst"), list(MODELS))
def test_the_replay_names_the_model_it_came_from(model: str, burst: float | None) -> None:
    """For every model and 20 seeds with 0-3 ms of jitter each way, the model the counts came from fits best, and
    within MARGIN; the token buckets and strict spacing stand clear of every other model by more than MARGIN. The
    sliding and fixed windows are only a few calls apart: a fixed window at the right phase throttles what a
    sliding one does in any pattern shorter than a second."""
    name = MODELS[(model, burst)]
    for seed in range(20):
        scores = score(replayed(model, burst, seed, 0.003))
        by_name = {sc.candidate.name: sc for sc in scores}
        assert by_name[name].off == scores[0].off <= MARGIN, (seed, [(sc.candidate.name, sc.off) for sc in scores])
        if name in DISTINCT:
            assert all(sc.off > by_name[name].off + MARGIN for sc in scores if sc.candidate.name != name), seed


def test_each_model_predicts_different_counts_somewhere() -> None:
    """No two candidates predict the same counts for the ideal experiment (else no run could tell them apart)."""
    predictions = {}
    for (model, burst), name in MODELS.items():
        predictions[name] = tuple(replayed(model, burst, 0, 0.0).observed())
    assert len(set(predictions.values())) == len(predictions), predictions


@pytest.fixture
def emulator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[PersonalizeEmulator]:
    model, burst, foreign = request.param
    with PersonalizeEmulator(tps=10, quota_model=model, quota_burst=burst, foreign_share=foreign, seed=3) as emu:
        emu.register_dataset(ARN)
        monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", emu.endpoint_url)
        yield emu


def probe_json(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "probe.json"
    code = main(["quota-probe", "--dataset-arn", ARN, "--rest", REST_S, "--json", str(out), *extra])
    return code, json.loads(out.read_text())


E2E = [
    ("sliding-window", None, 0.0),
    ("fixed-window", None, 0.0),
    ("token-bucket", 20.0, 0.0),
    ("strict-spacing", None, 0.0),
]


@pytest.mark.integration
@pytest.mark.parametrize("emulator", E2E, indirect=True, ids=[m if b is None else f"{m}-{b:g}" for m, b, _ in E2E])
def test_against_the_emulator_the_probe_names_its_model(emulator: PersonalizeEmulator, tmp_path: Path) -> None:
    model, burst = emulator.state.config.quota_model, emulator.state.config.quota_burst
    code, out = probe_json(tmp_path)
    best = out["models"][0]
    assert best["model"] == MODELS[(model, burst)] and best["calls_off"] <= MARGIN, out["models"]
    assert out["verdict"][0].startswith(f"consistent with {best['model']} (local cloud: --quota-model {model}")
    calls = [c for p in out["patterns"] for c in p["calls"]]
    admitted = sum(not c["throttled"] for c in calls)
    assert len(emulator.items(ARN)) == admitted  # one item per admitted call, each with its own id
    assert len(calls) == sum(len(p.offsets) for p in patterns(10))
    assert code == 0 and out["clear"]


@pytest.mark.integration
@pytest.mark.parametrize("emulator", [("sliding-window", None, 0.3)], indirect=True, ids=["foreign-writer"])
def test_another_writer_on_the_dataset_group_is_reported(emulator: PersonalizeEmulator, tmp_path: Path) -> None:
    """A foreign writer at 30 % of the quota: the probe says another writer (or a lower quota) is in its counts and
    exits 1. Whether the control pattern itself is throttled is up to the phases (a clean-clone CI run saw it not
    throttled at all), which is why the report also looks at the other patterns."""
    code, out = probe_json(tmp_path)
    assert code == 1 and not out["clear"]
    assert any("another writer" in line for line in out["verdict"]), out["verdict"]


@pytest.mark.parametrize("share", [0.1, 0.2, 0.3, 0.4])
def test_a_foreign_writer_is_named(share: float) -> None:
    """Replays under the sliding window beside a foreign writer at 10-40 % of the quota, 20 seeds, 3 ms of jitter:
    every verdict is unclear and names another writer. At 5 % it is missed in 17 of 200 seeds
    (docs/ops/quota-probe.md)."""
    for seed in range(20):
        probe = replayed("sliding-window", None, seed, 0.003, foreign=share)
        _, lines, clear = report(probe, score(probe))
        assert not clear and any("another writer" in line for line in lines), (seed, probe.observed(), lines)


def test_a_foreign_writer_that_leaves_the_control_alone_is_named_from_the_other_patterns() -> None:
    """An evenly spaced writer finds its own call of a second before just gone, so the control's extra call can be
    the writer's to lose: at 10 % the control is not throttled in these replays (and a clean-clone CI run saw the
    same at 30 % over HTTP), yet the probe throttled more than the model predicts in the other patterns."""
    quiet = 0
    for seed in range(20):
        probe = replayed("sliding-window", None, seed, 0.003, foreign=0.1)
        _, lines, _ = report(probe, score(probe))
        if not any(line.startswith("the control pattern") for line in lines):
            quiet += 1
            assert any("more throttled than sliding-window predicts" in line for line in lines), (seed, lines)
    assert quiet >= 10


@pytest.mark.parametrize(("model", "burst"), list(MODELS))
def test_alone_on_the_dataset_group_no_other_writer_is_named(model: str, burst: float | None) -> None:
    """The other-writer line never comes from jitter alone: 20 seeds per model with 0-3 ms of jitter each way."""
    for seed in range(20):
        probe = replayed(model, burst, seed, 0.003)
        _, lines, _ = report(probe, score(probe))
        assert not any("another writer" in line for line in lines), (seed, lines)


@pytest.mark.integration
@pytest.mark.parametrize("emulator", [("sliding-window", None, 0.0)], indirect=True, ids=["sliding-window"])
def test_a_schema_that_needs_properties_is_a_one_line_error(
    emulator: PersonalizeEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = items_schema({"name": "GENRE", "type": "string", "categorical": True})
    emulator.register_dataset(ARN, schema)
    assert main(["quota-probe", "--dataset-arn", ARN, "--rest", REST_S]) == 2  # at the warm-up, before any rest
    assert "pass them with --properties" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
    assert not emulator.items(ARN)
    emulator.set_tps(None)  # the refused warm-up used the second's quota (CI: the next call was throttled)
    pe = boto3.client("personalize-events", endpoint_url=emulator.endpoint_url)
    sent = send(pe, ARN, Pattern("one", (0.0,)), run_id="t", first=0, properties='{"genre": "drama"}')
    assert [s.throttled for s in sent] == [False] and list(emulator.items(ARN)) == ["quota-probe-t-0"]


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quota-probe", "--dataset-arn", ARN, "--properties", "[1]"]) == 2
    assert "--properties must be a JSON object" in " ".join(capsys.readouterr().err.split())
    assert main(["quota-probe", "--dataset-arn", ARN, "--quota", "0"]) == 2
    assert "--quota must be a number of calls/s from 1 to 50" in " ".join(capsys.readouterr().err.split())
