"""A py-spy profile of a running Python process (a speed worker, the live Kappa job, the bench's
own replay), summarised by what its threads were doing: the evidence behind BOUNDS.md's
sections on the live path and the replay.

py-spy samples from outside the process (process_vm_readv, `--nonblocking`: the process is not
paused), so the profiled process runs as it would; py-spy itself takes CPU on the machine, so
the bench profiles an extra window, never one whose figures it records. Only Python frames are
sampled: time in C (SQLite's executemany, msgspec) counts to the innermost Python frame that
called it. Each sample is put in the phase of its innermost frame that PHASES names."""
from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

RATE_HZ = 100
# (phase, path fragments): a sample's frames are checked leaf first (phase_of)
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("checkpoint chunks (msgpack, lklab.engine.chunks)", ("lklab/engine/chunks.py",)),
    ("fold: dedup, contributions, windows (lklab.engine.fold, lklab.views)", ("lklab/engine/fold.py", "lklab/views/",
                                                                             "lklab/engine/horizon.py")),
    ("decode and validate events (msgspec, lklab.core.events)", ("lklab/core/events.py", "msgspec/")),
    ("SQLite: statements and commits (SQLAlchemy, sqlite3)", ("sqlalchemy/", "sqlite3/", "lklab/serving/")),
    ("Kafka fetch and record parsing (aiokafka, kafka)", ("aiokafka/", "kafka/")),
    ("the event loop (asyncio, uvloop), Faust and mode", ("faust/", "mode/", "asyncio/", "uvloop/")),
    ("the sink's batch bookkeeping (lklab.engine.sink, checkpoint)", ("lklab/engine/sink.py", "lklab/engine/checkpoint.py")),
    ("the speed source (streaming.batches)", ("streaming/",)),
)
OTHER = "other"


def py_spy() -> str:
    return str(Path(sys.executable).parent / "py-spy")


@contextmanager
def recording(pid: int, out: Path) -> Iterator[Path]:
    """py-spy samples every thread of `pid` for the duration of the block into `out` (raw)."""
    out.unlink(missing_ok=True)
    spy = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw",
                            "--output", str(out), "--nonblocking", "--threads"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield out
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        _, err = spy.communicate(timeout=60)
        if not out.exists():
            raise RuntimeError(f"py-spy --pid {pid}: wrote no profile ({(err or '').strip()[-300:]})")


def samples(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(thread, frames root first, count) per line of py-spy's raw output."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        yield thread.split(":", 1)[-1].strip(), frames, int(count)


def phase_of(frames: list[str], phases: tuple[tuple[str, tuple[str, ...]], ...] = PHASES) -> str:
    """A frame `function (path:line)` matches a fragment that starts its path or one of its
    directories (py-spy shortens paths under sys.path: `lklab/engine/fold.py`, `asyncio/events.py`)."""
    for frame in reversed(frames):
        for phase, fragments in phases:
            if any(f"({fragment}" in frame or f"/{fragment}" in frame for fragment in fragments):
                return phase
    return OTHER


def summary(path: Path, top: int = 10) -> dict:
    """Shares of the samples by phase and by thread, and the hottest leaf functions."""
    phases, threads, leaves = Counter(), Counter(), Counter()
    for thread, frames, count in samples(path):
        phases[phase_of(frames)] += count
        threads[thread] += count
        leaves[frames[-1] if frames else "?"] += count
    total = sum(phases.values()) or 1
    return {"samples": sum(phases.values()), "rate_hz": RATE_HZ,
            "phases": {phase: round(n / total, 3) for phase, n in phases.most_common()},
            "threads": {thread: round(n / total, 3) for thread, n in threads.most_common(6)},
            "hottest": {_short(frame): round(n / total, 3) for frame, n in leaves.most_common(top)}}


def _short(frame: str) -> str:
    """`function (…/package/module.py:line)` with the path cut to its last two parts."""
    name, _, where = frame.partition(" (")
    return f"{name} ({'/'.join(where.rstrip(')').split('/')[-2:])})" if where else name


def profile(pid: int, out: Path, work: Callable[[], object]) -> dict:
    """Run `work` while py-spy samples `pid`; its summary."""
    with recording(pid, out):
        work()
    return summary(out)
