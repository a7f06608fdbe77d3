"""`lklab db`: the serving store's schema revision and migrations."""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from lklab.cli.common import console, db_app, fail, settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine




@db_app.command("status")
def db_status() -> None:
    """The serving store (URL without password), its schema revision, this code's head and the
    pending revisions; changes nothing. Exit 1 when the store is not at head."""
    from lklab.serving import migrations

    with store_as_found() as engine:
        st = migrations.status(engine)
    console.print(f"serving store {st.url}", highlight=False, soft_wrap=True)
    if st.current is None:
        held = "none (no lklab tables yet)"
    elif not st.stamped:
        held = f"{migrations.title(st.current)} (made before migrations: no alembic_version yet; the upgrade stamps it)"
    else:
        held = migrations.title(st.current)
    console.print(f"  revision: {held}", highlight=False, soft_wrap=True)
    console.print(f"  head:     {migrations.title(st.head)}", highlight=False, soft_wrap=True)
    console.print(f"  pending:  {', '.join(migrations.title(r) for r in st.pending) or 'none'}", highlight=False, soft_wrap=True)
    if not st.at_head:
        console.print(f"run `{migrations.UPGRADE_COMMAND}` (or start any lklab process with LKLAB_SERVING_AUTO_MIGRATE on)", soft_wrap=True)
        raise typer.Exit(code=1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the serving store to this code's head revision, keeping its data (a store made before
    migrations is stamped with the revision it holds first). Safe while other lklab processes run."""
    from lklab.serving import migrations

    with store_as_found() as engine:
        found, applied = migrations.upgrade(engine)
    if found.stamped and not applied:
        console.print(f"serving store {found.url} is already at head {migrations.title(found.head)}", highlight=False, soft_wrap=True)
        return
    stamped = "" if found.stamped or found.current is None else f"stamped {found.current} (made before migrations), "
    console.print(f"serving store {found.url}: {stamped}applied {', '.join(migrations.title(r) for r in applied) or 'nothing'}; "
                  f"now at {found.head}", highlight=False, soft_wrap=True)


@db_app.command("revision")
def db_revision(message: Annotated[str, typer.Argument(help="what the schema change does, e.g. 'batch_runs: add attempt'")]) -> None:
    """For developers: write the next revision file with the operations that turn the head schema
    into lklab.serving.store's tables (Alembic autogenerate). Review it before committing."""
    from lklab.serving import migrations

    path = migrations.new_revision(message)
    console.print(f"wrote {path}: review it (autogenerate misses renames and comment-only changes)", highlight=False, soft_wrap=True)


@contextmanager
def store_as_found() -> Iterator[Engine]:
    """The configured store's engine, schema as found, for `lklab db`; store errors become one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from lklab.serving.migrations import StoreSchemaError, public_url
    from lklab.serving.store import store_engine

    s = settings()
    try:
        engine = store_engine(s)
    except (SQLAlchemyError, ImportError) as exc:  # a malformed LKLAB_SERVING_URL, a driver not installed
        raise fail(f"serving store {public_url(s.serving)}: {str(exc).splitlines()[0]}") from None
    try:
        yield engine
    except StoreSchemaError as exc:
        raise fail(str(exc)) from None
    except SQLAlchemyError as exc:  # unreachable, refused credentials
        raise fail(f"serving store {public_url(s.serving)}: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
