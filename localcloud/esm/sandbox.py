"""The sandbox a worker runs in: only what the Lambda would have, with its memory and CPU.

* **Interpreter:** python3.13 (the function's runtime) when this machine has one -- on ``PATH``, or installed by
  pyenv -- else the interpreter running the local cloud (Debian 12 ships 3.11; nothing here downloads one).
* **sys.path:** the asset (``LAMBDA_TASK_ROOT``), then one site-packages holding exactly the Powertools layer's
  packages (``aws-lambda-powertools[tracer]`` at the version pinned in requirements.txt, with its dependencies)
  and the runtime's boto3 (the pinned ``boto3``, with its dependencies), then the standard library. The worker
  runs with ``-I -S``: no dev virtualenv, no user site, no ``PYTHON*`` variables. An import that only the dev
  venv satisfies fails as ``Runtime.ImportModuleError``, as on Lambda. The site-packages is copied, file by
  file from each distribution's RECORD, out of the dev venv (whose versions must equal the pins), once, into
  ``.localcloud/lambda-site/<hash>``: no network.
* **Memory:** ``RLIMIT_AS`` at ``MemorySize`` MB (set by the worker before it imports the handler; glibc is
  held to two malloc arenas so that address space tracks use). An allocation past it raises ``MemoryError``.
* **CPU:** Lambda gives CPU in proportion to memory, one vCPU at 1,769 MB, through the kernel's CPU bandwidth
  control (a quota of CPU time per 100 ms period). So here: once the worker has used ``MemorySize / 1769`` of
  the current 100 ms period in CPU time (read from ``/proc/<pid>/stat`` every few milliseconds), its process
  group is stopped (SIGSTOP) until the period ends. A busy worker never gets more than its share of one core
  (less when the machine is busy); an idle one (sleeping until a PutItems slot, say) is never stopped, as with
  the kernel's control, so it wakes on time. (An earlier duty cycle stopped it for the rest of every period
  whatever it used: no real quota does that, and it made any precisely timed send miss its slot.)
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

__all__ = ["LAYER_REQUIREMENTS", "CpuShare", "cpu_share", "find_python", "lambda_site_packages"]

ROOT = Path(__file__).resolve().parents[2]
LAYER_REQUIREMENTS = ("aws-lambda-powertools[tracer]", "boto3")
MB_PER_VCPU = 1769  # Lambda: "at 1,769 MB, a function has the equivalent of one vCPU"
CPU_PERIOD_S = 0.1


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s#;]+)", line)
        if m:
            pins[_canonical(m.group(1))] = m.group(2)
    return pins


def _closure(requirements: tuple[str, ...]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` need (extras honoured, environment markers evaluated)."""
    from packaging.requirements import Requirement  # noqa: PLC0415 - only when building the site

    found: dict[str, metadata.Distribution] = {}
    todo = [(parsed.name, tuple(parsed.extras)) for parsed in map(Requirement, requirements)]
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        key = _canonical(dist.metadata["Name"])
        if key in found and not extras:
            continue
        found[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(req.extras)))
    return found


def lambda_site_packages(dest_root: Path | None = None, requirements: Path | None = None) -> Path:
    """Build (once) and return the site-packages directory of the layer's and the runtime's packages."""
    requirements = requirements or ROOT / "requirements.txt"
    dists = _closure(LAYER_REQUIREMENTS)
    pins = _pins(requirements)
    for name in ("aws-lambda-powertools", "boto3"):
        if name in pins and dists[name].version != pins[name]:
            raise RuntimeError(
                f"the dev venv has {name} {dists[name].version}, requirements.txt pins {pins[name]}: "
                "the local Lambda site-packages must hold the pinned version (pip install -r requirements.txt)"
            )
    label = ",".join(f"{k}=={d.version}" for k, d in sorted(dists.items()))
    dest = (dest_root or ROOT / ".localcloud" / "lambda-site") / hashlib.sha256(label.encode()).hexdigest()[:12]
    marker = dest / ".complete"
    if marker.exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for dist in dists.values():
        base = Path(str(dist.locate_file("")))
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            try:
                relative = source.resolve().relative_to(base.resolve())
            except ValueError:
                continue  # scripts and data outside site-packages
            if relative.suffix == ".pyc" or "__pycache__" in relative.parts or not source.is_file():
                continue
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (tmp / ".complete").write_text(label + "\n")
    with contextlib.suppress(OSError):  # another process built it meanwhile: keep theirs
        tmp.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _works(python: str) -> bool:
    try:
        subprocess.run([python, "-c", "import sys"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def find_python(version: str = "3.13") -> str:
    """An installed python``version`` (on PATH, or under pyenv), else the interpreter running this code."""
    candidates = [shutil.which(f"python{version}") or ""]
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv}/versions/{version}*/bin/python{version}"), reverse=True)
    for candidate in candidates:
        if candidate and _works(candidate):
            return candidate
    return getattr(sys, "_base_executable", None) or sys.executable


def cpu_share(memory_mb: int) -> float:
    return min(1.0, memory_mb / MB_PER_VCPU)


class CpuShare(threading.Thread):
    """Hold a process group to ``share`` of every ``period`` seconds of CPU time (``share < 1``): stopped once it
    has used its quota in the current period, resumed when the next period starts (CPU bandwidth control)."""

    TICK_S = 0.005

    def __init__(self, pgid: int, share: float, period: float = CPU_PERIOD_S) -> None:
        super().__init__(name=f"cpu-share-{pgid}", daemon=True)
        self.pgid, self.share, self.period = pgid, share, period
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.frozen = False  # the hang fault hook owns the process: never resume it
        self._ticks_per_s = os.sysconf("SC_CLK_TCK")

    def _cpu_s(self) -> float | None:
        try:
            with open(f"/proc/{self.pgid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self._ticks_per_s  # utime + stime

    def run(self) -> None:
        quota = self.share * self.period
        period_start, stopped = time.monotonic(), False
        used_at_start = self._cpu_s()
        while not self._stop.wait(self.TICK_S):
            now, used = time.monotonic(), self._cpu_s()
            if used is None or used_at_start is None:
                return
            if now - period_start >= self.period:  # a new period: a fresh quota
                period_start, used_at_start = now, used
                if stopped:
                    if not self._signal(signal.SIGCONT):
                        return
                    stopped = False
            elif not stopped and used - used_at_start >= quota:
                if not self._signal(signal.SIGSTOP):
                    return
                stopped = True

    def _signal(self, sig: int) -> bool:
        with self._lock:
            if self._stop.is_set() or self.frozen:
                return not self._stop.is_set()
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                return False
            return True

    def stop(self, *, resume: bool = True) -> None:
        """Stop throttling; resume the group unless it was frozen on purpose."""
        with self._lock:
            self._stop.set()
            if resume and not self.frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGCONT)

    def freeze(self) -> None:
        with self._lock:
            self.frozen = True
