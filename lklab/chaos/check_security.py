"""`security`: what the lab exposes on the network, and what it keeps of riders' PII.

1. Listeners: the lab starts every service that listens (the check's Kafka broker, the query API,
   the Dagster UI as `dagster dev` does for `make dagster-ui`, PostgreSQL, the Faust speed worker,
   a live Kappa job, and this process's Spark driver) and reads the OS socket table
   (/proc/net/tcp, tcp6, udp, udp6: listening TCP and bound UDP sockets), attributing each
   socket to a process by its inode in /proc/<pid>/fd and each process to the service whose
   process tree holds it. Every socket must be on 127.0.0.0/8 or ::1; a service where no socket
   is found fails (the check did not see it).
2. PII: rides with a rider's name and phone (distinctive values made here, each holding a unique
   ASCII tag) go through the edge (`produce_lines`), valid lines and bad ones (the dead-letter
   path), then the speed worker, the Kappa job and its Delta snapshot, and a batch build (bronze,
   silver, gold, promotion). Every file of the Kafka data directory, the lake, the lab's home
   (serving store and its WAL, logs, Dagster storage), Spark's scratch and PostgreSQL's data
   directory is scanned, byte for byte, for every value (UTF-8, JSON-escaped and UTF-16 forms
   all hold the tag). A plaintext copy of the input is scanned the same way first, as the
   control: it must show every value.
3. The bind rule through the real CLI: `lklab serve --host 0.0.0.0` without a token exits 2 with
   one line; with LKLAB_API_TOKEN it starts (on 0.0.0.0, briefly: requests go to 127.0.0.1 only),
   answers 401 (one line, WWW-Authenticate: Bearer) without the token or with a wrong one, 200
   with it; the socket-table reader must see that server as not loopback (its positive control)."""
from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lklab import views
from lklab.api.app import is_loopback
from lklab.chaos.check_http_api import one_line_detail
from lklab.chaos.registry import ChaosContext, ChaosError, Check, register
from lklab.chaos.result import CheckResult, Figure, equal, holds, zero
from lklab.core import processes
from lklab.core.config import Settings
from lklab.drills.lab import API_MARKER, ROOT, Api
from lklab.core.http import get_json
from lklab.engine.snapshots import SnapshotError
from lklab.hybrid.refresh import snapshot_view
from lklab.kappa import jobs
from lklab.kappa.freshness import running_pid
from lklab.kappa.names import output_name
from lklab.lake import tables as lake
from lklab.lambda_arch import speed
from lklab.lambda_arch.builds import batch_views
from lklab.lambda_arch.promote import publish_batch
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_lines
from lklab.serving import postgres
from lklab.serving.store import make_engine
from orchestration.launch import write_dagster_yaml

KAPPA_VIEW = "daily_active_users"  # the Kappa job and snapshot that carry the PII-bearing events
TAG = "Qvix"  # in every name: ASCII, so UTF-8 and JSON-escaped copies of a name both hold it
PHONE = "+999 555 "  # every phone starts so (+999 is no country's code)
FIRST_NAMES = ("Zoë", "Øyvind", "Małgorzata", "Søren", "José", "Ĳsbrand", "Ana", "Kwame")
LISTEN, UNCONNECTED = "0A", "07"  # /proc/net/tcp* state of a listening socket; /proc/net/udp* of a bound one
CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class Plan:
    duration_s: int
    rides_per_minute: int
    bad_per_kind: int  # bad lines carrying PII, per kind of fault


PLANS = {"small": Plan(duration_s=600, rides_per_minute=10, bad_per_kind=2),
         "full": Plan(duration_s=3600, rides_per_minute=30, bad_per_kind=10)}


# ---- 1. the OS socket table -------------------------------------------------------------------
@dataclass(frozen=True)
class Socket:
    proto: str
    host: str
    port: int
    inode: int


def _host(hex_addr: str) -> str:
    """/proc/net address → text: each 32-bit word is in the kernel's (little-endian) byte order."""
    raw = bytes.fromhex(hex_addr)
    address = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    mapped = getattr(address, "ipv4_mapped", None)  # a JVM's IPv4 socket on a dual-stack tcp6 socket
    return f"::ffff:{mapped}" if mapped else str(address)


def socket_table() -> list[Socket]:
    """Every listening TCP socket and bound, unconnected UDP socket of this network namespace."""
    found = []
    for proto, state in (("tcp", LISTEN), ("tcp6", LISTEN), ("udp", UNCONNECTED), ("udp6", UNCONNECTED)):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == state and int(port, 16):
                found.append(Socket(proto, _host(address), int(port, 16), int(fields[9])))
    return found


def _parents() -> dict[int, int]:
    return {pid: parent for pid, (_state, parent, _group) in processes.process_table().items()}


def process_tree(root: int, parents: dict[int, int]) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listeners(services: dict[str, list[int]]) -> dict[str, list[dict[str, Any]]]:
    """Each service's sockets from the table, by the process trees of its root pids (a process
    counted once, under the first service whose tree holds it)."""
    table, parents, claimed = socket_table(), _parents(), set()
    found: dict[str, list[dict[str, Any]]] = {}
    for service, roots in services.items():
        pids = set().union(*(process_tree(r, parents) for r in roots)) - claimed if roots else set()
        claimed |= pids
        owner = {inode: pid for pid in pids for inode in socket_inodes(pid)}
        found[service] = [{"proto": s.proto, "host": s.host, "port": s.port, "pid": owner[s.inode], "loopback": is_loopback(s.host)}
                          for s in table if s.inode in owner]
    return found


# ---- the services the lab starts ----------------------------------------------------------------
class DagsterUi:
    """`dagster dev` on a free loopback port, as `make dagster-ui` runs it, in its own process group."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.port = settings, processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid_file = settings.home / "dagster-ui.pid"
        self.log = settings.logs_dir / "dagster-ui.log"

    def start(self) -> int:
        write_dagster_yaml(self.settings)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        env = processes.python_env(ROOT, self.settings.to_env()) | {"DAGSTER_HOME": str(self.settings.dagster_home)}
        argv = [sys.executable, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(self.port)]
        try:
            return processes.spawn(argv, log=self.log, pid_file=self.pid_file, wait_s=300, poll_s=0.5, env=env, cwd=ROOT,
                                   ready=lambda _pid: get_json(f"{self.url}/server_info", 2.0)[0] == 200)
        except (processes.StartupExited, processes.StartupTimedOut) as exc:
            self.stop()
            raise ChaosError(f"the Dagster UI did not start ({exc}): {processes.log_tail(self.log)}") from None

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        if (pid := self.pid()) is not None:
            processes.stop_process_group(pid)
            self.pid_file.unlink(missing_ok=True)


def broker_process(settings: Settings) -> tuple[int | None, Path | None]:
    """The process listening on the broker's port, and its log.dirs (from the server.properties on
    its command line). Found from the socket table, not a pid file: the pid file is under the home
    that started the broker, which a check's settings need not share (the tests' broker)."""
    ports = {settings.kafka_port + i for i in range(settings.kafka_brokers)}
    inodes = {s.inode for s in socket_table() if s.proto.startswith("tcp") and s.port in ports}
    for pid in _parents():
        if inodes & socket_inodes(pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                config = next(Path(a) for a in argv if a.endswith("server.properties"))
                dirs = next(line.split("=", 1)[1] for line in config.read_text().splitlines() if line.startswith("log.dirs="))
            except (OSError, StopIteration):
                return pid, None
            return pid, Path(dirs.split(",")[0])
    return None, None


def _postmaster_pid(root: Path) -> int | None:
    try:
        return int((root / "data" / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Lab:
    settings: Settings
    api: Api
    dagster: DagsterUi
    pg_root: Path
    spark_pid: int | None

    def services(self) -> dict[str, list[int]]:
        """Each service the lab started and its root pids (None: not running, so none)."""
        settings = self.settings
        pids = {
            "Kafka broker": [broker_process(settings)[0]],
            "query API": [processes.read_pid(self.api.pid_file, API_MARKER)],
            "Dagster UI (dagster dev)": [self.dagster.pid()],
            "PostgreSQL": [_postmaster_pid(self.pg_root)],
            "Faust speed worker": [speed.read_pid(settings)],
            "Spark driver": [self.spark_pid],
            f"Kappa job {output_name(KAPPA_VIEW, 1)}": [running_pid(settings, output_name(KAPPA_VIEW, 1))],
        }
        return {name: [p for p in roots if p] for name, roots in pids.items()}


QUIET = ("Kappa job",)  # services that need not listen at all (a job only consumes and writes)


def _spark_pid(spark) -> int | None:
    gateway = getattr(getattr(spark, "sparkContext", None), "_gateway", None)
    return getattr(getattr(gateway, "proc", None), "pid", None)


def _start_services(ctx: ChaosContext, stack: ExitStack, pg_root: Path) -> tuple[Lab, list]:
    settings = ctx.settings
    lab = Lab(settings, Api(settings), DagsterUi(settings), pg_root, _spark_pid(ctx.spark))
    stack.callback(postgres.stop, pg_root)
    stack.callback(lab.dagster.stop)
    stack.callback(jobs.stop, settings, KAPPA_VIEW, 1)
    stack.callback(speed.stop, settings)
    stack.callback(lab.api.stop)
    starting = ThreadPoolExecutor(5, thread_name_prefix="security-start")
    stack.callback(starting.shutdown)  # runs first: a start in flight ends before the stops
    started = [starting.submit(lab.dagster.start), starting.submit(postgres.start, pg_root, processes.free_port()),
               starting.submit(speed.start, settings), starting.submit(lab.api.start)]
    return lab, started


# ---- 2. PII -----------------------------------------------------------------------------------
@dataclass
class Pii:
    lines: list[str]
    values: list[str]  # every plaintext value planted (names and phones)
    tags: list[str]  # each value's unique ASCII part, what the scan looks for
    valid: int
    bad: int


def _rider(rng: random.Random, n: int) -> dict[str, str]:
    return {"name": f"{rng.choice(FIRST_NAMES)} {TAG}-{n:05d}", "phone": f"{PHONE}{n:05d}"}


def _tags(pii: dict[str, str]) -> list[str]:
    return [pii["name"].split(" ", 1)[1], pii["phone"]]


def pii_lines(seed: int, plan: Plan) -> Pii:
    """The workload's lines, each ride_requested event with its rider's PII, and bad lines (one
    field broken, or the PII itself) that each carry a rider's PII to the dead-letter topic."""
    rng = random.Random(seed)
    events = generate(GeneratorConfig(seed=seed, duration_s=plan.duration_s, rides_per_minute=plan.rides_per_minute)).deliveries
    riders: dict[str, dict[str, str]] = {}
    lines = []
    for event in events:
        data = json.loads(event.to_json())
        if data["event_type"] == "ride_requested":
            data["pii"] = riders.setdefault(data["event_id"], _rider(rng, len(riders)))  # a re-delivery carries the same PII
        lines.append(json.dumps(data))
    template = json.loads(next(e for e in events if e.event_type == "payment_captured").to_json())
    bad = []
    for _ in range(plan.bad_per_kind):
        for breaks in BAD_LINES:
            pii = riders.setdefault(f"bad-{len(bad)}", _rider(rng, len(riders)))
            bad.append(breaks({**template, "event_id": f"bad-{len(bad)}"}, pii))
    values = [v for pii in riders.values() for v in pii.values()]
    tags = [t for pii in riders.values() for t in _tags(pii)]
    return Pii(lines + bad, values, tags, len(lines), len(bad))


def _cut_after_pii(data: dict, pii: dict) -> str:
    text = json.dumps({"pii": pii, **{k: v for k, v in data.items() if k != "pii"}})
    return text[: text.index(pii["phone"]) + len(pii["phone"]) + 2]  # malformed JSON that still holds the PII


BAD_LINES: tuple[Callable[[dict, dict], str], ...] = (
    lambda d, pii: json.dumps({**d, "event_type": "teleport", "pii": pii}),
    lambda d, pii: json.dumps({**d, "amount_cents": -5, "pii": pii}),
    lambda d, pii: json.dumps({**{k: v for k, v in d.items() if k != "city"}, "pii": pii}),
    lambda d, pii: json.dumps({**d, "pii": [pii["name"], pii["phone"]]}),  # the PII itself breaks the schema
    lambda d, pii: json.dumps({**d, "pii": {**pii, "name": pii["name"].replace(" ", " \ud800", 1)}}),  # not Unicode text
    _cut_after_pii,
)


def _forms(tag: str) -> list[bytes]:
    """How a tag can sit in a file: UTF-8 (also its JSON-escaped form: the tag is ASCII), UTF-16."""
    return [tag.encode(), tag.encode("utf-16-le"), tag.encode("utf-16-be")]


@dataclass
class Scan:
    files: int = 0
    bytes: int = 0
    hits: list[dict[str, Any]] = field(default_factory=list)  # {file, value tag}
    stores: Counter = field(default_factory=Counter)  # store → files


def _files(root: Path) -> Iterator[Path]:
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _chunks(path: Path) -> Iterator[bytes]:
    overlap = b""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield overlap + chunk
            overlap = chunk[-64:]  # a value split across two chunks is still seen whole


def scan(roots: dict[str, Path], tags: list[str], store_of: Callable[[str, Path], str | None]) -> Scan:
    """Every file under `roots`, byte for byte: files holding any form of any tag. The markers
    (in every tag) pick the few chunks worth searching for each tag."""
    markers = [m for marker in (TAG, PHONE.strip()) for m in _forms(marker)]
    forms = {tag: _forms(tag) for tag in tags}
    result = Scan()
    for root_name, root in roots.items():
        for path in _files(root):
            try:
                found = set()
                for chunk in _chunks(path):
                    result.bytes += len(chunk)
                    if any(m in chunk for m in markers):
                        found |= {tag for tag, ways in forms.items() if any(w in chunk for w in ways)}
            except OSError:
                continue  # removed while the walk went on (Spark's scratch, a Kafka index rolled)
            result.files += 1
            if (store := store_of(root_name, path)) is not None:
                result.stores[store] += 1
            result.hits += [{"file": str(path), "value": tag} for tag in sorted(found)]
    return result


def _store_of(settings: Settings) -> Callable[[str, Path], str | None]:
    topics = (settings.topic, settings.dlq_topic)

    def store(root: str, path: Path) -> str | None:
        text = str(path)
        if root == "Kafka":
            return "Kafka log segments (events, dead letters)" if path.suffix == ".log" and path.parent.name.rsplit("-", 1)[0] in topics else None
        if root == "PostgreSQL":
            return "PostgreSQL data directory"
        if "/snapshots/" in text:
            return "Kappa snapshots (Delta)"
        if "_delta_log" in text:
            return "Delta logs"
        if path.suffix == ".parquet":
            return "Delta data (parquet)"
        if path.name.startswith("serving.db"):
            return "serving store (SQLite + WAL)"
        if root == "home" and path.parent == settings.logs_dir:
            return "logs"
        return None

    return store


def run_pii_flow(ctx: ChaosContext, lab: Lab, pii: Pii) -> dict[str, Any]:
    """The PII-bearing lines through the edge, the speed layer, a Kappa job and its snapshot,
    and a batch build; returns what was accepted and dead-lettered."""
    settings = ctx.settings
    report = kafka_io.run(produce_lines(settings, pii.lines, "chaos-security"))
    jobs.start(settings, KAPPA_VIEW, 1)
    ctx.say(f"{output_name(KAPPA_VIEW, 1)} started; the batch build: bronze, silver, gold, promotion")
    engine = make_engine(settings)
    try:
        batch = settings.model_copy(update={"batch_views": [KAPPA_VIEW]})
        spark = ctx.spark
        end = kafka_io.run(kafka_io.end_offsets(settings))
        lake.append_bronze(spark, batch, lake.bronze_next_offsets(spark, batch), end)
        lake.build_silver(spark, batch)
        for name in batch_views(batch):
            lake.build_gold(spark, batch, views.VIEWS[name])
        build = publish_batch(spark, batch, engine)
        ctx.say(f"batch build {build.build_id} promoted; a snapshot of {output_name(KAPPA_VIEW, 1)}")
        _wait(lambda: jobs.job_status(settings, KAPPA_VIEW, 1).lag == 0, 120, f"{output_name(KAPPA_VIEW, 1)} did not catch up")
        try:
            snap = snapshot_view(settings, engine, KAPPA_VIEW, 1, spark=spark)
        except SnapshotError as exc:
            raise ChaosError(f"the Kappa snapshot failed: {exc}") from None
        speed.wait_caught_up(settings, 120)
    finally:
        engine.dispose()
    return {"accepted": report.accepted, "dead_lettered": report.dead_lettered, "build": build.build_id,
            "snapshot": snap.snapshot_id, "reasons": report.reasons[:6]}


def _wait(ready: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not ready():
        if time.monotonic() > deadline:
            raise ChaosError(f"{what} within {within_s:.0f}s")
        time.sleep(0.2)


# ---- 3. the bind rule, through the CLI -----------------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback URL we built
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()
    except OSError:
        return 0, {}, ""


def _one_line_401(answer: tuple[int, dict[str, str], str]) -> bool:
    status, headers, body = answer
    return status == 401 and headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Bearer" and one_line_detail(body)


def bind_rule(settings: Settings) -> dict[str, Any]:
    """`lklab serve --host 0.0.0.0`: refused without a token; with one, it needs it (and the socket
    table shows the server as not loopback: the listener check's positive control)."""
    port = processes.free_port()
    argv = [sys.executable, "-m", "lklab.cli", "serve", "--host", "0.0.0.0", "--port", str(port)]
    env = {k: v for k, v in processes.python_env(ROOT, settings.to_env()).items() if k != "LKLAB_API_TOKEN"}
    refused = subprocess.run(argv, env=env, cwd=settings.home, capture_output=True, text=True, timeout=120)
    lines = refused.stderr.strip().splitlines()
    out: dict[str, Any] = {"refused_exit": refused.returncode, "refused_lines": lines, "refused_stdout": refused.stdout.strip()}
    token = secrets.token_urlsafe(32)
    pid_file, log = settings.home / "api-open.pid", settings.logs_dir / "api-open.log"
    url = f"http://127.0.0.1:{port}"
    try:
        processes.spawn(argv, log=log, pid_file=pid_file, wait_s=60, poll_s=0.2, env=env | {"LKLAB_API_TOKEN": token},
                        cwd=settings.home, ready=lambda _pid: _get(f"{url}/health")[0] in (200, 503))
    except (processes.StartupExited, processes.StartupTimedOut) as exc:
        processes.stop_group(pid_file, API_MARKER, 10.0)
        raise ChaosError(f"lklab serve --host 0.0.0.0 with a token did not start ({exc}): {processes.log_tail(log)}") from None
    try:
        pid = processes.read_pid(pid_file, API_MARKER)
        seen = listeners({"open API": [pid] if pid else []})["open API"]
        out.update(no_token=_get(f"{url}/views"), wrong_token=_get(f"{url}/views", "x" * 43),
                   right_token=_get(f"{url}/views", token)[0], health=_get(f"{url}/health")[0],
                   control=[s for s in seen if not s["loopback"]])
    finally:
        processes.stop_group(pid_file, API_MARKER, 10.0)
    out["log_has_token"] = token in log.read_text(errors="replace") if log.exists() else False
    return out


# ---- the check ---------------------------------------------------------------------------------
def run_security(ctx: ChaosContext) -> CheckResult:
    pii = pii_lines(ctx.seed, PLANS[ctx.size])
    pg_root = Path(tempfile.mkdtemp(prefix="lklab-chaos-pg-"))  # under /tmp: as root, the server runs as `postgres`
    try:
        return _run(ctx, pii, pg_root)
    finally:
        shutil.rmtree(pg_root, ignore_errors=True)


def _run(ctx: ChaosContext, pii: Pii, pg_root: Path) -> CheckResult:
    settings = ctx.settings
    with ExitStack() as stack:
        lab, started = _start_services(ctx, stack, pg_root)
        ctx.say(f"starting Dagster UI, PostgreSQL, the speed worker and the API; {pii.valid:,} lines with "
                f"{len(pii.values):,} PII values and {pii.bad} bad lines carrying PII through the edge")
        kafka_io.run(kafka_io.ensure_topics(settings))
        for future in started[2:]:
            future.result(300)  # the speed worker and the API, before the PII arrives
        flow = run_pii_flow(ctx, lab, pii)
        ctx.say(f"accepted {flow['accepted']:,}, dead-lettered {flow['dead_lettered']}; batch build {flow['build']}, "
                f"snapshot {flow['snapshot']}; waiting for the Dagster UI")
        for future in started[:2]:
            future.result(300)
        found = listeners(lab.services())
        ctx.say("listeners: " + "; ".join(f"{name} {len(s)}" for name, s in found.items()))
        bound = bind_rule(settings)
        ctx.say(f"bind rule: refused with exit {bound['refused_exit']}; with a token: {bound['no_token'][0]} without it, "
                f"{bound['right_token']} with it")
    key_mode = (settings.home / "pii.key").stat().st_mode & 0o777 if not settings.pii_key else None
    scanned = _scan_everything(ctx, pii, lab)
    ctx.say(f"scanned {scanned['store'].files:,} files ({scanned['store'].bytes / 1e6:,.0f} MB): "
            f"{len(scanned['store'].hits)} plaintext PII hits; control {len(scanned['control'])}/{len(pii.tags)}")
    return ctx.result(fault="every listener the lab starts, read from the OS socket table; riders' PII through every store, "
                            "scanned byte for byte; the API's bind rule through the CLI",
                      trials=sum(len(s) for s in found.values()) + len(pii.tags) + 1,
                      figures=_figures(found, bound, pii, flow, scanned, key_mode),
                      evidence={"listeners": found, "bind_rule": _shown(bound), "pii_flow": flow,
                                "stores_scanned": dict(scanned["store"].stores), "hits": scanned["store"].hits[:20]})


def _scan_everything(ctx: ChaosContext, pii: Pii, lab: Lab) -> dict[str, Any]:
    settings = ctx.settings
    with tempfile.TemporaryDirectory(prefix="lklab-chaos-control-") as control_dir:
        control = Path(control_dir) / "input.jsonl"
        control.write_text("\n".join(pii.lines), encoding="utf-8", errors="surrogatepass")
        seen = scan({"control": Path(control_dir)}, pii.tags, lambda _r, _p: None)
    _pid, kafka_data = broker_process(settings)
    if kafka_data is None:
        raise ChaosError(f"no Kafka broker with a server.properties on its command line listens on port {settings.kafka_port}")
    roots = {"Kafka": kafka_data, "lake": Path(settings.lake_root), "home": settings.home, "PostgreSQL": lab.pg_root}
    if ctx.spark is not None:
        roots["Spark scratch"] = Path(ctx.spark.conf.get("spark.local.dir"))
    roots = {name: path for name, path in roots.items() if path.exists()}
    return {"control": {h["value"] for h in seen.hits}, "store": scan(roots, pii.tags, _store_of(settings)), "roots": roots}


STORES = ("Kafka log segments (events, dead letters)", "Delta data (parquet)", "Delta logs", "Kappa snapshots (Delta)",
          "serving store (SQLite + WAL)", "logs", "PostgreSQL data directory")


def _figures(found: dict[str, list[dict]], bound: dict[str, Any], pii: Pii, flow: dict[str, Any], scanned: dict[str, Any],
             key_mode: int | None) -> list[Figure]:
    figures = [Figure(name=f"{name} listeners (OS socket table)", value=len(sockets), bound="≥ 0" if name.startswith(QUIET) else "≥ 1",
                      ok=bool(sockets) or name.startswith(QUIET)) for name, sockets in found.items()]
    outside = [s for sockets in found.values() for s in sockets if not s["loopback"]]
    store: Scan = scanned["store"]
    missing = [s for s in STORES if not store.stores[s]]
    figures += [
        zero("listeners not on loopback", len(outside)),
        holds("a listener on 0.0.0.0 is seen as not loopback (control)", bool(bound["control"])),
        holds("lklab serve --host 0.0.0.0 without a token: exit 2, one line",
              bound["refused_exit"] == 2 and len(bound["refused_lines"]) == 1 and not bound["refused_stdout"],
              f"exit {bound['refused_exit']}, {len(bound['refused_lines'])} line(s)"),
        holds("with LKLAB_API_TOKEN: 401 without it or with a wrong one, 200 with it",
              _one_line_401(bound["no_token"]) and _one_line_401(bound["wrong_token"]) and bound["right_token"] == 200,
              f"{bound['no_token'][0]} / {bound['wrong_token'][0]} / {bound['right_token']}"),
        holds("the token is not in the API's log", not bound["log_has_token"]),
        equal("lines accepted with PII sealed", flow["accepted"], pii.valid),
        equal("bad lines carrying PII dead-lettered", flow["dead_lettered"], pii.bad),
        Figure(name="PII values planted and looked for", value=len(pii.tags), bound="≥ 100", ok=len(pii.tags) >= 100),
        equal("values the scan finds in a plaintext copy (control)", len(scanned["control"]), len(pii.tags)),
        Figure(name="files scanned", value=store.files, bound="every store", ok=not missing,
               unit=f"({', '.join(missing)} missing)" if missing else ""),
        Figure(name="bytes scanned", value=store.bytes, unit="B", bound="> 0", ok=store.bytes > 0),
        zero("plaintext PII values found", len({h["value"] for h in store.hits})),
    ]
    if key_mode is not None:
        figures.append(equal("PII key file mode", oct(key_mode), oct(0o600)))
    return figures


def _shown(bound: dict[str, Any]) -> dict[str, Any]:
    """The bind-rule evidence as JSON: statuses and details, never the token."""
    def answer(a: tuple[int, dict[str, str], str]) -> dict[str, Any]:
        return {"status": a[0], "www_authenticate": a[1].get("www-authenticate", a[1].get("WWW-Authenticate")), "body": a[2][:300]}

    return {**bound, "no_token": answer(bound["no_token"]), "wrong_token": answer(bound["wrong_token"])}


register(Check(
    name="security",
    title="every listener is on loopback, no plaintext PII is stored anywhere, and the API binds beyond loopback only with a token",
    promise="PostgreSQL listens on localhost unless told otherwise and Kafka wherever its listeners say; a service that "
            "binds a public address requires authentication; PII fields are encrypted at rest (Fernet: AES-128-CBC + "
            "HMAC-SHA256), so no store, log or snapshot holds them in plaintext",
    scope="lklab: every service binds 127.0.0.1 (Kafka, the API, the Dagster UI, PostgreSQL, the Faust web port, Spark's "
          "driver), and no TLS is used on loopback; the API refuses a non-loopback address unless LKLAB_API_TOKEN is set "
          "(then every path but /health needs the bearer token); PII is the event's `pii` field, sealed at the edge with "
          "a Fernet key that lives in a 0600 file under the home (or LKLAB_PII_KEY), dead letters included (a bad line's "
          "`pii` is sealed, a reason that quotes it is withheld, a line that is not a JSON object is cut where it names "
          "\"pii\"); PII put in other fields is not recognised, and a `pii` string is taken as a token unchecked; the "
          "batch build runs the batch layer's lake steps and promotion directly, not through Dagster",
    run=run_security,
))
