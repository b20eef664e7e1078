"""cdk-nag acknowledgements, each with its reason, attached to the construct that owns the finding.

cdk-nag 3 runs as a CDK policy-validation plugin and reads CDK's native acknowledgements
(``Validations.of(construct).acknowledge``). Findings that carry a detail (IAM5 wildcards) are
acknowledged one by one in the ``RuleId[Finding]`` form, so a new wildcard is never hidden by an old one.
"""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

__all__ = ["acknowledge", "add_nag_checks"]


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding ``rule_id`` on ``construct`` (and its children) with a ``reason``."""
    if not reason.strip():
        raise ValueError(f"a cdk-nag acknowledgement of {rule_id} needs a reason")
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=rule_id, reason=reason))


def add_nag_checks(scope: IConstruct) -> None:
    """Run the AwsSolutions pack on ``scope`` at synth (violations fail the synth)."""
    cdk.Validations.of(scope).add_plugins(AwsSolutionsChecks(scope, verbose=False))
