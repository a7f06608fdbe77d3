"""Where a latency window's CPU went: scheduler accounting per process and for the machine.

A p99 that misses its target at 90 % load is either the layer's own cost or a machine with no
CPU to spare (the layer, the broker and the load generator share its cores). The kernel's
accounting tells the two apart without a profiler in the process measured:
- on a CPU: the process's user + system time (`/proc/<pid>/stat`, which keeps the time of
  threads that have ended), in clock ticks;
- runnable but waiting for a CPU: `/proc/<pid>/task/*/schedstat`, summed over the threads
  alive at the window's end, a thread started inside the window from zero (a layer started
  just before the window creates its worker threads inside it); the wait of a thread that
  ended inside the window is not counted;
- the machine's busy time over all cores (`/proc/stat`).
Figures are in cores: seconds per second of the window.

`ThreadStates` answers the next question, what a process waits on when it is neither on a CPU nor
runnable: it samples each thread's scheduler state and kernel wait channel (`/proc/<pid>/task/
<tid>/stat` and `wchan`) every few milliseconds. `futex_*` is a lock, a condition or the GIL (a
thread waiting for the GIL sleeps on a futex), `do_epoll_wait`/`ep_poll` an event loop with
nothing to read, `D` a disk wait (fsync)."""
from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Reading:
    """One process at one moment: its CPU seconds so far, and each live thread's runnable wait (ns)."""

    cpu_s: float
    waits: dict[int, int]


def reading(pid: int) -> Reading | None:
    """Process `pid`'s CPU time and its threads' waits now, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    waits: dict[int, int] = {}
    for task in tasks:
        try:
            waits[int(task.name)] = int(task.joinpath("schedstat").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return Reading((int(fields[11]) + int(fields[12])) * TICK_S, waits)


def machine_ticks() -> tuple[int, int]:
    """The machine's (busy, all) clock ticks since boot, over every core (/proc/stat's first line)."""
    # user nice system idle iowait irq softirq steal; guest time is already in user and nice
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cores(before: Reading, after: Reading, seconds: float) -> tuple[float, float]:
    """(on a CPU, runnable but waiting) in cores over `seconds`, from two readings of one process."""
    waited = sum(now - before.waits.get(thread, 0) for thread, now in after.waits.items())
    return (after.cpu_s - before.cpu_s) / seconds, waited / 1e9 / seconds


class Window:
    """Scheduler accounting of named groups of processes over a window: `start()`, then `stop()`
    gives {name: {"on_cpu": cores, "waiting": cores}} summed over each group's processes, and
    "machine": {"busy": cores, "cores": n}. A process gone at either end is left out, and so is
    a group with none left."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.before: dict[tuple[str, int], Reading] = {}

    def start(self) -> None:
        self.clock, self.ticks = time.monotonic(), machine_ticks()
        self.before = {(name, pid): found for name, group in self.pids.items() for pid in group
                       if (found := reading(pid)) is not None}

    def stop(self) -> dict[str, dict[str, float]]:
        seconds = time.monotonic() - self.clock
        busy, total = (now - then for now, then in zip(machine_ticks(), self.ticks))
        summed: dict[str, list[float]] = {}
        for (name, pid), before in self.before.items():
            if (after := reading(pid)) is not None:
                on_cpu, waiting = cores(before, after, seconds)
                group = summed.setdefault(name, [0.0, 0.0])
                group[0], group[1] = group[0] + on_cpu, group[1] + waiting
        found = {name: {"on_cpu": round(on_cpu, 2), "waiting": round(waiting, 2)} for name, (on_cpu, waiting) in summed.items()}
        n = os.cpu_count() or 1
        found["machine"] = {"busy": round(n * busy / total, 2) if total else 0.0, "cores": n}
        return found


class ThreadStates:
    """Samples the scheduler state and wait channel of every thread of `pids` every `every_s`
    while running (`start()` … `stop()`); `stop()` gives, per thread that was ever running or
    runnable, the share of samples in each "state wchan" (R: on a CPU or runnable), busiest
    thread first. It reads two small files per thread per sample: run it in a window whose
    figures are not recorded."""

    def __init__(self, pids: list[int], every_s: float = 0.01) -> None:
        self.pids, self.every_s = pids, every_s
        self.seen: dict[str, Counter] = defaultdict(Counter)
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.sampler.start()

    def _sample(self) -> None:
        me = str(threading.get_native_id())  # the sampler, when it samples its own process
        while not self.done.wait(self.every_s):
            for pid in self.pids:
                for task in (t for t in _tasks(pid) if t.name != me):
                    try:
                        state = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
                        wchan = task.joinpath("wchan").read_text().strip()
                    except (OSError, IndexError):
                        continue
                    self.seen[f"{pid}/{task.name}"][state if state == "R" else f"{state} {wchan or '?'}"] += 1

    def stop(self) -> dict[str, dict[str, float]]:
        self.done.set()
        self.sampler.join(timeout=5)
        found = {}
        for thread, counts in sorted(self.seen.items(), key=lambda kv: -kv[1]["R"] / sum(kv[1].values())):
            total = sum(counts.values())
            if counts["R"] / total >= 0.02:
                found[thread] = {state: round(n / total, 3) for state, n in counts.most_common(4)}
        return found


def _tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
