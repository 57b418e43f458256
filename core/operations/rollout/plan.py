"""Which keys a pre-warm regenerates for a candidate generator, and what that costs at the live
and at the Batch API price; and the candidate itself, the generator the app would run with
another model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select

from core.contract.models import ContractError, parse_onboarding
from core.generators import OpenAIChatGenerator, ProgramGenerator, make_generator
from core.operations.rollout.records import RolloutFailed, RolloutRefused, Target
from core.operations.spend import against_budgets
from core.prices import TOKEN_FIELDS, Billed, ModelPrice, PriceTier
from core.settings import MAX_TTL_HOURS, Settings
from core.store.schema import (
    CACHE_KEY_PREFIX,
    ai_coach_cache,
    database_now,
    generation_events,
    rollout_batches,
    rollout_programs,
    training_programs,
    utcnow,
)

cache = ai_coach_cache.c
programs = training_programs.c
events = generation_events.c
jobs = rollout_batches.c
asked = rollout_programs.c


def require_key(settings: Settings) -> None:
    if not settings.uses_openai:
        raise RolloutRefused("OPENAI_API_KEY", "must be set: a rollout tries or pre-warms an OpenAI-compatible model")


def candidate(settings: Settings, model: str) -> OpenAIChatGenerator:
    """The generator the app would run with OPENAI_MODEL=`model`, all else as configured."""
    require_key(settings)
    if not model.strip():
        raise RolloutRefused("model", "is required")
    generator = make_generator(settings.model_copy(update={"openai_model": model.strip()}))
    assert isinstance(generator, OpenAIChatGenerator)  # uses_openai, checked above
    if generator.identity.version == make_generator(settings).identity.version:
        # Its entries are its own already: a trial would compare it with itself.
        raise RolloutRefused("model", f"{model.strip()} is the generator the app runs now; name another model")
    return generator


@dataclass(frozen=True)
class Plan:
    model: str
    generator_version: str
    targets: list[Target]
    # Keys by the generator identity that made their current entry ("none": no valid entry).
    by_generator: dict[str, int]
    # Estimated from the tokens the current entries recorded (the mean of those that did,
    # for the rest); None without a price for the model or any recorded tokens.
    live_cost: float | None
    batch_cost: float | None
    with_recorded_tokens: int

    @property
    def count(self) -> int:
        return len(self.targets)


def _ready(dialect: str, version: str) -> Any:
    """Keys that need no pre-warm for `version`: a valid entry of its own, a staged program
    waiting, or a request in a batch still out (and not being cancelled). A request a live
    run left pending (it was killed) blocks nothing."""
    now = database_now(dialect)
    out = select(jobs.batch_id).where(jobs.collected_at.is_(None), jobs.cancel_requested_at.is_(None))
    return (
        select(cache.cache_key)
        .where(cache.generator_version == version, cache.expires_at > now)
        .union(
            select(asked.cache_key).where(
                asked.generator_version == version,
                or_(
                    and_(asked.state == "pending", asked.batch_id.in_(out)),
                    and_(asked.state == "staged", asked.used_at.is_(None), asked.expires_at > now),
                ),
            )
        )
    )


# What a pre-warm's selection may ask, least and most, from the command line or the page:
# days of requests, at most ten years (more than any request log here holds; a date that far
# back is still a date); hours an entry has left, at most the longest TTL (no entry is valid
# longer); keys, at most a billion (more than a cache holds: past the keys there are, all).
SELECTION_BOUNDS: dict[str, tuple[int, int]] = {
    "requested_days": (0, 3660),
    "min_hours_left": (0, MAX_TTL_HOURS),
    "limit": (1, 10**9),
}


@dataclass(frozen=True)
class Selection:
    """Which keys a pre-warm regenerates: those whose entries are valid now (for at least
    `min_hours_left` more hours) and were made by another generator; with
    `requested_within_days`, also the keys requested in that many last days; at most
    `limit` of them. Leaving out entries about to expire pays only where their users seldom
    come back: a pre-warmed program is valid for the TTL from when it was made, and a key
    left out costs a live generation, twice the batch price, when it is asked for (in the
    replay benchmark, whose users return at random, 76-85% of such keys were)."""

    requested_within_days: float | None = None
    min_hours_left: float = 0.0
    limit: int | None = None
    # A recall's keys (core/operations/recall.py): a select of `cache_key`s, taken as they are,
    # valid entry or not; the other bounds do not apply.
    keys: Any = None

    def __post_init__(self) -> None:
        for name, value in (
            ("requested_days", self.requested_within_days),
            ("min_hours_left", self.min_hours_left),
            ("limit", self.limit),
        ):
            least, most = SELECTION_BOUNDS[name]
            if value is not None and not least <= value <= most:
                raise RolloutRefused(name, f"must be a number from {least} to {most}")


def _wanted(dialect: str, version: str, selection: Selection) -> Any:
    if selection.keys is not None:
        return selection.keys
    other = or_(cache.generator_version.is_(None), cache.generator_version != version)
    valid = select(cache.cache_key).where(
        cache.cache_key.startswith(CACHE_KEY_PREFIX, autoescape=True),
        cache.expires_at > database_now(dialect, selection.min_hours_left * 3600),
        other,
    )
    if not selection.requested_within_days:
        return valid
    since = utcnow() - timedelta(days=selection.requested_within_days)
    return valid.union(select(events.cache_key).where(events.created_at >= since, events.outcome != "error"))


def targets(connection: Connection, version: str, selection: Selection | None = None) -> list[Target]:
    """The keys a pre-warm for `version` would regenerate, each with the newest answers
    history recorded for it; keys with no usable answers are left out."""
    dialect = connection.dialect.name
    selection = selection or Selection()
    wanted = _wanted(dialect, version, selection).subquery()
    latest = newest_answers(
        programs.cache_key.in_(select(wanted.c.cache_key)), programs.cache_key.not_in(_ready(dialect, version))
    )
    valid_entry = and_(cache.cache_key == latest.c.cache_key, cache.expires_at > database_now(dialect))
    query = (
        select(
            latest.c.cache_key,
            latest.c.user_id,
            latest.c.onboarding_responses,
            latest.c.has_paid_access,
            cache.generator_version,
            *_billed_columns(),
        )
        .outerjoin(ai_coach_cache, valid_entry)
        .where(latest.c.n == 1)
        .order_by(latest.c.cache_key)
    )
    found = (
        Target(
            row.cache_key,
            str(row.user_id),
            row.onboarding_responses,
            row.has_paid_access,
            made_by=row.generator_version,
            billed=Billed.of(row),
        )
        for row in connection.execute(query)
    )
    return usable(found, selection.limit)


def _billed_columns() -> list[Any]:
    """What the key's entry's generation was billed (NULL: no entry, or not recorded)."""
    return [cache[name] for name in TOKEN_FIELDS]


def newest_answers(*where: Any) -> Any:
    """Per key (among the history rows `where` selects), its newest row with answers and
    a paid flag recorded, as the row numbered 1."""
    newest = func.row_number().over(
        partition_by=programs.cache_key, order_by=(programs.created_at.desc(), programs.id.desc())
    )
    columns = (programs.cache_key, programs.user_id, programs.onboarding_responses, programs.has_paid_access)
    return (
        select(*columns, programs.created_at, newest.label("n"))
        .where(programs.onboarding_responses.is_not(None), programs.has_paid_access.is_not(None), *where)
        .subquery()
    )


def usable(found: Iterable[Target], limit: int | None) -> list[Target]:
    """The first `limit` (all, with None) whose answers pass the contract: answers recorded
    under an older one can build no request."""
    usable: list[Target] = []
    for target in found:
        if limit is not None and len(usable) == limit:
            break
        try:
            parse_onboarding(target.answers)
        except ContractError:
            continue
        usable.append(target)
    return usable


def _recorded(found: Sequence[Target]) -> list[Target]:
    return [t for t in found if t.billed.recorded]


def estimate(price: ModelPrice | None, found: Sequence[Target], tier: PriceTier) -> float | None:
    """What generating `found` would cost at `price` in `tier`: the tokens their entries
    recorded, and their mean for the rest; None without a price or any recorded tokens."""
    recorded = _recorded(found)
    if price is None or not recorded:
        return None
    known = sum(price.cost(t.billed, tier) for t in recorded)
    return known / len(recorded) * len(found)


def refuse_past_budget(engine: Engine, settings: Settings, estimated: float | None, what: str) -> None:
    """RolloutFailed when `what`, at its estimated cost, would take spend past a budget
    (LLM_DAILY_BUDGET_USD, LLM_MONTHLY_BUDGET_USD), or one is spent already. Without an
    estimate (no price for the model, no tokens recorded) only a spent budget stops it."""
    for spend in against_budgets(engine, settings):
        if spend.reached or (estimated is not None and spend.spent + estimated > spend.budget):
            cost_text = "its cost" if estimated is None else f"an estimated ${estimated:.4f}"
            raise RolloutFailed(
                f"{what}: {cost_text} would take LLM spend past the budget ({spend.describe()}); nothing was started"
            )


def plan(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    selection: Selection | None = None,
) -> Plan:
    with engine.connect() as connection:
        found = targets(connection, generator.identity.version, selection)
    price = settings.price_of(generator.identity.model)
    return Plan(
        model=generator.identity.model,
        generator_version=generator.identity.version,
        targets=found,
        by_generator=dict(Counter(t.made_by or "none" for t in found)),
        live_cost=estimate(price, found, "live"),
        batch_cost=estimate(price, found, "batch"),
        with_recorded_tokens=len(_recorded(found)),
    )


def recent_profiles(connection: Connection, sample: int) -> list[Target]:
    latest = newest_answers(programs.cache_key.is_not(None))
    shown = (latest.c.cache_key, latest.c.user_id, latest.c.onboarding_responses, latest.c.has_paid_access)
    # With the tokens the key's entry recorded, if it has one: what a trial's estimate is made of.
    query = (
        select(*shown, cache.generator_version, *_billed_columns())
        .outerjoin(ai_coach_cache, cache.cache_key == latest.c.cache_key)
        .where(latest.c.n == 1)
        .order_by(latest.c.created_at.desc())
    )
    # Streamed, so that taking the newest few reads no more of a long history than it needs.
    rows = connection.execution_options(yield_per=100).execute(query)
    found = (Target(str(row[0]), str(row[1]), row[2], row[3], row.generator_version, Billed.of(row)) for row in rows)
    return usable(found, sample)
