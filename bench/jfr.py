"""A Java Flight Recorder profile of a running JVM (the bench's Spark driver), summarised by what
the sampled threads were doing: the evidence behind BOUNDS.md's Spark section.

JFR ships with the JDK (jcmd starts and stops a recording in a live JVM; `jfr print` reads it),
samples Java stacks every 20 ms with the `default` settings. A traced gold build ran about 3x
slower than the untraced median of the runs before it, with the `profile` settings (10 ms) and
with `default` alike; the bench times the same run untraced just before the traced one, so the
cost of the recording is in the record beside the shares.
Each sample is put in the phase of its innermost frame that PHASES names, so a Parquet decode
under a Delta write counts as the Parquet work it is."""
from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cpu_window  # bench/: the suite runs as a script

# (phase, frame prefixes): a sample's frames are checked leaf first (phase_of)
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("code generation (Janino compiles the query's Java)", ("org.codehaus.janino.", "org.codehaus.commons.compiler.")),
    ("query planning (Catalyst rules, AQE re-planning)", ("org.apache.spark.sql.catalyst.rules.RuleExecutor",
                                                        "org.apache.spark.sql.catalyst.analysis.",
                                                        "org.apache.spark.sql.catalyst.optimizer.")),
    ("Parquet write (encode, compress, flush)", ("org.apache.parquet.hadoop.InternalParquetRecordWriter",
                                                  "org.apache.parquet.hadoop.ParquetFileWriter",
                                                  "org.apache.parquet.column.impl.ColumnWriter",
                                                  "org.apache.spark.sql.execution.datasources.parquet.ParquetOutputWriter")),
    ("Parquet read and decode", ("org.apache.spark.sql.execution.datasources.parquet.Vectorized",
                                 "org.apache.parquet.column.", "org.apache.parquet.hadoop.ParquetFileReader")),
    ("shuffle write and read", ("org.apache.spark.shuffle.", "org.apache.spark.storage.ShuffleBlockFetcher",
                                "org.apache.spark.util.collection.ExternalSorter")),
    ("aggregation and expressions (generated code)", ("org.apache.spark.sql.catalyst.expressions.GeneratedClass",
                                                       "org.apache.spark.sql.execution.aggregate.",
                                                       "org.apache.spark.unsafe.map.", "org.apache.spark.sql.execution.UnsafeKVExternalSorter")),
    ("Delta log, snapshot and commit", ("org.apache.spark.sql.delta.", "io.delta.")),
    ("class loading", ("java.lang.ClassLoader.", "jdk.internal.loader.")),
    ("task (de)serialisation", ("org.apache.spark.serializer.", "java.io.ObjectOutputStream", "java.io.ObjectInputStream")),
    ("scheduler and RPC", ("org.apache.spark.scheduler.", "org.apache.spark.rpc.", "io.netty.")),
)
OTHER = "other"
JFR_SETTLE_S = 2.0  # a JVM's first recording starts its recorder threads and loads their classes: not the work's cost


@contextmanager
def recording(pid: int, out: Path) -> Iterator[Path]:
    """A JFR recording of JVM `pid` for the duration of the block, written to `out`."""
    out.unlink(missing_ok=True)
    _jcmd(pid, "JFR.start", "name=lklab-bench", "settings=default", f"filename={out}")
    time.sleep(JFR_SETTLE_S)
    try:
        yield out
    finally:
        _jcmd(pid, "JFR.stop", "name=lklab-bench")


def _jcmd(pid: int, *command: str) -> None:
    done = subprocess.run(["jcmd", str(pid), *command], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or "Could not" in done.stdout:
        raise RuntimeError(f"jcmd {pid} {' '.join(command)}: {(done.stdout + done.stderr).strip()[:300]}")


def _events(path: Path, event: str, depth: int = 96) -> list[dict]:
    done = subprocess.run(["jfr", "print", "--json", "--stack-depth", str(depth), "--events", event, str(path)],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout)["recording"]["events"]


def _frames(event: dict) -> list[str]:
    stack = (event.get("values", {}).get("stackTrace") or {}).get("frames") or []
    return [f"{f['method']['type']['name'].replace('/', '.')}.{f['method']['name']}" for f in stack]


def phase_of(frames: list[str], phases: tuple[tuple[str, tuple[str, ...]], ...] = PHASES) -> str:
    """The phase of the innermost frame (leaf first) that a phase names: generated aggregation code
    runs inside a shuffle writer's task, and counts as the aggregation it is."""
    for frame in frames:
        for phase, prefixes in phases:
            if frame.startswith(prefixes):
                return phase
    return OTHER


def _seconds(duration: str) -> float:
    """A JFR duration as printed in JSON ("PT0.0123S")."""
    return float(duration.removeprefix("PT").removesuffix("S") or 0)


def summary(path: Path, wall_s: float, cpu_s: float | None, top: int = 12) -> dict:
    """Samples per phase (share of all), the hottest methods by self samples, GC pause time, and
    the JVM's CPU time (from /proc) against `wall_s`."""
    samples = [_frames(e) for e in _events(path, "jdk.ExecutionSample")]
    phases = Counter(phase_of(frames) for frames in samples)
    hottest = Counter(frames[0] for frames in samples if frames)
    gc = sum(_seconds(e["values"]["duration"]) for e in _events(path, "jdk.GarbageCollection", depth=1))
    total = max(1, len(samples))
    return {"wall_s": round(wall_s, 2), "samples": len(samples),
            "cpu_s": None if cpu_s is None else round(cpu_s, 2),
            "cores_busy": None if cpu_s is None or not wall_s else round(cpu_s / wall_s, 2),
            "gc_s": round(gc, 3),
            "phases": {phase: round(n / total, 3) for phase, n in phases.most_common()},
            "hottest_methods": {method: round(n / total, 3) for method, n in hottest.most_common(top)}}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` so far, or None if it is gone."""
    found = cpu_window.reading(pid)
    return None if found is None else found.cpu_s


def profile(pid: int, out: Path, work: Callable[[], object]) -> dict:
    """Run `work` under a JFR recording of `pid`; its summary."""
    with recording(pid, out):
        clock, cpu = time.monotonic(), cpu_seconds(pid)
        work()
        wall, after = time.monotonic() - clock, cpu_seconds(pid)
    return summary(out, wall, None if cpu is None or after is None else after - cpu)
