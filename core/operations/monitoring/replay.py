"""What another TTL would have done: the served requests replayed against each what-if TTL, with
invalidations and forced refreshes counted as they happened."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Engine,
    case,
    cast,
    func,
    literal,
    or_,
    select,
)

from core.operations.admin import INVALIDATIONS, UNKNOWN_GENERATOR, Invalidation
from core.operations.monitoring.figures import Summary, summary
from core.operations.monitoring.queries import actions, events, fetch_rows, where_since
from core.operations.monitoring.usage import Costs
from core.serving.miss_reasons import WHATEVER_THE_TTL
from core.store.db import is_postgres


@dataclass(frozen=True)
class TtlOutcome:
    ttl_hours: float
    requests: int
    generations: int
    # Share of cache keys replayed: 1.0, or a uniform sample when the window is large.
    sampled_share: float = 1.0

    @property
    def hit_rate(self) -> float | None:
        return (self.requests - self.generations) / self.requests if self.requests else None

    @property
    def estimated_generations(self) -> float:
        """The window's generations: a sample's scaled up to every key."""
        return self.generations / self.sampled_share

    def cost(self, costs: Costs) -> float:
        """What those generations would have been billed, each at the window's average cost
        of a generation that produced a program."""
        return self.estimated_generations * costs.per_generation


# The TTLs the what-if always compares, beside the configured one and the one asked for.
WHAT_IF_TTLS = (1.0, 6.0, 24.0, 72.0, 168.0)


# Replaying 20 000 requests estimates a hit rate to about a percentage point.
REPLAY_MAX_REQUESTS = 20_000


def _epoch_microseconds(engine: Engine, column: Any) -> Any:
    """Whole microseconds since 1970, exactly: a request exactly one TTL after a generation
    is a miss, and floating-point seconds would make that a coin toss."""
    if is_postgres(engine):
        return cast(func.extract("epoch", column) * 1_000_000, BigInteger)
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' (core.schema.UTCDateTime).
    seconds = cast(func.strftime("%s", column), BigInteger)
    return seconds * 1_000_000 + cast(func.substr(column, 21, 6), BigInteger)


def _invalidated(engine: Engine, since: datetime | None) -> dict[Invalidation, list[str]]:
    """Whom the window's invalidations named, by action: user ids, generator versions."""
    query = where_since(
        select(actions.action, actions.target).where(actions.action.in_(INVALIDATIONS)).distinct(),
        actions.created_at,
        since,
    )
    named: dict[Invalidation, list[str]] = {action: [] for action in INVALIDATIONS}
    for row in fetch_rows(engine, query):
        named[row["action"]].append(row["target"])
    return named


def _replayed_requests(engine: Engine, since: datetime | None, key_samples: int | None) -> Any:
    """The served requests (errors served nothing, as in `Summary.hit_rate`), key by key in
    time order: (first of its key, microseconds, a generation no TTL can skip). That is a
    miss for a reason no TTL spares (WHATEVER_THE_TTL: a forced refresh, a coach's
    rejection, a recall), or the first request after an admin invalidated the key's entry: its user's entries
    (`invalidate_user`), or its generator's (`retire_generator`; the entry's generator is
    the one the key's previous event names, the hit's entry's or the miss's)."""
    # In the order of ix_generation_events_key_sample, so a sample is an index range; ties
    # in time are taken in the order they were logged.
    in_order = (events.key_sample, events.cache_key, events.created_at, events.id)

    def previous(column: Any, name: str) -> Any:
        return func.lag(column).over(order_by=in_order).label(name)

    served = where_since(
        select(
            *in_order,
            events.outcome,
            events.miss_reason,
            events.user_id,
            previous(events.cache_key, "previous_key"),
            previous(events.created_at, "previous_at"),
            previous(events.generator_version, "previous_version"),
        ).where(events.outcome != "error"),
        events.created_at,
        since,
    )
    if key_samples is not None:
        served = served.where(events.key_sample < key_samples)
    r = served.subquery()
    # Whom each invalidation names, as the request's columns: its user, its entry's generator.
    whom: dict[Invalidation, Any] = {
        "invalidate_user": r.c.user_id,
        "retire_generator": func.coalesce(r.c.previous_version, UNKNOWN_GENERATOR),
    }
    invalidated_since_previous = (
        select(literal(1))
        .where(
            actions.created_at > r.c.previous_at,
            actions.created_at <= r.c.created_at,
            or_(*((actions.action == action) & (actions.target == column) for action, column in whom.items())),
        )
        .exists()
    )
    # Looked up only for the requests of a user or generator an invalidation named: the
    # others, nearly all, cost one comparison with a short list.
    named = _invalidated(engine, since)
    affected = or_(*(column.in_(named[action]) for action, column in whom.items()))
    return select(
        func.coalesce(r.c.cache_key != r.c.previous_key, True),
        _epoch_microseconds(engine, r.c.created_at),
        # A forced refresh's event is a bypass, whatever reason it records.
        (r.c.outcome == "bypass")
        | func.coalesce(r.c.miss_reason, "").in_(WHATEVER_THE_TTL)
        | case((affected, invalidated_since_previous), else_=False),
    ).order_by(r.c.key_sample, r.c.cache_key, r.c.created_at, r.c.id)


@dataclass(frozen=True)
class ServedRequests:
    """The window's served requests as the TTL replay reads them, key by key in time order
    (see `_replayed_requests`): read once, replayed against any TTL without the database."""

    new_key: np.ndarray  # 1 for the first request of its key
    micros: np.ndarray  # whole microseconds since 1970
    forced: np.ndarray  # 1 for a request that generates whatever the TTL
    # Share of cache keys read: 1.0, or a uniform sample when the window is large.
    sampled_share: float

    def replay(self, ttl_hours: Sequence[float]) -> list[TtlOutcome]:
        """A request is a hit when its key's last generation is younger than the TTL, unless
        it is forced (see `_replayed_requests`). The window starts with a cold cache."""
        n = len(self.micros)
        if not n:
            return [TtlOutcome(h, 0, 0, self.sampled_share) for h in ttl_hours]
        # One sorted axis for all keys: each key's times shifted past the previous key's, so a
        # search from inside one key never skips the next key's first request.
        ttls = [round(hours * 3_600_000_000) for hours in ttl_hours]
        start = int(self.micros.min())
        span = int(self.micros.max()) - start + max(ttls) + 1
        axis = np.cumsum(self.new_key) * span + (self.micros - start)
        # The first request after each one that generates whatever the TTL.
        forced_at = np.where(self.forced == 1, np.arange(n), n)
        next_forced = np.append(np.minimum.accumulate(forced_at[::-1])[::-1][1:], n)
        outcomes = []
        for hours, ttl in zip(ttl_hours, ttls, strict=True):
            following = np.minimum(np.searchsorted(axis, axis + ttl, side="left"), next_forced).tolist()
            calls, i = 0, 0
            while i < n:  # from each generation straight to the next one
                calls += 1
                i = following[i]
            outcomes.append(TtlOutcome(hours, n, calls, self.sampled_share))
        return outcomes


def served_requests(engine: Engine, since: datetime | None, totals: Summary, max_requests: int) -> ServedRequests:
    """Above `max_requests` served in the window (`totals`), a uniform sample of keys, so the
    cost stays bounded. Requests before `since` are not read."""
    served = totals.hits + totals.generations
    share, key_samples = 1.0, None
    if served > max_requests:
        # Each key_sample value holds 1/64 of the keys, uniformly (the digest decides it).
        key_samples = max(1, math.ceil(64 * max_requests / served))
        share = key_samples / 64
    with engine.connect() as connection:
        # The driver's own tuples of three integers: at 1 M events, building SQLAlchemy's Rows
        # for the 30 000 requests read cost more than the query (160 of 250 ms on PostgreSQL).
        rows = connection.execute(_replayed_requests(engine, since, key_samples)).cursor.fetchall()
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 3)
    return ServedRequests(new_key=table[:, 0], micros=table[:, 1], forced=table[:, 2], sampled_share=share)


def replay_ttls(
    engine: Engine,
    ttl_hours: Sequence[float],
    since: datetime | None = None,
    max_requests: int = REPLAY_MAX_REQUESTS,
) -> list[TtlOutcome]:
    """Replay the served requests (key, time) against each TTL: a request is a hit when its
    key's last generation is younger than the TTL, unless it was forced or its entry was
    invalidated since the key's previous request (see `_replayed_requests`)."""
    return served_requests(engine, since, summary(engine, since), max_requests).replay(ttl_hours)
