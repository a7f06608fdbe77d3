"""Serving-store schema migrations (Alembic, run from code; no alembic.ini).

Every process opens the store through lklab.serving.store.make_engine, which brings it to this code's
head revision first: an empty store is created by the revisions, a store from before migrations
(lklab tables, no alembic_version) is stamped with the revision it holds and upgraded, a store
behind is upgraded (or refused when LKLAB_SERVING_AUTO_MIGRATE is off), and a store ahead of the
code is refused. Upgrades are serialised across processes (a file lock next to the SQLite file,
pg_advisory_lock on PostgreSQL) and the revision is re-read inside the lock.

Revisions live in versions/ and are frozen: they never import the live model. A schema change in
lklab.serving.store comes with a new revision (`lklab db revision`); tests/unit/test_migrations.py fails
until the head's schema equals lklab.serving.store.metadata.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.engine import Connection, Inspector
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from lklab.core.locks import file_lock

UPGRADE_COMMAND = "lklab db upgrade"
BASELINE = "0001"
VERSION_TABLE = "alembic_version"
SCRIPT_LOCATION = Path(__file__).resolve().parent
PG_LOCK_KEY = int.from_bytes(b"lklabmig", "big") >> 1  # one advisory lock (a positive bigint) for store upgrades


class StoreSchemaError(RuntimeError):
    """The store's schema cannot be served by this code as it is; the message is one line."""


@dataclass(frozen=True)
class StoreStatus:
    url: str  # password hidden
    current: str | None  # the revision the store holds; None: no lklab schema yet
    stamped: bool  # False: a store from before migrations (no alembic_version), or an empty one
    head: str
    pending: list[str]  # oldest first

    @property
    def at_head(self) -> bool:
        return self.stamped and not self.pending


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Config for the migrations package: online with `connection` (inside the caller's
    transaction), offline (DDL as text) with `url`."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


@functools.cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    return scripts().get_current_head()


@functools.cache
def known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in scripts().walk_revisions())


def pending(current: str | None) -> list[str]:
    """Revisions between `current` (exclusive; None = an empty store) and head, oldest first."""
    newer = scripts().iterate_revisions(head(), current or "base")
    return [script.revision for script in reversed(list(newer))]


def title(revision: str) -> str:
    """`0002 batch_runs`: the revision and the first words of its docstring."""
    doc = scripts().get_revision(revision).doc or ""
    return f"{revision} {doc.split(':')[0].strip()}".strip()


def render_frozen_type(type_: str, obj, autogen_context) -> str | bool:
    """Autogenerate hook: a TypeDecorator (UTCDateTime) is written as its plain impl (sa.DateTime()),
    so revisions never import lklab.serving.store."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def public_url(url: str | URL) -> str:
    """The store URL as it may be shown: password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(LKLAB_SERVING_URL is not a SQLAlchemy URL)"


def bring_to_head(engine: Engine, auto_migrate: bool) -> None:
    """Make the store's schema this code's head, or raise StoreSchemaError. At head this costs
    one SELECT, because every process calls it whenever it opens the store."""
    if _version_rows(engine) == (head(),):
        return
    found = status(engine)  # read-only; refuses a store ahead of the code
    if found.at_head:
        return
    if not auto_migrate:
        if found.current is None:
            held = "no lklab tables"
        elif not found.stamped:
            held = f"{found.current}, made before migrations with no revision recorded"
        else:
            held = found.current
        todo = f"pending {', '.join(title(r) for r in found.pending)}" if found.pending else "the upgrade only records it"
        raise StoreSchemaError(f"serving store {found.url} is behind this code's {found.head}: it holds {held} ({todo}) and "
                               f"LKLAB_SERVING_AUTO_MIGRATE is off: run `{UPGRADE_COMMAND}`")
    upgrade(engine)


def status(engine: Engine) -> StoreStatus:
    """The store's revision against the code's head, changing nothing."""
    with engine.connect() as conn:
        current, stamped = _stored_revision(conn, public_url(engine.url))
    return StoreStatus(public_url(engine.url), current, stamped, head(), pending(current))


def upgrade(engine: Engine) -> tuple[StoreStatus, list[str]]:
    """Stamp a store from before migrations, then apply the pending revisions, in one transaction
    under the upgrade lock. Returns the status found inside the lock and the revisions applied."""
    url = public_url(engine.url)
    with _upgrade_connection(engine) as conn, conn.begin():
        current, stamped = _stored_revision(conn, url)  # again: another process may have upgraded meanwhile
        found = StoreStatus(url, current, stamped, head(), pending(current))
        config = alembic_config(conn)
        if current is not None and not stamped:
            command.stamp(config, current)
        if found.pending:
            command.upgrade(config, "head")
    return found, found.pending


def upgrade_sql(url: str) -> str:
    """The DDL every revision emits for `url`'s dialect (offline: nothing is connected)."""
    import io

    out = io.StringIO()
    config = alembic_config(url=url)
    config.output_buffer = out
    command.upgrade(config, "head", sql=True)
    return out.getvalue()


def new_revision(message: str) -> Path:
    """Write versions/<NNNN>_<slug>.py: the operations that turn the head schema into
    lklab.serving.store.metadata, found by autogenerate against a scratch SQLite store at head."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/head.db")
        try:
            with engine.begin() as conn:
                config = alembic_config(conn)
                command.upgrade(config, "head")
                script = command.revision(config, message=message, autogenerate=True, rev_id=f"{int(head()) + 1:04d}")
        finally:
            engine.dispose()
    scripts.cache_clear()
    known_revisions.cache_clear()
    return Path(script.path)


def _version_rows(engine: Engine) -> tuple[str, ...] | None:
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
    except DBAPIError:
        return None  # no version table (or no store yet): the careful path decides


def _stored_revision(conn: Connection, url: str) -> tuple[str | None, bool]:
    names = set(inspect(conn).get_table_names())
    if VERSION_TABLE in names:
        revisions = MigrationContext.configure(conn).get_current_heads()
        if len(revisions) > 1:
            raise StoreSchemaError(f"serving store {url} holds several schema revisions {', '.join(revisions)}; "
                                   f"lklab's history is linear (head {head()})")
        if revisions:
            if revisions[0] not in known_revisions():
                raise StoreSchemaError(f"serving store {url} is at schema revision {revisions[0]}, which this code does "
                                       f"not know (its newest is {head()}): use the lklab version that upgraded it, or a newer one")
            return revisions[0], True
    return _pre_migration_revision(inspect(conn), names, url), False


def _pre_migration_revision(inspector: Inspector, names: set[str], url: str) -> str | None:
    """The revision a store made before migrations holds (None: it holds no lklab tables)."""
    baseline = baseline_columns()
    if not names & baseline.keys():
        return None
    lacking = [table for table in baseline if table not in names]
    lacking += [f"{table}.{column}" for table in sorted(names & baseline.keys())
                for column in sorted(baseline[table] - {c["name"] for c in inspector.get_columns(table)})]
    if lacking:
        raise StoreSchemaError(f"serving store {url} predates the migration baseline {BASELINE} (it lacks "
                               f"{', '.join(lacking[:5])}{' …' if len(lacking) > 5 else ''}) and cannot be upgraded; "
                               f"move it aside or delete it (`make clean`) and start fresh")
    # Commit 878e0c6 added batch_runs through create_all, before migrations existed: such a store holds 0002.
    return "0002" if "batch_runs" in names else BASELINE


@functools.cache
def baseline_columns() -> dict[str, frozenset[str]]:
    """Table → column names of the baseline revision, read from the revision itself (built in memory)."""
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        inspector = inspect(conn)
        return {table: frozenset(c["name"] for c in inspector.get_columns(table))
                for table in inspector.get_table_names() if table != VERSION_TABLE}


@contextmanager
def _upgrade_connection(engine: Engine) -> Iterator[Connection]:
    """A connection that only one process at a time holds for upgrading this store."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        with file_lock(Path(f"{database}.migrate.lock")):
            migrating = _sqlite_transactional_engine(engine)
            try:
                with migrating.connect() as conn:
                    yield conn
            finally:
                migrating.dispose()
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                try:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
                    conn.commit()
                except DBAPIError:
                    conn.invalidate()  # closing the session is what releases a session-level lock
    else:
        with engine.connect() as conn:
            yield conn


def _sqlite_transactional_engine(engine: Engine) -> Engine:
    """The same SQLite file with transactional DDL: pysqlite leaves CREATE/ALTER outside its
    implicit transactions, so without this a crash mid-upgrade could leave half a revision."""
    migrating = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(migrating, "connect")
    def _manual_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(migrating, "begin")
    def _begin_write(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return migrating
