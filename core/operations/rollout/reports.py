"""What rollouts did (core/operations/rollout/), as operators read it: a trial's comparison of the
candidate with the current generator, each rollout's phase and counts, what went wrong, and
rollout spend by kind, each model at its price and its tier."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from statistics import median, quantiles
from typing import Any

from sqlalchemy import Engine, func, select

from core.contract.cache_key import key_sample
from core.operations.fit_report import FitReport, fit_of_trial
from core.operations.rollout.records import ProgramState, RolloutKind
from core.prices import NOTHING_BILLED, TOKEN_FIELDS, Billed, ModelPrice, PriceTier
from core.settings import Settings
from core.store.schema import generation_events, rollout_batches, rollout_programs, rollouts, training_programs

programs = training_programs.c
events = generation_events.c
runs = rollouts.c
jobs = rollout_batches.c
asked = rollout_programs.c
# Sums of what a rollout's programs were billed, then, named after USED, of what its used ones
# were: what their hits saved, at the live price.
USED = "used_"
BILLED_AND_USED = (
    *(func.coalesce(func.sum(asked[name]), 0).label(name) for name in TOKEN_FIELDS),
    *(
        func.coalesce(func.sum(asked[name]).filter(asked.used_at.is_not(None)), 0).label(USED + name)
        for name in TOKEN_FIELDS
    ),
)


def tier(kind: RolloutKind) -> PriceTier:
    """The price a rollout's generations are billed at: a batch's at the Batch API's."""
    return "batch" if kind == "batch" else "live"


@dataclass(frozen=True)
class Side:
    """One generator's record on a trial's profiles."""

    programs: int  # profiles it has a result for
    valid_first_try: float | None
    billed: Billed
    cost: float | None  # at its live price; None without one
    latency_p50_ms: float | None
    latency_p95_ms: float | None


@dataclass(frozen=True)
class TrialProfile:
    cache_key: str
    candidate_state: ProgramState
    candidate_program: Any | None
    candidate_error: str | None
    current_program: Any | None  # the newest program the current generator made for it


@dataclass(frozen=True)
class Trial:
    rollout_id: int
    model: str
    generator_version: str
    current_version: str
    candidate: Side
    current: Side
    profiles: list[TrialProfile]
    fit: list[FitReport]  # per generator identity, the programs that broke a rule or needed a repair


def _side(rows: list[Any], valid: int, attempts: int, price: ModelPrice | None) -> Side:
    """One generator's record from one generation per profile (`rows`, each with its
    tokens and latency), `valid` of its `attempts` on those profiles valid."""
    billed = sum((Billed.of(row) for row in rows), NOTHING_BILLED)
    latencies = [row.latency_ms for row in rows if row.latency_ms is not None]
    cuts = quantiles(latencies, n=20) if len(latencies) > 1 else latencies
    return Side(
        programs=len(rows),
        valid_first_try=valid / attempts if attempts else None,
        billed=billed,
        cost=price.cost(billed) if price else None,
        latency_p50_ms=median(latencies) if latencies else None,
        latency_p95_ms=cuts[-1] if cuts else None,
    )


def trial_report(engine: Engine, settings: Settings, rollout_id: int, *, current_version: str) -> Trial:
    """A trial's comparison: the candidate from its own record; the current generator from
    what it did for the same keys (its generations in history, its failures in the events)."""
    with engine.connect() as connection:
        run = connection.execute(select(runs.model, runs.generator_version).where(runs.id == rollout_id)).one()
        tried = list(
            connection.execute(select(rollout_programs).where(asked.rollout_id == rollout_id).order_by(asked.id))
        )
        keys = [row.cache_key for row in tried]
        made = list(
            connection.execute(
                select(
                    programs.cache_key,
                    programs.program,
                    programs.latency_ms,
                    programs.model,
                    *(programs[name] for name in TOKEN_FIELDS),
                )
                .where(
                    programs.cache_key.in_(keys),
                    programs.generator_version == current_version,
                    programs.source != "cache",
                )
                .order_by(programs.created_at)
            )
        )
        outcomes: Counter[str] = Counter(
            dict(
                connection.execute(
                    select(events.outcome, func.count())
                    .where(
                        events.key_sample.in_(sorted({key_sample(k) for k in keys})),
                        events.cache_key.in_(keys),
                        events.generator_version == current_version,
                        events.outcome != "hit",
                    )
                    .group_by(events.outcome)
                ).all()
            )
        )
    # The current generator's newest program for each key, as the candidate made one each.
    newest = {row.cache_key: row for row in made}
    done = [row for row in tried if row.state != "pending"]
    tried_valid = sum(row.state == "tried" and (row.attempts or 1) == 1 for row in done)
    candidate_side = _side(done, tried_valid, len(done), settings.price_of(run.model))
    current_model = made[-1].model if made else None
    current_price = settings.price_of(current_model) if current_model else None
    made_valid = outcomes["miss"] + outcomes["bypass"]
    current_side = _side(list(newest.values()), made_valid, sum(outcomes.values()), current_price)
    profiles = [
        TrialProfile(
            row.cache_key,
            row.state,
            row.program,
            row.error,
            newest[row.cache_key].program if row.cache_key in newest else None,
        )
        for row in tried
    ]
    fit = fit_of_trial(engine, rollout_id, current_version=current_version)
    return Trial(
        rollout_id, run.model, run.generator_version, current_version, candidate_side, current_side, profiles, fit
    )


@dataclass(frozen=True)
class RolloutSummary:
    id: int
    kind: RolloutKind
    model: str
    generator_version: str
    created_by: str
    created_at: datetime
    requested: int
    states: dict[str, int]  # programs by state
    used: int  # staged programs a request took
    batches: dict[str, int]  # batch jobs by OpenAI's status
    error: str | None
    cost: float | None  # what its generations were billed, at its tier's price
    saved: float | None  # the pre-warmed hits at the live price: what they would have cost

    @property
    def phase(self) -> str:
        """submitted, in progress, collected, or not submitted (every batch refused), as an
        operator follows it. A plan is not recorded: it is read again each time."""
        if self.states.get("pending"):
            if self.kind != "batch":
                return "in progress"
            return "submitted" if set(self.batches) <= {"validating"} else "in progress"
        if self.kind == "batch" and not self.batches:
            return "not submitted"
        return "collected"


def summaries(engine: Engine, settings: Settings, *, limit: int = 50) -> list[RolloutSummary]:
    """The newest rollouts with what became of each."""
    with engine.connect() as connection:
        listed = list(
            connection.execute(select(rollouts).order_by(runs.created_at.desc(), runs.id.desc()).limit(limit))
        )
        ids = [row.id for row in listed]
        per_state = connection.execute(
            select(
                asked.rollout_id,
                asked.state,
                func.count(),
                func.count(asked.used_at),
                *BILLED_AND_USED,
            )
            .where(asked.rollout_id.in_(ids))
            .group_by(asked.rollout_id, asked.state)
        ).all()
        per_batch = connection.execute(
            select(jobs.rollout_id, jobs.status, func.count())
            .where(jobs.rollout_id.in_(ids))
            .group_by(jobs.rollout_id, jobs.status)
        ).all()
    found = []
    for run in listed:
        rows = [r for r in per_state if r[0] == run.id]
        price = settings.price_of(run.model)
        found.append(
            RolloutSummary(
                id=run.id,
                kind=run.kind,
                model=run.model,
                generator_version=run.generator_version,
                created_by=run.created_by,
                created_at=run.created_at,
                requested=run.requested,
                states={r[1]: r[2] for r in rows},
                used=sum(r[3] for r in rows),
                batches={r[1]: r[2] for r in per_batch if r[0] == run.id},
                error=run.error,
                cost=sum(price.cost(Billed.of(r), tier(run.kind)) for r in rows) if price else None,
                saved=sum(price.cost(Billed.of(r, USED)) for r in rows) if price else None,
            )
        )
    return found


PROBLEMS: tuple[ProgramState, ...] = ("failed", "invalid", "voided")


@dataclass(frozen=True)
class Problem:
    cache_key: str
    # failed (no answer), invalid (an answer that is not a valid program), or voided (an
    # invalidation covered it before it was used)
    state: ProgramState
    error: str | None


def problems(engine: Engine, rollout_id: int, *, limit: int = 20) -> list[Problem]:
    """A rollout's failed, invalid and voided programs, with what was wrong, for the operator to read."""
    query = (
        select(asked.cache_key, asked.state, asked.error)
        .where(asked.rollout_id == rollout_id, asked.state.in_(PROBLEMS))
        .order_by(asked.id)
        .limit(limit)
    )
    with engine.connect() as connection:
        return [Problem(*row) for row in connection.execute(query)]


@dataclass(frozen=True)
class RolloutSpend:
    """What rollouts were billed in a window, by how: trials, live pre-warms, batches."""

    trials: float = 0.0
    live: float = 0.0
    batch: float = 0.0
    saved: float = 0.0  # the pre-warmed hits at the live price
    unpriced_models: tuple[str, ...] = ()

    @property
    def total(self) -> float:
        return self.trials + self.live + self.batch


def spend(engine: Engine, settings: Settings, since: datetime | None = None) -> RolloutSpend:
    """Rollout spend by kind, each model at its price and its tier (batch lines at the batch price)."""
    query = (
        select(
            runs.kind,
            runs.model,
            *BILLED_AND_USED,
        )
        .join(rollouts, runs.id == asked.rollout_id)
        .group_by(runs.kind, runs.model)
    )
    if since is not None:
        query = query.where(runs.created_at >= since)
    totals = {"trial": 0.0, "live": 0.0, "batch": 0.0}
    saved = 0.0
    unpriced = set()
    with engine.connect() as connection:
        for row in connection.execute(query):
            price, billed = settings.price_of(row.model), Billed.of(row)
            if price is None:
                if billed.total:
                    unpriced.add(row.model)
                continue
            totals[row.kind] += price.cost(billed, tier(row.kind))
            saved += price.cost(Billed.of(row, USED))
    return RolloutSpend(totals["trial"], totals["live"], totals["batch"], saved, tuple(sorted(unpriced)))
