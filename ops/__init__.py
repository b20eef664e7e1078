"""The operator side: ``python -m ops {backfill,bulk-load,redrive,replay,status}``.

Every path into the dataset goes through the runtime's own code (``connector``): the same mapping turns a
DynamoDB image into the same Personalize item whether it came from the stream, a Scan, an export, the DLQ or the
on-failure destination, and every PutItems attempt takes its slot from the same shared budget in ``STATE_TABLE``
as the stream invocations. The clients are plain boto3 clients, so ``AWS_ENDPOINT_URL*`` points the tools at
the local cloud exactly as at AWS. The runtime never imports this package.
"""

import sys
from pathlib import Path

# The tools import the runtime (``lambda_src/connector``) as the function does, so its directory goes on sys.path.
_RUNTIME = str(Path(__file__).resolve().parent.parent / "lambda_src")
if _RUNTIME not in sys.path:
    sys.path.append(_RUNTIME)
