"""The service's error codes, their HTTP statuses, and the exception that carries one to the wire."""

from __future__ import annotations

from collections.abc import Sequence

#: HTTP status of every error code the emulator can answer with (also the codes ``inject`` accepts).
ERROR_STATUS: dict[str, int] = {
    "InvalidInputException": 400,
    "SerializationException": 400,
    "ThrottlingException": 400,
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 403,
    "InvalidSignatureException": 403,
    "UnrecognizedClientException": 403,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "UnknownOperationException": 404,
    "ResourceInUseException": 409,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
}

# Injected faults by HTTP status: 5xx, and the systemic errors of an outage that someone then fixes (a dataset
# deleted and re-created: 404; a missing IAM grant: 403).
_FAULT_CODE_BY_STATUS = {
    500: "InternalServerError",
    503: "ServiceUnavailable",
    404: "ResourceNotFoundException",
    403: "AccessDeniedException",
}
_DEFAULT_MESSAGES = {
    "ThrottlingException": "Rate exceeded",
    "InternalServerError": "Internal server error (injected)",
    "ServiceUnavailable": "Service unavailable (injected)",
    "ResourceNotFoundException": "Dataset not found (injected)",
    "AccessDeniedException": "User is not authorized to perform: personalize:PutItems (injected)",
}


class EmulatorError(Exception):
    """An error answered in the rest-json shape; ``code`` must be a key of :data:`ERROR_STATUS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = ERROR_STATUS[code]


def _outcome_of(code: str) -> str:
    return {
        "ThrottlingException": "throttled",
        "InvalidInputException": "invalid",
        "SerializationException": "malformed",
        "ResourceNotFoundException": "not_found",
        "ResourceInUseException": "in_use",
        "AccessDeniedException": "access_denied",
        "MissingAuthenticationTokenException": "auth",
        "IncompleteSignatureException": "auth",
        "InvalidSignatureException": "auth",
        "UnrecognizedClientException": "auth",
    }.get(code, "fault")


def _validation(problems: Sequence[str]) -> EmulatorError:
    n = len(problems)
    return EmulatorError(
        "InvalidInputException",
        f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(problems),
    )
