"""A recall of programs handed out (core/operations/recall.py): each history row a recall covered says
when, why and by whom. Nullable, added only where missing, so an adopted `training_programs`
takes them without a rewrite, and keeps them on downgrade (it may be the product's own).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

COLUMNS = (
    ("recalled_at", UTCDateTime()),
    ("recall_reason", sa.Text()),
    ("recalled_by", sa.String(320)),
)


def upgrade() -> None:
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("training_programs")}
    for name, kind in COLUMNS:
        if name not in existing:
            op.add_column("training_programs", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    # training_programs keeps them: it may be the product's own (see upgrade).
    pass
