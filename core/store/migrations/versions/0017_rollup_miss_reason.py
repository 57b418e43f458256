"""The hourly rollup gains the miss reason as a dimension, so the metrics exporter counts
requests by outcome, miss reason and generator from the rollup: counters that stay whole
once the request log is pruned. Hours rolled up before keep their rows, with '' for the
reason (not recorded), as the rows of hits and errors have it; the rollup is no longer
rebuilt from the events (they may be gone), so its rows are kept, not dropped.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ROLLUP = "generation_stats_hourly"
KEY = ["hour", "outcome", "latency_bin_ms", "generator_version", "model"]
# The name PostgreSQL gave the key when 0008 created the table.
PRIMARY_KEY = f"{ROLLUP}_pkey"
SUMS = (
    "requests",
    "latency_ms_sum",
    "prompt_tokens",
    "completion_tokens",
    "saved_prompt_tokens",
    "saved_completion_tokens",
    "hits_without_tokens",
    "cache_read_errors",
    "cache_write_errors",
    "history_errors",
    "cached_tokens",
    "reasoning_tokens",
    "saved_cached_tokens",
)
MERGED = f"{ROLLUP}_merged"


def _rekey(key: list[str]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(PRIMARY_KEY, ROLLUP, type_="primary")
        op.create_primary_key(PRIMARY_KEY, ROLLUP, key)
        return
    # SQLite changes a key only by copying the table, which batch mode does.
    # SQLAlchemy warns that the copy's key replaces the one reflected: that is the point.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_generation_stats_hourly' specifies columns")
        with op.batch_alter_table(ROLLUP, recreate="always") as batch:
            batch.create_primary_key(PRIMARY_KEY, key)


def upgrade() -> None:
    op.add_column(ROLLUP, sa.Column("miss_reason", sa.String(32), nullable=False, server_default=""))
    _rekey([*KEY, "miss_reason"])


def downgrade() -> None:
    # Rows that differ only by reason become one row, their sums added up.
    sums = ", ".join(f"SUM({name}) AS {name}" for name in SUMS)
    keys = ", ".join(KEY)
    op.execute(f"CREATE TABLE {MERGED} AS SELECT {keys}, {sums} FROM {ROLLUP} GROUP BY {keys}")
    op.execute(f"DELETE FROM {ROLLUP}")
    _rekey(KEY)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column(ROLLUP, "miss_reason")
    else:
        with op.batch_alter_table(ROLLUP) as batch:
            batch.drop_column("miss_reason")
    columns = ", ".join((*KEY, *SUMS))
    op.execute(f"INSERT INTO {ROLLUP} ({columns}) SELECT {columns} FROM {MERGED}")
    op.drop_table(MERGED)
