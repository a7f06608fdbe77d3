"""Build metadata records: what every batch build consumed and produced (the T contract)."""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from pydantic import BaseModel, Field
from sqlalchemy import Engine, select

from lklab.core.config import Settings
from lklab.privacy import requests
from lklab.serving.publish import LAMBDA, record_publish
from lklab.serving.store import batch_builds, serving_aliases, upsert
from lklab import views
from lklab.views import ViewSpec
from lklab.views.faults import stall_in_commit

BATCH_ALIAS = "lambda@batch"  # the promoted batch build every merged view reads


def new_build_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("b%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def batch_views(settings: Settings) -> list[str]:
    """The views this deployment's batch layer builds and promotes (settings.batch_views, else
    every view), checked: an unknown name is a ValueError naming it."""
    if settings.batch_views is None:
        return list(views.VIEWS)
    unknown = [name for name in settings.batch_views if name not in views.VIEWS]
    if unknown or not settings.batch_views:
        raise ValueError(f"batch_views: {unknown[0] + ' is not a view' if unknown else 'empty'}; "
                         f"give some of {', '.join(views.VIEWS)} (or leave it unset: every view)")
    return list(settings.batch_views)


class BatchBuild(BaseModel):
    """One batch build. `final_through` is T: the merge serves batch rows for windows before it."""

    build_id: str
    created_at: datetime
    status: str = Field(description="promoted | failed")
    git_sha: str
    logic_version: int
    schema_version: int
    offsets: dict[int, list[int]] = Field(description="partition -> [first, next) offsets consumed")
    watermark: datetime | None
    final_through: datetime | None
    row_counts: dict[str, int]
    validation: dict
    delta_versions: dict[str, int]


def promote(engine: Engine, build: BatchBuild, outputs: Iterable[tuple[ViewSpec, Iterable[Sequence]]],
            settings: Settings | None = None) -> None:
    """Record the build, load its gold rows ((entity, window_start, *values) per view, stored
    where each view's measure keeps a build's rows) and point the batch alias at it, in one
    transaction: readers see the previous build or this one, never a mix. `settings` carries
    the drills' faults (the batch layer's stall_in_commit, lklab.views.faults)."""
    with engine.begin() as conn:
        previous = conn.execute(select(serving_aliases.c.target).where(serving_aliases.c.view == BATCH_ALIAS)).scalar()
        conn.execute(batch_builds.insert(), [build.model_dump(mode="python") | {"offsets": {str(k): v for k, v in build.offsets.items()}}])
        gone = requests.forgotten(conn)  # requests made after this build read the tombstones (lklab.privacy)
        for spec, rows in outputs:
            if spec.keyed_by_user:
                rows = [row for row in rows if row[0] not in gone]
            table, stored = spec.measure.batch_rows(spec, build.build_id, rows)
            if stored:
                conn.execute(table.insert(), stored)
        if build.status == "promoted":
            upsert(conn, serving_aliases, [{"view": BATCH_ALIAS, "target": build.build_id, "updated_at": build.created_at}])
            record_publish(conn, at=build.created_at, view=BATCH_ALIAS, arch=LAMBDA, action="promote", target=build.build_id,
                           from_target=previous, why="batch build passed its gates", delta_versions=build.delta_versions,
                           build=build.model_dump(mode="json", exclude={"delta_versions", "build_id", "status"}))
        stall_in_commit(settings, "batch")


def current_build(conn) -> BatchBuild | None:
    """The promoted build the batch alias points at (read inside the caller's transaction)."""
    row = conn.execute(
        select(batch_builds).join(serving_aliases, serving_aliases.c.target == batch_builds.c.build_id)
        .where(serving_aliases.c.view == BATCH_ALIAS)
    ).mappings().first()
    if row is None:
        return None
    return BatchBuild.model_validate({**row, "offsets": {int(k): v for k, v in row["offsets"].items()}})


def promoted_next_offsets(conn) -> dict[int, int]:
    """Per partition, the first offset the promoted batch build did not consume ({} before any
    promotion): records at or past it are in no served build yet."""
    build = current_build(conn)
    return {partition: held[1] for partition, held in build.offsets.items()} if build else {}
