"""The generation service: ADR-049 steps 1-4 in one flow.

key -> lookup -> hit: save history | miss: single-flight -> generate -> validate -> upsert
-> save history; every request leaves one event. Cache errors never fail a request."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from time import perf_counter
from typing import Any, Literal

from pydantic_core import from_json
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from core import cache_store, history
from core.cache_key import cache_key, check_user_id, digest_of_key
from core.db import connect_to_write
from core.generators import GenerationError, ProgramGenerator
from core.history import GenerationEvent, HistoryRecord
from core.models import (
    ContractError,
    OnboardingResponses,
    TrainingProgram,
    parse_onboarding,
    parse_program,
    parse_program_json,
)
from core.schema import utcnow
from core.settings import Settings
from core.single_flight import HeldLock, SingleFlightTimeout, try_lock

log = logging.getLogger(__name__)
# A request that finds an identical generation under way polls the cache for its result.
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 0.25

MissReason = Literal[
    "first_generation",
    "expired",
    "profile_changed",
    "access_changed",
    "forced_refresh",
    "cache_unavailable",
    "invalid_entry",
]


class GenerationFailed(RuntimeError):
    """No program could be produced; nothing was cached or saved."""


@dataclass(frozen=True)
class GenerationResult:
    # The validated program as JSON text; `program` decodes it on first use.
    program_json: str
    cache_hit: bool
    cache_key: str
    latency_ms: float
    training_program_id: int | None
    expires_at: datetime | None = None
    miss_reason: MissReason | None = None
    changed_fields: tuple[str, ...] = ()
    model: str | None = None
    warnings: tuple[str, ...] = ()
    # Set when the program was produced but saving it to history failed: `unsaved` can be
    # saved again with `history.save_program`.
    history_error: str | None = None
    unsaved: HistoryRecord | None = None

    @cached_property
    def program(self) -> TrainingProgram:
        return from_json(self.program_json)  # type: ignore[no-any-return]


def describe_db_error(exc: DBAPIError) -> str:
    """The database's own first line (e.g. 'permission denied for table x'), without the
    statement or its parameters."""
    first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
    return f"{type(exc.orig).__name__}: {first_line[:200]}"


@dataclass
class _Request:
    user_id: str
    profile: OnboardingResponses
    has_paid_access: bool
    key: str
    force_refresh: bool
    started: float = field(default_factory=perf_counter)
    requested_at: datetime = field(default_factory=utcnow)
    warnings: list[str] = field(default_factory=list)
    cache_read_error: bool = False

    def elapsed_ms(self) -> float:
        return (perf_counter() - self.started) * 1000


class ValidatedPrograms:
    """Entry versions this process has validated, as JSON text, bounded in bytes. A hit on
    a version already validated skips fetching and validating the program again; any
    change to the row gives it a new version, which is fetched and validated anew."""

    def __init__(self, max_bytes: int = 32 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def known(self, key: str) -> tuple[str, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def remember(self, key: str, version: str | None, document: str) -> None:
        if version is None:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._items[key] = (version, document)
            self._bytes += len(document)
            while self._bytes > self.max_bytes and self._items:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= len(evicted)


class _NoLock:
    def release(self) -> None:
        pass


@dataclass(frozen=True)
class _Lookup:
    """Why the cache could not serve: no entry, an expired or invalid one, or a failed read."""

    entry: cache_store.CacheEntry | None = None
    invalid: bool = False
    failed: bool = False


@dataclass
class ProgramService:
    engine: Engine
    generator: ProgramGenerator
    ttl: timedelta = timedelta(hours=24)
    lock_wait_seconds: float = 120.0
    validated: ValidatedPrograms = field(default_factory=ValidatedPrograms, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, engine: Engine, generator: ProgramGenerator) -> ProgramService:
        return cls(
            engine=engine,
            generator=generator,
            ttl=timedelta(hours=settings.cache_ttl_hours),
            lock_wait_seconds=settings.lock_wait_seconds,
        )

    def generate(
        self,
        *,
        user_id: str,
        onboarding_responses: Any,
        has_paid_access: bool,
        force_refresh: bool = False,
    ) -> GenerationResult:
        """Raises ContractError for invalid input (nothing written), GenerationFailed or
        SingleFlightTimeout when no program could be had (nothing cached or saved)."""
        check_user_id(user_id)
        profile = parse_onboarding(onboarding_responses)
        request = _Request(
            user_id, profile, has_paid_access, cache_key(user_id, profile, has_paid_access), force_refresh
        )
        first = _Lookup() if force_refresh else self._try_cache(request)
        if isinstance(first, GenerationResult):
            return first
        reason, changed = self._miss_reason(request, first)
        # A forced refresh accepts only an entry written after it was asked for.
        written_since = request.requested_at if force_refresh else None
        deadline = perf_counter() + self.lock_wait_seconds
        pause = POLL_FIRST_SECONDS
        while True:
            lock = self._try_lock(request)
            if lock is not None:
                try:
                    # Whoever held the lock before us may have just filled the entry.
                    second = self._try_cache(request, written_since)
                    if isinstance(second, GenerationResult):
                        return second
                    return self._generate_and_store(request, reason, changed)
                finally:
                    lock.release()
            if perf_counter() + pause > deadline:
                exc = SingleFlightTimeout(self.lock_wait_seconds)
                self._record_failure(request, reason, str(exc))
                raise exc
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX_SECONDS)
            waited = self._try_cache(request, written_since)
            if isinstance(waited, GenerationResult):
                return waited

    def _try_lock(self, request: _Request) -> HeldLock | _NoLock | None:
        try:
            return try_lock(self.engine, request.key)
        except DBAPIError as exc:
            # Fail open: without the lock two requests may both call the LLM; both still succeed.
            log.warning("Single-flight lock unavailable for %s: %s", request.key, describe_db_error(exc))
            return _NoLock()

    def _try_cache(self, request: _Request, written_since: datetime | None = None) -> GenerationResult | _Lookup:
        """Serve a hit, or say why not. A hit is one connection and one transaction:
        look up, save to history, log the event, commit."""
        try:
            connection = connect_to_write(self.engine)
        except DBAPIError as exc:
            return self._read_failed(request, exc)
        known = self.validated.known(request.key)
        with connection:
            try:
                entry = cache_store.read_entry(connection, request.key, known[0] if known else None)
            except DBAPIError as exc:
                connection.rollback()
                return self._read_failed(request, exc)
            if entry is None or not entry.is_valid(utcnow()):
                return _Lookup(entry)
            if written_since is not None and entry.created_at < written_since:
                return _Lookup(entry)
            if entry.data_json is None and known is not None:
                program_json = known[1]  # this very version was validated here before
            else:
                program_json = entry.data_json or ""
                try:
                    parse_program_json(program_json, request.profile)
                except ContractError as exc:
                    log.warning("Cached entry %s no longer validates, regenerating: %s", request.key, exc)
                    return _Lookup(entry, invalid=True)
                self.validated.remember(request.key, entry.version, program_json)
            return self._serve_hit(connection, request, entry, program_json)

    def _read_failed(self, request: _Request, exc: DBAPIError) -> _Lookup:
        log.warning("Cache read failed for %s, generating instead: %s", request.key, describe_db_error(exc))
        request.cache_read_error = True
        warning = "The cache could not be read; the program was generated instead."
        if warning not in request.warnings:  # a waiter may fail to read more than once
            request.warnings.append(warning)
        return _Lookup(failed=True)

    def _miss_reason(self, request: _Request, lookup: _Lookup) -> tuple[MissReason, tuple[str, ...]]:
        if request.force_refresh:
            return "forced_refresh", ()
        if lookup.failed:
            return "cache_unavailable", ()
        if lookup.invalid:
            return "invalid_entry", ()
        if lookup.entry is not None:
            return "expired", ()
        try:
            baseline = history.latest_profile(self.engine, request.user_id)
        except DBAPIError as exc:
            log.warning("Could not read the user's last profile: %s", describe_db_error(exc))
            return "first_generation", ()
        if baseline is None:
            return "first_generation", ()
        before, had_paid_access = baseline
        now = request.profile.normalized()
        changed = tuple(sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k)))
        if changed:
            access = ("has_paid_access",) if had_paid_access != request.has_paid_access else ()
            return "profile_changed", changed + access
        if had_paid_access != request.has_paid_access:
            return "access_changed", ("has_paid_access",)
        # Same answers as last time but no entry: it expired and was cleaned up, or was invalidated.
        return "expired", ()

    def _serve_hit(
        self, connection: Connection, request: _Request, entry: cache_store.CacheEntry, program_json: str
    ) -> GenerationResult:
        log.info("Cache hit %s", request.key)
        latency_ms = request.elapsed_ms()
        record = HistoryRecord(
            user_id=request.user_id,
            program_json=program_json,
            onboarding_responses=request.profile.normalized(),
            has_paid_access=request.has_paid_access,
            source="cache",
            cache_key=request.key,
            latency_ms=latency_ms,
        )
        event = GenerationEvent(
            user_id=request.user_id,
            cache_key=request.key,
            outcome="hit",
            latency_ms=latency_ms,
            cache_read_error=request.cache_read_error,
        )
        return self._save(
            connection,
            request,
            record,
            event,
            cache_version=entry.updated_at,
            cache_hit=True,
            expires_at=entry.expires_at,
        )

    def _generate_and_store(self, request: _Request, reason: MissReason, changed: tuple[str, ...]) -> GenerationResult:
        log.info("Cache miss %s (%s), generating with %s", request.key, reason, self.generator.name)
        llm_started = perf_counter()
        try:
            generation = self.generator.generate(request.profile, request.has_paid_access)
        except GenerationError as exc:
            # A refused, truncated or malformed answer was still billed: count its tokens.
            message = f"generation failed: {exc}. Nothing was cached or saved."
            self._record_failure(request, reason, message, exc.prompt_tokens, exc.completion_tokens)
            raise GenerationFailed(message) from None
        try:
            program = parse_program(generation.program, request.profile)
        except ContractError as exc:
            message = f"the generated program is invalid: {exc}. Nothing was cached or saved."
            self._record_failure(request, reason, message, generation.prompt_tokens, generation.completion_tokens)
            raise GenerationFailed(message) from None
        program_json = json.dumps(program, ensure_ascii=False, separators=(",", ":"))
        llm_latency_ms = (perf_counter() - llm_started) * 1000

        now = utcnow()
        expires_at: datetime | None = now + self.ttl
        write_error = False
        try:
            with self.engine.begin() as connection:
                cache_store.upsert_entry(
                    connection,
                    key=request.key,
                    user_id=request.user_id,
                    onboarding_hash=digest_of_key(request.key),
                    program_json=program_json,
                    now=now,
                    ttl=self.ttl,
                )
        except DBAPIError as exc:
            log.warning("Cache write failed for %s: %s", request.key, describe_db_error(exc))
            request.warnings.append("The program could not be cached; the next request will generate again.")
            write_error, expires_at = True, None

        latency_ms = request.elapsed_ms()
        record = HistoryRecord(
            user_id=request.user_id,
            program_json=program_json,
            onboarding_responses=request.profile.normalized(),
            has_paid_access=request.has_paid_access,
            source="llm",
            cache_key=request.key,
            latency_ms=latency_ms,
            model=generation.model,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        )
        event = GenerationEvent(
            user_id=request.user_id,
            cache_key=request.key,
            outcome="bypass" if request.force_refresh else "miss",
            miss_reason=reason,
            latency_ms=latency_ms,
            llm_latency_ms=llm_latency_ms,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            cache_read_error=request.cache_read_error,
            cache_write_error=write_error,
        )
        return self._save(
            None,
            request,
            record,
            event,
            # Copied from the entry just written rather than parsed and compressed again.
            cache_version=None if write_error else now,
            cache_hit=False,
            expires_at=expires_at,
            miss_reason=reason,
            changed_fields=changed,
            model=generation.model,
        )

    def _save(
        self,
        connection: Connection | None,
        request: _Request,
        record: HistoryRecord,
        event: GenerationEvent,
        cache_version: datetime | None = None,
        **outcome: Any,
    ) -> GenerationResult:
        """History row and event in one transaction, committed here: on the hit's own
        connection, or on a new one."""
        result = GenerationResult(
            program_json=record.program_json,
            cache_key=request.key,
            latency_ms=record.latency_ms,
            training_program_id=None,
            warnings=tuple(request.warnings),
            **outcome,
        )
        try:
            with nullcontext(connection) if connection else self.engine.connect() as conn:
                try:
                    program_id = history.insert_program_and_event(conn, record, event, cache_version=cache_version)
                    conn.commit()
                except DBAPIError:
                    conn.rollback()
                    raise
        except DBAPIError as exc:
            message = f"The program could not be saved to history ({describe_db_error(exc)})."
            log.error("History save failed for %s: %s", request.key, message)
            self._record_event(replace(event, history_error=True, error=message))
            return replace(result, history_error=message, unsaved=record)
        return replace(result, training_program_id=program_id)

    def _record_failure(
        self,
        request: _Request,
        reason: MissReason,
        message: str,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        self._record_event(
            GenerationEvent(
                user_id=request.user_id,
                cache_key=request.key,
                outcome="error",
                miss_reason=reason,
                latency_ms=request.elapsed_ms(),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cache_read_error=request.cache_read_error,
                error=message,
            )
        )

    def _record_event(self, event: GenerationEvent) -> None:
        # Monitoring must never turn a served request into a failed one.
        try:
            with self.engine.begin() as connection:
                history.insert_event(connection, event)
        except DBAPIError as exc:
            log.warning("Could not record the generation event: %s", describe_db_error(exc))
