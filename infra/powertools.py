"""The Powertools for AWS Lambda (Python) public layer, pinned to the version in requirements.txt.

The function gets Powertools from the layer that AWS publishes, not from the asset, so the layer must be
the exact version the tests ran against. The version is read from ``requirements.txt`` (the single source
of truth); the layer ARN is resolved at deploy time from the public SSM parameter
``/aws/service/powertools/python/<arch>/<runtime>/<version>``, so synth stays offline.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements.txt"
_PIN = re.compile(r"^\s*aws-lambda-powertools(?:\[[^\]]*\])?\s*==\s*([0-9][0-9A-Za-z.\-+]*)\s*(?:#.*)?$", re.M)


def powertools_version(requirements: Path = REQUIREMENTS) -> str:
    """The pinned ``aws-lambda-powertools`` version from ``requirements`` (falls back to the installed one).

    The fallback serves users who import the construct from elsewhere, without this repo's requirements.
    """
    if requirements.is_file():
        match = _PIN.search(requirements.read_text(encoding="utf-8"))
        if match:
            return match.group(1)
        raise RuntimeError(f"{requirements} has no 'aws-lambda-powertools==<version>' pin")
    return metadata.version("aws-lambda-powertools")


def layer_parameter_name(*, version: str, architecture: str = "arm64", runtime: str = "python3.13") -> str:
    """The public SSM parameter that holds the layer version ARN for ``version``."""
    return f"/aws/service/powertools/python/{architecture}/{runtime}/{version}"
