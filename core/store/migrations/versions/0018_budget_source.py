"""`source` = 'budget' for a program the offline coach made because the LLM budget was spent
(LLM_DAILY_BUDGET_USD, LLM_MONTHLY_BUDGET_USD; core/serving/budget.py), so that history tells
it from a program of an offline generator configured as such.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

SOURCE_CHECK = "ck_training_programs_source"


def _allow_sources(sources: str) -> None:
    # Only the table Coach Cache created has the check; an adopted table has none to widen.
    checks = {c["name"] for c in sa.inspect(op.get_bind()).get_check_constraints("training_programs")}
    if SOURCE_CHECK in checks:
        with op.batch_alter_table("training_programs") as batch:
            batch.drop_constraint(SOURCE_CHECK, type_="check")
            batch.create_check_constraint(SOURCE_CHECK, f"source IN ({sources})")


def upgrade() -> None:
    _allow_sources("'llm', 'offline', 'budget', 'cache'")


def downgrade() -> None:
    op.execute("UPDATE training_programs SET source = 'offline' WHERE source = 'budget'")
    _allow_sources("'llm', 'offline', 'cache'")
