"""The runner's chaos knobs: a function ``Timeout`` override, and the hang (frozen sandbox) and forced fault hooks."""

from __future__ import annotations

from pathlib import Path

from tests.localcloud import test_esm_runner as base

moto_url = base.moto_url  # the module-scoped moto server fixture


def test_a_frozen_sandbox_ends_at_the_overridden_timeout_and_the_batch_is_retried(
    moto_url: str, tmp_path: Path
) -> None:
    # GIVEN a template timeout of 60 s, run with a 2 s override, and one forced freeze
    template = base.make_template("sleepy_once.handler", kinesis={}, timeout=60)
    with base.harness(moto_url, tmp_path, template, env={"SLEEP_S": "0.5"}, function_overrides={"timeout_s": 2.0}) as h:
        h.runner.set_faults(hang_next=1)
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        stats, ledger = h.runner.stats(), h.runner.ledger()

    # THEN the first invocation froze and was killed at the overridden timeout, not the template's
    frozen, retried = ledger
    assert frozen.outcome == "timeout" and frozen.fault == "hang"
    assert frozen.error is not None and frozen.error["errorType"] == "Sandbox.Timedout"
    assert 1900 <= frozen.duration_ms < 4000
    assert next(iter(h.runner.functions.values())).timeout_s == 2.0
    # AND the batch was retried in a fresh worker and succeeded
    assert retried.outcome == "success" and retried.fault is None and retried.cold_start
    assert stats.hangs == 1 and stats.timeouts == 1 and stats.kills == 0 and stats.records_succeeded == 1


def test_forced_kill_fires_on_the_next_invocation(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("recorder.handler", kinesis={})
    with base.harness(moto_url, tmp_path, template, seed=3) as h:
        h.runner.set_faults(kill_next=1)
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        stats, ledger = h.runner.stats(), h.runner.ledger()

    assert [e.outcome for e in ledger] == ["killed", "success"]
    assert ledger[0].fault == "kill" and stats.kills == 1 and stats.records_succeeded == 1
