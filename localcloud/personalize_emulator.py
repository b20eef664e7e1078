"""The Personalize Events emulator (see :mod:`localcloud.emulator`): this module keeps the public names importable
from where the tests, the bench and the demo import them, and ``python -m localcloud.personalize_emulator``."""

from __future__ import annotations

import sys

from localcloud.emulator.errors import ERROR_STATUS, EmulatorError
from localcloud.emulator.schema import Schema, property_key
from localcloud.emulator.server import (
    ADMIN_PREFIX,
    EmulatorClient,
    PersonalizeEmulator,
    add_quota_arguments,
    main,
    quota_kwargs,
)
from localcloud.emulator.state import Config, EmulatorState, dataset_group_of

__all__ = [
    "ADMIN_PREFIX",
    "ERROR_STATUS",
    "Config",
    "EmulatorClient",
    "EmulatorError",
    "EmulatorState",
    "PersonalizeEmulator",
    "Schema",
    "add_quota_arguments",
    "dataset_group_of",
    "main",
    "property_key",
    "quota_kwargs",
]

if __name__ == "__main__":
    sys.exit(main())
