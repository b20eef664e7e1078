"""The worker's sandbox: only the Lambda's packages importable, python3.13 where installed, memory capped at
MemorySize, CPU in proportion to it (localcloud/esm/sandbox.py)."""

from __future__ import annotations

from pathlib import Path

from localcloud.esm.sandbox import MB_PER_VCPU, cpu_share, find_python, lambda_site_packages
from tests.localcloud import test_esm_runner as base

moto_url = base.moto_url  # the module-scoped moto server fixture

REPO = Path(__file__).resolve().parents[2]


def _pin(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.startswith(name):
            return line.split("==")[1].strip()
    raise AssertionError(name)


def test_an_import_only_the_dev_venv_satisfies_fails_in_the_sandbox(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("devonly.handler", kinesis={"MaximumRetryAttempts": 0})
    with base.harness(moto_url, tmp_path, template) as h:
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        ledger = h.runner.ledger()
    assert ledger[0].outcome == "error"
    assert ledger[0].error is not None and ledger[0].error["errorType"] == "Runtime.ImportModuleError"


def test_without_the_sandbox_the_dev_venv_leaks_in(moto_url: str, tmp_path: Path) -> None:
    # the control: the same handler imports fine with the whole dev venv on sys.path
    template = base.make_template("devonly.handler", kinesis={})
    with base.harness(moto_url, tmp_path, template, sandbox=False) as h:
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        assert [e.outcome for e in h.runner.ledger()] == ["success"]


def test_inside_the_sandbox(moto_url: str, tmp_path: Path) -> None:
    template = base.make_template("introspect.handler", kinesis={}, timeout=20)  # MemorySize 256
    with base.harness(moto_url, tmp_path, template) as h:
        h.put_docs({"itemId": "a"})
        h.wait_idle()
        interpreter = h.runner.interpreter()
    (call,) = h.calls()
    # the interpreter: python3.13 when this machine has one
    if "3.13" in find_python():
        assert call["python"] == [3, 13] and "Python 3.13" in interpreter
    # sys.path: the asset, the layer's and runtime's packages, the standard library; nothing else
    site = str(lambda_site_packages())
    assert call["sys_path"][0] == str(base.HANDLERS) and call["sys_path"][1] == site
    assert not any("site-packages" in p or ".venv" in p for p in call["sys_path"])
    assert call["importable"] == {
        "boto3": True,
        "aws_lambda_powertools": True,
        "pytest": False,
        "moto": False,
        "rich": False,
        "pydantic": False,  # not in the layer's [tracer] extra
    }
    assert call["versions"] == {"boto3": _pin("boto3"), "aws-lambda-powertools": _pin("aws-lambda-powertools")}
    # memory: capped at MemorySize, so allocating all of it fails
    assert call["rlimit_as"] == 256 * 1024 * 1024 and call["allocation"] == "MemoryError"
    # CPU: at most about 256/1769 of a core (less when the machine is busy)
    assert call["cpu_ratio"] <= cpu_share(256) * 1.6
    assert cpu_share(256) == 256 / MB_PER_VCPU and cpu_share(4096) == 1.0
