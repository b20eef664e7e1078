"""The connector's state table (``STATE_TABLE``): one DynamoDB table for the shared PutItems budget and the
CDC version guard.

Layout (the runtime's contract; the table only fixes the key): a string partition key ``pk``, no sort key,
TTL on ``expiresAt``.

* ``pk = "budget#<dataset group ARN>"``: the PutItems budget shared by every concurrent invocation and every
  operator tool writing to that dataset group;
* ``pk = "version#<dataset ARN>#<item id>"``: the last CDC change written per item (``ts``, ``seq``,
  ``expiresAt``), so an older change delivered later through Kinesis never overwrites a newer one.

On-demand billing (the request rate follows the PutItems rate, a few requests per call), encrypted with the
AWS-owned key, no point-in-time recovery (nothing here is worth restoring: budget tokens live for seconds, and
a lost version row only means the guard re-learns that item's version). Removal policy ``DESTROY`` by default:
the table holds no user data; ``RETAIN`` on request.

The function gets exactly ``GetItem``, ``BatchGetItem``, ``PutItem`` and ``UpdateItem`` on the table ARN
(no Scan, Query or Delete): see :meth:`StateTable.grant_connector`.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.nag import acknowledge

__all__ = ["CONNECTOR_ACTIONS", "PARTITION_KEY", "TTL_ATTRIBUTE", "StateTable"]

PARTITION_KEY = "pk"
TTL_ATTRIBUTE = "expiresAt"
#: What the connector (and the operator tools) may do on the table: read, batch-read, conditional writes.
CONNECTOR_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")


class StateTable(Construct):
    """The state table; ``table_name`` goes into ``STATE_TABLE``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        table_name: str | None = None,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.DESTROY,
    ) -> None:
        """Create the table (on-demand, encrypted, TTL on ``expiresAt``)."""
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=table_name,
            partition_key=dynamodb.Attribute(name=PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=TTL_ATTRIBUTE,
            removal_policy=removal_policy,
        )
        self.table_name: str = self.table.table_name
        self.table_arn: str = self.table.table_arn
        acknowledge(
            self.table,
            "AwsSolutions-DDB3",
            "Ephemeral connector state only (PutItems budget tokens that live seconds, and the last CDC version "
            "written per item, which the guard re-learns); nothing to restore, so no point-in-time recovery.",
        )

    def grant_connector(self, grantee: iam.IGrantable) -> None:
        """Allow exactly :data:`CONNECTOR_ACTIONS` on this table's ARN (not on its indexes or streams)."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(sid="ConnectorState", actions=list(CONNECTOR_ACTIONS), resources=[self.table_arn])
        )
