"""How a rollout's program was judged, as a served generation's event records it (0014): the
attempts it took (a trial or a live pre-warm repairs as a live miss does) and the fit rules any
attempt broke, so that a trial shows which rules the candidate breaks and how often it needed
a repair. Nullable: programs recorded before say nothing.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rollout_programs", sa.Column("attempts", sa.SmallInteger, nullable=True))
    op.add_column("rollout_programs", sa.Column("rules_broken", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_programs") as batch:
        batch.drop_column("rules_broken")
        batch.drop_column("attempts")
