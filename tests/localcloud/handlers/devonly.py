"""Imports a package only the dev virtualenv has (rich): on Lambda, and in the sandbox, this cannot import."""

from typing import Any

import rich  # noqa: F401


def handler(event: dict[str, Any], context: Any) -> None:
    return None
