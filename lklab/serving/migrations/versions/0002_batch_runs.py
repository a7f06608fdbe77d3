"""batch_runs: each Lambda batch run's outcome (the blocked-batch signal and re-runs read it).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("batch_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False, comment="the Dagster run id"),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False, comment="running | promoted | blocked | failed"),
        sa.Column("first_date", sa.String(length=10), nullable=True, comment="first event date (YYYY-MM-DD) the run rebuilt"),
        sa.Column("last_date", sa.String(length=10), nullable=True, comment="last event date (inclusive)"),
        sa.Column("gate", sa.String(length=200), nullable=True, comment="the first failed gate (<asset>.<check>), when blocked"),
        sa.Column("reason", sa.String(length=2000), nullable=True, comment="one line: why it did not promote"),
        sa.Column("diverged", sa.JSON(), nullable=True, comment="[{view, entity, window_start}] the divergence gates named"),
        sa.Column("build_id", sa.String(length=64), nullable=True, comment="the build it promoted"),
        sa.PrimaryKeyConstraint("run_id")
    )


def downgrade() -> None:
    op.drop_table("batch_runs")
