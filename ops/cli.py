"""The operator CLI: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``run`` (a callable taking
the parsed arguments and returning the exit code). Errors the operator can fix (bad arguments, bad configuration,
missing permissions, a missing resource) are raised as :class:`ops.common.OpsError` and printed in one line
without a traceback (exit code 2); Ctrl-C exits with 130 after the command has saved its progress.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError

from ops.common import OpsError, console, describe_client_error

COMMANDS = ("backfill", "bulk_load", "quota_probe", "redrive", "replay", "status")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m ops",
        description="Operator tools for the stream-to-Personalize connector: load an existing catalog, "
        "bring back what failed, and see how the connector is doing.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ops.{name}").register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except OpsError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except ClientError as exc:
        console.print(f"[bold red]error:[/] {describe_client_error(exc)}")
        return 2
    except BotoCoreError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print(
            getattr(args, "interrupted", None)
            or "[yellow]interrupted[/]: progress so far is saved; run the same command again to continue"
        )
        return 130
    return code
