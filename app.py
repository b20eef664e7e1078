#!/usr/bin/env python3
"""CDK entry point: read the cdk.json context, validate it, build the StreamToPersonalize stack.

Run by the CDK CLI (``cdk synth`` / ``cdk deploy``, see cdk.json) or directly: ``python app.py`` writes
``cdk.out/StreamToPersonalize.template.json`` (or into ``$CDK_OUTDIR``) offline. A config error prints one
line naming the context key and exits with status 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk

from infra.config import ConfigError
from infra.synth import build_app, cdk_json_context


def main() -> int:
    """Synthesize the app; return the process exit status."""
    try:
        # cdk.json's context is the default; the CLI's context (CDK_CONTEXT_JSON, with -c overrides) wins.
        defaults = {"aws:cdk:enable-asset-metadata": True, **cdk_json_context()}
        outdir = None if "CDK_OUTDIR" in os.environ else str(Path(__file__).resolve().parent / "cdk.out")
        app = cdk.App(context=defaults, outdir=outdir)
        build_app(app)
    except ConfigError as exc:
        print(f"stream-to-personalize: config error: {exc}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
