"""``python -m ops backfill``: not built yet (issue 9)."""

from __future__ import annotations

import argparse
from typing import Any

from ops.common import OpsError


def register(sub: Any) -> None:
    p = sub.add_parser("backfill", help="(not built yet)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise OpsError("backfill is not built yet")
