"""Cold-start import cost of the handler, X-Ray tracing on vs off (``lambda.tracing``).

Each sample is a fresh interpreter that imports ``connector.handler`` as inside Lambda (``LAMBDA_TASK_ROOT`` set,
so the X-Ray SDK takes its Lambda path: a local sampler, no X-Ray client) and reports the import's CPU time
(``process_time``) and wall time. Configurations run interleaved, round by round, so a busy machine slows them
alike:

* ``on``: ``POWERTOOLS_TRACE_DISABLED=false``: Powertools' Tracer, the X-Ray SDK and its auto-patching;
* ``off``: ``POWERTOOLS_TRACE_DISABLED=true``: ``connector.telemetry.NoTracer``, the X-Ray SDK never imported;
* with ``--before REF``, ``before-off``: the runtime at git ``REF`` with ``POWERTOOLS_TRACE_DISABLED=true`` (what the
  variable alone gave before the stand-in: ``Tracer(disabled=True)`` still imports the SDK).

The init estimate scales the CPU median by 1769 / ``--memory-mb`` (Lambda gives one vCPU at 1,769 MB); it is an
estimate: Lambda's arm64 cores are not this machine's, and a fresh container reads the modules from a cold disk.

With ``--batch N``, each child then handles eight ``N``-record DynamoDB batches against the tests' fake Personalize
(a real boto3 client answered by botocore events, so X-Ray's botocore patch wraps its calls; a sampled
``_X_AMZN_TRACE_ID`` and a UDP socket of this process as the X-Ray daemon, so tracing on builds and sends every
segment) and reports the CPU of the last six: what tracing costs a warm invocation.

Run ``.venv/bin/python -m bench.bench_import [--rounds 5] [--memory-mb 256] [--before 2a9ef24] [--batch 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAMBDA_MB_PER_VCPU = 1769
CHILD = (
    "import sys, time; w = time.perf_counter(); c = time.process_time(); import connector.handler; "
    "print(time.process_time() - c, time.perf_counter() - w, 'aws_xray_sdk' in sys.modules)"
)
INVOKE = r"""
import contextlib, io, json, sys, time
import connector.handler as h
from connector.config import load_settings
from tests.factories import DATASET_ARN, FakeContext, dynamodb_record, event
from tests.fakes import FakePersonalize, FakeSQS
fake = FakePersonalize()
settings = load_settings({"DATASET_ARN": DATASET_ARN, "DLQ_URL": "https://sqs/q", "MAX_CALLS_PER_SECOND": "1000"})
h.reset(h.build_runtime(settings, personalize=fake.client, sqs=FakeSQS()))
cpus = []
for b in range(8):
    ev = event(*[dynamodb_record("INSERT", {"sku": f"{b}-{k}"}, {"sku": f"{b}-{k}", "title": "t"}) for k in range(N)])
    with contextlib.redirect_stdout(io.StringIO()):
        c = time.process_time()
        h.handler(ev, FakeContext())
        cpus.append(time.process_time() - c)
print(json.dumps(cpus[2:]))
"""
TRACE_ID = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def _env(lambda_src: Path, disabled: str, task_root: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "LAMBDA_TASK_ROOT", "_X_AMZN"))}
    env.update(
        PYTHONPATH=str(lambda_src),
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        LAMBDA_TASK_ROOT=task_root,
        POWERTOOLS_SERVICE_NAME="stream-to-personalize",
        POWERTOOLS_METRICS_NAMESPACE="StreamToPersonalize",
        POWERTOOLS_TRACE_DISABLED=disabled,
    )
    return env


def _sample(lambda_src: Path, disabled: str, task_root: str) -> tuple[float, float, bool]:
    env = _env(lambda_src, disabled, task_root)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True).stdout
    cpu, wall, xray = out.split()
    return float(cpu), float(wall), xray == "True"


def _invocations(lambda_src: Path, disabled: str, task_root: str, batch: int, daemon: int) -> list[float]:
    env = _env(lambda_src, disabled, task_root)
    env.update(
        PYTHONPATH=os.pathsep.join([str(lambda_src), str(ROOT)]),
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",  # noqa: S106 - a dummy: the fake Personalize answers every call
        POWERTOOLS_LOG_LEVEL="WARNING",
        _X_AMZN_TRACE_ID=TRACE_ID,
        AWS_XRAY_DAEMON_ADDRESS=f"127.0.0.1:{daemon}",  # sent and dropped unread, as cheap as a real daemon for us
    )
    code = INVOKE.replace("range(N)", f"range({batch})")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    cpus: list[float] = json.loads(out.splitlines()[-1])
    return cpus


def _runtime_at(ref: str, into: Path) -> Path:
    """``lambda_src`` as it was at git ``ref``."""
    archive = subprocess.run(["git", "archive", ref, "lambda_src"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "lambda_src"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="samples per configuration (default 5)")
    parser.add_argument("--memory-mb", type=int, default=256, help="function memory for the init estimate")
    parser.add_argument("--before", metavar="REF", help="also measure the runtime at this git ref, tracing off")
    parser.add_argument("--batch", type=int, help="also time warm invocations of this many records, on vs off")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:
        daemon.bind(("127.0.0.1", 0))
        configs = {"on": (ROOT / "lambda_src", "false"), "off": (ROOT / "lambda_src", "true")}
        if args.before:
            configs["before-off"] = (_runtime_at(args.before, Path(tmp) / "before"), "true")
        names = list(configs)
        samples: dict[str, list[tuple[float, float, bool]]] = {n: [] for n in names}
        warm: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(args.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                samples[name].append(_sample(*configs[name], task_root=tmp))
            for name in ("on", "off") if i % 2 == 0 else ("off", "on"):
                if args.batch:
                    warm[name] += _invocations(
                        *configs[name], task_root=tmp, batch=args.batch, daemon=daemon.getsockname()[1]
                    )
    scale = LAMBDA_MB_PER_VCPU / args.memory_mb
    print(
        f"| configuration | import CPU s (median of {args.rounds}) | wall s | aws_xray_sdk imported | "
        f"est. init s at {args.memory_mb} MB |"
    )
    print("|---|---|---|---|---|")
    for name, rows in samples.items():
        cpu = statistics.median(r[0] for r in rows)
        wall = statistics.median(r[1] for r in rows)
        xray = sorted({r[2] for r in rows})
        print(f"| {name} | {cpu:.3f} | {wall:.3f} | {'/'.join(map(str, xray))} | {cpu * scale:.2f} |")
    print(json.dumps({n: [[round(x, 4) for x in r[:2]] for r in rows] for n, rows in samples.items()}))
    for name, cpus in warm.items():
        if cpus:
            print(
                f"warm invocation of {args.batch} records, tracing {name}: median CPU {statistics.median(cpus):.4f} s "
                f"(n={len(cpus)}, min {min(cpus):.4f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
