"""One request as it goes through the service (core/serving/service.py): what was asked, what it is
served or generated, its history row and its event; and the one way a validated program becomes
the key's entry, for a miss and a pre-warm alike (`hand_out`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from time import perf_counter
from typing import Any

from sqlalchemy import Connection

from core.contract.generation import Generation
from core.contract.models import OnboardingResponses
from core.prices import NOT_BILLED, Billed
from core.serving.miss_reasons import MissReason
from core.serving.results import GenerationResult, SincePrevious
from core.store import entries, history
from core.store.history import GenerationEvent, HistoryRecord, Outcome, Source
from core.store.schema import ProgramId, utcnow


@dataclass
class Request:
    user_id: str
    profile: OnboardingResponses
    has_paid_access: bool
    key: str
    onboarding_hash: str
    force_refresh: bool
    started: float = field(default_factory=perf_counter)
    requested_at: datetime = field(default_factory=utcnow)
    warnings: list[str] = field(default_factory=list)
    cache_read_error: bool = False

    def elapsed_ms(self) -> float:
        return (perf_counter() - self.started) * 1000

    @cached_property
    def answers(self) -> dict[str, Any]:
        """The normalized answers, as stored and compared."""
        return self.profile.normalized()

    def served(self, program_json: str, entry: entries.CacheEntry, prewarmed_by: int | None) -> GenerationResult:
        """This request served from `entry`, whose program is `program_json`."""
        return GenerationResult(
            program_json=program_json,
            cache_hit=True,
            cache_key=self.key,
            latency_ms=self.elapsed_ms(),
            requested_at=self.requested_at,
            onboarding_responses=self.answers,
            expires_at=entry.expires_at,
            model=entry.model,
            generator_version=entry.generator_version,
            prewarmed_by=prewarmed_by,
        )

    def event(self, outcome: Outcome, *, latency_ms: float, **details: Any) -> GenerationEvent:
        """This request's event: what happened (`outcome` and its details) and how long it took."""
        return GenerationEvent(
            user_id=self.user_id,
            cache_key=self.key,
            outcome=outcome,
            latency_ms=latency_ms,
            cache_read_error=self.cache_read_error,
            **details,
        )

    def record(
        self,
        program_json: str,
        source: Source,
        generation: Generation | None = None,
        *,
        model: str | None = None,
        generator_version: str | None = None,
    ) -> HistoryRecord:
        """The history row of this request's program, with the generator that made it."""
        return HistoryRecord(
            user_id=self.user_id,
            program_json=program_json,
            onboarding_responses=self.answers,
            has_paid_access=self.has_paid_access,
            source=source,
            cache_key=self.key,
            latency_ms=self.elapsed_ms(),
            model=generation.model if generation else model,
            generator_version=generator_version,
            billed=generation.billed if generation else NOT_BILLED,
            created_at=self.requested_at,
        )

    def new_entry(
        self, program_json: str, model: str, version: str, tokens: Billed, made_at: datetime | None = None
    ) -> entries.NewEntry:
        """This request's validated program as the key's entry."""
        return entries.NewEntry(
            self.key, self.user_id, self.onboarding_hash, program_json, model, version, tokens, made_at
        )


@dataclass(frozen=True)
class Miss:
    """Why the cache did not serve, the answers that changed when that is why, and the
    comparison with the user's previous program that told (None: not compared)."""

    reason: MissReason
    changed: tuple[str, ...] = ()
    since_previous: SincePrevious | None = None


@dataclass(frozen=True)
class Generated:
    """A miss's program as it is to be stored: its result, history row and event."""

    result: GenerationResult
    record: HistoryRecord
    event: GenerationEvent
    written_at: datetime | None = None

    def cached(self, written: entries.Written) -> Generated:
        """This program as cached by `written`: valid until its expiry."""
        return Generated(
            replace(self.result, expires_at=written.expires_at),
            self.record,
            replace(self.event, entry_expires_at=written.expires_at),
            written.updated_at,
        )


def hand_out(
    connection: Connection, new: entries.NewEntry, ttl: timedelta, generated: Generated, *, save: bool = True
) -> tuple[Generated, ProgramId | None]:
    """The one way a validated program becomes the key's entry, for a miss and a pre-warm alike:
    the entry with its fate record (entries.write_entry), the history row copied from that very
    write, and the request's event, in the caller's transaction. Without `save`, the entry and
    the event only (the history row is kept to save again)."""
    cached = generated.cached(entries.write_entry(connection, new, ttl))
    program_id = history.insert_program(connection, cached.record, entry_written_at=cached.written_at) if save else None
    history.insert_event(connection, cached.event)
    return cached, program_id


def hit_on(
    request: Request, entry: entries.CacheEntry, program_json: str, prewarmed_by: int | None
) -> tuple[GenerationResult, HistoryRecord, GenerationEvent]:
    """A hit on `entry`: what the request is served, its history row and its event."""
    result = request.served(program_json, entry, prewarmed_by)
    event = request.event("hit", latency_ms=result.latency_ms).served_from(entry)
    record = request.record(program_json, "cache", model=entry.model, generator_version=entry.generator_version)
    return result, record, event
