"""What every subcommand shares: the connector's settings, the clients, the shared budget and errors.

The settings are the runtime's own (:func:`connector.config.load_settings`): the operator passes the same
environment the function has (``DATASET_ARN``, ``CONNECTOR_CONFIG`` or ``CONNECTOR_CONFIG_FILE``, ``STATE_TABLE``,
``DLQ_URL``, ``QUOTA_CALLS_PER_SECOND`` ...), or the equivalent flags, which win over the environment. So a
mapping that the function rejects is rejected here with the same message, and one that it accepts maps every
image to the same item.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from connector.config import ConfigError, Settings, load_settings

console = Console(stderr=True)

ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException"}


class OpsError(RuntimeError):
    """An error the operator can fix: printed in one line, exit code 2."""


def add_settings_arguments(p: argparse.ArgumentParser, *, state_table_required: bool = False) -> None:
    """The connector's settings as flags; each falls back to the environment variable the function uses."""
    g = p.add_argument_group("connector settings (default: the function's environment variables)")
    g.add_argument("--dataset-arn", help="the Items dataset ARN (DATASET_ARN)")
    g.add_argument("--config-file", help="the mapping document, a JSON file (CONNECTOR_CONFIG_FILE)")
    g.add_argument(
        "--state-table",
        help="the shared state table: PutItems budget and version guard (STATE_TABLE)"
        + ("; required" if state_table_required else ""),
    )
    g.add_argument("--dlq-url", help="the poison DLQ's URL (DLQ_URL)")
    g.add_argument("--quota", type=float, help="PutItems calls/s per dataset group (QUOTA_CALLS_PER_SECOND)")


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The runtime's settings from the environment, overridden by the flags of :func:`add_settings_arguments`."""
    merged = dict(os.environ if env is None else env)
    for flag, name in (
        ("dataset_arn", "DATASET_ARN"),
        ("config_file", "CONNECTOR_CONFIG_FILE"),
        ("state_table", "STATE_TABLE"),
        ("dlq_url", "DLQ_URL"),
        ("quota", "QUOTA_CALLS_PER_SECOND"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            merged[name] = str(value)
            if name == "CONNECTOR_CONFIG_FILE":
                merged.pop("CONNECTOR_CONFIG", None)
    try:
        return load_settings(merged)
    except ConfigError as exc:
        raise OpsError(str(exc)) from None


def client(service: str, *, attempts: int = 5, read_timeout: float = 30.0) -> Any:
    """A plain boto3 client (``AWS_ENDPOINT_URL*`` apply) with standard retries."""
    return boto3.client(
        service,
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}, read_timeout=read_timeout),
    )


def describe_client_error(exc: ClientError) -> str:
    """One line for an AWS error, naming the operation and, for a denial, the permission to grant."""
    err = exc.response.get("Error", {})
    code, message = err.get("Code", "?"), err.get("Message", "")
    op = getattr(exc, "operation_name", "?")
    if code in ACCESS_DENIED:
        return f"{op} was denied ({code}): grant this identity the permission for {op}. {message}".strip()
    return f"{op} failed: {code}: {message}".strip()


def progress() -> Progress:
    """A rich progress bar with count, rate and ETA, on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    """A command's end-of-run summary: one row per figure (integers with thousands separators)."""
    t = Table(title=title)
    t.add_column("")
    t.add_column("count", justify="right")
    for name, value in rows:
        t.add_row(name, f"{value:,}" if isinstance(value, int) else str(value))
    return t
