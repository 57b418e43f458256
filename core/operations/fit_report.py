"""Which generator's programs did not fit their clients: per generator identity, the programs
refused after every attempt, those that passed only after a repair, and how many broke each
rule (core.fit's, or the contract's shape). Read from the events that say so, a few among
many: the partial index ix_generation_events_rules_broken holds only them; and for a rollout's
trial, from its own record of each program, beside the current generator's events on the
same profiles."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from core.contract.cache_key import key_sample
from core.store.schema import generation_events, rollout_programs

events = generation_events.c
asked = rollout_programs.c


@dataclass
class FitReport:
    generator_version: str
    model: str | None
    refused: int = 0  # no attempt passed: nothing cached or saved
    repaired: int = 0  # passed after one repair or more
    by_rule: dict[str, int] = field(default_factory=dict)  # generations any attempt of which broke the rule


def fit_by_generator(engine: Engine, since: datetime | None = None) -> list[FitReport]:
    return _from_events(engine, *([events.created_at >= since] if since is not None else []))


def fit_of_trial(engine: Engine, rollout_id: int, *, current_version: str) -> list[FitReport]:
    """A trial's candidate, from its record of each program it made (an invalid one was
    refused), and the current generator's generations for the trial's profiles."""
    tried = (
        select(
            asked.generator_version,
            func.max(asked.model).label("model"),
            (asked.state == "invalid").label("refused"),
            asked.attempts,
            asked.rules_broken,
            func.count().label("n"),
        )
        .where(asked.rollout_id == rollout_id, asked.rules_broken.is_not(None))
        .group_by(asked.generator_version, asked.state, asked.attempts, asked.rules_broken)
    )
    with engine.connect() as connection:
        candidate = _reports(connection.execute(tried))
        keys = list(connection.execute(select(asked.cache_key).where(asked.rollout_id == rollout_id)).scalars())
    on_the_same_keys = (
        events.key_sample.in_(sorted({key_sample(k) for k in keys})),
        events.cache_key.in_(keys),
        events.generator_version == current_version,
    )
    return candidate + _from_events(engine, *on_the_same_keys)


def _from_events(engine: Engine, *conditions: Any) -> list[FitReport]:
    query = (
        select(
            events.generator_version,
            func.max(events.model).label("model"),
            (events.outcome == "error").label("refused"),
            events.attempts,
            events.rules_broken,
            func.count().label("n"),
        )
        .where(events.rules_broken.is_not(None), *conditions)
        .group_by(events.generator_version, events.outcome, events.attempts, events.rules_broken)
    )
    with engine.connect() as connection:
        return _reports(connection.execute(query))


def _reports(rows: Iterable[Any]) -> list[FitReport]:
    """Rows of (generator_version, model, refused, attempts, rules_broken, n) as one report a version."""
    reports: dict[str, FitReport] = {}
    for row in rows:
        version = row.generator_version or ""
        report = reports.setdefault(version, FitReport(version, row.model))
        if row.refused:
            report.refused += row.n
        elif (row.attempts or 1) > 1:
            report.repaired += row.n
        for rule in row.rules_broken.split(","):
            report.by_rule[rule] = report.by_rule.get(rule, 0) + row.n
    return sorted(reports.values(), key=lambda r: r.generator_version)
