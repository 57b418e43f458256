"""The generation service: ADR-049 steps 1-4 in one flow.

key -> lookup -> hit: save history | miss: single-flight -> generate -> validate -> upsert
-> save history; every request leaves one event. Cache errors never fail a request."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from time import perf_counter
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from core.contract.cache_key import cache_key, check_user_id, onboarding_hash
from core.contract.fit import validate_program_json
from core.contract.generation import GenerationError, Rejected
from core.contract.models import ContractError, parse_onboarding
from core.generators import OnProgress, ProgramGenerator
from core.logs import FIELDS
from core.prices import NOT_BILLED, Billed
from core.serving import budget, repair, single_flight
from core.serving.miss_reasons import Lookup, MissReason, miss_reason
from core.serving.request import Generated, Miss, Request, hand_out, hit_on
from core.serving.results import GenerationFailed, GenerationResult, SincePrevious, compare
from core.serving.single_flight import SingleFlightTimeout
from core.serving.validated import ValidatedPrograms
from core.settings import DEFAULTS, Settings
from core.store import entries, fates, history, rejections, staged_programs, waits
from core.store.db import Database, connect_to_write, describe_db_error
from core.store.history import GenerationEvent, HistoryRecord, Source

log = logging.getLogger(__name__)


def _digest_prefix(key: str) -> str:
    """Enough of the key's digest to tell requests apart in logs."""
    return key.rsplit(":d", 1)[1][:8]


@dataclass(frozen=True)
class _Told:
    """Whom a request tells what it is doing (ProgramService.generate)."""

    on_generating: Callable[[MissReason], None] | None
    on_waiting: Callable[[MissReason], None] | None
    on_progress: OnProgress | None


@dataclass
class ProgramService:
    engine: Engine
    generator: ProgramGenerator
    # Unset, as the app has them with no setting set (core.settings.DEFAULTS).
    ttl: timedelta = timedelta(hours=DEFAULTS.cache_ttl_hours)
    lock_wait_seconds: float = DEFAULTS.lock_wait_seconds
    lease_seconds: float = DEFAULTS.generation_lease_seconds
    database_wait_seconds: float = DEFAULTS.database_wait_seconds  # all one request may wait on the database
    # The user id as the database stores it, or ContractError (Database.check_user_id: a
    # table with uuid user ids accepts only UUIDs).
    user_id_check: Callable[[Any], str] = check_user_id
    key_secret: bytes | None = None  # CACHE_KEY_SECRET: HMAC the key's digest
    # CACHE_ON_GENERATOR_CHANGE=serve: entries of another generator identity are still hits.
    serve_other_generators: bool = DEFAULTS.cache_on_generator_change == "serve"
    # LLM_REPAIR_ATTEMPTS: how many times a program that does not pass is sent back (core.repair).
    repair_attempts: int = DEFAULTS.llm_repair_attempts
    spend_guard: budget.Guard | None = None  # LLM_DAILY_BUDGET_USD, LLM_MONTHLY_BUDGET_USD, BUDGET_EXCEEDED
    validated: ValidatedPrograms = field(default_factory=ValidatedPrograms, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, database: Database, generator: ProgramGenerator) -> ProgramService:
        return cls(
            engine=database.engine,
            generator=generator,
            ttl=timedelta(hours=settings.cache_ttl_hours),
            lock_wait_seconds=settings.lock_wait_seconds,
            lease_seconds=settings.generation_lease_seconds,
            database_wait_seconds=settings.database_wait_seconds,
            user_id_check=database.check_user_id,
            key_secret=settings.key_secret,
            serve_other_generators=settings.cache_on_generator_change == "serve",
            repair_attempts=settings.llm_repair_attempts,
            spend_guard=budget.Guard(settings),
        )

    def generate(
        self,
        *,
        user_id: str,
        onboarding_responses: Any,
        has_paid_access: bool,
        force_refresh: bool = False,
        on_generating: Callable[[MissReason], None] | None = None,
        on_waiting: Callable[[MissReason], None] | None = None,
        on_progress: OnProgress | None = None,
    ) -> GenerationResult:
        """Raises ContractError for invalid input (nothing written), GenerationFailed or
        SingleFlightTimeout when no program could be had (nothing cached or saved).
        So that a caller can say what is happening while it works: `on_generating(reason)`
        is called when the LLM is about to be asked, `on_waiting(reason)` when an identical
        request is generating and this one waits for its entry, and `on_progress` with what
        of the program is complete while the LLM writes it (only ever the whole, validated
        program is cached and saved). All its statements together wait
        `database_wait_seconds` at most (core.waits): a stalled database costs that much."""
        told = _Told(on_generating, on_waiting, on_progress)
        with waits.request_budget(self.database_wait_seconds):
            return self._generate(user_id, onboarding_responses, has_paid_access, force_refresh, told)

    def _generate(
        self,
        user_id: str,
        onboarding_responses: Any,
        has_paid_access: bool,
        force_refresh: bool,
        told: _Told,
    ) -> GenerationResult:
        user_id = self.user_id_check(user_id)
        profile = parse_onboarding(onboarding_responses)
        key = cache_key(user_id, profile, has_paid_access, self.key_secret)
        entry_hash = onboarding_hash(profile, self.key_secret)
        request = Request(user_id, profile, has_paid_access, key, entry_hash, force_refresh)
        lookup = Lookup() if force_refresh else self._try_cache(request)
        if isinstance(lookup, GenerationResult):
            return self._logged(request, lookup)
        miss = self._miss(request, lookup)
        # A forced refresh accepts only an entry written after it was asked for.
        written_since = self._database_time(request) if force_refresh else None
        try:
            result = single_flight.once(
                self.engine,
                key,
                wait_seconds=self.lock_wait_seconds,
                lease_seconds=self.lease_seconds,
                from_cache=lambda: self._hit_or_none(request, written_since),
                produce=lambda: self._prewarmed(request) or self._generate_and_store(request, miss, told),
                on_waiting=partial(told.on_waiting, miss.reason) if told.on_waiting else None,
            )
        except SingleFlightTimeout as exc:
            self._record_failure(request, miss.reason, str(exc))
            raise
        # However it was had at last, the comparison the miss made is the page's too.
        return self._logged(request, replace(result, since_previous=miss.since_previous))

    def _logged(self, request: Request, result: GenerationResult) -> GenerationResult:
        """The request's one log line (hit or miss, why, how long; never the answers)."""
        outcome = "hit" if result.cache_hit else "bypass" if request.force_refresh else "miss"
        fields = {
            "outcome": outcome,
            "miss_reason": result.miss_reason,
            "changed": ",".join(result.changed_fields),
            "latency_ms": round(result.latency_ms, 2),
            "user_id": request.user_id,
            "key_digest": _digest_prefix(request.key),
            "model": result.model,
            "prewarmed_by": result.prewarmed_by,
            "saved": result.history_error is None,
        }
        log.info("Cache %s", outcome, extra={FIELDS: fields})
        return result

    def save_again(self, result: GenerationResult) -> GenerationResult:
        """Save a program whose history save failed, with its event if that is still to be
        recorded, in one transaction; the result says whether it worked."""
        if result.unsaved is None:
            return result
        try:
            with waits.request_budget(self.database_wait_seconds), self.engine.begin() as connection:
                program_id = history.insert_program(connection, result.unsaved)
                if result.unsaved_event is not None:
                    history.insert_event(connection, result.unsaved_event)
        except DBAPIError as exc:
            message = f"The program could not be saved to history ({describe_db_error(exc)})."
            return replace(result, history_error=message)
        return replace(result, training_program_id=program_id, history_error=None, unsaved=None, unsaved_event=None)

    def since_previous(self, result: GenerationResult, *, user_id: str, has_paid_access: bool) -> SincePrevious | None:
        """What changed since the user's previous program, as the miss reason compared it;
        read now for a result that was not compared (a hit, a forced refresh): the newest
        program other than its own. None when the database cannot tell."""
        if result.since_previous is not None:
            return result.since_previous
        try:
            with waits.request_budget(self.database_wait_seconds), self.engine.connect() as connection:
                return compare(
                    connection,
                    self.user_id_check(user_id),
                    result.onboarding_responses,
                    has_paid_access,
                    except_program=result.training_program_id,
                )
        except DBAPIError as exc:
            log.warning("Could not read the previous program: %s", describe_db_error(exc))
            return None

    def _database_time(self, request: Request) -> datetime:
        """Now by the database's clock, by which entries' times are written; this host's when
        the database does not answer (then no entry can be read either)."""
        try:
            return entries.database_time(self.engine)
        except DBAPIError:
            return request.requested_at

    def _hit_or_none(self, request: Request, written_since: datetime | None) -> GenerationResult | None:
        served = self._try_cache(request, written_since)
        return served if isinstance(served, GenerationResult) else None

    def _try_cache(self, request: Request, written_since: datetime | None = None) -> GenerationResult | Lookup:
        """Serve a hit, or say why not: read the entry (without its program when this process
        has validated that very row version), validate a new version, then save the history
        row and the event together. `written_since`: only an entry written since then serves."""
        known = self.validated.known(request.key)
        try:
            entry = entries.read_entry(self.engine, request.key, known[0] if known else None)
        except DBAPIError as exc:
            return self._read_failed(request, exc)
        if entry is None or not entry.valid or (written_since and entry.created_at < written_since):
            return Lookup(entry)
        if not self.serve_other_generators and entry.generator_version != self.generator.identity.version:
            return Lookup(entry, generator_changed=True)
        program_json = self._validated_program(request, entry, known)
        if program_json is None:
            return Lookup(entry, invalid=True)
        return self._serve(request, entry, program_json)

    def _serve(
        self, request: Request, entry: entries.CacheEntry, program_json: str, prewarmed_by: int | None = None
    ) -> GenerationResult:
        """A hit on `entry`, whose program is `program_json`, validated: saved to history."""
        result, record, event = hit_on(request, entry, program_json, prewarmed_by)
        return self._save(request, result, record, event, entry_written_at=entry.updated_at)

    def _prewarmed(self, request: Request) -> GenerationResult | None:
        """A program a rollout generated ahead for this generator identity (core/operations/rollout/),
        taken once as the key's entry and served as a hit, with no LLM call; None when
        there is none, or it does not pass validation for this profile any more."""
        if request.force_refresh:
            return None
        version = self.generator.identity.version
        try:
            if not staged_programs.has_staged(self.engine, request.key, version):
                return None
            with connect_to_write(self.engine) as connection, connection.begin():
                staged = staged_programs.claim(connection, request.key, version)
                if staged is None:
                    return None
                try:
                    validate_program_json(staged.program_json, request.profile, request.has_paid_access)
                except ContractError as exc:
                    log.warning("Staged program for %s no longer validates, generating: %s", request.key, exc)
                    staged_programs.mark_invalid(connection, staged.id, str(exc))
                    return None
                entry = entries.CacheEntry(
                    data_json=staged.program_json,
                    row_version=None,
                    expires_at=staged.expires_at,
                    created_at=staged.generated_at,
                    updated_at=staged.generated_at,
                    generator_version=version,
                    model=staged.model,
                    billed=staged.billed,
                    valid=True,
                )
                # The hand-out (history row and event) commits with the claim: a process
                # killed in between leaves the program staged, not used by no one.
                handed = Generated(*hit_on(request, entry, staged.program_json, staged.rollout_id))
                new = request.new_entry(staged.program_json, staged.model, version, staged.billed, staged.generated_at)
                cached, program_id = hand_out(connection, new, self.ttl, handed)
        except DBAPIError as exc:
            log.warning("Could not take the staged program for %s: %s", request.key, describe_db_error(exc))
            return None
        return replace(cached.result, warnings=tuple(request.warnings), training_program_id=program_id)

    def _validated_program(
        self, request: Request, entry: entries.CacheEntry, known: tuple[str | None, str] | None
    ) -> str | None:
        """The entry's program, validated against the contract and the profile; None if it
        no longer passes. A version validated here before is not validated again: this very
        row version (PostgreSQL sent no program), or this very text (SQLite has no row
        versions; comparing 36 KB costs microseconds, validating it again milliseconds)."""
        if known is not None and entry.data_json in (None, known[1]):
            return known[1]
        program_json = entry.data_json or ""
        try:
            validate_program_json(program_json, request.profile, request.has_paid_access)
        except ContractError as exc:
            log.warning("Cached entry %s no longer validates, regenerating: %s", request.key, exc)
            return None
        self.validated.remember(request.key, entry.row_version, program_json)
        return program_json

    def _read_failed(self, request: Request, exc: DBAPIError) -> Lookup:
        log.warning("Cache read failed for %s, generating instead: %s", request.key, describe_db_error(exc))
        request.cache_read_error = True
        warning = "The cache could not be read; the program was generated instead."
        if warning not in request.warnings:  # a waiter may fail to read more than once
            request.warnings.append(warning)
        return Lookup(failed=True)

    def _miss(self, request: Request, lookup: Lookup) -> Miss:
        """Why the cache did not serve, from what the database recorded about this key (and,
        for a key that never had an entry, the user's previous program): miss_reason decides."""
        record, since, now = None, None, request.requested_at
        if not (request.force_refresh or lookup.failed):
            try:
                with self.engine.connect() as connection:
                    record, now = fates.read_record(connection, request.key)
                    since = compare(connection, request.user_id, request.answers, request.has_paid_access)
            except DBAPIError as exc:
                log.warning("Could not read why there was no entry: %s", describe_db_error(exc))
                return Miss("cache_unavailable")
        changed = None if since is None or since.previous is None else tuple(c.field for c in since.changes)
        reason, changed = miss_reason(
            forced=request.force_refresh, lookup=lookup, record=record, changed_since_previous=changed, now=now
        )
        return Miss(reason, changed, since)

    def _generate_and_store(self, request: Request, miss: Miss, told: _Told) -> GenerationResult:
        try:
            chosen = budget.generator_within_budget(self.spend_guard, self.engine, self.generator)
        except budget.BudgetRefused as exc:
            self._record_failure(request, miss.reason, str(exc))
            raise GenerationFailed(str(exc)) from None
        generator = chosen.generator
        if told.on_generating is not None:
            told.on_generating(miss.reason)
        rejected = self._rejected(request.key, miss.reason) if miss.reason in ("rejected", "recalled") else None
        llm_started = perf_counter()
        try:
            judged = repair.generate_judged(
                generator,
                request.profile,
                request.has_paid_access,
                repairs=self.repair_attempts,
                on_progress=told.on_progress,
                rejected=rejected,
            )
        except GenerationError as exc:
            # A refused, truncated or malformed answer was still billed: count its tokens.
            message = f"generation failed: {exc}. Nothing was cached or saved."
            self._record_failure(request, miss.reason, message, exc.billed)
            raise GenerationFailed(message) from None
        generation, program = judged.generation, judged.program
        outcome = judged.recorded()
        if program is None:
            tried = f" ({judged.attempts} attempts)" if judged.attempts > 1 else ""
            message = f"the generated program is invalid{tried}: {judged.refused}. Nothing was cached or saved."
            self._record_failure(request, miss.reason, message, generation.billed, **outcome)
            raise GenerationFailed(message) from None
        program_json = json.dumps(program, ensure_ascii=False, separators=(",", ":"))
        llm_latency_ms = (perf_counter() - llm_started) * 1000

        identity = generator.identity
        source: Source = "budget" if chosen.budget_reached else identity.source
        record = request.record(program_json, source, generation, generator_version=identity.version)
        result = GenerationResult(
            program_json=program_json,
            cache_hit=False,
            cache_key=request.key,
            latency_ms=record.latency_ms,
            requested_at=request.requested_at,
            onboarding_responses=request.answers,
            miss_reason=miss.reason,
            changed_fields=miss.changed,
            model=generation.model,
            generator_version=identity.version,
            budget_reached=chosen.budget_reached,
        )
        event = request.event(
            "bypass" if request.force_refresh else "miss",
            latency_ms=record.latency_ms,
            miss_reason=miss.reason,
            llm_latency_ms=llm_latency_ms,
            generator_version=identity.version,
            model=generation.model,
            billed=generation.billed,
            **outcome,
        )
        new = request.new_entry(program_json, generation.model, identity.version, generation.billed)
        return self._store(request, Generated(result, record, event), new)

    def _rejected(self, key: str, reason: MissReason) -> Rejected | None:
        """The program a coach rejected, or a recall recalled, for this key, for the generation
        after it; None when it cannot be read (the generation goes on, as after any miss)."""
        latest_for_key = history.latest_recalled if reason == "recalled" else rejections.latest_for_key
        try:
            with self.engine.connect() as connection:
                return latest_for_key(connection, key)
        except DBAPIError as exc:
            log.warning("Could not read the rejection of %s: %s", key, describe_db_error(exc))
            return None

    def _store(self, request: Request, generated: Generated, new: entries.NewEntry) -> GenerationResult:
        """The entry, the history row and the event (with the tokens the generation was billed)
        in one transaction: an instance killed between them leaves none of them, never an entry
        served as a saving whose generation was not counted as spent. When that transaction
        fails, as much as the database takes (`_store_in_part`)."""
        try:
            with connect_to_write(self.engine) as connection, connection.begin():
                cached, program_id = hand_out(connection, new, self.ttl, generated)
        except DBAPIError as exc:
            return self._store_in_part(request, generated, new, exc)
        return replace(cached.result, training_program_id=program_id, warnings=tuple(request.warnings))

    def _store_in_part(
        self,
        request: Request,
        generated: Generated,
        new: entries.NewEntry,
        failure: DBAPIError,
    ) -> GenerationResult:
        """The entry with its event, the history row kept to save again (`save_again`); or,
        when the entry cannot be written either, the history row with its event and no entry."""
        message = f"The program could not be saved to history ({describe_db_error(failure)})."
        unsaved = replace(generated, event=replace(generated.event, history_error=True, error=message))
        try:
            with connect_to_write(self.engine) as connection, connection.begin():
                cached, _ = hand_out(connection, new, self.ttl, unsaved, save=False)
        except DBAPIError as exc:
            log.warning("Cache write failed for %s: %s", request.key, describe_db_error(exc))
            request.warnings.append("The program could not be cached; the next request will generate again.")
            self._record_not_cached(request.key)
            event = replace(generated.event, cache_write_error=True)
            return self._save(request, generated.result, generated.record, event, entry_written_at=None)
        log.error("History save failed for %s: %s", request.key, message)
        return replace(cached.result, warnings=tuple(request.warnings), history_error=message, unsaved=generated.record)

    def _save(
        self,
        request: Request,
        result: GenerationResult,
        record: HistoryRecord,
        event: GenerationEvent,
        *,
        entry_written_at: datetime | None,
    ) -> GenerationResult:
        """The history row and the request's event, both or neither (history.save_program_and_event).
        `entry_written_at` is the cache entry's `updated_at` when the program can be copied
        from that very write of the entry."""
        result = replace(result, warnings=tuple(request.warnings))
        try:
            program_id = history.save_program_and_event(self.engine, record, event, entry_written_at=entry_written_at)
        except DBAPIError as exc:
            message = f"The program could not be saved to history ({describe_db_error(exc)})."
            log.error("History save failed for %s: %s", request.key, message)
            failed = replace(event, history_error=True, error=message)
            pending = None if self._record_event(failed) else failed
            return replace(result, history_error=message, unsaved=record, unsaved_event=pending)
        return replace(result, training_program_id=program_id)

    def _record_failure(
        self,
        request: Request,
        reason: MissReason,
        message: str,
        billed: Billed = NOT_BILLED,
        *,
        attempts: int | None = None,
        rules_broken: str | None = None,
    ) -> None:
        fields = {
            "outcome": "error",
            "miss_reason": reason,
            "latency_ms": round(request.elapsed_ms(), 2),
            "user_id": request.user_id,
            "key_digest": _digest_prefix(request.key),
        }
        log.warning("Cache miss failed: %s", message, extra={FIELDS: fields})
        self._record_event(
            request.event(
                "error",
                latency_ms=request.elapsed_ms(),
                miss_reason=reason,
                error=message,
                # Whose tokens these are: a failed generation is billed too.
                generator_version=self.generator.identity.version,
                model=self.generator.identity.model,
                billed=billed,
                attempts=attempts,
                rules_broken=rules_broken,
            )
        )

    def _record_not_cached(self, key: str) -> None:
        """The key's next miss says so; the same fault may well stop this record too."""
        try:
            with self.engine.begin() as connection:
                fates.record(connection, key=key, fate="not_cached")
        except DBAPIError as exc:
            log.warning("Could not record that %s was not cached: %s", key, describe_db_error(exc))

    def _record_event(self, event: GenerationEvent) -> bool:
        """Whether it was recorded: monitoring must never turn a served request into a failed one."""
        try:
            with self.engine.begin() as connection:
                history.insert_event(connection, event)
        except DBAPIError as exc:
            log.warning("Could not record the generation event: %s", describe_db_error(exc))
            return False
        return True
