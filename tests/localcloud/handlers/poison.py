"""Raises whenever the batch contains a record marked ``poison`` -- the classic bisect / retry scenario."""

from typing import Any

from _common import is_poison, record_call


class PoisonError(RuntimeError):
    pass


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    poisoned = any(is_poison(r) for r in event["Records"])
    record_call(event, context, raised=poisoned)
    if poisoned:
        raise PoisonError("the batch contains a poison record")
    return {"batchItemFailures": []}
