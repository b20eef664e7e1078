"""Attacks on ``python -m ops quota-probe``: each test is a way the probe misleads, crashes or disagrees with its docs.

Every test here fails on the code it was written against (see the report that came with this file). The end-to-end
tests run the command over HTTP against the local Personalize emulator; the replay tests feed ideal departure times
through a model standing in for the service, as ``test_quota_probe.py`` does."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from connector.putitems import THROTTLE_ERRORS
from localcloud.personalize_emulator import PersonalizeEmulator
from ops import quota_probe
from ops.cli import main
from ops.common import OpsError
from ops.quota_probe import Pattern, Sent, report, score, send
from tests.factories import items_schema
from tests.ops.test_quota_probe import replayed

ROOT = Path(__file__).resolve().parents[2]
ARN = "arn:aws:personalize:us-east-1:111122223333:dataset/probe/ITEMS"
USERS_ARN = "arn:aws:personalize:us-east-1:111122223333:dataset/probe/USERS"
REST_S = "2.05"  # the shortest rest after which a bucket of burst 20 has refilled (as in test_quota_probe.py)
WINDOWS = {"sliding-window", "fixed-window"}  # the pair the docs allow to stay undecided ("does not matter")


@contextlib.contextmanager
def emulator(monkeypatch: pytest.MonkeyPatch, **knobs: Any) -> Iterator[PersonalizeEmulator]:
    knobs.setdefault("tps", 10)
    with PersonalizeEmulator(seed=3, **knobs) as emu:
        emu.register_dataset(ARN)
        monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", emu.endpoint_url)
        yield emu


def probe_json(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """The exit code and the ``--json`` report (empty when the command refused to run)."""
    out = tmp_path / "probe.json"
    code = main(["quota-probe", "--dataset-arn", ARN, "--json", str(out), *extra])
    return code, json.loads(out.read_text()) if out.exists() else {}


def err(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())  # rich wraps lines


# ------------------------------------------------------------------------------ wrong model, with confidence


@pytest.mark.integration
def test_a_quota_above_the_probes_is_not_named_a_token_bucket_of_burst_20(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An account whose quota was raised to 25/s (a sliding window) throttles none of the probe's calls. No pattern
    makes a bucket of burst 2 x quota throttle anything, so "nothing throttled" is scored as a perfect match for it:
    the probe says "consistent with token-bucket, burst 20", 0 calls off, exit 0. It should say that it saw no
    throttles at all (the quota is higher than --quota), not name a model."""
    with emulator(monkeypatch, tps=25):
        code, got = probe_json(tmp_path, "--rest", REST_S)
    named = got["models"][0]["model"] if got else None
    assert not (code == 0 and named is not None and named.startswith("token-bucket")), (code, got.get("verdict"))


@pytest.mark.integration
def test_a_short_rest_does_not_name_the_wrong_bucket_with_exit_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--rest`` accepts anything >= 0, though the patterns only tell a bucket of burst 20 from one of burst 10 when
    the rest refills 20 tokens (2 s). At ``--rest 0.5`` both buckets predict the same counts; the tie goes to the
    first in the candidate list, and the probe exits 0 with "consistent with token-bucket, burst 10" for a bucket
    of burst 20 (its setting, ``--quota-model token-bucket``, reproduces the wrong account)."""
    with emulator(monkeypatch, quota_model="token-bucket", quota_burst=20.0):
        code, got = probe_json(tmp_path, "--rest", "0.5")
    if code == 2:  # refusing a rest too short to tell the buckets apart is a fix too
        return
    best = got["models"][0]["model"]
    assert not (code == 0 and best != "token-bucket, burst 20"), (code, got["verdict"])


def test_a_tie_with_a_materially_different_model_is_not_a_clear_verdict() -> None:
    """At ``--quota 2`` (few calls, and MARGIN stays 2 calls) a token bucket's counts are matched as well or better by
    the fixed window at its best phase, with 3 ms of jitter. The verdict names the fixed window, lists the bucket
    as "cannot tell them apart with confidence", and still calls it clear (exit 0). Only the two windows may stay
    undecided (the docs say that difference does not matter); a bucket within MARGIN of a window is unclear."""
    wrong = []
    for seed in range(10):
        probe = replayed("token-bucket", None, seed, 0.003, quota=2.0)
        scores = score(probe)
        _, lines, clear = report(probe, scores)
        if clear and scores[0].candidate.name != "token-bucket, burst 2":
            wrong.append((seed, lines[0]))
    assert not wrong, wrong


# ------------------------------------------------------------------------------ misleading verdicts


@pytest.mark.integration
def test_strict_spacing_behind_10_ms_of_network_jitter_is_named_and_not_blamed_on_another_writer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The control pattern is paced at 0.97 x quota: 103 ms apart, 3 ms of slack under strict spacing. With 10 ms of
    network jitter (the README's own figure) the control is throttled on every run, the probe exits 1 and blames
    "another writer", and "run it again" can never help: an account that follows strict spacing is never
    confirmed."""
    with emulator(monkeypatch, quota_model="strict-spacing", request_jitter_ms=10.0):
        code, got = probe_json(tmp_path, "--rest", REST_S)
    assert got, code
    assert got["verdict"][0].startswith("consistent with strict-spacing"), got["verdict"]
    assert code == 0, got["verdict"]


@pytest.mark.integration
def test_ctrl_c_does_not_claim_that_progress_was_saved(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during the probe prints the CLI's generic "progress so far is saved; run the same command again to
    continue". The probe saves nothing and a rerun starts over (and writes another ~100 items)."""
    real_send = quota_probe.send
    calls = {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> list[Sent]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_send(*args, **kwargs)

    monkeypatch.setattr(quota_probe, "send", interrupted)
    with emulator(monkeypatch):
        code = main(["quota-probe", "--dataset-arn", ARN, "--rest", REST_S])
    assert code == 130
    assert "saved" not in err(capsys)


@pytest.mark.integration
@pytest.mark.parametrize("arn", ["not-an-arn", USERS_ARN], ids=["malformed-arn", "users-dataset"])
def test_an_invalid_input_that_is_not_about_properties_gets_no_properties_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], arn: str
) -> None:
    """Every InvalidInputException got "(if the dataset's schema requires fields, pass them with --properties)",
    also a malformed dataset ARN and a USERS dataset, where passing --properties changes nothing. Both are now
    refused before a call is sent (not an Items dataset ARN), and the hint goes only with an error about
    properties, a schema or a field."""
    with emulator(monkeypatch) as emu:
        emu.register_dataset(USERS_ARN)
        code = main(["quota-probe", "--dataset-arn", arn, "--rest", REST_S])
        assert not emu.calls()
    out = err(capsys)
    assert code == 2
    assert "--dataset-arn" in out and "Items dataset ARN" in out
    assert "--properties" not in out, out


@pytest.mark.parametrize(
    ("message", "hinted"),
    [("required property 'genre' (GENRE) is missing", True), ("Invalid dataset ARN: bad account", False)],
)
def test_the_properties_hint_goes_only_with_an_error_about_properties(message: str, hinted: bool) -> None:
    exc = ClientError({"Error": {"Code": "InvalidInputException", "Message": message}}, "PutItems")
    assert ("--properties" in quota_probe._describe(exc)) is hinted


def test_every_throttle_code_the_connector_knows_is_a_throttle_for_the_probe() -> None:
    """The connector treats ``LimitExceededException`` as a throttle (``connector.putitems.THROTTLE_ERRORS``); the
    probe's ``THROTTLE_CODES`` lacks it, so a service answering over-quota calls with it ends the probe as an "AWS
    error" (exit 2) instead of being measured."""

    class Refuse(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        code = "ThrottlingException"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"message": "Rate exceeded"}).encode()
            self.send_response(400)
            self.send_header("X-Amzn-ErrorType", type(self).code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    not_throttles = []
    for code in sorted(THROTTLE_ERRORS):
        handler = type("RefuseOne", (Refuse,), {"code": code})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            pe = boto3.client(
                "personalize-events",
                endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
            )
            try:
                sent = send(pe, ARN, Pattern("two", (0.0, 0.0)), run_id="t", first=0, properties=None)
                if not all(s.throttled for s in sent):
                    not_throttles.append(code)
            except OpsError:
                not_throttles.append(code)
        finally:
            server.shutdown()
            server.server_close()
    assert not not_throttles, not_throttles


def test_the_local_cloud_setting_names_the_rate_when_the_quota_is_not_10() -> None:
    """The verdict's "local cloud: --quota-model ..." is the setting to benchmark under, but at ``--quota 15`` it
    leaves out the rate: ``localcloud up`` defaults to ``--tps 10``, so the setting reproduces another account."""
    probe = replayed("sliding-window", None, 0, 0.0, quota=15.0)
    scores = score(probe)
    _, lines, _ = report(probe, scores)
    assert scores[0].candidate.name == "sliding-window"
    assert "--tps 15" in lines[0], lines[0]


# ------------------------------------------------------------------------------ tracebacks instead of one line


@contextlib.contextmanager
def socket_closed() -> Iterator[int]:
    """A local port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    yield port


def test_an_unreachable_endpoint_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection error (a BotoCoreError, not a ClientError) escapes each call's thread (a traceback each), leaves
    ``outcome[n]`` unset, and ``send`` then dies with ``KeyError: 0`` out of ``main``, instead of exit 2 with one
    line. A read timeout (a service that accepts and never answers: 60 s by default) ends the same way."""
    with socket_closed() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", f"http://127.0.0.1:{port}")
        code = main(["quota-probe", "--dataset-arn", ARN, "--rest", REST_S])
    assert code == 2
    assert "Could not connect" in err(capsys)


def test_missing_credentials_are_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``NoCredentialsError`` is raised while signing, inside each call's thread: 20 thread tracebacks and a
    ``KeyError`` out of ``main`` rather than "Unable to locate credentials" and exit 2."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with socket_closed() as port:  # never reached: signing fails first
        monkeypatch.setenv("AWS_ENDPOINT_URL_PERSONALIZE_EVENTS", f"http://127.0.0.1:{port}")
        code = main(["quota-probe", "--dataset-arn", ARN, "--rest", REST_S])
    assert code == 2
    assert "credentials" in err(capsys).lower()


def test_a_thread_that_cannot_start_is_a_one_line_error_and_strands_no_thread_on_the_barrier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``can't start new thread`` (a large ``--quota`` is 2 x quota threads at once, and nothing bounds it) on the
    5th thread: the RuntimeError leaves ``main`` as a traceback, and the 4 started threads wait on the barrier
    forever (it is never aborted)."""
    started: list[threading.Thread] = []

    class Failing(threading.Thread):
        def start(self) -> None:
            if len(started) == 4:
                raise RuntimeError("can't start new thread")
            started.append(self)
            super().start()

    fake = types.SimpleNamespace(
        Thread=Failing,
        Barrier=threading.Barrier,
        BrokenBarrierError=threading.BrokenBarrierError,
        local=threading.local,
    )
    monkeypatch.setattr(quota_probe, "threading", fake)
    with emulator(monkeypatch):
        try:
            code: int | str = main(["quota-probe", "--dataset-arn", ARN, "--rest", REST_S])
        except RuntimeError as exc:
            code = f"raised {exc!r}"
        for t in started:
            t.join(timeout=0.5)
    assert code == 2, code
    assert not any(t.is_alive() for t in started), "threads left waiting on the barrier"


@pytest.mark.integration
def test_a_quota_below_one_is_refused_before_the_run_not_a_traceback_after_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--quota 0.5`` passes the check (> 0), sends the whole experiment, then ``score`` builds
    ``TokenBucket(0.5, 0.5)``, which raises ``ValueError: a token bucket needs burst >= 1``: a traceback after the
    run, with nothing reported."""
    with emulator(monkeypatch, tps=0.5) as emu:
        try:
            code: int | str = main(["quota-probe", "--dataset-arn", ARN, "--quota", "0.5", "--rest", REST_S])
        except ValueError as exc:
            code = f"raised {exc!r}"
        sent = len(emu.calls())
    assert code in (0, 1, 2), code
    if code == 2:
        assert sent == 0, "refused, but only after sending"
        assert "--quota" in err(capsys)


@pytest.mark.integration
@pytest.mark.parametrize(
    "extra",
    [["--quota", "nan"], ["--quota", "inf"], ["--rest", "nan"], ["--rest", "inf"]],
    ids=["quota-nan", "quota-inf", "rest-nan", "rest-inf"],
)
def test_non_finite_numbers_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    """``nan`` passes ``<= 0`` / ``< 0`` checks: ``round(nan)`` (quota) or ``time.sleep(nan)`` after the warm-up
    (rest) raise ValueError; ``inf`` raises OverflowError. Tracebacks, not one line."""
    with emulator(monkeypatch):
        try:
            code: int | str = main(["quota-probe", "--dataset-arn", ARN, *extra])
        except (ValueError, OverflowError) as exc:
            code = f"raised {exc!r}"
    assert code == 2, code
    assert extra[0] in err(capsys)


@pytest.mark.integration
def test_an_unwritable_json_path_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` into a missing directory: the whole run is sent, then ``write_text`` raises FileNotFoundError
    (a traceback, exit 1 from Python) after the verdict was printed."""
    missing = tmp_path / "no-such-dir" / "probe.json"
    with emulator(monkeypatch):
        try:
            code: int | str = main(["quota-probe", "--dataset-arn", ARN, "--rest", REST_S, "--json", str(missing)])
        except OSError as exc:
            code = f"raised {exc!r}"
    assert code == 2, code
    assert "--json" in err(capsys) or str(missing.parent) in err(capsys)


# ------------------------------------------------------------------------------ docs that disagree with the code


@pytest.mark.integration
def test_the_docs_properties_example_is_accepted_for_a_schema_with_that_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/ops/quota-probe.md shows ``--properties '{"GENRE": "probe"}'`` for a schema that requires GENRE. PutItems
    properties use the camelCase form of the field name (``genre``; the emulator and AWS's PutItems reference), so
    the documented command is refused with InvalidInputException (exit 2)."""
    doc = (ROOT / "docs/ops/quota-probe.md").read_text()
    m = re.search(r"--properties '(\{[^']*\})'", doc)
    assert m, "no --properties example in the docs"
    example = m.group(1)
    field = next(iter(json.loads(example)))
    schema = items_schema({"name": field.upper(), "type": "string", "categorical": True})
    with emulator(monkeypatch, tps=0) as emu:  # no quota: only the properties are under test
        emu.register_dataset(ARN, schema)
        pe = boto3.client("personalize-events", endpoint_url=emu.endpoint_url)
        sent = send(pe, ARN, Pattern("one", (0.0,)), run_id="doc", first=0, properties=example)
        assert len(sent) == 1 and not sent[0].throttled
        assert list(emu.items(ARN)) == ["quota-probe-doc-0"]


def test_the_readme_promise_of_dry_run_holds_for_quota_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's operator-tools preamble says "commands that write take `--dry-run`"; quota-probe writes ~100
    items and has no ``--dry-run`` (argparse exits 2 with a usage message)."""
    readme = (ROOT / "README.md").read_text()
    if "commands that write take `--dry-run`" not in readme or "(all but `quota-probe`, whose writes are" in readme:
        return  # no promise, or quota-probe is named as the exception
    with emulator(monkeypatch) as emu:
        try:
            code: int | str = main(["quota-probe", "--dataset-arn", ARN, "--dry-run"])
        except SystemExit as exc:
            code = f"SystemExit({exc.code})"
        assert code == 0, code
        assert not emu.calls(), "a dry run sent calls"
