"""cdk.json carries the recommended feature flags exactly as ``cdk init`` writes them for this CDK version.

``cdk init`` copies ``aws-cdk/lib/init-templates/.recommended-feature-flags.json`` (the CLI's copy of
aws-cdk-lib's ``recommended-feature-flags.json``) into ``context``, sorted. The synthesized feature-flag
report then lists no recommended flag as unconfigured except the ones CDK v2 retired (always on).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.synth import CDK_JSON, REPO_ROOT, cdk_json_context, synth
from tests.infra.conftest import Synthesized

pytestmark = pytest.mark.infra

CLI_FLAGS = REPO_ROOT / "node_modules" / "aws-cdk" / "lib" / "init-templates" / ".recommended-feature-flags.json"


def _flags() -> dict[str, Any]:
    return {k: v for k, v in cdk_json_context().items() if k.startswith("@")}


def test_cdk_json_has_the_cli_recommended_flags() -> None:
    if not CLI_FLAGS.is_file():
        pytest.skip("the CDK CLI is not installed (npm ci)")
    recommended = json.loads(CLI_FLAGS.read_text())
    assert _flags() == recommended
    context = json.loads(CDK_JSON.read_text())["context"]
    flag_keys = [k for k in context if k.startswith("@")]
    assert flag_keys == sorted(flag_keys)  # as cdk init writes them


def test_no_recommended_flag_left_unconfigured(default_app: Synthesized) -> None:
    manifest = json.loads((default_app.outdir / "manifest.json").read_text())
    report = manifest["artifacts"]["aws-cdk-lib/feature-flag-report"]["properties"]["flags"]
    # Unconfigured is fine only where the default already is the recommendation (flags CDK v2 retired, and
    # flags recommended off).
    unconfigured = {
        name
        for name, flag in report.items()
        if "userValue" not in flag
        and flag.get("recommendedValue") != flag.get("unconfiguredBehavesLike", {}).get("v2", False)
    }
    assert unconfigured == set()
    for name, value in _flags().items():
        assert report[name]["userValue"] == value, name


MINIMIZE_POLICIES = "@aws-cdk/aws-iam:minimizePolicies"


def test_minimize_policies_merges_the_role_statements(variant_app: Callable[[str], Synthesized]) -> None:
    """The flag this template depends on: one statement holds the wildcards of two grants (X-Ray tracing and the
    stream read; tracing is on in the ``new_on_demand`` variant), and the poison queue's send stays one
    statement."""
    assert _flags()[MINIMIZE_POLICIES] is True
    app = variant_app("new_on_demand")
    (policy,) = [p for k, p in app.template.find_resources("AWS::IAM::Policy").items() if k.startswith("ConnectorRole")]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    sqs = [s for s in statements if "sqs:SendMessage" in s["Action"]]
    assert len(sqs) == 1
    (wildcard,) = [s for s in statements if s["Resource"] == "*"]
    assert {"dynamodb:ListStreams", "xray:PutTraceSegments"} <= set(wildcard["Action"])


def test_no_other_flag_changes_the_template(default_app: Synthesized, tmp_path: Path) -> None:
    """Every other recommended flag leaves this app's template unchanged today (resource by resource); if a CDK
    upgrade makes one matter, this names the resources so the flag's effect gets its own test."""
    only_minimize = {k: v for k, v in cdk_json_context().items() if not k.startswith("@") or k == MINIMIZE_POLICIES}
    path = synth(tmp_path / "cdk.out", only_minimize, use_cdk_json=False)
    plain = json.loads(path.read_text())["Resources"]
    flagged = default_app.raw["Resources"]
    changed = sorted(k for k in set(plain) | set(flagged) if plain.get(k) != flagged.get(k))
    assert changed == []
