"""Killing a lab command at a chosen point, as a node dies: start `python -m lklab.cli ARGS` in its
own session, wait for a real signal that it reached the point (a stall marker, a Delta commit,
a Dagster run record), and SIGKILL its whole process group there, Spark's JVM included, so no
part of it finishes the write it was in. Used by the partial-write drill and the batch-crashes
chaos check."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lklab.core import processes
from lklab.core.config import Settings
from lklab.drills.registry import DrillError
from lklab.views.faults import stall_marker

ROOT = Path(__file__).resolve().parents[2]


class KillMissed(DrillError):
    """The process never reached the point it was to be killed at (it exited first, or timed out)."""


def spawn_cli(settings: Settings, args: list[str], log_name: str) -> subprocess.Popen:
    """`python -m lklab.cli ARGS` with `settings` as LKLAB_* variables, in its own session (so what
    it starts, Spark's JVM, can be reaped with it); output appended to <logs>/`log_name`."""
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.logs_dir / log_name, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "lklab.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=processes.python_env(ROOT, settings.to_env()),
                                cwd=settings.home, start_new_session=True)


def kill_group(proc: subprocess.Popen, wait_s: float = 30.0) -> int | None:
    """SIGKILL the process and everything in its group at once (it leads its own session), and
    reap it; its exit code (-9 when the kill ended it), None if it outlived `wait_s`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone, group and all
        pass
    try:
        return proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        return None


def wait_until(proc: subprocess.Popen, reached: Callable[[], bool], what: str, log: Path, timeout_s: float,
               poll_s: float = 0.02) -> None:
    """Poll `reached()` until it holds. KillMissed (one line, with the log's tail) when the process
    exits first; at the timeout the process is killed and KillMissed raised."""
    deadline = time.monotonic() + timeout_s
    while not reached():
        if proc.poll() is not None:
            raise KillMissed(f"pid {proc.pid} exited ({proc.returncode}) before {what}: {processes.log_tail(log)}")
        if time.monotonic() > deadline:
            kill_group(proc)
            raise KillMissed(f"pid {proc.pid} did not reach {what} within {timeout_s:.0f}s")
        time.sleep(poll_s)


def kill_in_stall(settings: Settings, proc: subprocess.Popen, layer: str, log_name: str, timeout_s: float = 900.0,
                  clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Wait until `proc` hangs inside its publishing transaction (lklab.views.faults' stall marker
    names its pid), then SIGKILL its group there. `t` is `clock()` at the kill."""
    marker = stall_marker(settings, layer)
    wait_until(proc, lambda: stalled_pid(marker) is not None, f"its {layer} commit", settings.logs_dir / log_name, timeout_s)
    holder = stalled_pid(marker)
    time.sleep(0.3)  # well inside the stall: the writes are done, the commit is not
    t = clock()
    code = kill_group(proc)
    marker.unlink(missing_ok=True)
    return {"t": t, "pid": proc.pid, "in_transaction": holder == proc.pid, "returncode": code,
            "killed": code == -signal.SIGKILL}


def stalled_pid(marker: Path) -> int | None:
    """The pid a stall marker names; None while it is absent or not yet written whole."""
    try:
        return int(marker.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
