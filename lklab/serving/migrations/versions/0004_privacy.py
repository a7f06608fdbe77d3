"""user_keys and deletion_requests: per-user PII keys and forget requests; view_snapshots.redacted_at

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deletion_requests',
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('why', sa.String(length=1000), nullable=False),
    sa.Column('requested_at', sa.DateTime(), nullable=False),
    sa.Column('deadline', sa.DateTime(), nullable=False, comment='every store purged by then (7 days by default)'),
    sa.Column('purged_at', sa.DateTime(), nullable=True, comment='the last purge that found every store clean; NULL: pending'),
    sa.Column('report', sa.JSON(), nullable=True, comment='{store: rows removed} of the purges so far'),
    sa.PrimaryKeyConstraint('user_id'),
    comment='`lklab forget` requests; their user_ids are the tombstones every fold applies (lklab.privacy.requests)'
    )
    op.create_table('user_keys',
    sa.Column('user_id', sa.String(length=128), nullable=False),
    sa.Column('wrapped_key', sa.String(length=512), nullable=True, comment="the user's Fernet data key, encrypted with the master key; NULL: destroyed"),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('destroyed_at', sa.DateTime(), nullable=True, comment='when `lklab forget` destroyed the key'),
    sa.PrimaryKeyConstraint('user_id'),
    comment='envelope encryption: one data key per user (lklab.privacy.keys)'
    )
    with op.batch_alter_table("view_snapshots") as batch:
        batch.add_column(sa.Column("redacted_at", sa.DateTime(), nullable=True,
                                   comment="retired by a deletion request: its files are gone, it never loads"))


def downgrade() -> None:
    with op.batch_alter_table("view_snapshots") as batch:
        batch.drop_column("redacted_at")
    op.drop_table('user_keys')
    op.drop_table('deletion_requests')
