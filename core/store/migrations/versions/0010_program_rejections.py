"""program_rejections: a coach's rejection of a program handed out (which history row, who,
when, why). Its `training_program_id` has the type of `training_programs.id`, whatever an
adopted table made it (an integer or a uuid), and references it where that id is unique;
deleting a history row, as the product may, takes its rejections with it rather than being
refused.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from core.store.adoption import is_unique
from core.store.schema import Id, UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _history_id() -> tuple[Any, ...]:
    """The type of training_programs.id, and a reference to it when the table allows one."""
    inspector = sa.inspect(op.get_bind())
    kind = next(c["type"] for c in inspector.get_columns("training_programs") if c["name"] == "id")
    if is_unique(inspector, "training_programs", "id"):
        return kind, sa.ForeignKey("training_programs.id", ondelete="CASCADE")
    return (kind,)


def upgrade() -> None:
    op.create_table(
        "program_rejections",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("training_program_id", *_history_id(), nullable=False),
        sa.Column("cache_key", sa.String(512), nullable=True),
        sa.Column("rejected_by", sa.String(320), nullable=False),
        sa.Column("rejected_at", UTCDateTime(), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_program_rejections_training_program_id", "program_rejections", ["training_program_id"])


def downgrade() -> None:
    op.drop_table("program_rejections")
