"""What each generator identity did and cost: hits it served, generations, errors, billed tokens
by kind, rejections, and their spend at the configured prices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Engine,
    func,
    select,
)

from core.contract.generation import GeneratorIdentity, GeneratorKind
from core.operations.monitoring.queries import (
    GENERATED_OUTCOMES,
    Granularity,
    fetch_rows,
    hit_rate,
    hourly_bucket,
    int_sum,
    time_bucket,
    where_since,
)
from core.operations.monitoring.rollup import hourly
from core.prices import FREE, NOTHING_BILLED, TOKEN_FIELDS, Billed, ModelPrice, Spend
from core.settings import Settings
from core.store.schema import (
    SAVED,
    program_rejections,
    training_programs,
)

# What a generator's usage adds up from the rollup (and the events of hours not rolled up):
# requests, the tokens billed, the tokens hits saved, and hits whose entry recorded none.
USAGE_SUMS = ("requests", *TOKEN_FIELDS, *(SAVED + name for name in TOKEN_FIELDS), "hits_without_tokens")


@dataclass(frozen=True)
class GeneratorUsage:
    """What one generator identity did in a window (or a time bucket). Hits count for the
    generator that made the entry they served; misses, refreshes and errors for the one asked."""

    generator_version: str | None  # None: events recorded before generators were
    model: str | None
    hits: int = 0
    generations: int = 0
    errors: int = 0
    # Every billed token, by kind, failed generations (refused, truncated, invalid) included ...
    billed: Billed = NOTHING_BILLED
    # ... those of the generations that produced a program ...
    generation_billed: Billed = NOTHING_BILLED
    # ... and, for hits, those of the generations that made the entries served: what they saved.
    saved: Billed = NOTHING_BILLED
    hits_without_tokens: int = 0  # hits on entries whose generation's tokens were not recorded
    # Of the programs it handed out (hits and generations), how many a coach rejected.
    rejected: int = 0

    @property
    def kind(self) -> GeneratorKind | None:
        """None for events recorded before the model was."""
        return GeneratorIdentity.kind_of(self.model) if self.model else None

    @property
    def label(self) -> str:
        if self.generator_version is None:
            return f"{self.model} (version not recorded)" if self.model else "not recorded"
        return f"{self.model} · {self.generator_version}"

    @property
    def hit_rate(self) -> float | None:
        return hit_rate(self.hits, self.hits + self.generations)

    @property
    def rejected_share(self) -> float | None:
        """Rejected among the programs it handed out; None before it handed any out."""
        served = self.hits + self.generations
        return self.rejected / served if served else None

    @property
    def cached_share(self) -> float | None:
        """The share of its billed input tokens the server read from its prompt cache; None
        before any input was billed. A server that does not report it counts as none cached."""
        return self.billed.cached_share

    @property
    def llm_calls(self) -> int:
        """Calls billed by an LLM: the generations and failures of an OpenAI generator."""
        return self.generations + self.errors if self.kind == "openai" else 0

    @property
    def llm_calls_avoided(self) -> int:
        return self.hits if self.kind == "openai" else 0

    def price(self, settings: Settings) -> ModelPrice | None:
        if self.kind == "offline":
            return FREE
        return settings.price_of(self.model) if self.model else None

    def spend(self, settings: Settings) -> Spend | None:
        """What the LLM billed, failed generations included, by kind of token; None without a price."""
        price = self.price(settings)
        return Spend.of(price, self.billed) if price else None

    def cost_spent(self, settings: Settings) -> float | None:
        """What the LLM billed, failed generations included; None without a price."""
        spend = self.spend(settings)
        return spend.total if spend else None

    def cost_saved(self, settings: Settings) -> float | None:
        """The billed cost of the generations whose entries the hits served."""
        price = self.price(settings)
        if price is None:
            return None
        return price.cost(self.saved)

    def generation_cost(self, settings: Settings) -> float | None:
        """What the generations that produced a program were billed; None without a price."""
        price = self.price(settings)
        if price is None:
            return None
        return price.cost(self.generation_billed)


def _usage(engine: Engine, since: datetime | None, granularity: Granularity | None) -> list[dict[str, Any]]:
    """Requests and tokens per generator and outcome (and time bucket, with a granularity)."""
    h = hourly(engine, since).c
    keys = [h.generator_version, h.model, h.outcome]
    if granularity is not None:
        keys.insert(0, hourly_bucket(engine, h, granularity))
    query = select(*keys, *(int_sum(h[name]).label(name) for name in USAGE_SUMS)).group_by(*keys).order_by(*keys)
    return fetch_rows(engine, query)


def _add_outcome(usage: GeneratorUsage, row: dict[str, Any]) -> GeneratorUsage:
    outcome, requests = row["outcome"], row["requests"]
    generated = outcome in GENERATED_OUTCOMES
    billed = Billed.of(row)
    return replace(
        usage,
        hits=usage.hits + (requests if outcome == "hit" else 0),
        generations=usage.generations + (requests if generated else 0),
        errors=usage.errors + (requests if outcome == "error" else 0),
        billed=usage.billed + billed,
        generation_billed=usage.generation_billed + (billed if generated else NOTHING_BILLED),
        saved=usage.saved + Billed.of(row, SAVED),
        hits_without_tokens=usage.hits_without_tokens + row["hits_without_tokens"],
    )


Row = dict[str, Any]


def _grouped(rows: list[Row], key: Callable[[Row], tuple[Any, ...]]) -> dict[tuple[Any, ...], GeneratorUsage]:
    grouped: dict[tuple[Any, ...], GeneratorUsage] = {}
    for row in rows:
        k = key(row)
        usage = grouped.get(k) or GeneratorUsage(row["generator_version"] or None, row["model"] or None)
        grouped[k] = _add_outcome(usage, row)
    return grouped


def _rejected(engine: Engine, since: datetime | None, granularity: Granularity | None) -> dict[tuple[Any, ...], int]:
    """The programs handed out since `since` (rounded down to the hour, as `hourly` does)
    that coaches rejected, per generator identity, keyed as `_grouped` keys its usage (and
    per time bucket of when they were handed out, so that each is a share of that bucket's
    programs). A program rejected twice counts once."""
    programs, rejected = training_programs.c, program_rejections.c
    keys = [
        func.coalesce(programs.generator_version, "").label("generator_version"),
        func.coalesce(programs.model, "").label("model"),
    ]
    if granularity is not None:
        keys.insert(0, time_bucket(engine, programs.created_at, granularity).label("bucket"))
    query = (
        select(*keys, func.count(func.distinct(programs.id)))
        .select_from(program_rejections.join(training_programs, programs.id == rejected.training_program_id))
        .group_by(*keys)
    )
    since_hour = since.replace(minute=0, second=0, microsecond=0) if since else None
    with engine.connect() as connection:
        return {
            tuple(row[:-1]): row[-1] for row in connection.execute(where_since(query, programs.created_at, since_hour))
        }


def usage_of(rows: list[Row]) -> list[GeneratorUsage]:
    """Each generator identity's requests and tokens from rows of sums per generator and
    outcome (and any finer key), rejections left out."""
    return list(_grouped(rows, lambda r: (r["generator_version"], r["model"])).values())


def usage_by_generator(engine: Engine, since: datetime | None = None) -> list[GeneratorUsage]:
    """Each generator identity's requests, tokens, savings and rejections in the window,
    busiest first."""
    rejected = _rejected(engine, since, None)
    usage = [
        replace(u, rejected=rejected.get((u.generator_version or "", u.model or ""), 0))
        for u in usage_of(_usage(engine, since, None))
    ]
    return sorted(usage, key=lambda u: -(u.hits + u.generations + u.errors))


def usage_over_time(
    engine: Engine, since: datetime | None, granularity: Granularity
) -> list[tuple[datetime, GeneratorUsage]]:
    """Each generator identity's usage per time bucket, in time order."""
    grouped = _grouped(_usage(engine, since, granularity), lambda r: (r["bucket"], r["generator_version"], r["model"]))
    rejected = _rejected(engine, since, granularity)
    return [(key[0], replace(usage, rejected=rejected.get(key, 0))) for key, usage in grouped.items()]


@dataclass(frozen=True)
class Costs:
    """The window's LLM spend and savings, each model at its own price."""

    # What was billed, by kind of token: input, cached input, output.
    spend: Spend
    saved: float
    llm_calls: int
    llm_calls_avoided: int
    # Average cost of a generation that produced a program: what the TTL what-if prices a call at.
    per_generation: float
    # Models that billed tokens without a price in MODEL_PRICES: left out of the sums.
    unpriced_models: tuple[str, ...]
    # Hits on LLM entries whose generation's tokens were not recorded: their saving is unknown.
    hits_saving_unknown: int

    @property
    def spent(self) -> float:
        return self.spend.total


def costs(usage: Sequence[GeneratorUsage], settings: Settings) -> Costs:
    priced = [u for u in usage if u.price(settings) is not None]
    unpriced = sorted({u.model or "not recorded" for u in usage if u.price(settings) is None and u.billed.total})
    generations = sum(u.generations for u in priced)
    generation_cost = sum(u.generation_cost(settings) or 0.0 for u in priced)
    spend = sum((u.spend(settings) or Spend() for u in priced), Spend())
    return Costs(
        spend=spend,
        saved=sum(u.cost_saved(settings) or 0.0 for u in priced),
        llm_calls=sum(u.llm_calls for u in usage),
        llm_calls_avoided=sum(u.llm_calls_avoided for u in usage),
        per_generation=generation_cost / generations if generations else 0.0,
        unpriced_models=tuple(unpriced),
        hits_saving_unknown=sum(u.hits_without_tokens for u in usage if u.kind != "offline"),
    )
