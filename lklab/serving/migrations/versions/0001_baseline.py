"""baseline: the serving-store schema as it stood when migrations were introduced (without batch_runs).

Frozen: written out here, never derived from lklab.serving.store.metadata, which keeps changing. A store
made by a checkout from before migrations (tables, no alembic_version) holds exactly this and is
stamped 0001 on its first start.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("batch_builds",
        sa.Column("build_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False, comment="promoted | failed"),
        sa.Column("git_sha", sa.String(length=64), nullable=True),
        sa.Column("logic_version", sa.Integer(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("offsets", sa.JSON(), nullable=False, comment="{partition: [start, end)} consumed"),
        sa.Column("watermark", sa.DateTime(), nullable=True),
        sa.Column("final_through", sa.DateTime(), nullable=True, comment="T: windows before it are final in this build"),
        sa.Column("row_counts", sa.JSON(), nullable=False),
        sa.Column("validation", sa.JSON(), nullable=False),
        sa.Column("delta_versions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("build_id")
    )
    op.create_table("batch_view_rows",
        sa.Column("build_id", sa.String(length=64), nullable=False),
        sa.Column("view", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("build_id", "view", "entity", "window_start")
    )
    op.create_table("kappa_builds",
        sa.Column("output", sa.String(length=160), nullable=False, comment="<view>__v<N>"),
        sa.Column("view", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False, comment="running | complete"),
        sa.Column("git_sha", sa.String(length=64), nullable=True),
        sa.Column("logic_version", sa.Integer(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("consumer_group", sa.String(length=249), nullable=False),
        sa.Column("start_offsets", sa.JSON(), nullable=False),
        sa.Column("target_offsets", sa.JSON(), nullable=False, comment="recorded at start: the replay stops here"),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("watermark", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("seconds", sa.JSON(), nullable=True, comment="wall time and throughput"),
        sa.Column("snapshot_id", sa.String(length=64), nullable=True, comment="the snapshot the replay started from (None: from the log)"),
        sa.Column("tiers", sa.JSON(), nullable=True, comment="{bronze: records, kafka: records}: where the input came from"),
        sa.PrimaryKeyConstraint("output")
    )
    op.create_table("payments_ledger",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("event_version", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("ride_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("driver_id", sa.String(length=128), nullable=True),
        sa.Column("city", sa.String(length=64), nullable=False),
        sa.Column("event_time", sa.DateTime(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
        comment="source of truth for money, written by the payments system (here: the generator)"
    )
    op.create_table("publish_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("view", sa.String(length=128), nullable=False, comment="a Kappa view alias, or lambda@batch for a batch promotion"),
        sa.Column("arch", sa.String(length=16), nullable=False, comment="lambda | kappa"),
        sa.Column("action", sa.String(length=16), nullable=False, comment="promote | cutover | rollback | refresh"),
        sa.Column("target", sa.String(length=160), nullable=False),
        sa.Column("from_target", sa.String(length=160), nullable=True),
        sa.Column("who", sa.String(length=128), nullable=False),
        sa.Column("why", sa.String(length=1000), nullable=False),
        sa.Column("build", sa.JSON(), nullable=False, comment="git SHA, logic/schema version, input offsets, watermark, T"),
        sa.Column("snapshot_id", sa.String(length=64), nullable=True, comment="Kappa: the Delta snapshot of what was published"),
        sa.Column("delta_versions", sa.JSON(), nullable=False, comment="{delta table: version} that holds the published rows"),
        sa.Column("checks", sa.JSON(), nullable=False, comment="the validation a Kappa cutover passed (name, passed, summary)"),
        sa.PrimaryKeyConstraint("id"),
        comment="every publish, for audit as-of queries (lklab.hybrid.audit) and the alias history (lklab.kappa.cutover)"
    )
    op.create_table("serving_aliases",
        sa.Column("view", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False, comment="build id (batch) or physical view version"),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("view")
    )
    op.create_table("session_rows",
        sa.Column("view", sa.String(length=160), nullable=False, comment="user_sessions__v<N>"),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False, comment="UTC day the sessions start"),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("view", "user_id", "window_start"),
        comment="sessionized views: recomputed per rider whenever one of the rider's events changes"
    )
    op.create_table("speed_contrib",
        sa.Column("view", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("entity", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=True, comment="MONEY views: the signed amount"),
        sa.Column("member", sa.String(length=128), nullable=True, comment="DISTINCT views: the member (user_id)"),
        sa.PrimaryKeyConstraint("view", "event_id")
    )
    op.create_index("speed_contrib_by_entity", "speed_contrib", ["view", "entity"], unique=False)
    op.create_table("speed_counters",
        sa.Column("scope", sa.String(length=249), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "name")
    )
    op.create_table("speed_event_state",
        sa.Column("scope", sa.String(length=249), nullable=False, comment="the consumer: live speed group or a replay"),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("event_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "event_id")
    )
    op.create_table("speed_heartbeat",
        sa.Column("group_id", sa.String(length=249), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False, comment="written every second by a live worker"),
        sa.PrimaryKeyConstraint("group_id")
    )
    op.create_table("speed_late_windows",
        sa.Column("view", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False, comment="events too late for this final window; batch owns them"),
        sa.PrimaryKeyConstraint("view", "entity", "window_start")
    )
    op.create_table("speed_progress",
        sa.Column("scope", sa.String(length=249), nullable=False, comment="the consumer: live speed group or a replay"),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False, comment="committed with the results, in one transaction"),
        sa.Column("max_event_time", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "topic", "partition")
    )
    op.create_table("speed_view_members",
        sa.Column("view", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("member", sa.String(length=128), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("view", "entity", "window_start", "member"),
        comment="DISTINCT views: the value is the number of members with events > 0, counted at read"
    )
    op.create_table("speed_view_rows",
        sa.Column("view", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False, comment="contributing events; 0 = no row in the view"),
        sa.PrimaryKeyConstraint("view", "entity", "window_start"),
        comment="MONEY views, maintained additively"
    )
    op.create_table("view_snapshots",
        sa.Column("snapshot_id", sa.String(length=64), nullable=False),
        sa.Column("view", sa.String(length=128), nullable=False),
        sa.Column("source_output", sa.String(length=160), nullable=False, comment="<view>__v<N> whose state was captured"),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("git_sha", sa.String(length=64), nullable=True),
        sa.Column("logic_version", sa.Integer(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("offsets", sa.JSON(), nullable=False, comment="{partition: next offset}: the state is consistent with these"),
        sa.Column("max_event_times", sa.JSON(), nullable=False),
        sa.Column("row_counts", sa.JSON(), nullable=False, comment="rows per stored piece; 'output' is the view's row count"),
        sa.Column("checksum", sa.String(length=64), nullable=False, comment="sha256 over the metadata and every piece's content digest"),
        sa.Column("location", sa.String(length=1000), nullable=False),
        sa.Column("delta_versions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id"),
        comment="immutable Delta snapshots of Kappa view state (lklab.engine.snapshots)"
    )


def downgrade() -> None:
    op.drop_index("speed_contrib_by_entity", table_name="speed_contrib")
    for table in ("view_snapshots", "speed_view_rows", "speed_view_members", "speed_progress", "speed_late_windows",
                  "speed_heartbeat", "speed_event_state", "speed_counters", "speed_contrib", "session_rows",
                  "serving_aliases", "publish_log", "payments_ledger", "kappa_builds", "batch_view_rows", "batch_builds"):
        op.drop_table(table)
