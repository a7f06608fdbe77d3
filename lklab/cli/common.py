"""What every `lklab` command shares: the app and its groups, the consoles, one-line failures,
settings and the serving store."""
from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Optional

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape

from lklab.core.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

app = typer.Typer(help="lklab: Lambda, Kappa and hybrid pipelines side by side on Kafka, Spark/Delta, Faust, Dagster and GX.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
kafka_app = typer.Typer(help="The embedded Kafka broker (KRaft, 127.0.0.1 only).", no_args_is_help=True)
speed_app = typer.Typer(help="The Faust speed-layer worker, in the background.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
spark_app = typer.Typer(help="A Spark standalone master and worker (127.0.0.1 only), for LKLAB_SPARK_MASTER=spark://...",
                        no_args_is_help=True)
app.add_typer(spark_app, name="spark")
app.add_typer(speed_app, name="speed")
lambda_app = typer.Typer(help="The Lambda serving layer: T, freshness and who serves what.", no_args_is_help=True)
app.add_typer(lambda_app, name="lambda")
kappa_app = typer.Typer(help="Live Kappa jobs: one long-running stream job per view version, in the background.",
                        no_args_is_help=True)
app.add_typer(kappa_app, name="kappa")
db_app = typer.Typer(help="The serving store's schema: revision, pending migrations, upgrade.", no_args_is_help=True)
app.add_typer(db_app, name="db")
drill_app = typer.Typer(help="Drills: one fault applied to Lambda and Kappa on the same live stream, readers scored against the oracle.",
                        no_args_is_help=True)
app.add_typer(drill_app, name="drill")
schema_app = typer.Typer(help="Event schemas: the registered versions, compatibility of a proposed one, readability of the history.",
                         no_args_is_help=True)
app.add_typer(schema_app, name="schema")
chaos_app = typer.Typer(help="The chaos suite: kills, broker loss, fuzzed input and concurrent readers, measured (RELIABILITY.md).",
                        no_args_is_help=True)
app.add_typer(chaos_app, name="chaos")
UNWRAPPED_WIDTH = 100_000  # piped output: one record per line, never cut, for grep and scripts


def _console(stderr: bool = False) -> Console:
    """Rich wraps at 80 columns whenever its stream is not a terminal; piped into grep or a file,
    lines stay whole instead (COLUMNS, when set, still wins)."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=UNWRAPPED_WIDTH if piped else None)


console = _console()
err = _console(stderr=True)
# aiokafka logs each failed connection attempt; with no handler configured Python would print
# them to stderr next to the one-line error that the exception becomes here.
logging.getLogger("aiokafka").addHandler(logging.NullHandler())

BAD_REQUEST, STALE = 2, 3  # exit codes: a bad flag or state (2); an answer refused by the reader policy `error` (3)


def fail(message: str, code: int = BAD_REQUEST) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # messages quote user input
    return typer.Exit(code=code)


def refuse_stale(exc: Exception) -> typer.Exit:
    """A stale answer refused by its view's reader policy (lklab.core.staleness.StaleAnswer): one line, exit 3."""
    return fail(str(exc), code=STALE)


def kafka_failure(s: Settings, exc: Exception) -> typer.Exit:
    return fail(f"Kafka at {s.bootstrap} failed: {exc} (is it running? `lklab kafka status`)")


def setting_errors(exc: ValidationError) -> str:
    """Each invalid variable by its name, with its value (a plain field's only: never a secret's,
    nor the whole input a check across fields sees) and why: `LKLAB_X='v': reason; …`."""
    def one(error) -> str:
        field = Settings.model_fields.get(str(error["loc"][0])) if error["loc"] else None
        if field is None:  # a check across fields (e.g. replication): its message names them
            return error["msg"].removeprefix("Value error, ")
        shown = "SecretStr" not in str(field.annotation) and "key" not in str(error["loc"][0])
        value = f"={error['input']!r}" if shown and "input" in error else ""
        return f"LKLAB_{'_'.join(map(str, error['loc'])).upper()}{value}: {error['msg'].removeprefix('Value error, ')}"

    return "; ".join(one(e) for e in exc.errors())


def settings() -> Settings:
    try:
        s = Settings()
    except ValidationError as exc:  # a bad LKLAB_* variable
        raise fail(f"bad LKLAB_* setting: {setting_errors(exc)}") from None
    except SettingsError as exc:  # a list or dict variable that is not JSON
        raise fail(f"bad LKLAB_* setting: {str(exc).splitlines()[0]}") from None
    if s.reader_policy_views:  # names views, which the core cannot check (importing them costs ~0.5 s: only when set)
        from lklab import views
        from lklab.core.staleness import check_reader_policy_views

        try:
            check_reader_policy_views(s, views.VIEWS)
        except ValueError as exc:
            raise fail(f"LKLAB_READER_POLICY_VIEWS: {exc}") from None
    return s


def parse_iso(value: Optional[str], flag: str) -> Optional[datetime]:
    if value is None:
        return None
    from lklab.core.events import parse_time

    try:
        return parse_time(value)
    except ValueError:
        raise fail(f"{flag} {value!r} is not an ISO-8601 time like 2026-11-17T10:00Z") from None


def serving_engine(s: Settings) -> Engine:
    """The serving store at this code's schema revision (upgraded if behind), or one line saying why not."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from lklab.serving.migrations import StoreSchemaError, public_url
    from lklab.serving.store import make_engine

    try:
        return make_engine(s)
    except StoreSchemaError as exc:
        raise fail(str(exc)) from None
    except (ArgumentError, SQLAlchemyError, ImportError) as exc:  # bad URL, server down, driver missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(f"serving store {public_url(s.serving)}: {first}") from None


def show(value) -> str:
    """A time (or anything) for humans: ISO, or 'none yet' instead of Python's None."""
    if value is None:
        return "none yet"
    return value.isoformat() if isinstance(value, datetime) else str(value)


def blocked_line(blocked) -> str:
    gate = f"gate {blocked.gate}" if blocked.gate else "a run failure"
    return (f"since {blocked.since.isoformat(timespec='seconds')}, stopped by {gate}: {blocked.reason} "
            f"(run {blocked.run_id}, event dates {blocked.first_date}…{blocked.last_date})")


def policy_line(answer) -> str:
    if answer.policy == "refuse":
        return f"{answer.withheld} speed rows of diverged windows withheld (policy refuse)"
    return f"{sum(r.diverged for r in answer.rows)} speed rows of diverged windows served, flagged (policy serve-flagged)"
