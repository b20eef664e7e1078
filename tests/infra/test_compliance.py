"""cdk-nag (AwsSolutions) and cfn-lint on every synthesized variant."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs

from infra.nag import add_nag_checks
from tests.infra.conftest import VARIANTS, Synthesized

pytestmark = pytest.mark.infra

CFN_LINT = Path(sys.executable).parent / "cfn-lint"


@pytest.fixture(params=["default", *VARIANTS], scope="module")
def app(
    request: pytest.FixtureRequest, default_app: Synthesized, variant_app: Callable[[str], Synthesized]
) -> Synthesized:
    return default_app if request.param == "default" else variant_app(request.param)


def _acknowledgements(outdir: Path) -> list[tuple[str, str, str]]:
    """(construct path, rule id, reason) for every acknowledgement recorded in the cloud assembly."""
    found: list[tuple[str, str, str]] = []
    for metadata_file in outdir.glob("*.metadata.json"):
        for path, entries in json.loads(metadata_file.read_text()).items():
            for entry in entries:
                if entry["type"] == cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                    found.extend((path, rule, reason) for rule, reason in entry["data"].items())
    return found


#: The app's own synth-time warnings (deliberate, documented in docs/deploy.md). With the recommended flag
#: ``@aws-cdk/core:annotationsInValidationReport`` annotations appear in the validation report too.
OWN_WARNINGS = {
    "Annotation::stream-to-personalize:example-dataset",
    "Annotation::stream-to-personalize:reserved-concurrency",
    "Annotation::stream-to-personalize:pacing",
    "Annotation::stream-to-personalize:unreserved",
    "Annotation::stream-to-personalize:asset-wheels",
}


def test_cdk_nag_has_no_unacknowledged_findings(app: Synthesized) -> None:
    # synth() raises when a plugin reports an error; the report also lists warnings, which we refuse too
    # (except the app's own deliberate warnings).
    report = app.validation_report()
    violations = [
        (v["ruleName"], c["constructPath"])
        for plugin in report["pluginReports"]
        for v in plugin["violations"]
        for c in v["violatingConstructs"]
        if v["ruleName"] not in OWN_WARNINGS
    ]
    assert violations == []


def test_every_acknowledgement_has_a_reason(app: Synthesized) -> None:
    acknowledgements = _acknowledgements(app.outdir)
    assert acknowledgements, "expected the construct's cdk-nag acknowledgements in the assembly metadata"
    for path, rule, reason in acknowledgements:
        assert "AwsSolutions-" in rule, (path, rule)
        assert len(reason.strip()) >= 30, f"{path} acknowledges {rule} without a real reason: {reason!r}"


def test_cdk_nag_really_runs(tmp_path: Path) -> None:
    """The same plugin setup fails a synth with an unencrypted, non-SSL queue (the gate can fail)."""
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Bad")
    sqs.Queue(stack, "Plain", encryption=sqs.QueueEncryption.UNENCRYPTED)
    add_nag_checks(app)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    rules = {v["ruleName"] for p in report["pluginReports"] for v in p["violations"]}
    assert {"AwsSolutions-SQS2", "AwsSolutions-SQS4"} <= rules


def _cfn_lint(template: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(CFN_LINT), "--format", "json", "--regions", "us-east-1", "--", str(template)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode in (0, 2, 4, 6, 8, 10, 12, 14), result.stderr  # bit 1 = a fatal lint failure
    return json.loads(result.stdout or "[]")


def test_cfn_lint_has_no_errors(app: Synthesized) -> None:
    findings = _cfn_lint(app.template_path)
    errors = [f"{f['Rule']['Id']} {f['Message']} at {f['Location']['Path']}" for f in findings if f["Level"] == "Error"]
    assert errors == []
