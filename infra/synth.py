"""Build the app from context and synthesize it: used by app.py, the tests and the local cloud."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk

from infra.config import CONTEXT_KEYS, ConfigError, load_config
from infra.nag import add_nag_checks
from infra.powertools import REPO_ROOT
from infra.stack import STACK_NAME, StreamToPersonalizeStack

__all__ = ["CDK_JSON", "build_app", "cdk_json_context", "synth"]

CDK_JSON = REPO_ROOT / "cdk.json"


def cdk_json_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """The ``context`` object of cdk.json (the example config)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise ConfigError(f"{path}: 'context' must be an object")
    return context


def build_app(
    app: cdk.App, *, base_dir: Path = REPO_ROOT, code_path: Path | None = None, nag: bool = True
) -> StreamToPersonalizeStack:
    """Validate ``app``'s context and add the ``StreamToPersonalize`` stack (and cdk-nag) to it.

    Raises :class:`ConfigError` for a user error in the context.
    """
    context = {key: app.node.try_get_context(key) for key in CONTEXT_KEYS}
    config = load_config({k: v for k, v in context.items() if v is not None}, base_dir=base_dir)
    account = config.account or os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = config.region or os.environ.get("CDK_DEFAULT_REGION")
    env = cdk.Environment(account=account, region=region) if account or region else None
    extra: dict[str, Any] = {"code_path": code_path} if code_path is not None else {}
    stack = StreamToPersonalizeStack(
        app,
        STACK_NAME,
        config=config,
        env=env,
        description="stream-to-personalize: DynamoDB Streams / Kinesis -> Amazon Personalize PutItems",
        **extra,
    )
    if nag:
        add_nag_checks(app)
    return stack


def synth(
    outdir: str | os.PathLike[str],
    context: Mapping[str, Any] | None = None,
    *,
    use_cdk_json: bool = True,
    nag: bool = True,
) -> Path:
    """Synthesize the app into ``outdir`` offline and return the path of ``StreamToPersonalize.template.json``.

    ``context`` overrides cdk.json's context key by key (a key given here replaces the whole value, e.g.
    ``{"kinesis": {"source": "none"}}``). Asset metadata is on, so the function resource carries
    ``Metadata["aws:asset:path"]``: the asset directory, relative to ``outdir``.
    """
    merged: dict[str, Any] = cdk_json_context() if use_cdk_json else {}
    merged.update(context or {})
    merged.setdefault("aws:cdk:enable-asset-metadata", True)
    app = cdk.App(outdir=str(outdir), context=merged)
    build_app(app, nag=nag)
    assembly = app.synth()
    return Path(assembly.get_stack_by_name(STACK_NAME).template_full_path)
