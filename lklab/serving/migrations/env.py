"""Alembic environment for the serving store, run programmatically by lklab.serving.migrations.

Online, the caller hands over a connection already inside its transaction (and holding the
upgrade lock), so stamping and upgrading commit together. Offline (`sql=True`) renders the DDL for
the URL's dialect. Revisions stay frozen: autogenerate writes UTCDateTime as plain sa.DateTime.
"""
from alembic import context

from lklab.serving.migrations import render_frozen_type


def target_metadata():
    from lklab.serving.store import metadata  # only autogenerate compares against the live model

    return metadata


def run() -> None:
    config = context.config
    options = dict(target_metadata=target_metadata(), render_item=render_frozen_type, compare_type=True)
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url")
        context.configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"), **options)
    else:
        context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite", **options)
    with context.begin_transaction():
        context.run_migrations()


run()
