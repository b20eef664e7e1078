"""Create a synthesized CloudFormation template's data-plane resources in a moto server.

Why this is hand-written: moto can deploy CloudFormation itself, but only in-process and only for the resource
types it models, and it would also try (and fail) to deploy the Lambda functions, layers from SSM parameters,
CDK bootstrap checks and so on. The local cloud only needs the *data plane* the connector touches -- the
DynamoDB table and its stream, the Kinesis stream and the SQS queues -- so this module creates exactly those
through the ordinary boto3 APIs against moto server, and resolves the intrinsic functions the rest of the
template uses to point at them (``Ref`` / ``Fn::GetAtt`` / ``Fn::Join`` / ``Fn::Sub`` / ``Fn::Select``).
Everything else in the template is ignored.

Supported resources and what they resolve to:

================================  =====================  ===============================================
type                              ``Ref``                ``Fn::GetAtt``
================================  =====================  ===============================================
``AWS::DynamoDB::Table``          table name             ``Arn``, ``StreamArn``
``AWS::DynamoDB::GlobalTable``    table name             ``Arn``, ``StreamArn`` (CDK ``TableV2``)
``AWS::Kinesis::Stream``          stream name            ``Arn``
``AWS::SQS::Queue``               queue URL              ``Arn``, ``QueueName``, ``QueueUrl``
``AWS::S3::Bucket``               bucket name            ``Arn``, ``DomainName``
================================  =====================  ===============================================

S3 buckets (the on-failure destination, the bulk load's staging bucket) are created empty; their encryption,
public access block, lifecycle and policies are left to the template's tests: moto would accept them, and nothing
local depends on them.

Provisioning is idempotent: resources that already exist (same physical name) are reused, so ``up`` can be
run twice. Names that the template leaves to CloudFormation are generated deterministically from the stack
name and the logical id (``<stack>-<LogicalId>-<HASH>``), the way CloudFormation shapes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_REGION",
    "SUPPORTED_TYPES",
    "ProvisionedResource",
    "Resolver",
    "Unresolvable",
    "generated_name",
    "load_template",
    "provision",
]

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "123456789012"  # moto's default account

TABLE_TYPES = ("AWS::DynamoDB::Table", "AWS::DynamoDB::GlobalTable")
STREAM_TYPE = "AWS::Kinesis::Stream"
QUEUE_TYPE = "AWS::SQS::Queue"
BUCKET_TYPE = "AWS::S3::Bucket"
SUPPORTED_TYPES = (*TABLE_TYPES, STREAM_TYPE, QUEUE_TYPE, BUCKET_TYPE)

# SQS queue attributes that are passed through to moto as they are (stringified).
_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "SqsManagedSseEnabled",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
)


class Unresolvable(ValueError):
    """A template value that cannot be resolved locally (an unsupported resource, an SSM parameter, ...)."""


@dataclass(frozen=True)
class ProvisionedResource:
    """One resource created in moto: what ``Ref`` and ``Fn::GetAtt`` return for it."""

    logical_id: str
    type: str
    ref: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def get_att(self, name: str) -> str:
        try:
            return self.attributes[name]
        except KeyError:
            raise Unresolvable(f"{self.logical_id} ({self.type}) has no attribute {name!r} locally") from None

    @property
    def arn(self) -> str:
        return self.get_att("Arn")


def load_template(template: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Return the template as a dict; ``template`` is a dict or the path of a ``*.template.json``."""
    if isinstance(template, Mapping):
        return dict(template)
    return json.loads(Path(template).read_text())


def stack_name_for(template: Mapping[str, Any] | str | Path, default: str = "LocalStack") -> str:
    """``cdk.out/Foo.template.json`` -> ``Foo``; a dict template -> ``default``."""
    if isinstance(template, Mapping):
        return default
    return Path(template).name.removesuffix(".json").removesuffix(".template")


class Resolver:
    """Resolves CloudFormation intrinsic functions against provisioned resources and pseudo parameters."""

    def __init__(
        self,
        resources: Mapping[str, ProvisionedResource],
        *,
        region: str = DEFAULT_REGION,
        account_id: str = DEFAULT_ACCOUNT_ID,
        stack_name: str = "LocalStack",
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.resources = resources
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/local",
            "AWS::NoValue": "",
        }
        self.parameters = dict(parameters or {})

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self.resources[name].ref
        raise Unresolvable(f"Ref {name!r} is not a provisioned resource or known parameter")

    def get_att(self, logical_id: str, attribute: str) -> str:
        if logical_id not in self.resources:
            raise Unresolvable(f"Fn::GetAtt {logical_id}.{attribute}: {logical_id} is not provisioned")
        return self.resources[logical_id].get_att(attribute)

    def resolve(self, value: Any) -> Any:
        """Resolve ``value`` recursively; raises :class:`Unresolvable` for anything it cannot map locally."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.get_att(logical_id, attribute)
            if key == "Fn::Join":
                sep, parts = arg
                return str(sep).join(str(self.resolve(p)) for p in self.resolve(parts))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key.startswith("Fn::") or key == "Condition":
                raise Unresolvable(f"{key} is not supported locally")
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, arg: Any) -> str:
        template, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        local = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return self.ref(name)

        return re.sub(r"\$\{([^}]+)\}", replace, template)


def generated_name(stack_name: str, logical_id: str, *, max_len: int = 80, suffix: str = "") -> str:
    digest = hashlib.sha256(f"{stack_name}/{logical_id}".encode()).hexdigest()[:12].upper()
    head = f"{stack_name}-{logical_id}"[: max_len - len(digest) - len(suffix) - 1]
    return f"{head}-{digest}{suffix}"


def _client(service: str, endpoint_url: str, region: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto's fake credentials
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def provision(
    template: Mapping[str, Any] | str | Path,
    *,
    endpoint_url: str,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT_ID,
    stack_name: str | None = None,
    parameters: Mapping[str, str] | None = None,
) -> dict[str, ProvisionedResource]:
    """Create the template's tables, streams, queues and buckets in the moto server at ``endpoint_url``.

    Returns ``{logical id: ProvisionedResource}`` for the resources it created (or found already there).
    Resources of other types are ignored. Properties that reference something unresolvable are dropped
    when they are optional (an SSE KMS key, say), and raise :class:`Unresolvable` when they are required.
    """
    body = load_template(template)
    stack = stack_name or stack_name_for(template)
    resources: dict[str, ProvisionedResource] = {}
    resolver = Resolver(resources, region=region, account_id=account_id, stack_name=stack, parameters=parameters)
    pending = {
        logical_id: spec
        for logical_id, spec in (body.get("Resources") or {}).items()
        if isinstance(spec, Mapping) and spec.get("Type") in SUPPORTED_TYPES
    }
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = _client(service, endpoint_url, region)
        return clients[service]

    # Resources may reference each other (a queue's RedrivePolicy names another queue): create in rounds.
    while pending:
        progressed = False
        for logical_id, spec in list(pending.items()):
            raw = spec.get("Properties") or {}
            if _references(raw) & (pending.keys() - {logical_id}):
                continue  # depends on a resource created in a later round
            props = _resolve_properties(resolver, raw)
            kind = spec["Type"]
            if kind in TABLE_TYPES:
                resources[logical_id] = _create_table(client("dynamodb"), logical_id, kind, props, stack)
            elif kind == STREAM_TYPE:
                resources[logical_id] = _create_stream(client("kinesis"), logical_id, props, stack)
            elif kind == BUCKET_TYPE:
                resources[logical_id] = _create_bucket(client("s3"), logical_id, props, stack, region)
            else:
                resources[logical_id] = _create_queue(client("sqs"), logical_id, props, stack)
            del pending[logical_id]
            progressed = True
        if not progressed:
            raise Unresolvable(f"circular references between {sorted(pending)}")
    return resources


_REQUIRED = frozenset({"KeySchema", "AttributeDefinitions", "TableName", "QueueName", "Name", "BucketName"})


def _references(value: Any) -> set[str]:
    """Logical ids that ``value`` refers to through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= _references(item)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg.split(".", 1)[0] if isinstance(arg, str) else str(arg[0]))
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                found |= {m.split(".", 1)[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                if not isinstance(arg, str):
                    found |= _references(arg[1])
            else:
                found |= _references(arg)
    return found


def _resolve_properties(resolver: Resolver, props: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve property by property; optional ones that cannot be resolved locally are dropped."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = resolver.resolve(value)
        except Unresolvable:
            if key in _REQUIRED:
                raise
    return out


def _table_description_to_resource(logical_id: str, kind: str, desc: Mapping[str, Any]) -> ProvisionedResource:
    attributes = {"Arn": desc["TableArn"]}
    if desc.get("LatestStreamArn"):
        attributes["StreamArn"] = desc["LatestStreamArn"]
    if desc.get("TableId"):
        attributes["TableId"] = desc["TableId"]
    return ProvisionedResource(logical_id, kind, desc["TableName"], attributes)


def _create_table(ddb: Any, logical_id: str, kind: str, props: Mapping[str, Any], stack: str) -> ProvisionedResource:
    name = props.get("TableName") or generated_name(stack, logical_id, max_len=255)
    stream = props.get("StreamSpecification") or {}
    view_type = stream.get("StreamViewType")
    args: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
    }
    billing = props.get("BillingMode") or ("PAY_PER_REQUEST" if kind == "AWS::DynamoDB::GlobalTable" else None)
    throughput = props.get("ProvisionedThroughput")
    if billing == "PAY_PER_REQUEST" or not throughput:
        args["BillingMode"] = "PAY_PER_REQUEST"
    else:
        args["ProvisionedThroughput"] = {
            "ReadCapacityUnits": int(throughput["ReadCapacityUnits"]),
            "WriteCapacityUnits": int(throughput["WriteCapacityUnits"]),
        }
    gsis = [
        {k: v for k, v in gsi.items() if k in {"IndexName", "KeySchema", "Projection", "ProvisionedThroughput"}}
        for gsi in props.get("GlobalSecondaryIndexes") or []
    ]
    if gsis:
        args["GlobalSecondaryIndexes"] = gsis
    lsis = props.get("LocalSecondaryIndexes")
    if lsis:
        args["LocalSecondaryIndexes"] = lsis
    if view_type:
        args["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view_type}
    try:
        desc = ddb.create_table(**args)["TableDescription"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {"ResourceInUseException", "TableAlreadyExistsException"}:
            raise
        desc = ddb.describe_table(TableName=name)["Table"]
    ttl = props.get("TimeToLiveSpecification") or {}
    if str(ttl.get("Enabled", "")).lower() == "true" and ttl.get("AttributeName"):
        # moto records the setting (DescribeTimeToLive) but never expires items: ``EsmRunner.ttl_delete`` does
        ddb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
        )
    return _table_description_to_resource(logical_id, kind, desc)


def _create_stream(kinesis: Any, logical_id: str, props: Mapping[str, Any], stack: str) -> ProvisionedResource:
    name = props.get("Name") or generated_name(stack, logical_id, max_len=128)
    mode = (props.get("StreamModeDetails") or {}).get("StreamMode", "PROVISIONED")
    args: dict[str, Any] = {"StreamName": name}
    if mode == "ON_DEMAND":
        args["StreamModeDetails"] = {"StreamMode": "ON_DEMAND"}
    else:
        args["ShardCount"] = int(props.get("ShardCount") or 1)
    try:
        kinesis.create_stream(**args)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    return ProvisionedResource(logical_id, STREAM_TYPE, name, {"Arn": arn})


def _create_queue(sqs: Any, logical_id: str, props: Mapping[str, Any], stack: str) -> ProvisionedResource:
    fifo = str(props.get("FifoQueue", "")).lower() == "true"
    name = props.get("QueueName") or generated_name(stack, logical_id, suffix=".fifo" if fifo else "")
    attributes = {key: _attr(props[key]) for key in _QUEUE_ATTRIBUTES if key in props}
    for key in ("RedrivePolicy", "RedriveAllowPolicy"):
        if key in props:
            value = props[key]
            attributes[key] = value if isinstance(value, str) else json.dumps(value)
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return ProvisionedResource(logical_id, QUEUE_TYPE, url, {"Arn": arn, "QueueName": name, "QueueUrl": url})


def _create_bucket(s3: Any, logical_id: str, props: Mapping[str, Any], stack: str, region: str) -> ProvisionedResource:
    # CloudFormation's generated bucket names are lower case, at most 63 characters
    name = props.get("BucketName") or generated_name(stack, logical_id, max_len=63).lower()
    args: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**args)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise
    return ProvisionedResource(
        logical_id, BUCKET_TYPE, name, {"Arn": f"arn:aws:s3:::{name}", "DomainName": f"{name}.s3.amazonaws.com"}
    )


def _attr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
