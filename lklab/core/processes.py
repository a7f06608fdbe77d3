"""Background services (the Kafka broker, the Faust worker): spawn, pid files, liveness, stop."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StartupExited(RuntimeError):
    """The service exited before it was ready (its pid file is already removed)."""

    def __init__(self, pid: int, returncode: int) -> None:
        super().__init__(f"pid {pid} exited with code {returncode} during start-up")
        self.pid, self.returncode = pid, returncode


class StartupTimedOut(RuntimeError):
    """The service was not ready in time; it is still running (the caller stops it)."""

    def __init__(self, pid: int, wait_s: float) -> None:
        super().__init__(f"pid {pid} not ready within {wait_s:.0f}s")
        self.pid, self.wait_s = pid, wait_s


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    pid_file: Path,
    ready: Callable[[int], bool],
    wait_s: float,
    poll_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> int:
    """Start `argv` in the background in its own session (stdout and stderr appended to `log`,
    no stdin), write its pid to `pid_file`, and poll every `poll_s` until `ready(pid)`; returns
    the pid. Raises StartupExited (pid file removed) when it exits first, StartupTimedOut when
    it is not ready within `wait_s` (left running for the caller to stop)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env), cwd=None if cwd is None else str(cwd), start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise StartupExited(proc.pid, proc.returncode)
        if ready(proc.pid):
            return proc.pid
        time.sleep(poll_s)
    raise StartupTimedOut(proc.pid, wait_s)


def python_env(root: Path, settings_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a Python service started from this checkout: ours, the settings as
    LKLAB_* variables, unbuffered output, and `root` first on the import path."""
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **settings_env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def log_tail(log: Path, lines: int = 5) -> str:
    """The last `lines` lines of a service's log, stripped and joined with " | " (one line for an
    error message); "(no log)" when it has none yet."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:])


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


def process_table() -> dict[int, tuple[str, int, int]]:
    """Every live process: pid → (state, parent pid, process group), from /proc/<pid>/stat."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
                out[int(entry.name)] = (state, int(parent), int(group))
            except (OSError, ValueError):
                continue
    return out


def group_members(pgid: int) -> list[int]:
    return [pid for pid, (state, _parent, group) in process_table().items() if group == pgid and state not in ("Z", "X")]


def stop_process_group(pgid: int, patience_s: float = 20.0) -> None:
    """SIGTERM every process of the group (dagster dev's webserver, daemon and code servers
    outlive their parent), wait until none is left, then SIGKILL what remains."""
    for sig, wait_s in ((signal.SIGTERM, patience_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_members(pgid):
            return


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
    if group_members(pid):  # children that outlived the service (Spark's JVM, Dagster's code servers)
        stop_process_group(pid, patience_s=0.0)
    pid_file.unlink(missing_ok=True)
    return True


JAVA_MISSING = "java not found: install a JDK 17+ (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"


def java() -> str | None:
    """The JVM the lab starts its services with: $JAVA_HOME/bin/java, else java on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    found = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    return found if found and Path(found).exists() else None


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS = range(10_000, 65_536)  # where the lab's services listen, less the kernel's ephemeral range


def _listen_candidates(n: int) -> list[int]:
    """Base ports for n consecutive listeners outside the kernel's ephemeral range: an ephemeral
    port that was free a moment ago can be taken by any process's outgoing connection before the
    service binds it (a 3-node cluster lost that race in a test run), a port outside it cannot."""
    try:
        low, high = (int(x) for x in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32_768, 60_999  # Linux's default
    bases = [b for b in LISTEN_PORTS if b + n - 1 < LISTEN_PORTS.stop and (b + n - 1 < low or b > high)]
    return random.sample(bases, min(len(bases), 200))


def free_port(host: str = "127.0.0.1") -> int:
    """A port outside the ephemeral range that is free now (the caller binds it soon)."""
    return free_port_range(1, host=host)


def free_port_range(n: int, avoid: range = range(0), attempts: int = 100, host: str = "127.0.0.1") -> int:
    """A base port such that base .. base + n - 1 are all free now, outside the ephemeral range
    (an N-node cluster listens on consecutive ports), and none falls in `avoid`."""
    for base in _listen_candidates(n)[:attempts]:
        ports = range(base, base + n)
        if not set(ports) & set(avoid) and all(port_free(host, p) for p in ports):
            return base
    raise RuntimeError(f"no {n} consecutive free ports on {host} in {attempts} attempts")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts connections there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


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
