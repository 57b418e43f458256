"""What a request to the service comes to: the program with how it was had (a hit, or a miss and
why), or the failure that left nothing cached or saved; and what changed since the user's
previous program, which a miss reason and the page share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic_core import from_json
from sqlalchemy import Connection

from core.contract.models import TrainingProgram
from core.serving.miss_reasons import MissReason
from core.store import history
from core.store.history import GenerationEvent, HistoryRecord
from core.store.schema import ProgramId


class GenerationFailed(RuntimeError):
    """No program could be produced; nothing was cached or saved."""


@dataclass(frozen=True)
class SincePrevious:
    """The user's previous program, the newest one before this request (None for a first
    program), and what changed since: the one comparison a miss reason and the page share."""

    previous: history.Answers | None
    changes: tuple[history.Change, ...] = ()


def compare(
    connection: Connection,
    user_id: str,
    answers: dict[str, Any],
    has_paid_access: bool,
    *,
    except_program: ProgramId | None = None,
) -> SincePrevious:
    previous = history.latest_answers(connection, user_id, except_program=except_program)
    if previous is None:
        return SincePrevious(None)
    return SincePrevious(previous, tuple(history.changed_answers(previous, answers, has_paid_access)))


@dataclass(frozen=True)
class GenerationResult:
    # The validated program as JSON text; `program` decodes it on first use.
    program_json: str
    cache_hit: bool
    cache_key: str
    latency_ms: float
    # When the program was asked for (the history row's created_at), and from what answers.
    requested_at: datetime
    onboarding_responses: dict[str, Any]
    training_program_id: ProgramId | None = None
    expires_at: datetime | None = None
    miss_reason: MissReason | None = None
    changed_fields: tuple[str, ...] = ()
    # None until compared: a miss compares for its reason, a hit (kept cheap) when asked,
    # by ProgramService.since_previous.
    since_previous: SincePrevious | None = None
    # Which generator made the program (for a hit: as the cache entry recorded it).
    model: str | None = None
    generator_version: str | None = None
    # A hit on a program a rollout generated ahead for this generator (its id): pre-warmed.
    prewarmed_by: int | None = None
    # Set when the offline coach made the program because this LLM budget is spent (core/serving/budget.py).
    budget_reached: str | None = None
    warnings: tuple[str, ...] = ()
    # Set when the program was produced but saving it to history failed: `unsaved` is what
    # `ProgramService.save_again` saves, with the request's event if that could not be
    # recorded either (a miss's event carries the tokens it was billed).
    history_error: str | None = None
    unsaved: HistoryRecord | None = None
    unsaved_event: GenerationEvent | None = None

    @cached_property
    def program(self) -> TrainingProgram:
        program: TrainingProgram = from_json(self.program_json)
        return program
