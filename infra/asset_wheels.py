"""Compiled wheels for the Lambda asset, installed for arm64 without Docker.

The runtime serializes properties with orjson when it can import it (about twice as fast as the standard
library's ``json`` for the transform, see bench/). orjson is a compiled extension, so the asset needs the
wheel built for the function's platform (manylinux aarch64, CPython 3.13), not the build machine's.
``PythonFunction`` would build it in Docker; instead ``pip install --platform … --only-binary=:all: --target``
fetches the published binary wheel directly, at synth. The result is cached under ``.cache/asset-wheels``.

If the wheel cannot be fetched (an offline synth), the asset ships without it and the synth carries a
warning: the runtime then falls back to ``json`` and behaves the same, only slower.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from infra.powertools import REPO_ROOT, REQUIREMENTS

ASSET_WHEELS = ("orjson",)
CACHE = REPO_ROOT / ".cache" / "asset-wheels"
PLATFORM = "manylinux2014_aarch64"
PYTHON = "3.13"


def pinned_version(name: str, requirements: Path = REQUIREMENTS) -> str:
    """The ``name==<version>`` pin in requirements.txt."""
    match = re.search(rf"^\s*{re.escape(name)}\s*==\s*([0-9][0-9A-Za-z.\-+]*)", requirements.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{requirements} has no '{name}==<version>' pin")
    return match.group(1)


def wheel_dir(name: str, version: str, *, cache: Path = CACHE) -> Path | None:
    """A directory holding ``name==version`` installed for the Lambda platform, or None if it can't be had."""
    target = cache / f"{name}-{version}-{PLATFORM}-cp{PYTHON.replace('.', '')}"
    if (target / ".complete").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:", "--platform", PLATFORM, "--python-version", PYTHON, "--implementation", "cp",
            "--target", tmp, f"{name}=={version}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return None
        Path(tmp, ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(tmp, target)
    return target


def install_into(staging: Path) -> list[str]:
    """Copy every asset wheel into ``staging``; return the names that could not be fetched."""
    missing = []
    for name in ASSET_WHEELS:
        source = wheel_dir(name, pinned_version(name))
        if source is None:
            missing.append(name)
            continue
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete", "bin"))
    return missing
