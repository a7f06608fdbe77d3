"""A PostgreSQL server for the scaled serving store: Debian's binaries, one cluster in a directory,
listening on 127.0.0.1 only, password (SCRAM) auth, started and stopped with pg_ctl.

PostgreSQL refuses to run as root; under root the cluster belongs to the `postgres` user (Debian's
package creates it) and its commands run as that user through setpriv.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL, create_engine

_STATE = "server.json"  # port, user, password: 0600, next to (not inside) the data directory


class PostgresError(RuntimeError):
    """A one-line reason the server cannot be set up, started or stopped."""


@dataclass(frozen=True)
class PostgresServer:
    root: Path
    port: int
    password: str
    user: str = "lklab"
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "lklab") -> str:
        """The SQLAlchemy URL (psycopg 3) of one database, password included: pass it, do not print it."""
        return URL.create("postgresql+psycopg", username=self.user, password=self.password, host=self.host,
                          port=self.port, database=database).render_as_string(hide_password=False)


def bin_dir() -> Path:
    """The server binaries: pg_ctl on PATH, else Debian's newest /usr/lib/postgresql/<major>/bin."""
    if found := shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    majors = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not majors:
        raise PostgresError("PostgreSQL not found: run `make setup` (installs Debian's postgresql) or put pg_ctl on PATH")
    return majors[-1].parent


def _server_user() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("running as root, and there is no `postgres` user to run the server as "
                            "(apt-get install postgresql creates it)") from None


def _run(argv: list[str], what: str) -> None:
    account = _server_user()
    if account is not None:
        argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise PostgresError(f"{what} failed: {lines[-1] if lines else f'exit code {result.returncode}'}")


def _hand_over(root: Path) -> None:
    """Under root, the cluster directory belongs to the server's account, which must reach it."""
    if (account := _server_user()) is None:
        return
    for path in (root, *[p for p in root.rglob("*")]):
        os.chown(path, account.pw_uid, account.pw_gid)
    parent = root.parent
    while parent != parent.parent:
        if not os.stat(parent).st_mode & 0o001:
            raise PostgresError(f"the postgres user cannot reach {root}: {parent} is not traversable by others; "
                                "put the server under a directory it can reach (e.g. a fresh directory in /tmp)")
        parent = parent.parent


def _init(server: PostgresServer) -> None:
    server.root.mkdir(parents=True, exist_ok=True)
    password_file = server.root / "initdb.pw"
    password_file.write_text(server.password + "\n")
    _hand_over(server.root)
    try:
        _run([str(bin_dir() / "initdb"), "-D", str(server.data_dir), "-U", server.user, f"--pwfile={password_file}",
              "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"], "initdb")
    finally:
        password_file.unlink(missing_ok=True)


def _state_file(root: Path) -> Path:
    return root / _STATE


def load(root: Path) -> PostgresServer | None:
    """The server set up in `root`, or None."""
    try:
        state = json.loads(_state_file(root).read_text())
    except FileNotFoundError:
        return None
    return PostgresServer(root=root, port=state["port"], password=state["password"], user=state["user"])


def _save(server: PostgresServer) -> None:
    state = _state_file(server.root)
    state.touch(mode=0o600)
    state.write_text(json.dumps({"port": server.port, "user": server.user, "password": server.password}))


def start(root: Path, port: int, wait_s: float = 60.0) -> PostgresServer:
    """Set up a cluster in `root` (once) and start it on 127.0.0.1:`port`; returns it, running."""
    from lklab.core import processes

    server = load(root)
    if server is None:
        server = PostgresServer(root=root, port=port, password=secrets.token_urlsafe(24))
        _init(server)
        _save(server)
    elif server.port != port:
        server = PostgresServer(root=root, port=port, password=server.password, user=server.user)
        _save(server)
    if not processes.port_free(server.host, port):
        raise PostgresError(f"PostgreSQL port {server.host}:{port} is already in use; stop what holds it or choose another port")
    if (server.data_dir / "postmaster.pid").exists():
        stop(root)  # a server left from a killed run: stop it cleanly before starting on the new port
    # no Unix socket: the only way in is TCP on loopback, with a password
    options = f"-c listen_addresses={server.host} -c port={port} -c unix_socket_directories='' -c fsync=on"
    try:
        _run([str(bin_dir() / "pg_ctl"), "start", "-w", "-t", str(int(wait_s)), "-D", str(server.data_dir),
              "-l", str(server.log), "-o", options], "pg_ctl start")
    except PostgresError as exc:
        raise PostgresError(f"{exc}; see {server.log}") from None
    _ensure_database(server, "lklab")
    return server


def stop(root: Path, wait_s: float = 60.0) -> bool:
    """Stop the server in `root` (fast shutdown: clients are disconnected). False if it was not running."""
    server = load(root)
    if server is None or not (server.data_dir / "postmaster.pid").exists():
        return False
    _run([str(bin_dir() / "pg_ctl"), "stop", "-w", "-t", str(int(wait_s)), "-m", "fast", "-D", str(server.data_dir)],
         "pg_ctl stop")
    return True


def _admin_sql(server: PostgresServer, sql: str, params: dict | None = None):
    """One statement on the server's maintenance database, outside a transaction (CREATE DATABASE needs that)."""
    engine = create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(sql, params)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


def _ensure_database(server: PostgresServer, name: str) -> None:
    if not _admin_sql(server, "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name}):
        create_database(server, name)


def create_database(server: PostgresServer, name: str) -> str:
    """A new, empty database on the server; returns its URL."""
    _admin_sql(server, f'CREATE DATABASE "{_identifier(name)}"')
    return server.url(name)


def drop_database(server: PostgresServer, name: str) -> None:
    _admin_sql(server, f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)')


def _identifier(name: str) -> str:
    """Database names are lklab's own (letters, digits, underscores): DDL cannot bind them as parameters."""
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise PostgresError(f"{name!r} is not a database name lklab creates (ASCII letters, digits and _)")
    return name
