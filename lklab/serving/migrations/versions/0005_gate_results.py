"""gate_results: every gate evaluated (Lambda asset checks, Kappa cutover checks), with its Data Docs page

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('gate_results',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('arch', sa.String(length=16), nullable=False, comment='lambda (a Dagster asset check) | kappa (a cutover check)'),
    sa.Column('run_id', sa.String(length=64), nullable=True, comment='the Dagster run (lambda); NULL for a cutover'),
    sa.Column('subject', sa.String(length=160), nullable=False, comment="what was checked: the build's dates, or the cutover's <view>__v<N>"),
    sa.Column('gate', sa.String(length=200), nullable=False, comment="<asset>.<check>, or the cutover check's name"),
    sa.Column('status', sa.String(length=8), nullable=False, comment='pass | warn | fail'),
    sa.Column('summary', sa.String(length=2000), nullable=False),
    sa.Column('data_docs', sa.String(length=1000), nullable=True, comment='the GX validation page, relative to the Data Docs site (served at /quality/)'),
    sa.PrimaryKeyConstraint('id'),
    comment="every gate evaluated, for the dashboard's latest results (lklab.serving.gate_log)"
    )


def downgrade() -> None:
    op.drop_table('gate_results')
