"""A generator change without a cold cache. Entries are tied to the generator identity that
made them, so a switch of model makes every valid entry a `generator_changed` miss. Before
switching, an operator can

- try the candidate model live on a sample of recently requested profiles (`trial`):
  nothing but the trial's own record is written;
- plan a pre-warm: the keys whose valid entries another identity made, and what
  regenerating them costs at the live and at the Batch API price;
- start it: one request per key, from the answers history recorded for it, submitted as
  OpenAI batches (half price, within 24 h), or run live at a bounded concurrency for
  servers without a Batch API;
- collect it (core/batch_collection.py, from cron, safe twice at once): each result is
  matched by its custom_id, validated against the contract and its profile, and the valid
  ones are staged for the candidate's identity (core/staged_programs.py), serving nothing
  until the app runs with the candidate.

Every program asked for is a `rollout_programs` row; each state change is a conditional
update of a pending row, so two collectors never count a result twice."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from time import perf_counter
from typing import Any, Literal

import openai
from sqlalchemy import Connection, Engine, String, and_, cast, func, insert, literal, or_, select, update

from core.db import connect_to_write
from core.fit import validate_program
from core.generators import OpenAIChatGenerator, ProgramGenerator, make_generator
from core.generators.base import NOT_BILLED, BilledTokens, Generation, GenerationError, billed_tokens
from core.models import ContractError, FieldError, parse_onboarding
from core.repair import generate_judged
from core.schema import (
    CACHE_KEY_PREFIX,
    ai_coach_cache,
    database_now,
    generation_events,
    generation_leases,
    rollout_batches,
    rollout_programs,
    rollouts,
    training_programs,
    utcnow,
)
from core.settings import MAX_TTL_HOURS, ModelPrice, PriceTier, Settings
from core.single_flight import LEASE_SECONDS, Lease

log = logging.getLogger(__name__)
RolloutKind = Literal["trial", "batch", "live"]
# voided: an invalidation covered it before it was used (core/staged_programs.py).
ProgramState = Literal["pending", "staged", "tried", "invalid", "failed", "voided"]
# OpenAI's limits on one batch input file.
BATCH_MAX_LINES = 50_000
BATCH_MAX_BYTES = 200 * 2**20
BATCH_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
DEFAULT_SAMPLE = 10
# Live calls at once, for a trial or a pre-warm without a Batch API.
LIVE_CONCURRENCY = 4
RECORDS_PER_TRANSACTION = 500
# A live run's lease, "rollout-run:<rollout id>", and what its requests are recorded with when
# it lapsed before they were (give_up_stale).
RUN_LEASE_PREFIX = "rollout-run:"
GIVEN_UP = (
    "given up: the run that asked for it stopped before recording it (its process was killed?); "
    "a call it had in flight may have been billed, unrecorded"
)

cache = ai_coach_cache.c
programs = training_programs.c
events = generation_events.c
runs = rollouts.c
jobs = rollout_batches.c
asked = rollout_programs.c
leases = generation_leases.c


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


def batch_client(settings: Settings) -> openai.OpenAI:
    """The client for the Files and Batches APIs, at OPENAI_BASE_URL like the generator's."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return openai.OpenAI(
        api_key=key,
        base_url=settings.openai_base_url,
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
    )


@dataclass(frozen=True)
class Target:
    """A key to generate for, with the answers history recorded for it, and the tokens its
    current entry's generation was billed (None: no entry, or not recorded)."""

    cache_key: str
    user_id: str
    answers: dict[str, Any]
    has_paid_access: bool
    made_by: str | None = None  # the current entry's generator identity
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


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
# A trial's profiles, each a live call while the operator waits.
MAX_SAMPLE = 100


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
    latest = _newest_answers(
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
            cache.prompt_tokens,
            cache.completion_tokens,
            cache.cached_tokens,
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
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cached_tokens=row.cached_tokens,
        )
        for row in connection.execute(query)
    )
    return _usable(found, selection.limit)


def _newest_answers(*where: Any) -> Any:
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


def _usable(found: Iterable[Target], limit: int | None) -> list[Target]:
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


def plan(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    selection: Selection | None = None,
) -> Plan:
    with engine.connect() as connection:
        found = targets(connection, generator.identity.version, selection)
    price = settings.price_of(generator.identity.model)
    recorded = [t for t in found if t.prompt_tokens is not None and t.completion_tokens is not None]

    def estimate(tier: PriceTier) -> float | None:
        if price is None or not recorded:
            return None
        known = sum(cost(price, t.prompt_tokens, t.completion_tokens, t.cached_tokens, tier) for t in recorded)
        return known / len(recorded) * len(found)

    return Plan(
        model=generator.identity.model,
        generator_version=generator.identity.version,
        targets=found,
        by_generator=dict(Counter(t.made_by or "none" for t in found)),
        live_cost=estimate("live"),
        batch_cost=estimate("batch"),
        with_recorded_tokens=len(recorded),
    )


def cost(price: ModelPrice, prompt: int | None, completion: int | None, cached: int | None, tier: PriceTier) -> float:
    return price.cost(prompt or 0, completion or 0, cached_tokens=cached or 0, tier=tier)


def _new_rollout(engine: Engine, kind: RolloutKind, generator: ProgramGenerator, requested: int, actor: str) -> int:
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


def _ask(
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


def custom_id(generator_version: str, key: str) -> str:
    """A batch line's id: the candidate's identity, then the key (which may hold anything)."""
    return f"{generator_version}|{key}"


def _lines(generator: OpenAIChatGenerator, found: Sequence[Target]) -> Iterator[tuple[Target, bytes]]:
    for t in found:
        body = generator.request(parse_onboarding(t.answers), t.has_paid_access)
        line = {
            "custom_id": custom_id(generator.identity.version, t.cache_key),
            "method": "POST",
            "url": BATCH_ENDPOINT,
            "body": body,
        }
        yield t, json.dumps(line, ensure_ascii=False).encode() + b"\n"


def batch_files(
    generator: OpenAIChatGenerator,
    found: Sequence[Target],
    *,
    max_lines: int = BATCH_MAX_LINES,
    max_bytes: int = BATCH_MAX_BYTES,
) -> Iterator[tuple[list[Target], bytes]]:
    """The requests as Batch API input files, each within OpenAI's limits."""
    chunk: list[Target] = []
    data: list[bytes] = []
    size = 0
    for target, line in _lines(generator, found):
        if chunk and (len(chunk) == max_lines or size + len(line) > max_bytes):
            yield chunk, b"".join(data)
            chunk, data, size = [], [], 0
        chunk.append(target)
        data.append(line)
        size += len(line)
    if chunk:
        yield chunk, b"".join(data)


@dataclass(frozen=True)
class Started:
    rollout_id: int | None  # None: nothing to pre-warm
    kind: RolloutKind
    requested: int
    batch_ids: tuple[str, ...] = ()
    error: str | None = None


def start(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    *,
    actor: str,
    selection: Selection | None = None,
    live: bool = False,
    client: openai.OpenAI | None = None,
) -> Started:
    """Pre-warm the keys `plan` names for the candidate: as batches, or live with `live`.
    One start per candidate at a time, across instances (a lease in the database): a second
    one fails at once rather than asking for the same programs twice."""
    lease = Lease.claim(engine, f"rollout:{generator.identity.version}", LEASE_SECONDS)
    if lease is None:
        raise RolloutFailed(f"a pre-warm for {generator.identity.model} is being started elsewhere; try again after it")
    with lease:
        return _start(engine, settings, generator, actor, selection, live, client)


def _start(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    actor: str,
    selection: Selection | None,
    live: bool,
    client: openai.OpenAI | None,
) -> Started:
    kind: RolloutKind = "live" if live else "batch"
    if not live and not isinstance(generator, OpenAIChatGenerator):
        raise RolloutRefused("live", "is the only way for a generator without a Batch API")
    found = plan(engine, settings, generator, selection).targets
    if not found:
        return Started(None, kind, 0)
    rollout_id = _new_rollout(engine, kind, generator, len(found), actor)
    version = generator.identity.version
    if live:
        _run_live(engine, settings, generator, rollout_id, found, stage=True)
        return Started(rollout_id, kind, len(found))
    assert isinstance(generator, OpenAIChatGenerator)  # refused above otherwise
    client = client or batch_client(settings)
    submitted: list[str] = []
    errors: list[str] = []
    for chunk, data in batch_files(generator, found):
        try:
            submitted.append(_submit(engine, client, generator, rollout_id, chunk, data))
        except openai.APIError as exc:
            error = f"the batch could not be submitted: {generator.describe(exc)}"
            errors.append(error)
            with connect_to_write(engine) as connection, connection.begin():
                _ask(connection, rollout_id, version, chunk, state="failed", error=error)
                connection.execute(update(rollouts).where(runs.id == rollout_id).values(error=error))
    return Started(rollout_id, kind, len(found), tuple(submitted), errors[0] if errors else None)


def _submit(
    engine: Engine,
    client: openai.OpenAI,
    generator: OpenAIChatGenerator,
    rollout_id: int,
    chunk: list[Target],
    data: bytes,
) -> str:
    """Upload one input file and create its batch, recorded with its requests; the batch's
    id. A file whose batch could not be created is deleted; a batch that could not be
    recorded is cancelled, so that nothing runs (and is billed) that no one will collect."""
    version = generator.identity.version
    file = client.files.create(file=(f"rollout-{rollout_id}.jsonl", data), purpose="batch")
    try:
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint=BATCH_ENDPOINT,
            completion_window="24h",
            metadata={"coach_cache_rollout": str(rollout_id), "generator_version": version},
        )
    except openai.APIError:
        _quietly(lambda: client.files.delete(file.id))
        raise
    try:
        with connect_to_write(engine) as connection, connection.begin():
            connection.execute(
                insert(rollout_batches).values(
                    batch_id=batch.id,
                    rollout_id=rollout_id,
                    input_file_id=file.id,
                    lines=len(chunk),
                    status=batch.status[:STATUS_MAX_CHARS],
                    submitted_at=utcnow(),
                )
            )
            _ask(connection, rollout_id, version, chunk, batch_id=batch.id)
    except BaseException:
        _quietly(lambda: client.batches.cancel(batch.id))
        raise
    return batch.id


def _quietly(undo: Callable[[], object]) -> None:
    """Undo what can be undone on the way out of a failure, which it must not hide."""
    try:
        undo()
    except openai.APIError:
        log.warning("Could not undo a rollout's submission", exc_info=True)


@dataclass(frozen=True)
class Judged:
    state: ProgramState
    tokens: BilledTokens = field(default_factory=lambda: BilledTokens(**NOT_BILLED))
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
    tokens = billed_tokens(generation)
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
        **judged.tokens,
    }
    done = connection.execute(update(rollout_programs).where(asked.id == row_id, asked.state == was).values(**values))
    return done.rowcount == 1


def bill_voided(connection: Connection, row_id: int, tokens: BilledTokens) -> bool:
    """The tokens of an answer whose request an invalidation voided while it was out: billed
    all the same. Only while none are recorded, so that two collectors record them once."""
    unbilled = (asked.prompt_tokens.is_(None), asked.completion_tokens.is_(None))
    statement = update(rollout_programs).where(asked.id == row_id, asked.state == "voided", *unbilled)
    return connection.execute(statement.values(**tokens)).rowcount == 1


def pending_programs(connection: Connection, condition: Any, *, limit: int | None = None) -> list[Any]:
    query = select(asked.id, asked.cache_key, asked.onboarding_responses, asked.has_paid_access, asked.state).where(
        condition, asked.state == "pending"
    )
    return list(connection.execute(query.order_by(asked.id).limit(limit)))


def give_up_stale(engine: Engine) -> dict[int, int]:
    """Record as failed, saying so, the requests of live runs (trials, live pre-warms) whose
    run stopped without recording them: its lease lapsed, so nothing will. How many, by
    rollout. Their keys can be planned again."""
    dialect = engine.dialect.name
    running = select(leases.cache_key).where(leases.expires_at > database_now(dialect))
    run_key = literal(RUN_LEASE_PREFIX) + cast(asked.rollout_id, String)
    stale = (asked.state == "pending", asked.batch_id.is_(None), run_key.not_in(running))
    with connect_to_write(engine) as connection, connection.begin():
        given_up = connection.execute(
            update(rollout_programs).where(*stale).values(state="failed", error=GIVEN_UP).returning(asked.rollout_id)
        )
        return dict(Counter(given_up.scalars()))


def _run_live(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    rollout_id: int,
    found: Sequence[Target],
    *,
    stage: bool,
) -> None:
    """Ask for `found` and generate each through the chat endpoint, a few at once, recording
    each as it comes back; under a lease on the run, renewed while it runs, so that what a
    killed run left pending is given up once it lapses (give_up_stale)."""
    lease = Lease.claim(engine, f"{RUN_LEASE_PREFIX}{rollout_id}", settings.generation_lease_seconds)
    assert lease is not None  # a new rollout's: nobody else has asked for it
    with lease:
        with connect_to_write(engine) as connection, connection.begin():
            _ask(connection, rollout_id, generator.identity.version, found)
        _generate_pending(engine, settings, generator, rollout_id, stage=stage)


def _generate_pending(
    engine: Engine, settings: Settings, generator: ProgramGenerator, rollout_id: int, *, stage: bool
) -> None:
    with engine.connect() as connection:
        pending = pending_programs(connection, asked.rollout_id == rollout_id)
    ttl = timedelta(hours=settings.cache_ttl_hours)
    valid: ProgramState = "staged" if stage else "tried"

    def one(row: Any) -> None:
        started, generated_at = perf_counter(), utcnow()
        try:
            # Repaired as a live miss is, so that a trial says what serving would do.
            profile, repairs = parse_onboarding(row.onboarding_responses), settings.llm_repair_attempts
            outcome = generate_judged(generator, profile, row.has_paid_access, repairs=repairs)
        except GenerationError as exc:
            judged = Judged("failed", billed_tokens(exc), error=str(exc))
        else:
            generation = outcome.generation
            judged = judge_generation(generation, row.onboarding_responses, row.has_paid_access, valid, generated_at)
            judged = replace(judged, **outcome.recorded())
        with connect_to_write(engine) as connection, connection.begin():
            if not record_result(
                connection, row.id, replace(judged, latency_ms=(perf_counter() - started) * 1000), ttl
            ):
                bill_voided(connection, row.id, judged.tokens)

    pool = ThreadPoolExecutor(max_workers=LIVE_CONCURRENCY, thread_name_prefix="rollout")
    try:
        list(pool.map(one, pending))
    finally:
        # Interrupted (Ctrl-C, a failed database): what has not started does not start, and
        # is recorded as not run rather than left pending.
        pool.shutdown(wait=True, cancel_futures=True)
        with connect_to_write(engine) as connection, connection.begin():
            connection.execute(
                update(rollout_programs)
                .where(asked.rollout_id == rollout_id, asked.state == "pending")
                .values(state="failed", error="not run: the rollout was interrupted")
            )


def trial(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    *,
    actor: str,
    sample: int = DEFAULT_SAMPLE,
) -> int:
    """Generate live with the candidate for the `sample` most recently requested profiles,
    without touching the cache or history; the trial's rollout id, to compare it with the
    current generator on the same profiles (core/rollout_reports.py)."""
    if not 1 <= sample <= MAX_SAMPLE:
        raise RolloutRefused("sample", f"must be a number from 1 to {MAX_SAMPLE}")
    with engine.connect() as connection:
        found = _recent_profiles(connection, sample)
    if not found:
        raise RolloutRefused("sample", "there are no requested profiles to try yet: generate a program first")
    rollout_id = _new_rollout(engine, "trial", generator, len(found), actor)
    _run_live(engine, settings, generator, rollout_id, found, stage=False)
    return rollout_id


def _recent_profiles(connection: Connection, sample: int) -> list[Target]:
    latest = _newest_answers(programs.cache_key.is_not(None))
    shown = (latest.c.cache_key, latest.c.user_id, latest.c.onboarding_responses, latest.c.has_paid_access)
    query = select(*shown).where(latest.c.n == 1).order_by(latest.c.created_at.desc())
    # Streamed, so that taking the newest few reads no more of a long history than it needs.
    rows = connection.execution_options(yield_per=100).execute(query)
    return _usable((Target(row[0], str(row[1]), row[2], row[3]) for row in rows), sample)
