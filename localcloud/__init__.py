"""Local cloud: stand-ins that run the synthesized stack on this machine (never imported by the runtime).

The local cloud may import the runtime (``lambda_src/connector``), so its directory goes on ``sys.path``.
"""

import sys
from pathlib import Path

_RUNTIME = str(Path(__file__).resolve().parent.parent / "lambda_src")
if _RUNTIME not in sys.path:
    sys.path.append(_RUNTIME)
