"""processes.spawn and processes.log_tail, on tiny Python children (no broker, no worker)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lklab.core import processes

MARKER = b"lklab-spawn-test"


def child(code: str) -> list[str]:
    return [sys.executable, "-c", f"# {MARKER.decode()}\n{code}"]


def test_spawn_returns_once_ready_and_leaves_the_pid_file(tmp_path: Path) -> None:
    log, pid_file, flag = tmp_path / "svc.log", tmp_path / "svc.pid", tmp_path / "ready"
    code = f"import os, time, pathlib; print('hello', os.getcwd(), os.environ['SPAWN_TEST'], flush=True); pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    pid = processes.spawn(child(code), log=log, pid_file=pid_file, ready=lambda _pid: flag.exists(), wait_s=20, poll_s=0.05,
                          env={"SPAWN_TEST": "from-env", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    try:
        assert int(pid_file.read_text()) == pid
        assert processes.read_pid(pid_file, MARKER) == pid
    finally:
        assert processes.stop_group(pid_file, MARKER, wait_s=5)
    assert not pid_file.exists()
    assert log.read_text().strip() == f"hello {tmp_path} from-env"


def test_spawn_reports_an_early_exit_and_removes_the_pid_file(tmp_path: Path) -> None:
    log, pid_file = tmp_path / "svc.log", tmp_path / "svc.pid"
    log.write_text("an earlier run\n")
    with pytest.raises(processes.StartupExited) as exited:
        processes.spawn(child("import sys; print('line 1'); print('boom', file=sys.stderr); sys.exit(3)"),
                        log=log, pid_file=pid_file, ready=lambda _pid: False, wait_s=20, poll_s=0.05)
    assert exited.value.returncode == 3
    assert not pid_file.exists()
    assert processes.log_tail(log) == "an earlier run | line 1 | boom"  # appended, stderr included
    assert processes.log_tail(log, lines=1) == "boom"


def test_spawn_times_out_and_leaves_the_service_to_the_caller(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    with pytest.raises(processes.StartupTimedOut) as timed_out:
        processes.spawn(child("import time; time.sleep(60)"), log=tmp_path / "svc.log", pid_file=pid_file,
                        ready=lambda _pid: False, wait_s=0.5, poll_s=0.05)
    try:
        assert processes.read_pid(pid_file, MARKER) == timed_out.value.pid
    finally:
        assert processes.stop_group(pid_file, MARKER, wait_s=5)


def test_log_tail_without_a_log(tmp_path: Path) -> None:
    assert processes.log_tail(tmp_path / "missing.log") == "(no log)"


def test_free_ports_lie_outside_the_ephemeral_range() -> None:
    """Outgoing connections take ephemeral ports; a listener chosen there can lose the race to bind."""
    low, high = (int(x) for x in processes.EPHEMERAL_RANGE.read_text().split())
    singles = [processes.free_port() for _ in range(20)]
    bases = [processes.free_port_range(3) for _ in range(20)]
    for base, n in [(p, 1) for p in singles] + [(b, 3) for b in bases]:
        assert all(not low <= p <= high for p in range(base, base + n)), (base, n, low, high)
        assert all(processes.port_free("127.0.0.1", p) for p in range(base, base + n))
    avoid = range(bases[0], bases[0] + 3)
    assert all(not set(range(b, b + 3)) & set(avoid) for b in (processes.free_port_range(3, avoid=avoid) for _ in range(20)))
