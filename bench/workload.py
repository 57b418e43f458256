"""Bulk data for the benchmark, made inside the database (a series joined to constants and
pseudo-random columns) so a million rows take seconds, not a Python loop."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from core.contract.cache_key import DIGEST_ALPHABET
from core.contract.models import parse_onboarding
from core.generators.offline import build_program
from core.store.db import is_postgres
from core.store.schema import utcnow

# A small valid program for the filler rows: the queries measured never read it, and a
# million 14 KB documents would only measure the disk.
FILLER_PROGRAM = json.dumps(
    build_program(
        parse_onboarding(
            {
                "goal": "strength",
                "experience_level": "beginner",
                "days_per_week": 1,
                "session_minutes": 15,
                "equipment": [],
            }
        ),
        False,
    )
)
FILLER_PROFILE = json.dumps(
    {"goal": "strength", "experience_level": "beginner", "days_per_week": 1, "session_minutes": 15, "equipment": []}
)


def _series(engine: Engine) -> str:
    """A FROM clause yielding g = 1..:n."""
    if is_postgres(engine):
        return "generate_series(1, :n) AS s(g)"
    return "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n) SELECT g FROM s)"


def _seconds_after(engine: Engine, start: str, seconds: str) -> str:
    """The timestamp `seconds` after the bound timestamp `start`, as each database stores it."""
    if is_postgres(engine):
        return f"CAST(:{start} AS timestamptz) + ({seconds}) * interval '1 second'"
    return f"strftime('%Y-%m-%d %H:%M:%f000', :{start}, '+' || ({seconds}) || ' seconds')"


def _random_below(engine: Engine, n: int) -> str:
    """A pseudo-random integer in [0, n), per row."""
    if is_postgres(engine):
        return f"floor(random() * {n})::int"
    return f"(abs(random()) % {n})"


def _digest_char(expression: str) -> str:
    """A key's last character, spread over the digest alphabet like real digests."""
    return f"substr('{DIGEST_ALPHABET}', ({expression}) % 64 + 1, 1)"


def _json(engine: Engine, param: str) -> str:
    return f"CAST(:{param} AS jsonb)" if is_postgres(engine) else f":{param}"


def _stamp(engine: Engine, when: datetime) -> Any:
    # SQLite keeps naive UTC text (see core.schema.UTCDateTime); PostgreSQL takes the aware value.
    return when if is_postgres(engine) else when.replace(tzinfo=None).isoformat(sep=" ")


def _run(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text(sql), params)
    if is_postgres(engine):
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def seed_cache(engine: Engine, n: int, *, expired: bool, prefix: str = "fill") -> None:
    """n program entries, valid for a day or expired an hour ago, of one user each."""
    now = utcnow()
    expires = now - timedelta(hours=1) if expired else now + timedelta(days=1)
    size = len(FILLER_PROGRAM)
    _run(
        engine,
        f"""INSERT INTO ai_coach_cache
              (cache_key, user_id, data, onboarding_hash, expires_at, created_at, updated_at, size_bytes)
            SELECT 'program:u{prefix}' || g || ':paidfalse:d{prefix}', '{prefix}' || g, {_json(engine, "data")},
                   '{prefix}', {_seconds_after(engine, "expires", "0")}, {_seconds_after(engine, "created", "0")},
                   {_seconds_after(engine, "created", "0")}, :size
            FROM {_series(engine)}""",
        n=n,
        data=FILLER_PROGRAM,
        size=size,
        expires=_stamp(engine, expires),
        created=_stamp(engine, expires - timedelta(days=1)),
    )


# Why the seeded misses were misses: what a cache sees most, beside forced refreshes.
MISS_REASONS = ("first_generation", "expired", "profile_changed", "access_changed")


def seed_events(engine: Engine, n: int, *, days: int = 30, keys: int = 50_000) -> None:
    """n requests spread over the last `days`: ~70% hits, 25% misses, 3% forced, 2% errors,
    a miss's (and an error's) reason one of MISS_REASONS."""
    start = utcnow() - timedelta(days=days)
    r = _random_below(engine, 100)
    outcome = f"CASE WHEN {r} < 70 THEN 'hit' WHEN {r} < 95 THEN 'miss' WHEN {r} < 98 THEN 'bypass' ELSE 'error' END"
    reasons = " ".join(f"WHEN {i} THEN '{reason}'" for i, reason in enumerate(MISS_REASONS))
    miss_reason = (
        f"CASE WHEN outcome = 'bypass' THEN 'forced_refresh' WHEN outcome <> 'hit'"
        f" THEN CASE {_random_below(engine, len(MISS_REASONS))} {reasons} END END"
    )
    _run(
        engine,
        f"""INSERT INTO generation_events
              (created_at, user_id, cache_key, outcome, latency_ms, prompt_tokens, completion_tokens,
               cache_read_error, cache_write_error, history_error, key_sample, miss_reason)
            SELECT created_at, user_id, cache_key, outcome,
                   CASE WHEN outcome = 'hit' THEN 1 + {_random_below(engine, 5)}
                        ELSE 5000 + {_random_below(engine, 10000)} END,
                   CASE WHEN outcome IN ('miss', 'bypass') THEN 420 END,
                   CASE WHEN outcome IN ('miss', 'bypass') THEN 1800 END,
                   {_random_below(engine, 1000)} = 0, {_random_below(engine, 1000)} = 0, false, key_sample,
                   {miss_reason}
            FROM (SELECT {_seconds_after(engine, "start", f"g * {days * 86400.0} / :n")} AS created_at,
                         'u' || (g % {keys}) AS user_id,
                         'program:uu' || (g % {keys}) || ':paidfalse:d' || {_digest_char(f"g % {keys}")} AS cache_key,
                         (g % {keys}) % 64 AS key_sample,
                         {outcome} AS outcome
                  FROM {_series(engine)}) AS e""",
        n=n,
        start=_stamp(engine, start),
    )


def seed_programs(engine: Engine, n: int, *, days: int = 30, users: int = 50_000) -> None:
    """n history rows over the last `days`, 70% from the cache."""
    start = utcnow() - timedelta(days=days)
    _run(
        engine,
        f"""INSERT INTO training_programs
              (user_id, program, onboarding_responses, has_paid_access, source, cache_key, created_at, latency_ms)
            SELECT 'u' || (g % {users}), {_json(engine, "program")}, {_json(engine, "profile")}, (g % 3 = 0),
                   CASE WHEN g % 10 < 7 THEN 'cache' ELSE 'llm' END,
                   'program:uu' || (g % {users}) || ':paidfalse:dx',
                   {_seconds_after(engine, "start", f"g * {days * 86400.0} / :n")},
                   CASE WHEN g % 10 < 7 THEN 2 ELSE 8000 END
            FROM {_series(engine)}""",
        n=n,
        program=FILLER_PROGRAM,
        profile=FILLER_PROFILE,
        start=_stamp(engine, start),
    )
