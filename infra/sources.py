"""Source constructs: the DynamoDB table and the Kinesis stream the connector reads, new or imported."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kinesis as kinesis
from constructs import Construct

from infra.config import DynamoDbSourceConfig, KinesisSourceConfig

__all__ = ["DynamoDbSource", "KinesisSource"]

_ATTRIBUTE_TYPES = {
    "S": dynamodb.AttributeType.STRING,
    "N": dynamodb.AttributeType.NUMBER,
    "B": dynamodb.AttributeType.BINARY,
}


class DynamoDbSource(Construct):
    """A DynamoDB table with a stream: a new on-demand table (NEW_AND_OLD_IMAGES, PITR, encrypted,
    retained on stack deletion), or an existing table imported by its stream ARN.

    ``table`` is what :meth:`StreamToPersonalize.add_dynamodb_source` takes; ``stream_arn`` is set either way.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: DynamoDbSourceConfig) -> None:
        """Create or import the table described by ``config`` (whose ``source`` must not be ``none``)."""
        super().__init__(scope, construct_id)
        self.table: dynamodb.ITable
        if config.source == "new":
            assert config.partition_key is not None
            table = dynamodb.Table(
                self,
                "Table",
                table_name=config.table_name,
                partition_key=dynamodb.Attribute(
                    name=config.partition_key, type=_ATTRIBUTE_TYPES[config.partition_key_type]
                ),
                sort_key=(
                    dynamodb.Attribute(name=config.sort_key, type=_ATTRIBUTE_TYPES[config.sort_key_type])
                    if config.sort_key
                    else None
                ),
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
                encryption=dynamodb.TableEncryption.AWS_MANAGED,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True
                ),
                time_to_live_attribute=config.time_to_live_attribute,
                removal_policy=cdk.RemovalPolicy.RETAIN,
            )
            assert table.table_stream_arn is not None
            self.table = table
            self.stream_arn: str = table.table_stream_arn
            self.table_name: str = table.table_name
        elif config.source == "existing":
            assert config.stream_arn is not None
            table_arn = config.stream_arn.split("/stream/", 1)[0]
            self.table = dynamodb.Table.from_table_attributes(
                self, "Table", table_arn=table_arn, table_stream_arn=config.stream_arn
            )
            self.stream_arn = config.stream_arn
            self.table_name = table_arn.split(":table/", 1)[1]
        else:
            raise ValueError("DynamoDbSource needs source 'new' or 'existing'")

    @property
    def stream_label(self) -> str:
        """The stream label (the last part of the stream ARN), for the DynamoDB Streams metrics."""
        return cdk.Fn.select(3, cdk.Fn.split("/", self.stream_arn))


class KinesisSource(Construct):
    """A Kinesis data stream: a new encrypted stream (on-demand, or provisioned with N shards), or an
    existing stream imported by ARN.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: KinesisSourceConfig) -> None:
        """Create or import the stream described by ``config`` (whose ``source`` must not be ``none``)."""
        super().__init__(scope, construct_id)
        self.stream: kinesis.IStream
        if config.source == "new":
            on_demand = config.capacity == "onDemand"
            self.stream = kinesis.Stream(
                self,
                "Stream",
                stream_name=config.stream_name,
                stream_mode=kinesis.StreamMode.ON_DEMAND if on_demand else kinesis.StreamMode.PROVISIONED,
                shard_count=None if on_demand else config.shards,
                encryption=kinesis.StreamEncryption.MANAGED,
                retention_period=cdk.Duration.hours(config.retention_hours),
            )
        elif config.source == "existing":
            assert config.stream_arn is not None
            self.stream = kinesis.Stream.from_stream_arn(self, "Stream", config.stream_arn)
        else:
            raise ValueError("KinesisSource needs source 'new' or 'existing'")
