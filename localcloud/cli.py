"""The local cloud's command line: ``python -m localcloud {up,status,down,demo,chaos}``.

* ``up``: synthesize the stack, boot moto server, the Personalize Events emulator and the event source mapping
  runner, provision the template, print the endpoints and the resources (the state table, the poison DLQ, the
  on-failure destination: an S3 bucket or an SQS queue), print ``export`` lines for the AWS CLI, your own scripts
  and the operator tools (``python -m ops ...``: every variable of the provisioned function's environment that
  the runtime's ``load_settings`` reads, ``CONNECTOR_CONFIG`` and ``STATE_TABLE`` included, the endpoints and
  credentials, and ``ON_FAILURE_BUCKET`` or ``ON_FAILURE_QUEUE_URL``, which ``ops replay`` and ``ops status`` read
  when their flags are not given), write the same into ``.localcloud/state.json``, and stay in the foreground
  until Ctrl-C (or ``down``).
* ``status``: read the state file and ask the running local cloud for its numbers (the on-failure destination's
  pending batches: objects in the bucket or messages in the queue).
* ``down``: stop the ``up`` process (SIGTERM to the pid in the state file) and wait for it to exit.
* ``demo``: the end-to-end demo with its convergence check (:mod:`localcloud.demo`); ``make demo`` runs it.
  Act 1 loads a catalog that predates the stack (``--catalog``, ``--catalog-load backfill|bulk-load``,
  ``--share``); act 2 is the streaming workload.
* ``chaos``: about 20,000 changes under injected faults (throttles, 5xx, slow responses, killed and frozen
  handlers), with a convergence and zero-loss proof and the figures (:mod:`localcloud.chaos`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console

from localcloud import chaos, demo
from localcloud.personalize_emulator import EmulatorClient, add_quota_arguments, quota_kwargs

STATE_FILE = demo.STATE_DIR / "state.json"
ON_FAILURE_PREFIX = "aws/lambda/"  # where Lambda writes the invocation records of an S3 on-failure destination
DEFAULT_MOTO_PORT = 4566
DEFAULT_PERSONALIZE_PORT = 4599
DEFAULT_CATALOG = 3_000


class CliError(RuntimeError):
    """A user-facing error: printed without a traceback, exit code 2."""


# --------------------------------------------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------------------------------------------


def read_state(path: Path | None = None) -> dict[str, Any]:
    path = STATE_FILE if path is None else path
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(
            "the local cloud is not up (no .localcloud/state.json); start it with: python -m localcloud up"
        ) from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON ({exc}); remove it and run: python -m localcloud up") from None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_state(state: dict[str, Any], path: Path | None = None) -> None:
    path = STATE_FILE if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace, console: Console) -> int:
    previous: dict[str, Any] = {}
    with contextlib.suppress(CliError):
        previous = read_state()
    if previous and _alive(int(previous.get("pid", 0))):
        raise CliError(
            f"the local cloud is already up (pid {previous['pid']}); stop it with: python -m localcloud down"
        )
    with console.status("Synthesizing the CDK app (cdk.json) into .localcloud/cdk.out …"):
        template = demo.synthesize()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    cloud = demo.LocalCloud(
        template,
        moto_port=args.port_moto,
        personalize_port=args.port_personalize,
        tps=args.tps,
        latency_ms=args.latency_ms,
        emulator_options=quota_kwargs(args),
        **_schema_options(args),
        batching_window_s=0.2 if args.fast else None,
        log_dir=STATE_FILE.parent / "logs" / "up",
    )
    try:
        with console.status("Booting moto server, the Personalize emulator and the ESM runner …"):
            cloud.start()
        try:
            state = up_state(cloud, template)
            _write_state(state)
            console.print(f"[green]✓[/] local cloud up (pid {os.getpid()}); state in {_shown(STATE_FILE)}")
            print(describe(state), flush=True)  # plain print: long URLs stay on one line
            console.print("\nPoint the AWS CLI, your own scripts and the operator tools at it:\n")
            print(exports(state), flush=True)
            console.print("\nThen, for example (python -m ops COMMAND --help):\n")
            print("\n".join(f"  {line}" for line in ops_examples(state)), flush=True)
            console.print("\nCtrl-C (or [bold]python -m localcloud down[/]) stops it.")
            while not stop.wait(2.0):
                runner = cloud.runner
                if runner is None:
                    break
                state["runner"] = runner.stats().as_dict()
                state["runner"].pop("by_mapping", None)
                state["updatedAt"] = time.time()
                _write_state(state)
        finally:
            with console.status("Stopping …"):
                cloud.stop()
            with contextlib.suppress(CliError):
                if read_state().get("pid") == os.getpid():
                    STATE_FILE.unlink(missing_ok=True)
            console.print("local cloud stopped")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return 0


def _shown(path: Path) -> Path:
    return path.relative_to(demo.ROOT) if path.is_relative_to(demo.ROOT) else path


# The operator tools' settings are the function's own (``connector.config.load_settings`` reads the function's
# variables), plus the clients' endpoints, region and credentials (``AWS_*``) and Powertools' switches.
_OPS_PREFIXES = ("AWS_", "POWERTOOLS_")
# AWS_* variables that belong to a Lambda sandbox, not to an operator's shell.
_NOT_FOR_OPS = ("AWS_LAMBDA_", "AWS_EXECUTION_ENV")


def ops_environment(cloud: demo.LocalCloud) -> dict[str, str]:
    """The variables ``python -m ops ...`` needs against ``cloud``: :meth:`demo.LocalCloud.ops_environment` (the
    provisioned function's environment with an absolute ``CONNECTOR_CONFIG_FILE``, the endpoints and fake
    credentials) without what only the runner's worker processes use (``PATH``, ``LOCALCLOUD_*``, ...)."""
    own = set(cloud.function.environment)
    return {
        k: v
        for k, v in cloud.ops_environment().items()
        if (k in own or k.startswith(_OPS_PREFIXES)) and not k.startswith(_NOT_FOR_OPS)
    }


def on_failure_destination(cloud: demo.LocalCloud) -> dict[str, Any]:
    """Where the event source mappings send the batches that exhausted their retries: ``{"kind": "s3", "bucket":
    ..., "uri": "s3://bucket/aws/lambda/"}``, ``{"kind": "sqs", "queueUrl": ...}`` or ``{"kind": None}``."""
    runner = cloud.runner
    arns = sorted({m.on_failure_arn for m in runner.mappings if m.on_failure_arn}) if runner else []
    buckets = sorted({arn.split(":::", 1)[1] for arn in arns if arn.startswith("arn:aws:s3:::")})
    if buckets:  # the stack has one; ops replay reads one bucket at a time
        found = {"kind": "s3", "bucket": buckets[0], "uri": f"s3://{buckets[0]}/{ON_FAILURE_PREFIX}"}
        return {**found, "otherBuckets": buckets[1:]} if len(buckets) > 1 else found
    if cloud.on_failure_url:
        return {"kind": "sqs", "queueUrl": cloud.on_failure_url}
    return {"kind": None, "arns": arns}  # none, or one the local cloud does not emulate (SNS)


def up_state(cloud: demo.LocalCloud, template: Path) -> dict[str, Any]:
    """What ``up`` prints and writes to ``.localcloud/state.json`` for a started ``cloud``."""
    kinesis = cloud.stream
    on_failure = on_failure_destination(cloud)
    environment = ops_environment(cloud)
    return {
        "pid": os.getpid(),
        "startedAt": time.time(),
        "region": environment.get("AWS_REGION", "us-east-1"),
        "motoEndpoint": cloud.moto_url,
        "personalizeEndpoint": cloud.personalize_url,
        "datasetArn": cloud.dataset_arn,
        "tableName": cloud.table_name,
        "streamName": kinesis.ref if kinesis else None,
        "stateTable": environment.get("STATE_TABLE"),
        "dlqUrl": cloud.dlq_url,
        "onFailure": on_failure,
        "onFailureBucket": on_failure.get("bucket"),
        "onFailureUrl": on_failure.get("queueUrl"),  # the SQS on-failure queue's URL; None for a bucket
        "functionName": cloud.function.name,
        "template": str(template),
        "functionLog": str(cloud.function_log),
        "environment": environment,  # what `exports` prints: python -m ops ... reads these
    }


def _on_failure_text(on_failure: dict[str, Any]) -> str:
    if on_failure.get("kind") == "s3":
        others = "".join(f", also s3://{b}/" for b in on_failure.get("otherBuckets", []))
        return f"{on_failure['uri']} (S3 bucket {on_failure['bucket']}{others})"
    if on_failure.get("kind") == "sqs":
        return f"{on_failure['queueUrl']} (SQS queue)"
    arns = on_failure.get("arns") or []
    return f"not emulated: {', '.join(arns)}" if arns else "none (the event source mappings have no destination)"


def describe(state: dict[str, Any]) -> str:
    """The endpoints and resources, one per line; a missing one says so instead of printing ``None``."""
    rows = [
        ("moto (DynamoDB, Streams, Kinesis, SQS, S3)", state["motoEndpoint"]),
        ("Personalize Events emulator", state["personalizeEndpoint"]),
        ("dataset", state["datasetArn"]),
        ("DynamoDB table", state["tableName"] or "none (no DynamoDB source)"),
        ("Kinesis stream", state["streamName"] or "none (no Kinesis source)"),
        ("state table (STATE_TABLE)", state["stateTable"] or "none (the function has no STATE_TABLE)"),
        ("poison DLQ", state["dlqUrl"]),
        ("on-failure destination", _on_failure_text(state["onFailure"])),
        ("function", state["functionName"]),
        ("function log", state["functionLog"]),
    ]
    return "\n".join(f"  {label:<44} {value}" for label, value in rows)


# The endpoints, region and credentials first, then the function's settings in the template's order.
_EXPORT_FIRST = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_PERSONALIZE_EVENTS",
    "AWS_ENDPOINT_URL_PERSONALIZE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE",
)


def export_variables(state: dict[str, Any]) -> dict[str, str]:
    """Every variable ``up`` exports: the operator tools' environment (``state["environment"]``), then the local
    cloud's own names for your scripts (``TABLE_NAME``, ``STREAM_NAME``) and the on-failure destination
    (``ON_FAILURE_BUCKET`` or ``ON_FAILURE_QUEUE_URL``, which ``ops replay`` and ``ops status`` read when their flags
    are not given). A resource the stack does not have is left out, never exported as ``None``."""
    environment: dict[str, str] = state["environment"]
    ordered = {k: environment[k] for k in _EXPORT_FIRST if k in environment}
    ordered.update(environment)
    extra = {
        "TABLE_NAME": state.get("tableName"),
        "STREAM_NAME": state.get("streamName"),
        "ON_FAILURE_BUCKET": state.get("onFailureBucket"),
        "ON_FAILURE_QUEUE_URL": state.get("onFailureUrl"),
    }
    ordered.update({k: v for k, v in extra.items() if v})
    return ordered


def exports(state: dict[str, Any]) -> str:
    """``export NAME=value`` lines (shell-quoted: ``CONNECTOR_CONFIG`` is a JSON document) for a POSIX shell."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in export_variables(state).items())


def ops_examples(state: dict[str, Any]) -> list[str]:
    """Operator commands that run as they are in a shell with :func:`exports`."""
    lines = ["python -m ops status", "python -m ops redrive --dry-run"]
    if state["onFailure"].get("kind") in ("s3", "sqs") and state.get("stateTable"):
        lines.append("python -m ops replay --dry-run")  # the destination: ON_FAILURE_BUCKET / ON_FAILURE_QUEUE_URL
    if state.get("tableName"):
        lines.append('python -m ops backfill --table "$TABLE_NAME" --dry-run')
    return lines


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    state = read_state()
    pid = int(state.get("pid", 0))
    if not _alive(pid):
        raise CliError(
            f"the local cloud is not running (pid {pid} is gone; stale {STATE_FILE.name}); "
            "start it with: python -m localcloud up"
        )
    demo.local_environment()
    try:
        emulator = EmulatorClient(state["personalizeEndpoint"], timeout=5)
        stats = emulator.stats()
        region = state.get("region", "us-east-1")
        sqs = boto3.client("sqs", endpoint_url=state["motoEndpoint"], region_name=region)
        depth = {}
        for name in ("dlqUrl", "onFailureUrl"):
            if state.get(name):
                attrs = sqs.get_queue_attributes(QueueUrl=state[name], AttributeNames=["ApproximateNumberOfMessages"])
                depth[name] = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
        if state.get("onFailureBucket"):
            s3 = boto3.client("s3", endpoint_url=state["motoEndpoint"], region_name=region)
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=state["onFailureBucket"], Prefix=ON_FAILURE_PREFIX
            )
            depth["onFailureBucket"] = sum(int(page.get("KeyCount", 0)) for page in pages)
    except (OSError, ValueError, KeyError, BotoCoreError, ClientError) as exc:
        raise CliError(f"the local cloud (pid {pid}) does not answer: {exc}") from None
    if args.json:
        print(json.dumps({"state": state, "emulator": stats, "queues": depth}, indent=2, default=str))
        return 0
    runner = state.get("runner", {})
    console.print(f"[green]up[/] (pid {pid}, for {time.time() - state['startedAt']:.0f} s)")
    console.print(f"  moto                 {state['motoEndpoint']}")
    console.print(f"  Personalize          {state['personalizeEndpoint']}")
    console.print(f"  items in the dataset {stats['datasets'].get(state['datasetArn'], 0):,}")
    console.print(
        f"  PutItems calls       {stats['calls']:,} ({stats['accepted']:,} accepted, "
        f"{stats['items_per_call']:.2f} items/call)"
    )
    console.print(f"  throttles            {stats['throttled']:,} ({stats['throttled_share']:.1%})")
    console.print(f"  rejected calls       {stats['invalid']:,}")
    console.print(f"  poison DLQ depth     {depth.get('dlqUrl', 0)}")
    if state.get("onFailureBucket"):
        on_failure = f"{depth.get('onFailureBucket', 0)} objects in s3://{state['onFailureBucket']}/{ON_FAILURE_PREFIX}"
    elif state.get("onFailureUrl"):
        on_failure = f"{depth.get('onFailureUrl', 0)} messages"
    else:
        on_failure = "no on-failure destination"
    console.print(f"  on-failure pending   {on_failure}", soft_wrap=True)  # the bucket's URI on one line
    if runner:
        console.print(
            f"  records delivered    {runner.get('records_delivered', 0):,} in {runner.get('invocations', 0):,} "
            f"invocations; iterator age {runner.get('iterator_age_ms', 0) / 1000:.1f} s, "
            f"{runner.get('records_pending', 0)} pending"
        )
    return 0


def cmd_down(args: argparse.Namespace, console: Console) -> int:
    state = read_state()
    pid = int(state.get("pid", 0))
    if not _alive(pid):
        STATE_FILE.unlink(missing_ok=True)
        console.print(f"the local cloud was not running (pid {pid} is gone); removed the stale state file")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise CliError(f"pid {pid} did not stop within {args.timeout:g} s")
        time.sleep(0.1)
    STATE_FILE.unlink(missing_ok=True)
    console.print(f"local cloud stopped (pid {pid})")
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    return demo.main(
        items=args.items,
        seed=args.seed,
        fast=args.fast,
        timeout=args.timeout,
        write_seconds=args.write_seconds,
        chaos=args.chaos,
        on_remove=args.on_remove,
        console=console,
        emulator_options=quota_kwargs(args),
        cloud_options=_schema_options(args),
        catalog=args.catalog,
        catalog_load=args.catalog_load,
        catalog_share=args.share,
    )


def cmd_chaos(args: argparse.Namespace, console: Console) -> int:
    return chaos.main(
        changes=args.changes,
        seed=args.seed,
        timeout=args.timeout,
        write_seconds=args.write_seconds,
        on_remove=args.on_remove,
        live=not args.no_live,
        console=console,
    )


# --------------------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------------------


def _add_schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset-schema",
        type=Path,
        default=None,
        help="the Avro schema the dataset has (default: the template's createDataset schema, else cdk.json's "
        "schemaFile); never taken from the function's CONNECTOR_CONFIG",
    )
    parser.add_argument(
        "--allow-schemaless",
        action="store_true",
        help="register the dataset without a schema when none is known (the emulator then accepts any properties)",
    )
    esm = parser.add_argument_group("event source mapping runner")
    esm.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run the handler with the dev venv, no memory or CPU cap (default: only the Lambda's packages, "
        "python3.13 if installed, MemorySize and its CPU share)",
    )
    esm.add_argument(
        "--partial-not-a-retry",
        action="store_true",
        help="a partial response that moved the checkpoint does not count against MaximumRetryAttempts "
        "(undocumented; default: it counts)",
    )
    esm.add_argument(
        "--throttle-backoff-s", type=float, default=1.0, help="first backoff after a throttled invoke (default 1)"
    )
    esm.add_argument("--max-throttle-backoff-s", type=float, default=30.0, help="longest throttle backoff (default 30)")
    esm.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="seconds between idle polls (default: Kinesis 1, DynamoDB 0.25)",
    )
    esm.add_argument(
        "--dynamodb-shards", type=int, default=1, help="split the table's stream shard into this many (default 1)"
    )


def _schema_options(args: argparse.Namespace) -> dict[str, Any]:
    runner = {
        "sandbox": not args.no_sandbox,
        "partial_counts_as_retry": not args.partial_not_a_retry,
        "throttle_backoff_s": args.throttle_backoff_s,
        "max_throttle_backoff_s": args.max_throttle_backoff_s,
        "dynamodb_shards": args.dynamodb_shards,
    }
    if args.poll_interval is not None:
        runner["poll_interval"] = args.poll_interval
    return {"dataset_schema": args.dataset_schema, "allow_schemaless": args.allow_schemaless, "runner_options": runner}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localcloud",
        description="Run the synthesized stream-to-personalize stack on this machine: moto server (DynamoDB, "
        "Streams, Kinesis, SQS), a Personalize Events emulator and a Lambda event source mapping runner. "
        "No AWS account, no Docker.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{up,status,down,demo,chaos}")

    up = sub.add_parser(
        "up",
        help="synthesize, boot and provision the local cloud; run in the foreground until Ctrl-C",
        description="Synthesize the stack, boot the local cloud, print the endpoints and export lines, and "
        "run until Ctrl-C or `python -m localcloud down`. Writes .localcloud/state.json.",
    )
    up.add_argument("--port-moto", type=int, default=DEFAULT_MOTO_PORT, help="moto server port (default %(default)s)")
    up.add_argument(
        "--port-personalize",
        type=int,
        default=DEFAULT_PERSONALIZE_PORT,
        help="Personalize Events emulator port (default %(default)s)",
    )
    up.add_argument("--tps", type=float, default=10, help="PutItems calls per second per dataset group (default 10)")
    up.add_argument("--latency-ms", type=float, default=50, help="emulated PutItems latency (default 50)")
    up.add_argument("--fast", action="store_true", help="0.2 s batching window instead of the template's")
    add_quota_arguments(up)
    _add_schema_arguments(up)
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", help="show what the running local cloud has done", description="Read "
                            ".localcloud/state.json and query the emulator and moto: items, calls, throttles, "
                            "DLQ depth.")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print everything as JSON")
    status.set_defaults(func=cmd_status)

    down = sub.add_parser("down", help="stop the running local cloud", description="Send SIGTERM to the `up` "
                          "process named in .localcloud/state.json and wait for it to exit.")  # fmt: skip
    down.add_argument("--timeout", type=float, default=30, help="seconds to wait for it to exit (default 30)")
    down.set_defaults(func=cmd_down)

    run = sub.add_parser(
        "demo",
        help="the end-to-end demo with a convergence check (make demo)",
        description="Synthesize the stack, boot the local cloud with a table that already holds a catalog "
        "(--catalog), load it in act 1 by backfill or bulk-load while some of its items change, then write a "
        "streaming workload (DynamoDB inserts, hot updates and deletes; Kinesis documents and CDC records; a few "
        "bad records), show live progress, then report and check convergence over every item, the catalog "
        "included. Exits 1 if the check fails.",
    )
    run.add_argument("--items", type=int, default=2000, help="DynamoDB items to write (default %(default)s)")
    run.add_argument("--seed", type=int, default=7, help="random seed of the workload (default %(default)s)")
    run.add_argument("--fast", action="store_true", help="0.2 s batching window instead of the template's 5 s")
    run.add_argument(
        "--write-seconds",
        type=float,
        default=15,
        help="spread the writes over this many seconds, like a live stream (default %(default)s; 0: flat out)",
    )
    run.add_argument(
        "--chaos",
        action="store_true",
        help="inject faults in the emulator (20%% throttles, 5%% 5xx): retries, partial batches and redeliveries",
    )
    run.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for convergence after the last write (default 180)"
    )
    run.add_argument(
        "--on-remove",
        choices=["soft", "ignore"],
        default="soft",
        help="REMOVEs: soft-delete as examples/mapping.json says (default), or run the mapping with "
        '"onRemove": "ignore" (a deleted item keeps its last image)',
    )
    act1 = run.add_argument_group("act 1: a catalog that exists before the stack")
    act1.add_argument(
        "--catalog",
        type=int,
        default=DEFAULT_CATALOG,
        help="items in the table before the event source mappings start, with no stream records (default "
        "%(default)s; 0: no first act, the demo as before)",
    )
    act1.add_argument(
        "--catalog-load",
        choices=["backfill", "bulk-load"],
        default="backfill",
        help="how act 1 loads the catalog while the stream flows: backfill (python -m ops backfill's code: a "
        "parallel Scan through the runtime's pipeline, sharing the PutItems budget; default) or bulk-load (export "
        "→ CSV → FULL import job through the emulator, the mappings started before the export time)",
    )
    act1.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="backfill: the most of the shared PutItems rate it takes beside the stream (default %(default)s)",
    )
    add_quota_arguments(run)
    _add_schema_arguments(run)
    run.set_defaults(func=cmd_demo)

    ch = sub.add_parser(
        "chaos",
        help="the workload under injected faults, with a convergence and zero-loss proof",
        description="Synthesize the stack, boot the local cloud and write about 20,000 changes (hot and cold "
        "DynamoDB items, deletes, Kinesis documents and CDC records, ~1%% bad records) while the emulator throttles "
        "~20%% of calls, answers ~5%% with 5xx and delays a few past the function timeout, and the runner kills "
        "and freezes handler processes mid-batch. Then check that the items equal the sources' final state, that "
        "the DLQ holds exactly the bad records, and that no record was lost; print the figures. Exits 1 if a check "
        "fails.",
    )
    ch.add_argument("--changes", type=int, default=20_000, help="changes to write (default %(default)s)")
    ch.add_argument("--seed", type=int, default=7, help="seed of the workload and the faults (default %(default)s)")
    ch.add_argument(
        "--write-seconds", type=float, default=60, help="spread the writes over this long (default %(default)s)"
    )
    ch.add_argument(
        "--timeout", type=float, default=900, help="seconds to converge after the last write (default %(default)s)"
    )
    ch.add_argument(
        "--on-remove",
        choices=["soft", "ignore"],
        default="ignore",
        help='REMOVEs: "ignore" (default: removes must never hide the upserts before them) or soft-delete',
    )
    ch.add_argument("--no-live", action="store_true", help="no live progress table (for logs and CI)")
    ch.set_defaults(func=cmd_chaos)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        code: int = args.func(args, console)
    except CliError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except demo.SetupError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
