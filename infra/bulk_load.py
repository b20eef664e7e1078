"""Bulk load on AWS (opt-in, ``bulkLoad.enabled``): a DynamoDB export to S3 -> the Items CSV -> a dataset import job.

A Step Functions state machine (standard workflow, logging ALL, X-Ray tracing of the state machine):

1. ``Defaults``: the execution input ``{"exportPrefix": "<prefix>/AWSDynamoDB/<export id>/", "importMode":
   "FULL" | "INCREMENTAL", "keys"?: [key attribute names]}`` merged over the stack's defaults (``keys``: the new
   table's key attributes when the stack creates the table; ``importMode``: ``FULL``). The export must be in
   ``bulkLoad.exportBucketName`` (the only bucket the state machine and the converter may read).
2. ``ConvertDataFiles``: a **Distributed Map** whose ``ItemReader`` reads the export's ``manifest-files.json``
   directly: it is JSON Lines (one ``{"dataFileS3Key": ..., "itemCount": ...}`` per data file) and the ItemReader
   takes ``InputType: JSONL`` (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itemreader.html),
   so no listing step is needed. One child execution per data file invokes the converter Lambda,
   ``connector.bulk.handler`` from the connector's own asset (the runtime's mapping code, so every item is the
   one the stream would write), with ``{"bucket", "key", "keys", "outputBucket", "outputPrefix"}``; it answers
   ``{"rows", "rejects", "csvKey", "rejectsKey"}``. Lambda's transient errors are retried; a file that still
   fails fails the execution (no tolerated failures: a partial FULL import would drop items). The per-file
   results go to the staging bucket (``ResultWriter``), so the execution's state stays small for any number of
   files.
3. ``CreateDatasetImportJob`` (a ``CallAwsService`` task) on ``s3://<staging>/bulk/<execution>/``, the folder of
   CSV files, with the Personalize service role below and the requested import mode.
4. ``DescribeDatasetImportJob`` every ``60 s`` until ``ACTIVE`` (success) or ``CREATE FAILED`` (the execution
   fails with the job's ``failureReason`` as its cause).

IAM, least privilege: the converter may read the export bucket's objects and write the staging bucket's; the
state machine may read the export bucket's objects (the manifest), invoke the converter, write the map results,
create and describe import jobs of this dataset, and pass only the Personalize role, only to Personalize. The
Personalize role trusts ``personalize.amazonaws.com`` (for this account, ``aws:SourceAccount``) and may read
only the staging bucket; the staging bucket's policy also lets the service read it, as Personalize requires
(https://docs.aws.amazon.com/personalize/latest/dg/granting-personalize-s3-access.html). The staging bucket:
SSE-S3, SSL-only, private, objects expire after ``bulkLoad.csvExpireDays``, retained when the stack is deleted.

Ordering that keeps the result right (see docs/ops/on-failure-and-bulk-on-aws.md): a FULL import replaces earlier
*bulk* data but not items written with PutItems, and the stream keeps writing while the import runs; deploy the
stack (the mappings start at ``TRIM_HORIZON``) **before** the export's point in time, so every change after the
export reaches Personalize through the stream, and items changed in between are written by both (the stream's
PutItems is the newer and wins: Personalize keeps the individually written item over bulk data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from infra.nag import acknowledge
from infra.stream_to_personalize import tracing_env, tracing_mode

__all__ = ["CONVERTER_HANDLER", "POLL_SECONDS", "BulkLoad"]

CONVERTER_HANDLER = "connector.bulk.handler"
POLL_SECONDS = 60
STAGING_PREFIX = "bulk/"


class BulkLoad(Construct):
    """The converter function, the staging bucket, the Personalize import role and the state machine."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        dataset_arn: str,
        code: lambda_.Code,
        environment: Mapping[str, str],
        layers: Sequence[lambda_.ILayerVersion],
        export_bucket_name: str,
        default_keys: Sequence[str] = (),
        max_concurrency: int = 20,
        memory_mb: int = 1769,
        timeout: cdk.Duration | None = None,
        csv_expire_days: int = 7,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        tracing: bool = False,
    ) -> None:
        """Build the bulk load for ``dataset_arn``, reading exports from ``export_bucket_name``.

        :param code: the connector's asset (``StreamToPersonalize.code``): the converter is the runtime's code.
        :param environment: the converter's variables: at least ``DATASET_ARN`` and the mapping
            (``CONNECTOR_CONFIG`` or ``CONNECTOR_CONFIG_FILE``), as the connector has them.
        :param default_keys: the table's key attribute names, used when an execution's input has no ``keys``.
        :param tracing: X-Ray active tracing of the converter, as the connector's (``StreamToPersonalize.tracing``):
            off, it has no ``TracingConfig``, no X-Ray grant and ``POWERTOOLS_TRACE_DISABLED=true``. The state
            machine's own tracing does not depend on it.
        """
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        timeout = timeout or cdk.Duration.minutes(15)
        self.export_bucket = s3.Bucket.from_bucket_name(self, "ExportBucket", export_bucket_name)

        self.staging_bucket = s3.Bucket(
            self,
            "Staging",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireStagedCsv",
                    expiration=cdk.Duration.days(csv_expire_days),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
            ],
            # Retained: CloudFormation cannot delete a bucket that still holds objects, and a failed delete would
            # leave the stack in DELETE_FAILED; its objects expire on their own.
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.staging_bucket,
            "AwsSolutions-S1",
            "Staging only: CSV files the converter writes and Personalize reads once, expiring after "
            f"{csv_expire_days} days; access logs would need a second bucket and answer no operator question.",
        )

        # -- the converter: the runtime's own code --------------------------------------------------------
        self.converter_logs = logs.LogGroup(self, "ConverterLogs", retention=log_retention)
        self.converter_role = iam.Role(
            self,
            "ConverterRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="bulk load converter: read the DynamoDB export, write the Items CSV to staging.",
        )
        self.converter_logs.grant_write(self.converter_role)
        self.converter = lambda_.Function(
            self,
            "Converter",
            description="Converts one DynamoDB export data file into Personalize Items CSV (connector.bulk).",
            runtime=lambda_.Runtime.PYTHON_3_13,
            architecture=lambda_.Architecture.ARM_64,
            handler=CONVERTER_HANDLER,
            code=code,
            layers=list(layers),
            role=self.converter_role,
            log_group=self.converter_logs,
            memory_size=memory_mb,
            timeout=timeout,
            tracing=tracing_mode(tracing),
            environment={**environment, **tracing_env(tracing)},
        )
        self.converter_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadExportDataFiles",
                actions=["s3:GetObject"],
                resources=[self.export_bucket.arn_for_objects("*")],
            )
        )
        self.converter_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="WriteStagedCsv",
                actions=["s3:PutObject"],
                resources=[self.staging_bucket.arn_for_objects(f"{STAGING_PREFIX}*")],
            )
        )
        acknowledge(
            self.converter,
            "AwsSolutions-L1",
            "Pinned to python3.13, the runtime of the connector whose asset and Powertools layer it shares.",
        )
        # -- the role Personalize assumes to read the CSV -------------------------------------------------
        self.import_role = iam.Role(
            self,
            "PersonalizeImportRole",
            assumed_by=iam.ServicePrincipal(
                "personalize.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}
            ),
            description="Amazon Personalize reads the staged Items CSV of the bulk load.",
        )
        self.import_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadStagedCsv",
                actions=["s3:GetObject", "s3:ListBucket"],
                resources=[self.staging_bucket.bucket_arn, self.staging_bucket.arn_for_objects(f"{STAGING_PREFIX}*")],
            )
        )
        self.staging_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="PersonalizeReadsStagedCsv",
                principals=[iam.ServicePrincipal("personalize.amazonaws.com")],
                actions=["s3:GetObject", "s3:ListBucket"],
                resources=[self.staging_bucket.bucket_arn, self.staging_bucket.arn_for_objects(f"{STAGING_PREFIX}*")],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
        # -- the state machine ----------------------------------------------------------------------------
        defaults = sfn.Pass(
            self,
            "Defaults",
            parameters={
                "merged.$": "States.JsonMerge($.defaults, $$.Execution.Input, false)",
            },
            result_path="$.input",
        )
        with_defaults = sfn.Pass(
            self,
            "StackDefaults",
            result=sfn.Result.from_object({"keys": list(default_keys), "importMode": "FULL"}),
            result_path="$.defaults",
        )
        convert = sfn.DistributedMap(
            self,
            "ConvertDataFiles",
            item_reader=sfn.S3JsonLItemReader(
                bucket=self.export_bucket,
                key=sfn.JsonPath.format("{}manifest-files.json", sfn.JsonPath.string_at("$.input.merged.exportPrefix")),
            ),
            item_selector={
                "bucket": self.export_bucket.bucket_name,
                "key.$": "$$.Map.Item.Value.dataFileS3Key",
                "keys.$": "$.input.merged.keys",
                "outputBucket": self.staging_bucket.bucket_name,
                "outputPrefix.$": f"States.Format('{STAGING_PREFIX}{{}}/', $$.Execution.Name)",
            },
            max_concurrency=max_concurrency,
            map_execution_type=sfn.StateMachineType.STANDARD,
            result_writer_v2=sfn.ResultWriterV2(
                bucket=self.staging_bucket,
                prefix=f"{STAGING_PREFIX}results",
            ),
            result_path="$.converted",
        )
        invoke = tasks.LambdaInvoke(
            self,
            "ConvertOneFile",
            lambda_function=self.converter,
            payload_response_only=True,
            retry_on_service_exceptions=True,
        )
        convert.item_processor(invoke)

        create_job = tasks.CallAwsService(
            self,
            "CreateDatasetImportJob",
            service="personalize",
            action="createDatasetImportJob",
            iam_action="personalize:CreateDatasetImportJob",
            parameters={
                "JobName.$": "States.Format('bulk-{}', States.UUID())",
                "DatasetArn": dataset_arn,
                "DataSource": {
                    "DataLocation.$": (
                        f"States.Format('s3://{{}}/{STAGING_PREFIX}{{}}/', '{self.staging_bucket.bucket_name}', "
                        "$$.Execution.Name)"
                    )
                },
                "RoleArn": self.import_role.role_arn,
                "ImportMode.$": "$.input.merged.importMode",
            },
            iam_resources=[_import_job_arn_pattern(dataset_arn)],
            additional_iam_statements=[
                iam.PolicyStatement(
                    actions=["iam:PassRole"],
                    resources=[self.import_role.role_arn],
                    conditions={"StringEquals": {"iam:PassedToService": "personalize.amazonaws.com"}},
                ),
                iam.PolicyStatement(actions=["personalize:CreateDatasetImportJob"], resources=[dataset_arn]),
            ],
            result_selector={"arn.$": "$.DatasetImportJobArn"},
            result_path="$.job",
        )
        describe = tasks.CallAwsService(
            self,
            "DescribeDatasetImportJob",
            service="personalize",
            action="describeDatasetImportJob",
            iam_action="personalize:DescribeDatasetImportJob",
            parameters={"DatasetImportJobArn.$": "$.job.arn"},
            iam_resources=[_import_job_arn_pattern(dataset_arn)],
            result_selector={
                "arn.$": "$.DatasetImportJob.DatasetImportJobArn",
                "status.$": "$.DatasetImportJob.Status",
                "detail.$": "$.DatasetImportJob",
            },
            result_path="$.job",
        )
        wait = sfn.Wait(self, "WaitForImport", time=sfn.WaitTime.duration(cdk.Duration.seconds(POLL_SECONDS)))
        failed = sfn.Fail(
            self,
            "ImportFailed",
            error="DatasetImportJobFailed",
            cause_path="$.job.detail.FailureReason",
        )
        done = sfn.Succeed(self, "Imported")
        poll = wait.next(describe).next(
            sfn.Choice(self, "ImportDone")
            .when(sfn.Condition.string_equals("$.job.status", "ACTIVE"), done)
            .when(sfn.Condition.string_equals("$.job.status", "CREATE FAILED"), failed)
            .otherwise(wait)
        )
        definition = with_defaults.next(defaults).next(convert).next(create_job).next(poll)

        self.log_group = logs.LogGroup(self, "StateMachineLogs", retention=log_retention)
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
            comment="DynamoDB export -> Personalize Items CSV (Distributed Map over the data files) -> import job",
        )
        self._acknowledge_wildcards(dataset_arn)

    def _acknowledge_wildcards(self, dataset_arn: str) -> None:
        """Each IAM5 wildcard, one by one with its reason, so a new one is never hidden by these."""
        stack = cdk.Stack.of(self)

        def logical_id(construct: Construct) -> str:
            cfn = construct.node.default_child
            assert isinstance(cfn, cdk.CfnElement)
            return str(stack.resolve(stack.get_logical_id(cfn)))

        staging, converter = logical_id(self.staging_bucket), logical_id(self.converter)
        machine = logical_id(self.state_machine)
        job_pattern = stack.resolve(_import_job_arn_pattern(dataset_arn))
        execution = (
            "arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            f'{{"Fn::Select":[6,{{"Fn::Split":[":",{{"Ref":"{machine}"}}]}}]}}'
        )
        export = f"arn:<AWS::Partition>:s3:::{self.export_bucket.bucket_name}/*"
        findings = {
            "Resource::*": "X-Ray trace writes (the state machine's; the converter's when lambda.tracing is on) and "
            "CloudWatch Logs delivery (log-delivery and resource-policy calls) have no resource-level permissions.",
            f"Resource::{export}": "The export's data files and manifest, named by DynamoDB under an export id that "
            "is only known at run time, in the one configured export bucket; read only.",
            f"Resource::<{staging}.Arn>/{STAGING_PREFIX}*": "The staged CSV of each execution (bulk/<execution>/...), "
            "named by the converter after the export's data files; only under bulk/ in the staging bucket.",
            f"Resource::arn:<AWS::Partition>:s3:::<{staging}>/*": "The Distributed Map's ResultWriter writes its "
            "per-file results (bulk/results/<map run>/...) into the staging bucket; CDK scopes it to the bucket.",
            f"Resource::{job_pattern if isinstance(job_pattern, str) else '*'}": "Import job ARNs are created at run "
            "time (bulk-<uuid>); Personalize has no narrower resource for them.",
            f"Resource::<{converter}.Arn>:*": "LambdaInvoke may call the converter's versions and aliases (CDK grant).",
            f"Resource::{execution}:*": "The Distributed Map starts and manages its own child executions (CDK grant).",
            f"Resource::{execution}/*:*": "The Distributed Map's map runs and their child executions (CDK grant).",
        }
        for finding, reason in findings.items():
            acknowledge(self, f"AwsSolutions-IAM5[{finding}]", reason)


def _import_job_arn_pattern(dataset_arn: str) -> str:
    """``arn:<partition>:personalize:<region>:<account>:dataset-import-job/*`` from the dataset's ARN."""
    return cdk.Fn.join(
        ":",
        [*[cdk.Fn.select(i, cdk.Fn.split(":", dataset_arn)) for i in range(5)], "dataset-import-job/*"],
    )
