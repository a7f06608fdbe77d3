"""held_chunks: a Kappa job's held state checkpointed as compact chunks per event-time bucket
(lklab.engine.chunks), instead of one speed_event_state and speed_contrib row per event.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "held_chunks",
        sa.Column("scope", sa.String(249), primary_key=True, comment="the consumer (a Kappa job)"),
        sa.Column("view", sa.String(64), primary_key=True,
                  comment="'' for the versions; else the output whose contributions these are"),
        sa.Column("time_bucket", sa.BigInteger(), primary_key=True,
                  comment="the event-time bucket (epoch seconds) of the events in it"),
        sa.Column("seq", sa.BigInteger(), primary_key=True,
                  comment="the checkpoint that wrote it: later chunks override earlier ones"),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False, comment="msgpack: lklab.engine.chunks"),
    )
    op.create_index("held_chunks_by_view", "held_chunks", ["view"])


def downgrade() -> None:
    op.drop_index("held_chunks_by_view", table_name="held_chunks")
    op.drop_table("held_chunks")
