"""The orjson wheel fetched at synth: pinned hash, timeout, cached failure, and the json fallback offline.

No network: pip is replaced by a fake that records its command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infra import asset_wheels
from infra.asset_wheels import PINNED_WHEELS, WheelUnavailable, install_into, pinned_version, wheel_dir

pytestmark = pytest.mark.infra

VERSION = pinned_version("orjson")


class FakePip:
    """Stands in for ``subprocess.run``: fails, times out, or 'installs' a fake orjson into --target."""

    def __init__(self, outcome: str = "ok") -> None:
        self.outcome = outcome
        self.commands: list[list[str]] = []
        self.requirements: list[str] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        self.requirements.append(Path(command[command.index("-r") + 1]).read_text())
        assert kwargs["timeout"] > 0
        if self.outcome == "timeout":
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        if self.outcome == "fail":
            return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (network down)\n")
        target = Path(command[command.index("--target") + 1])
        (target / "orjson").mkdir(parents=True)
        (target / "orjson" / "orjson.cpython-313-aarch64-linux-gnu.so").write_bytes(b"\x7fELF")
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(asset_wheels.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(asset_wheels.RETRY_ENV, raising=False)


def test_the_pinned_version_has_a_pinned_hash() -> None:
    assert ("orjson", VERSION) in PINNED_WHEELS, "bump PINNED_WHEELS together with requirements.txt"
    assert len(PINNED_WHEELS[("orjson", VERSION)]) == 64


def test_fetch_runs_pip_in_hash_checking_mode_with_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip()
    monkeypatch.setattr(asset_wheels.subprocess, "run", pip)
    target = wheel_dir("orjson", VERSION, cache=tmp_path, timeout_s=7)
    assert (target / "orjson").is_dir() and (target / ".complete").is_file()
    (command,) = pip.commands
    assert "--require-hashes" in command and "--only-binary=:all:" in command
    assert command[command.index("--platform") + 1] == "manylinux2014_aarch64"
    assert pip.requirements == [f"orjson=={VERSION} --hash=sha256:{PINNED_WHEELS[('orjson', VERSION)]}\n"]
    # Cached: no second pip run.
    assert wheel_dir("orjson", VERSION, cache=tmp_path) == target
    assert len(pip.commands) == 1


@pytest.mark.parametrize(("outcome", "reason"), [("fail", "network down"), ("timeout", "timed out after 7 s")])
def test_a_failure_is_cached_not_retried_on_every_synth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str, reason: str
) -> None:
    pip = FakePip(outcome)
    monkeypatch.setattr(asset_wheels.subprocess, "run", pip)
    with pytest.raises(WheelUnavailable, match=reason):
        wheel_dir("orjson", VERSION, cache=tmp_path, timeout_s=7)
    with pytest.raises(WheelUnavailable, match=rf"fetch failed 0 min ago \(.*{reason}.*\); cached until 24 h old"):
        wheel_dir("orjson", VERSION, cache=tmp_path, timeout_s=7)
    assert len(pip.commands) == 1
    # The cached failure expires…
    (failed,) = tmp_path.glob("*.failed")
    old = time.time() - asset_wheels.FAILURE_TTL_S - 1
    os.utime(failed, (old, old))
    pip.outcome = "ok"
    assert (wheel_dir("orjson", VERSION, cache=tmp_path) / "orjson").is_dir()
    assert len(pip.commands) == 2
    assert not failed.exists()


def test_retry_env_overrides_the_cached_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip("fail")
    monkeypatch.setattr(asset_wheels.subprocess, "run", pip)
    with pytest.raises(WheelUnavailable):
        wheel_dir("orjson", VERSION, cache=tmp_path)
    monkeypatch.setenv(asset_wheels.RETRY_ENV, "1")
    pip.outcome = "ok"
    assert (wheel_dir("orjson", VERSION, cache=tmp_path) / "orjson").is_dir()


def test_no_fetch_without_a_pinned_hash_or_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip()
    monkeypatch.setattr(asset_wheels.subprocess, "run", pip)
    with pytest.raises(WheelUnavailable, match=r"no pinned sha256 for orjson==0\.0\.1"):
        wheel_dir("orjson", "0.0.1", cache=tmp_path)
    monkeypatch.setenv(asset_wheels.OFFLINE_ENV, "1")
    with pytest.raises(WheelUnavailable, match="OFFLINE is set"):
        wheel_dir("orjson", VERSION, cache=tmp_path)
    assert pip.commands == []


def test_offline_asset_ships_without_orjson_and_the_runtime_falls_back_to_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asset_wheels.subprocess, "run", FakePip("fail"))
    staging = tmp_path / "asset"
    staging.mkdir()
    missing = install_into(staging, cache=tmp_path / "cache")
    assert len(missing) == 1 and missing[0].startswith("orjson: ")
    assert not (staging / "orjson").exists()
    monkeypatch.undo()  # the real subprocess.run again
    # The runtime's serializer works without orjson (the json path).
    script = (
        "import sys; sys.modules['orjson'] = None\n"
        "from connector import item\n"
        "assert item._orjson is None\n"
        "assert item.serialize({'a': 1}) == '{\"a\":1}' or item.serialize({'a': 1}) == '{\"a\": 1}'\n"
    )
    lambda_src = Path(asset_wheels.REPO_ROOT) / "lambda_src"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=lambda_src, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
