"""What a rollout asked for and what came back: its `rollouts` row, one `rollout_programs` row per
program asked for, and each program judged as a miss's is (the contract, and whether it fits the
client). Every state change is a conditional update of a pending row, so two collectors never
count a result twice."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Engine, String, insert, select, update

from core.contract.fit import validate_program
from core.contract.generation import Generation
from core.contract.models import ContractError, FieldError, parse_onboarding
from core.generators import ProgramGenerator
from core.prices import NOT_BILLED, WHOLE_FIELDS, Billed
from core.store.db import connect_to_write
from core.store.schema import (
    ai_coach_cache,
    generation_events,
    generation_leases,
    rollout_batches,
    rollout_programs,
    rollouts,
    training_programs,
    utcnow,
)

log = logging.getLogger(__name__)


RolloutKind = Literal["trial", "batch", "live"]


# voided: an invalidation covered it before it was used (core/store/staged_programs.py).
ProgramState = Literal["pending", "staged", "tried", "invalid", "failed", "voided"]


RECORDS_PER_TRANSACTION = 500


cache = ai_coach_cache.c


programs = training_programs.c


events = generation_events.c


runs = rollouts.c


jobs = rollout_batches.c


asked = rollout_programs.c


leases = generation_leases.c


@dataclass(frozen=True)
class Target:
    """A key to generate for, with the answers history recorded for it, and the tokens its
    current entry's generation was billed (None: no entry, or not recorded)."""

    cache_key: str
    user_id: str
    answers: dict[str, Any]
    has_paid_access: bool
    made_by: str | None = None  # the current entry's generator identity
    billed: Billed = NOT_BILLED


def max_chars(column: Any) -> int:
    """The most characters a String column holds: what the server says is cut to it."""
    assert isinstance(column.type, String) and column.type.length is not None
    return int(column.type.length)


# A batch's status as the server says it (OpenAI documents eight, none longer than 11).
STATUS_MAX_CHARS = max_chars(jobs.status)


class RolloutRefused(ContractError):
    """A rollout that cannot be run as asked; names the setting or option to change."""

    def __init__(self, name: str, rule: str) -> None:
        super().__init__("rollout", [FieldError(name, rule)])


class RolloutFailed(RuntimeError):
    """A rollout could not run: nothing of it was submitted, or another start holds it."""


def new_rollout(engine: Engine, kind: RolloutKind, generator: ProgramGenerator, requested: int, actor: str) -> int:
    with connect_to_write(engine) as connection, connection.begin():
        row = connection.execute(
            insert(rollouts)
            .values(
                kind=kind,
                model=generator.identity.model,
                generator_version=generator.identity.version,
                created_by=actor,
                created_at=utcnow(),
                requested=requested,
            )
            .returning(runs.id)
        ).scalar_one()
        return int(row)


def ask(
    connection: Connection,
    rollout_id: int,
    version: str,
    found: Sequence[Target],
    *,
    batch_id: str | None = None,
    state: ProgramState = "pending",
    error: str | None = None,
) -> None:
    if not found:
        return
    connection.execute(
        insert(rollout_programs),
        [
            {
                "rollout_id": rollout_id,
                "batch_id": batch_id,
                "cache_key": t.cache_key,
                "user_id": t.user_id,
                "onboarding_responses": t.answers,
                "has_paid_access": t.has_paid_access,
                "generator_version": version,
                "state": state,
                "error": error,
            }
            for t in found
        ],
    )


@dataclass(frozen=True)
class Judged:
    state: ProgramState
    tokens: Billed = NOT_BILLED
    model: str | None = None
    program_json: str | None = None
    error: str | None = None
    generated_at: datetime | None = None
    latency_ms: float | None = None
    attempts: int | None = None
    rules_broken: str | None = None


def judge_generation(
    generation: Generation, answers: dict[str, Any], has_paid_access: bool, valid: ProgramState, generated_at: datetime
) -> Judged:
    """A generation's program as a miss's is judged: the contract, and whether it fits the client."""
    tokens = generation.billed
    try:
        checked = validate_program(generation.program, parse_onboarding(answers), has_paid_access)
    except ContractError as exc:
        return Judged("invalid", tokens, generation.model, error=str(exc))
    program_json = json.dumps(checked, ensure_ascii=False, separators=(",", ":"))
    return Judged(valid, tokens, generation.model, program_json, generated_at=generated_at)


def record_result(connection: Connection, row_id: int, judged: Judged, ttl: timedelta, *, was: str = "pending") -> bool:
    """Record a program's result over its state `was` (pending: its first; failed or invalid:
    a valid answer a repeated line brought); whether this call did (another may have first).
    The tokens are what the program was billed in all, its earlier lines' included."""
    expires_at = judged.generated_at + ttl if judged.generated_at and judged.program_json else None
    values = {
        "state": judged.state,
        "model": judged.model,
        "program": None if judged.program_json is None else json.loads(judged.program_json),
        "size_bytes": len(judged.program_json.encode()) if judged.program_json else 0,
        "error": judged.error,
        "generated_at": judged.generated_at,
        "expires_at": expires_at,
        "latency_ms": judged.latency_ms,
        "attempts": judged.attempts,
        "rules_broken": judged.rules_broken,
        **judged.tokens.as_columns(),
    }
    done = connection.execute(update(rollout_programs).where(asked.id == row_id, asked.state == was).values(**values))
    return done.rowcount == 1


def bill_voided(connection: Connection, row_id: int, tokens: Billed) -> bool:
    """The tokens of an answer whose request an invalidation voided while it was out: billed
    all the same. Only while none are recorded, so that two collectors record them once."""
    unbilled = (asked[name].is_(None) for name in WHOLE_FIELDS)
    statement = update(rollout_programs).where(asked.id == row_id, asked.state == "voided", *unbilled)
    return connection.execute(statement.values(**tokens.as_columns())).rowcount == 1


def pending_programs(connection: Connection, condition: Any, *, limit: int | None = None) -> list[Any]:
    query = select(asked.id, asked.cache_key, asked.onboarding_responses, asked.has_paid_access, asked.state).where(
        condition, asked.state == "pending"
    )
    return list(connection.execute(query.order_by(asked.id).limit(limit)))
