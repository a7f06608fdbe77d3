"""Serving-store migrations: an older store is upgraded with every row kept, a store the code
cannot serve is refused with one line and left as it was, and the head revision is the model."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, BigInteger, DateTime, Engine, Integer, LargeBinary, MetaData, String, inspect, make_url, select, text
from typer.testing import CliRunner

from lklab.serving import migrations
from lklab.serving import store as serving
from lklab.cli import app
from lklab.core.config import Settings
from lklab.serving.migrations import StoreSchemaError
from lklab.serving.store import make_engine, store_engine

HEAD = migrations.head()
OLDER = migrations.pending(None)[:-1]  # every revision a store can be behind at


@pytest.fixture
def settings(tmp_path: Path, serving_url: str | None) -> Settings:
    """Every migration test on both stores: SQLite, and a fresh database on the run's PostgreSQL."""
    return Settings(home=tmp_path, serving_url=serving_url)


def store_at(settings: Settings, revision: str) -> Engine:
    """The configured store built by the revisions up to `revision` (what that checkout left)."""
    engine = store_engine(settings)
    with engine.begin() as conn:
        command.upgrade(migrations.alembic_config(conn), revision)
    return engine


def version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def value_for(table: str, column, n: int):
    """A distinct value of the column's type; BigInteger beyond 32 bits, JSON nested."""
    kind = column["type"]
    if isinstance(kind, DateTime):
        return datetime(2026, 11, 17, 10, n % 60, 5)
    if isinstance(kind, JSON):
        return {"table": table, "n": [n, {"deep": column["name"]}]}
    if isinstance(kind, BigInteger):
        return 2**40 + n
    if isinstance(kind, Integer):
        return n
    if isinstance(kind, String):
        return f"{table[:20]}.{column['name']}.{n}"[: kind.length]
    if isinstance(kind, LargeBinary):
        return f"{table}.{column['name']}.{n}".encode() + bytes([0, 255, n % 256])
    raise AssertionError(f"{table}.{column['name']}: no test value for {kind!r}")


def fill_every_table(engine: Engine, rows_per_table: int = 2) -> dict[str, list[dict]]:
    """Rows in every lklab table the store has, built from the store's own columns."""
    schema = MetaData()
    schema.reflect(engine)
    written: dict[str, list[dict]] = {}
    with engine.begin() as conn:
        for table in schema.sorted_tables:
            if table.name == migrations.VERSION_TABLE:
                continue
            columns = inspect(conn).get_columns(table.name)
            rows = [{c["name"]: value_for(table.name, c, n + 1) for c in columns} for n in range(rows_per_table)]
            conn.execute(table.insert(), rows)
            written[table.name] = rows
    return written


def read_back(engine: Engine, tables: list[str]) -> dict[str, list[dict]]:
    schema = MetaData()
    schema.reflect(engine, only=tables)
    with engine.connect() as conn:
        return {name: [dict(row._mapping) for row in conn.execute(select(schema.tables[name]).order_by(*schema.tables[name].primary_key))]
                for name in tables}


def assert_kept(engine: Engine, written: dict[str, list[dict]]) -> None:
    """Every row written before the upgrade, column for column (columns a later revision added
    take their defaults: they were not written)."""
    read = read_back(engine, sorted(written))
    assert {t: [{k: row[k] for k in rows[0]} for row in read[t]] if rows else [] for t, rows in written.items()} == written
    with engine.connect() as conn:  # the live model reads the old rows too (UTCDateTime gives aware UTC)
        published = conn.execute(select(serving.publish_log.c.at).order_by(serving.publish_log.c.id)).scalars().all()
    assert [at.utcoffset() for at in published] == [timedelta(0)] * len(written["publish_log"])


def assert_batch_runs_writable(engine: Engine) -> None:
    row = {"run_id": "run-1", "started_at": datetime(2026, 11, 17, 10, tzinfo=timezone.utc), "status": "blocked",
           "first_date": "2026-11-17", "last_date": "2026-11-17", "gate": "gold_revenue_per_minute.ledger",
           "reason": "ledger differs", "diverged": [{"view": "revenue_per_minute"}], "build_id": None, "finished_at": None}
    with engine.begin() as conn:
        conn.execute(serving.batch_runs.insert(), [row])
    with engine.connect() as conn:
        assert dict(conn.execute(select(serving.batch_runs).where(serving.batch_runs.c.run_id == "run-1")).one()._mapping) == row


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


@pytest.mark.parametrize("revision", OLDER)
def test_a_store_behind_is_upgraded_on_start_with_every_row_kept(settings: Settings, revision: str) -> None:
    old = store_at(settings, revision)
    written = fill_every_table(old)
    assert set(written) >= set(migrations.baseline_columns()), "every baseline table holds rows"
    old.dispose()

    engine = make_engine(settings)

    assert version(engine) == [HEAD]
    assert_kept(engine, written)
    assert_batch_runs_writable(engine)


@pytest.mark.parametrize("holds", ["0001", "0002"])
def test_a_store_from_before_migrations_is_stamped_and_upgraded_with_every_row_kept(settings: Settings, holds: str) -> None:
    # 0001: a store from any checkout before 878e0c6; 0002: one made by 878e0c6's create_all (batch_runs)
    old = store_at(settings, holds)
    with old.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    written = fill_every_table(old)
    old.dispose()

    engine = make_engine(settings)

    assert version(engine) == [HEAD]
    assert_kept(engine, written)


def test_a_store_older_than_the_baseline_is_refused_unchanged(settings: Settings) -> None:
    old = store_at(settings, "0001")
    with old.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("ALTER TABLE kappa_builds DROP COLUMN tiers"))  # as a checkout before the two-tier log left it
    before = tables(old)

    with pytest.raises(StoreSchemaError) as refused:
        make_engine(settings)

    message = str(refused.value)
    assert "\n" not in message
    assert "predates the migration baseline 0001 (it lacks kappa_builds.tiers)" in message and "make clean" in message
    assert tables(old) == before


def test_a_store_ahead_of_the_code_is_refused_and_left_as_it_was(settings: Settings) -> None:
    engine = store_at(settings, HEAD)
    written = fill_every_table(engine, rows_per_table=1)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    before = tables(engine)

    with pytest.raises(StoreSchemaError) as refused:
        make_engine(settings)

    message = str(refused.value)
    assert "\n" not in message
    assert f"is at schema revision 0999, which this code does not know (its newest is {HEAD})" in message
    assert version(engine) == ["0999"] and tables(engine) == before
    assert read_back(engine, sorted(written)) == written


def test_with_auto_migrate_off_a_store_behind_is_refused_naming_the_upgrade_command(settings: Settings) -> None:
    settings = settings.model_copy(update={"serving_auto_migrate": False})
    old = store_at(settings, OLDER[-1])
    before = columns(old)

    with pytest.raises(StoreSchemaError) as refused:
        make_engine(settings)

    message = str(refused.value)
    assert "\n" not in message
    assert f"is behind this code's {HEAD}: it holds {OLDER[-1]} (pending {migrations.title(HEAD)})" in message
    assert message.endswith("run `lklab db upgrade`")
    assert version(old) == [OLDER[-1]] and columns(old) == before


def columns(engine: Engine) -> dict[str, list[str]]:
    found = inspect(engine)
    return {table: [c["name"] for c in found.get_columns(table)] for table in found.get_table_names()}


def test_the_head_revision_builds_exactly_the_model(settings: Settings) -> None:
    """A change to lklab.serving.store without a revision fails here: write it with `lklab db revision`."""
    engine = make_engine(settings)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), serving.metadata)
    assert differences == []


def test_the_revisions_render_for_postgresql() -> None:
    ddl = migrations.upgrade_sql("postgresql://lklab:secret@localhost/lklab")
    assert ddl.count("CREATE TABLE") == len(serving.metadata.tables) + 1  # and alembic_version
    assert "CREATE INDEX speed_contrib_by_entity ON speed_contrib (view, entity)" in ddl
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in ddl


def _start(settings: Settings) -> list[str]:
    return version(make_engine(settings))


def test_processes_starting_together_upgrade_once(settings: Settings) -> None:
    old = store_at(settings, OLDER[0])
    written = fill_every_table(old)
    old.dispose()

    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        seen = list(pool.map(_start, [settings] * 4))

    assert seen == [[HEAD]] * 4
    assert_kept(make_engine(settings), written)


def test_cli_db_status_and_upgrade(settings: Settings) -> None:
    written = fill_every_table(store_at(settings, OLDER[-1]))
    env = settings.to_env()
    runner = CliRunner()

    behind = runner.invoke(app, ["db", "status"], env=env)
    assert behind.exit_code == 1
    assert f"serving store {make_url(settings.serving).render_as_string(hide_password=True)}\n" in behind.stdout
    assert f"revision: {migrations.title(OLDER[-1])}" in behind.stdout
    assert f"pending:  {migrations.title(HEAD)}" in behind.stdout and "run `lklab db upgrade`" in behind.stdout

    upgraded = runner.invoke(app, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.stderr
    assert f"applied {migrations.title(HEAD)}; now at {HEAD}" in upgraded.stdout
    assert "already at head" in runner.invoke(app, ["db", "upgrade"], env=env).stdout

    current = runner.invoke(app, ["db", "status"], env=env)
    assert current.exit_code == 0 and "pending:  none" in current.stdout
    assert_kept(store_engine(settings), written)

    with store_engine(settings).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    ahead = runner.invoke(app, ["db", "status"], env=env)
    assert ahead.exit_code == 2 and ahead.stderr.count("\n") == 1
    assert "error: serving store" in ahead.stderr and "is at schema revision 0999" in ahead.stderr


def test_cli_db_on_a_store_it_cannot_reach_says_so_in_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://lklab:s3cret@127.0.0.1:1/lklab"  # no driver installed, or nothing listening: one line either way
    shown = CliRunner().invoke(app, ["db", "status"], env={"LKLAB_HOME": str(tmp_path), "LKLAB_SERVING_URL": url})
    assert shown.exit_code == 2 and shown.stderr.count("\n") == 1
    assert shown.stderr.startswith("error: serving store postgresql://lklab:***@127.0.0.1:1/lklab: ")
    assert "s3cret" not in shown.stdout + shown.stderr
