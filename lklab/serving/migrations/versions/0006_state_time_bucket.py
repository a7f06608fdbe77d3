"""speed_event_state.time_bucket: the event-time bucket of the held version, so dedup and
correction state expires behind the correction horizon (lklab.engine.horizon).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("speed_event_state") as batch:
        batch.add_column(sa.Column("time_bucket", sa.BigInteger(), nullable=True,
                                   comment="the held version's event-time bucket (epoch seconds): the state expires by it "
                                           "(lklab.engine.horizon); NULL in state written before 0006"))
        batch.create_index("speed_event_state_by_bucket", ["scope", "time_bucket"])


def downgrade() -> None:
    with op.batch_alter_table("speed_event_state") as batch:
        batch.drop_index("speed_event_state_by_bucket")
        batch.drop_column("time_bucket")
