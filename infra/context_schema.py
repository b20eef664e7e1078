"""Write the JSON Schema of cdk.json's context to ``docs/cdk-context.schema.json``.

``python -m infra.context_schema`` regenerates it (tests/infra/test_context_schema.py fails while it is stale).
Editors can then check ``cdk.json``: in VS Code, ``"json.schemas": [{"fileMatch": ["cdk.json"],
"url": "./docs/cdk-context.schema.json"}]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from infra.config import context_json_schema
from infra.powertools import REPO_ROOT

SCHEMA_PATH = REPO_ROOT / "docs" / "cdk-context.schema.json"


def render() -> str:
    """The published schema file's text."""
    return json.dumps(context_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(path: Path = SCHEMA_PATH) -> int:
    """Write the schema; return the exit status."""
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
