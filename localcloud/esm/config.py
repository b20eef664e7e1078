"""The event source mappings and functions of a synthesized template, as the runner runs them."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from moto.events.models import EventPattern

from localcloud.provision import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_REGION,
    ProvisionedResource,
    Resolver,
    Unresolvable,
    generated_name,
    load_template,
    stack_name_for,
)


class EsmConfigError(ValueError):
    """The template describes a mapping or function the runner cannot run."""


# --------------------------------------------------------------------------------------------------------------
# Configuration parsed from the template
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionConfig:
    logical_id: str
    name: str
    arn: str
    handler: str
    asset_dir: Path
    timeout_s: float
    memory_mb: int
    environment: Mapping[str, str]
    role_arn: str
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions: at most this many invokes at once


@dataclass(frozen=True)
class MappingConfig:
    logical_id: str
    function: FunctionConfig
    source: Literal["dynamodb", "kinesis"]
    source_arn: str
    batch_size: int = 100
    batching_window_s: float = 0.0
    starting_position: str = "TRIM_HORIZON"
    starting_position_timestamp: float | None = None
    filter_patterns: tuple[str, ...] = ()
    report_batch_item_failures: bool = False
    bisect_on_error: bool = False
    max_retry_attempts: int = -1  # -1: until the record expires
    max_record_age_s: int = -1  # -1: no limit
    parallelization_factor: int = 1
    on_failure_arn: str | None = None
    uuid: str = ""  # the mapping's UUID (on AWS, the resource's Ref); locally derived from the stack and logical id

    @property
    def stream_name(self) -> str:
        return self.source_arn.rsplit("/", 1)[-1]


def parse_template(
    template: Mapping[str, Any] | str | Path,
    resources: Mapping[str, ProvisionedResource],
    *,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT_ID,
    stack_name: str | None = None,
    template_dir: str | Path | None = None,
    asset_dir: str | Path | Mapping[str, str | Path] | None = None,
    warnings: list[str] | None = None,
) -> list[MappingConfig]:
    """Read the enabled stream ``AWS::Lambda::EventSourceMapping`` resources and their functions."""
    body = load_template(template)
    stack = stack_name or stack_name_for(template)
    if template_dir is None and not isinstance(template, Mapping):
        template_dir = Path(template).parent
    resolver = Resolver(resources, region=region, account_id=account_id, stack_name=stack)
    warn = warnings if warnings is not None else []
    all_resources: dict[str, Any] = body.get("Resources") or {}
    functions: dict[str, FunctionConfig] = {}
    mappings: list[MappingConfig] = []

    for logical_id, spec in all_resources.items():
        if spec.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        props = spec.get("Properties") or {}
        if props.get("Enabled") is False or str(props.get("Enabled", "true")).lower() == "false":
            continue
        try:
            source_arn = str(resolver.resolve(props["EventSourceArn"]))
        except (KeyError, Unresolvable) as exc:
            raise EsmConfigError(f"{logical_id}: cannot resolve EventSourceArn: {exc}") from exc
        if ":kinesis:" in source_arn:
            source: Literal["dynamodb", "kinesis"] = "kinesis"
        elif ":dynamodb:" in source_arn and "/stream/" in source_arn:
            source = "dynamodb"
        else:
            warn.append(f"{logical_id}: event source {source_arn} is not a stream; ignored")
            continue
        function_id = _function_logical_id(props.get("FunctionName"), all_resources, resolver)
        if function_id not in functions:
            functions[function_id] = _function_config(
                function_id,
                spec=all_resources[function_id],
                resolver=resolver,
                stack=stack,
                region=region,
                account_id=account_id,
                template_dir=template_dir,
                asset_dir=asset_dir,
                warn=warn,
            )
        parallelization = int(props.get("ParallelizationFactor", 1))
        if parallelization > 1:
            warn.append(f"{logical_id}: ParallelizationFactor {parallelization} is run as 1 locally")
        if props.get("TumblingWindowInSeconds"):
            warn.append(f"{logical_id}: TumblingWindowInSeconds is not emulated")
        on_failure = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        timestamp = props.get("StartingPositionTimestamp")
        patterns = tuple(
            str(f["Pattern"]) for f in (props.get("FilterCriteria") or {}).get("Filters") or [] if f.get("Pattern")
        )
        for pattern in patterns:
            EventPattern.load(pattern)  # validates; raises InvalidEventPatternException
        mappings.append(
            MappingConfig(
                logical_id=logical_id,
                function=functions[function_id],
                source=source,
                source_arn=source_arn,
                batch_size=int(props.get("BatchSize", 100)),
                batching_window_s=float(props.get("MaximumBatchingWindowInSeconds", 0)),
                starting_position=str(props.get("StartingPosition", "TRIM_HORIZON")),
                starting_position_timestamp=float(timestamp) if timestamp is not None else None,
                filter_patterns=patterns,
                report_batch_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
                bisect_on_error=_bool(props.get("BisectBatchOnFunctionError", False)),
                max_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
                max_record_age_s=int(props.get("MaximumRecordAgeInSeconds", -1)),
                parallelization_factor=parallelization,
                on_failure_arn=str(resolver.resolve(on_failure)) if on_failure else None,
                uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"localcloud:{stack}/{logical_id}")),
            )
        )
    return mappings


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _function_logical_id(value: Any, resources: Mapping[str, Any], resolver: Resolver) -> str:
    functions = {lid for lid, spec in resources.items() if spec.get("Type") == "AWS::Lambda::Function"}
    if isinstance(value, dict):
        if "Ref" in value and value["Ref"] in functions:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            arg = value["Fn::GetAtt"]
            target = arg.split(".", 1)[0] if isinstance(arg, str) else arg[0]
            if target in functions:
                return str(target)
    if isinstance(value, str):
        name = value.rsplit(":function:", 1)[-1].split(":", 1)[0]
        for lid in functions:
            if lid == name or resources[lid].get("Properties", {}).get("FunctionName") == name:
                return lid
    raise EsmConfigError(f"FunctionName {value!r} does not name an AWS::Lambda::Function in the template")


def _function_config(
    logical_id: str,
    *,
    spec: Mapping[str, Any],
    resolver: Resolver,
    stack: str,
    region: str,
    account_id: str,
    template_dir: str | Path | None,
    asset_dir: str | Path | Mapping[str, str | Path] | None,
    warn: list[str],
) -> FunctionConfig:
    props = spec.get("Properties") or {}
    try:
        name = str(resolver.resolve(props["FunctionName"])) if "FunctionName" in props else None
    except Unresolvable:
        name = None
    name = name or generated_name(stack, logical_id, max_len=64)
    environment: dict[str, str] = {}
    for key, value in ((props.get("Environment") or {}).get("Variables") or {}).items():
        try:
            resolved = resolver.resolve(value)
        except Unresolvable as exc:
            warn.append(f"{logical_id}: environment variable {key} left out: {exc}")
            continue
        environment[key] = resolved if isinstance(resolved, str) else json.dumps(resolved)
    role = props.get("Role")
    try:
        role_arn = str(resolver.resolve(role)) if role is not None else ""
    except Unresolvable:
        role_arn = ""
    if not role_arn.startswith("arn:"):
        role_id = role.get("Fn::GetAtt", [logical_id])[0] if isinstance(role, dict) else logical_id
        role_arn = f"arn:aws:iam::{account_id}:role/{stack}-{role_id}"
    return FunctionConfig(
        logical_id=logical_id,
        name=name,
        arn=f"arn:aws:lambda:{region}:{account_id}:function:{name}",
        handler=str(props.get("Handler", "index.handler")),
        asset_dir=_asset_dir(logical_id, spec, template_dir, asset_dir),
        timeout_s=float(props.get("Timeout", 3)),
        memory_mb=int(props.get("MemorySize", 128)),
        environment=environment,
        role_arn=role_arn,
        reserved_concurrency=int(props["ReservedConcurrentExecutions"])
        if "ReservedConcurrentExecutions" in props
        else None,
    )


def _asset_dir(
    logical_id: str,
    spec: Mapping[str, Any],
    template_dir: str | Path | None,
    override: str | Path | Mapping[str, str | Path] | None,
) -> Path:
    if isinstance(override, Mapping):
        if logical_id in override:
            return Path(override[logical_id]).resolve()
    elif override is not None:
        return Path(override).resolve()
    asset_path = (spec.get("Metadata") or {}).get("aws:asset:path")
    if asset_path:
        path = Path(asset_path)
        if not path.is_absolute() and template_dir is not None:
            path = Path(template_dir) / path
        if path.is_dir():
            return path.resolve()
        raise EsmConfigError(f"{logical_id}: asset directory {path} does not exist (synthesize first)")
    code = (spec.get("Properties") or {}).get("Code") or {}
    if "ZipFile" in code:  # inline code: CloudFormation writes it to index.py
        directory = Path(tempfile.mkdtemp(prefix=f"inline-{logical_id}-"))
        (directory / "index.py").write_text(str(code["ZipFile"]))
        return directory
    raise EsmConfigError(f"{logical_id}: no aws:asset:path metadata and no asset_dir given")
