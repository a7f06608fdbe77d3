"""Background services (the Kafka broker, the Faust worker): pid files, liveness, stop."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def alive(pid: int, marker: bytes) -> bool:
    """Is `pid` still our service (not exited, not a zombie, not a recycled pid)?
    `marker` is a byte string its command line contains."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # no procfs (not Linux): trust kill(0)
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # exited; its sockets and files are released
            return False
        cmdline = (proc / "cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # An exiting process has an empty cmdline before it releases its sockets: still alive.
    return not cmdline or marker in cmdline


def read_pid(pid_file: Path, marker: bytes) -> int | None:
    """The running service's pid, or None (a stale pid file is removed)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if alive(pid, marker):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def stop_group(pid_file: Path, marker: bytes, wait_s: float = 30.0) -> bool:
    """SIGTERM the service's process group, wait, then SIGKILL. False if it was not running."""
    pid = read_pid(pid_file, marker)
    if pid is None:
        return False
    for sig, patience in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and alive(pid, marker):
            time.sleep(0.1)
        if not alive(pid, marker):
            break
    pid_file.unlink(missing_ok=True)
    return True


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_free(host: str, port: int, wait_s: float = 10.0) -> bool:
    """A service that was just killed releases its listening socket a moment after it is reaped."""
    deadline = time.monotonic() + wait_s
    while not port_free(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
