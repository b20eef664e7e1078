"""Compiled wheels for the Lambda asset, installed for arm64 without Docker.

The runtime serializes properties with orjson when it can import it (about twice as fast as the standard
library's ``json`` for the transform, see bench/). orjson is a compiled extension, so the asset needs the
wheel built for the function's platform (manylinux aarch64, CPython 3.13), not the build machine's.
``PythonFunction`` would build it in Docker; instead ``pip install --platform … --only-binary=:all: --target``
fetches the published binary wheel directly, at synth. The result is cached under ``.cache/asset-wheels``.

The fetch is bounded and verified:

* **pinned hash**: pip runs in hash-checking mode (``--require-hashes``) with the sha256 of the one wheel
  :data:`PINNED_WHEELS` lists for the version requirements.txt pins; a version without a pinned hash is not
  fetched at all (bump both together);
* **timeout**: :data:`FETCH_TIMEOUT_S` for the whole pip run;
* **cached failure**: a failed or timed-out fetch writes ``<target>.failed`` (with the reason), and synths
  within :data:`FAILURE_TTL_S` don't try again, so an offline machine pays the timeout once a day, not on every
  synth. ``STREAM_TO_PERSONALIZE_RETRY_WHEELS=1`` retries now; ``STREAM_TO_PERSONALIZE_OFFLINE=1`` never fetches.

If the wheel cannot be had, the asset ships without it and the synth carries a warning: the runtime then falls
back to ``json`` and behaves the same, only slower.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.powertools import REPO_ROOT, REQUIREMENTS

ASSET_WHEELS = ("orjson",)
CACHE = REPO_ROOT / ".cache" / "asset-wheels"
PLATFORM = "manylinux2014_aarch64"
PYTHON = "3.13"
FETCH_TIMEOUT_S = 120.0
FAILURE_TTL_S = 24 * 3600.0
OFFLINE_ENV = "STREAM_TO_PERSONALIZE_OFFLINE"
RETRY_ENV = "STREAM_TO_PERSONALIZE_RETRY_WHEELS"

#: sha256 of the one wheel each pinned version resolves to for (PLATFORM, PYTHON): bump with requirements.txt.
PINNED_WHEELS: dict[tuple[str, str], str] = {
    # orjson-3.13.0-cp313-cp313-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
    ("orjson", "3.13.0"): "b081f0e7b600ff24513dec4ca75507fa05e904607847e386e8310d5b7b96b6c7",
}


class WheelUnavailable(Exception):
    """The wheel could not be installed for the Lambda platform; the message says why (one line)."""


def pinned_version(name: str, requirements: Path = REQUIREMENTS) -> str:
    """The ``name==<version>`` pin in requirements.txt."""
    match = re.search(rf"^\s*{re.escape(name)}\s*==\s*([0-9][0-9A-Za-z.\-+]*)", requirements.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{requirements} has no '{name}==<version>' pin")
    return match.group(1)


def _truthy(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in {"1", "true", "yes"}


def wheel_dir(
    name: str,
    version: str,
    *,
    cache: Path = CACHE,
    timeout_s: float = FETCH_TIMEOUT_S,
    failure_ttl_s: float = FAILURE_TTL_S,
) -> Path:
    """A directory holding ``name==version`` installed for the Lambda platform.

    Raises :class:`WheelUnavailable` (with the reason) when it can't be had now: no pinned hash, offline mode,
    a recent cached failure, or this fetch failing or timing out (which is then cached).
    """
    target = cache / f"{name}-{version}-{PLATFORM}-cp{PYTHON.replace('.', '')}"
    if (target / ".complete").is_file():
        return target
    digest = PINNED_WHEELS.get((name, version))
    if digest is None:
        raise WheelUnavailable(f"no pinned sha256 for {name}=={version} in infra/asset_wheels.PINNED_WHEELS")
    if _truthy(OFFLINE_ENV):
        raise WheelUnavailable(f"{OFFLINE_ENV} is set")
    failed = target.with_name(target.name + ".failed")
    if failed.is_file() and not _truthy(RETRY_ENV):
        age = time.time() - failed.stat().st_mtime
        if age < failure_ttl_s:
            reason = failed.read_text(encoding="utf-8").strip() or "unknown error"
            raise WheelUnavailable(
                f"fetch failed {age / 60:.0f} min ago ({reason}); cached until {failure_ttl_s / 3600:g} h old, "
                f"{RETRY_ENV}=1 retries now"
            )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"{name}=={version} --hash=sha256:{digest}\n", encoding="utf-8")
        installed = Path(tmp) / "site"
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--require-hashes", "--only-binary=:all:", "--platform", PLATFORM, "--python-version", PYTHON,
            "--implementation", "cp", "--target", str(installed), "-r", str(requirement),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            reason = f"pip timed out after {timeout_s:g} s"
        else:
            output = done.stderr or done.stdout or ""
            lines = [line.strip() for line in output.splitlines() if line.strip()]
            if done.returncode == 0:
                reason = ""
            elif "DO NOT MATCH THE HASHES" in output:
                reason = f"the wheel does not match the pinned sha256 ({lines[-1] if lines else 'no detail'})"
            else:
                reason = lines[-1] if lines else f"pip exit {done.returncode}"
        if reason:
            failed.write_text(reason[:500] + "\n", encoding="utf-8")
            raise WheelUnavailable(reason)
        (installed / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(installed), target)
    failed.unlink(missing_ok=True)
    return target


def install_into(staging: Path, *, cache: Path = CACHE) -> list[str]:
    """Copy every asset wheel into ``staging``; return ``"<name>: <reason>"`` for each one that could not be had."""
    missing = []
    for name in ASSET_WHEELS:
        try:
            source = wheel_dir(name, pinned_version(name), cache=cache)
        except WheelUnavailable as exc:
            missing.append(f"{name}: {exc}")
            continue
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete", "bin"))
    return missing
