"""The emulator's quota models: each one's admission rule on synthetic arrival times, then through the wire.

AWS documents "10 PutItems calls per second per dataset group" and nothing about how they are counted
(localcloud/emulator/quota.py), so every model must admit ``rate`` evenly paced calls per second and differ
only on bursts and close arrivals.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localcloud.emulator.quota import (
    QUOTA_MODELS,
    FixedWindow,
    Quotas,
    QuotaSettings,
    SlidingWindow,
    StrictSpacing,
    TokenBucket,
    make_model,
)
from localcloud.personalize_emulator import PersonalizeEmulator

ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/catalog/ITEMS"


def admitted(model: Any, times: list[float]) -> list[bool]:
    return [model.try_acquire(t) for t in times]


# ------------------------------------------------------------------------------------------------ rules


@pytest.mark.parametrize("name", QUOTA_MODELS)
def test_every_model_admits_rate_evenly_paced_calls_per_second(name: str) -> None:
    model = make_model(name, 8)
    times = [0.5 + i * 0.125 for i in range(80)]  # exactly 8/s for 10 s (binary-exact times)
    assert all(admitted(model, times))


@pytest.mark.parametrize("name", QUOTA_MODELS)
def test_no_model_admits_more_than_rate_over_a_long_run(name: str) -> None:
    model = make_model(name, 10, burst=10)
    times = [0.5 + i * 0.01 for i in range(2000)]  # 100/s for 20 s
    ok = sum(admitted(model, times))
    assert ok <= 10 * 20 + 10  # the rate, plus at most one burst
    assert ok >= 10 * 19


def test_sliding_window_counts_the_last_second_ending_at_the_arrival() -> None:
    model = SlidingWindow(3)
    assert admitted(model, [0.0, 0.1, 0.2, 0.9]) == [True, True, True, False]
    assert admitted(model, [1.0]) == [True]  # 0.0 left the window (t - 1 s, t]
    assert admitted(model, [1.05]) == [False]  # 0.1 and 0.2 are still inside
    assert admitted(model, [1.15]) == [True]


def test_fixed_window_resets_on_each_whole_second_so_a_burst_across_an_edge_passes() -> None:
    model = FixedWindow(3)
    assert admitted(model, [0.7, 0.8, 0.9, 0.95]) == [True, True, True, False]
    assert admitted(model, [1.0, 1.01, 1.02, 1.03]) == [True, True, True, False]  # 6 calls in 0.33 s


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    model = TokenBucket(rate=10, burst=5)
    assert admitted(model, [0.0] * 6) == [True] * 5 + [False]
    assert admitted(model, [0.05]) == [False]  # half a token
    assert admitted(model, [0.1]) == [True]  # one token refilled
    assert admitted(model, [10.0] * 6) == [True] * 5 + [False]  # never more than burst


def test_token_bucket_needs_a_burst_of_at_least_one() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate=10, burst=0.5)


def test_strict_spacing_refuses_any_call_closer_than_one_over_rate() -> None:
    model = StrictSpacing(10)
    assert admitted(model, [0.0, 0.05, 0.1, 0.15, 0.2]) == [True, False, True, False, True]


def test_throttled_calls_consume_nothing_in_any_model() -> None:
    for name in QUOTA_MODELS:
        model = make_model(name, 2, burst=2)
        spam = admitted(model, [0.0, 0.0, 0.0, 0.0, 0.0])
        assert spam.count(True) <= 2
        assert model.try_acquire(1.01), name  # the refused calls did not push the next admission back


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown quota model"):
        make_model("leaky", 10)


def test_foreign_writer_uses_its_share_of_the_quota() -> None:
    quotas = Quotas(QuotaSettings(rate=10, model="sliding-window", foreign_share=0.2), random.Random(1))
    ok = sum(quotas.try_acquire("g", 0.5 + i * 0.01) for i in range(3000))  # we hammer for 30 s
    described = quotas.describe()
    assert described["foreign_calls"] == pytest.approx(2 * 30, abs=2)
    assert ok + described["foreign_calls"] - described["foreign_throttled"] <= 10 * 30 + 10
    assert ok <= 8 * 30 + 10 + described["foreign_throttled"]


def test_foreign_writer_is_per_key_and_off_by_default() -> None:
    quotas = Quotas(QuotaSettings(rate=10), random.Random(1))
    assert all(quotas.try_acquire("g", i * 0.125) for i in range(50))
    assert quotas.describe()["foreign_calls"] == 0


# ---------------------------------------------------------------------------------------------- the wire


@pytest.fixture
def pe_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _burst(emu: PersonalizeEmulator, n: int) -> int:
    client = boto3.client(
        "personalize-events",
        endpoint_url=emu.endpoint_url,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    ok = 0
    for i in range(n):
        try:
            client.put_items(datasetArn=ARN, items=[{"itemId": f"i{i}", "properties": json.dumps({"a": 1})}])
            ok += 1
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ThrottlingException"
    return ok


@pytest.mark.integration
@pytest.mark.usefixtures("pe_env")
def test_quota_model_is_chosen_at_start_and_switched_through_the_admin_api() -> None:
    with PersonalizeEmulator(tps=10, quota_model="strict-spacing") as emu:
        emu.register_dataset(ARN)
        assert emu.config()["quotaModel"] == "strict-spacing"
        assert _burst(emu, 5) == 1  # five back-to-back calls: one admitted
        emu.set_quota(model="token-bucket", burst=3)
        assert _burst(emu, 6) == 3
        assert emu.stats()["quota"]["model"] == "token-bucket"
        with pytest.raises(ValueError, match="quota_model"):
            emu.configure(quotaModel="leaky")
        with pytest.raises(ValueError, match="foreign_share"):
            emu.configure(foreignShare=1.0)


@pytest.mark.integration
@pytest.mark.usefixtures("pe_env")
def test_request_jitter_delays_calls_before_the_quota() -> None:
    with PersonalizeEmulator(tps=0, request_jitter_ms=80, seed=3) as emu:
        emu.register_dataset(ARN)
        began = time.monotonic()
        assert _burst(emu, 10) == 10
        assert time.monotonic() - began >= 10 * 0.080 / 2 * 0.6  # mean 40 ms each, with slack
