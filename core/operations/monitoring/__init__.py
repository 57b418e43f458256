"""What the Cache monitoring page and `python -m core stats` show, aggregated in SQL so
that no query pulls a whole table into Python: the rollup of the request log, the figures,
usage and costs per generator, and the replay of other TTLs."""

from core.operations.monitoring.figures import (
    Storage,
    Summary,
    entries_written_over_time,
    errors_over_time,
    latency_histogram,
    recent_generation_seconds,
    requests_over_time,
    storage,
    summary,
    summary_between,
    traffic_over_time,
)
from core.operations.monitoring.overview import Overview, overview, window_start
from core.operations.monitoring.queries import (
    GRANULARITIES,
    LATENCY_BIN_LABELS,
    Granularity,
    hit_rate,
    latency_bin_label,
)
from core.operations.monitoring.replay import WHAT_IF_TTLS, ServedRequests, TtlOutcome, replay_ttls
from core.operations.monitoring.rollup import SETTLE, refresh_rollup
from core.operations.monitoring.usage import Costs, GeneratorUsage, costs, usage_by_generator, usage_over_time

__all__ = [
    "GRANULARITIES",
    "LATENCY_BIN_LABELS",
    "SETTLE",
    "WHAT_IF_TTLS",
    "Costs",
    "GeneratorUsage",
    "Granularity",
    "Overview",
    "ServedRequests",
    "Storage",
    "Summary",
    "TtlOutcome",
    "costs",
    "entries_written_over_time",
    "errors_over_time",
    "hit_rate",
    "latency_bin_label",
    "latency_histogram",
    "overview",
    "recent_generation_seconds",
    "refresh_rollup",
    "replay_ttls",
    "requests_over_time",
    "storage",
    "summary",
    "summary_between",
    "traffic_over_time",
    "usage_by_generator",
    "usage_over_time",
    "window_start",
]
