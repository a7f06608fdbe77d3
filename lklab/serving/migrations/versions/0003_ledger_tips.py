"""payments_ledger.tip_cents: schema v2's tips, so revenue logic that counts them reconciles too.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments_ledger") as batch:
        batch.add_column(sa.Column("tip_cents", sa.BigInteger(), nullable=False, server_default="0",
                                   comment="the capture's tip (schema v2); 0 for v1 payments and refunds"))


def downgrade() -> None:
    with op.batch_alter_table("payments_ledger") as batch:
        batch.drop_column("tip_cents")
