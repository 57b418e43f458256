"""Generator identity: which generator made each cache entry and each history row, and
`source` = 'offline' for programs of the offline generator.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SOURCE_CHECK = "ck_training_programs_source"


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    cache_columns = _columns("ai_coach_cache")
    if "model" not in cache_columns:
        op.add_column("ai_coach_cache", sa.Column("model", sa.String(200), nullable=True))
    op.add_column("ai_coach_cache", sa.Column("generator_version", sa.String(64), nullable=True))
    op.add_column("training_programs", sa.Column("generator_version", sa.String(64), nullable=True))
    # Only the table Coach Cache created has the check; an adopted table has none to widen.
    checks = {c["name"] for c in sa.inspect(op.get_bind()).get_check_constraints("training_programs")}
    if SOURCE_CHECK in checks:
        with op.batch_alter_table("training_programs") as batch:
            batch.drop_constraint(SOURCE_CHECK, type_="check")
            batch.create_check_constraint(SOURCE_CHECK, "source IN ('llm', 'offline', 'cache')")
    # What can be known of earlier rows: the offline generator's model names it. Hits and
    # entries made before keep NULL: which generator made them was not recorded.
    op.execute("UPDATE training_programs SET source = 'offline' WHERE source = 'llm' AND model LIKE 'offline-%'")


def downgrade() -> None:
    op.execute("UPDATE training_programs SET source = 'llm' WHERE source = 'offline'")
    checks = {c["name"] for c in sa.inspect(op.get_bind()).get_check_constraints("training_programs")}
    if SOURCE_CHECK in checks:
        with op.batch_alter_table("training_programs") as batch:
            batch.drop_constraint(SOURCE_CHECK, type_="check")
            batch.create_check_constraint(SOURCE_CHECK, "source IN ('llm', 'cache')")
    op.drop_column("training_programs", "generator_version")
    op.drop_column("ai_coach_cache", "generator_version")
