"""Which generator's programs did not fit their clients: per generator identity, the programs
refused after every attempt, those that passed only after a repair, and how many broke each
rule (core.fit's, or the contract's shape). Read from the events that say so, a few among
many: the partial index ix_generation_events_rules_broken holds only them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, func, select

from core.store.schema import generation_events

events = generation_events.c


@dataclass
class FitReport:
    generator_version: str
    model: str | None
    refused: int = 0  # no attempt passed: nothing cached or saved
    repaired: int = 0  # passed after one repair or more
    by_rule: dict[str, int] = field(default_factory=dict)  # generations any attempt of which broke the rule


def fit_by_generator(engine: Engine, since: datetime | None = None) -> list[FitReport]:
    judged = events.rules_broken.is_not(None)
    query = (
        select(
            events.generator_version,
            func.max(events.model).label("model"),
            events.outcome,
            events.attempts,
            events.rules_broken,
            func.count().label("n"),
        )
        .where(judged, *([events.created_at >= since] if since is not None else []))
        .group_by(events.generator_version, events.outcome, events.attempts, events.rules_broken)
    )
    reports: dict[str, FitReport] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            version = row.generator_version or ""
            report = reports.setdefault(version, FitReport(version, row.model))
            if row.outcome == "error":
                report.refused += row.n
            elif (row.attempts or 1) > 1:
                report.repaired += row.n
            for rule in row.rules_broken.split(","):
                report.by_rule[rule] = report.by_rule.get(rule, 0) + row.n
    return sorted(reports.values(), key=lambda r: r.generator_version)
