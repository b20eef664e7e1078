"""The event source mappings' on-failure destination: an S3 bucket that keeps whole invocation records.

For a stream event source mapping (DynamoDB Streams, Kinesis) Lambda writes one object per batch that exhausted its
retries or its record age, at ``aws/lambda/<ESM UUID>/<shard id>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<random UUID>``:
the batch's coordinates (``requestContext``, ``responseContext``, ``version``, ``timestamp``,
``DDBStreamBatchInfo``/``KinesisBatchInfo``) **and** ``payload``, the original invocation event as an escaped JSON
string (https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html and
https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html). An SQS destination gets the
coordinates only, and those point into a stream that keeps records 24 hours (DynamoDB) or its retention (Kinesis):
a batch that failed at the end of its maximum record age can be gone from the stream by the time anyone looks.
``python -m ops replay`` reads these objects and moves each one under ``replayed/`` once it has landed.

The bucket: S3-managed encryption (SSE-S3; Lambda then needs no ``kms:GenerateDataKey``), SSL-only, public access
blocked, owner-enforced object ownership, **no versioning** (each object is written once, by Lambda, and moved
once, by replay: versions would only keep copies of what replay has already handled), a lifecycle expiry
(``onFailure.expireDays``), and retained when the stack is deleted unless ``onFailure.removalPolicy`` says
``destroy`` (it holds records that did not land).

Why a hand-written :class:`S3OnFailureDestination`: CDK's ``aws_lambda_event_sources.S3OnFailureDestination``
grants the function ``grantReadWrite`` on the bucket (get, delete, abort, put...). Lambda documents that the
execution role needs exactly ``s3:PutObject`` and ``s3:ListBucket`` on the destination, and recommends an
``s3:ResourceAccount`` condition so that a bucket of the same name recreated in another account never receives
the records; this class grants exactly that.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge

__all__ = ["DESTINATION_ACTIONS", "KEY_PREFIX", "REPLAYED_PREFIX", "FailedBatchesBucket", "S3OnFailureDestination"]

#: What Lambda's execution role needs on an S3 on-failure destination (Lambda developer guide).
DESTINATION_ACTIONS = ("s3:PutObject", "s3:ListBucket")
#: Where Lambda writes the invocation records.
KEY_PREFIX = "aws/lambda/"
#: Where ``python -m ops replay`` moves an object once its batch has landed.
REPLAYED_PREFIX = "replayed/"


class FailedBatchesBucket(Construct):
    """The bucket; ``bucket_name`` goes into the stack's ``FailedBatchesBucketName`` output."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        expire_days: int = 30,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
    ) -> None:
        """Create the bucket (SSE-S3, SSL-only, private, expiring after ``expire_days``)."""
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=False,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireFailedBatches",
                    expiration=cdk.Duration.days(expire_days),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
            ],
            removal_policy=removal_policy,
        )
        self.bucket_name: str = self.bucket.bucket_name
        self.bucket_arn: str = self.bucket.bucket_arn
        acknowledge(
            self.bucket,
            "AwsSolutions-S1",
            "Only Lambda writes here (the on-failure invocation records) and only the replay tool reads and moves "
            "objects; server access logs would need a second bucket for no operator question they answer. "
            "CloudTrail data events cover audits when required.",
        )


@jsii.implements(lambda_.IEventSourceDlq)
class S3OnFailureDestination:
    """An S3 on-failure destination for a stream event source, granting exactly :data:`DESTINATION_ACTIONS`."""

    def __init__(self, bucket: FailedBatchesBucket) -> None:
        self.bucket = bucket

    def bind(self, _target: lambda_.IEventSourceMapping, target_handler: lambda_.IFunction) -> Any:
        """Grant the function's role the destination permissions and return the destination config."""
        account = cdk.Stack.of(self.bucket).account
        target_handler.add_to_role_policy(
            iam.PolicyStatement(
                sid="OnFailureDestination",
                actions=list(DESTINATION_ACTIONS),
                resources=[self.bucket.bucket_arn, f"{self.bucket.bucket_arn}/*"],
                conditions={"StringEquals": {"s3:ResourceAccount": account}},
            )
        )
        return lambda_.DlqDestinationConfig(destination=self.bucket.bucket_arn)
