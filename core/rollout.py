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
- collect it (`check_batches`, from cron, safe twice at once): each result is matched by
  its custom_id, validated against the contract and its profile, and the valid ones are
  staged for the candidate's identity (core/staged_programs.py), serving nothing until
  the app runs with the candidate.

Every program asked for is a `rollout_programs` row; each state change is a conditional
update of a pending row, so two collectors never count a result twice."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from core.db import connect_to_write
from core.fit import validate_program
from core.generators import OpenAIChatGenerator, ProgramGenerator, make_generator
from core.generators.base import NOT_BILLED, BilledTokens, Generation, GenerationError, billed_tokens
from core.generators.openai_chat import one_line
from core.models import ContractError, FieldError, parse_onboarding
from core.schema import (
    CACHE_KEY_PREFIX,
    ai_coach_cache,
    database_now,
    generation_events,
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
ProgramState = Literal["pending", "staged", "tried", "invalid", "failed"]
# OpenAI's limits on one batch input file.
BATCH_MAX_LINES = 50_000
BATCH_MAX_BYTES = 200 * 2**20
BATCH_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
# A batch in one of these states runs no more lines: what it has is collected.
FINISHED = ("completed", "expired", "cancelled", "failed")
DEFAULT_SAMPLE = 10
# Live calls at once, for a trial or a pre-warm without a Batch API.
LIVE_CONCURRENCY = 4
RECORDS_PER_TRANSACTION = 500

cache = ai_coach_cache.c
programs = training_programs.c
events = generation_events.c
runs = rollouts.c
jobs = rollout_batches.c
asked = rollout_programs.c


class RolloutRefused(ContractError):
    """A rollout that cannot be run as asked; names the setting or option to change."""

    def __init__(self, name: str, rule: str) -> None:
        super().__init__("rollout", [FieldError(name, rule)])


class RolloutFailed(RuntimeError):
    """A rollout could not run: nothing of it was submitted, or another start holds it."""


def _require_key(settings: Settings) -> None:
    if not settings.uses_openai:
        raise RolloutRefused("OPENAI_API_KEY", "must be set: a rollout tries or pre-warms an OpenAI-compatible model")


def candidate(settings: Settings, model: str) -> OpenAIChatGenerator:
    """The generator the app would run with OPENAI_MODEL=`model`, all else as configured."""
    _require_key(settings)
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
    waiting, or a request in a batch still out. A request a live run left pending (it was
    killed) blocks nothing."""
    now = database_now(dialect)
    out = select(jobs.batch_id).where(jobs.collected_at.is_(None))
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
        with connect_to_write(engine) as connection, connection.begin():
            _ask(connection, rollout_id, version, found)
        _run_live(engine, settings, generator, rollout_id, stage=True)
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
                    status=batch.status,
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


def _judged(
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


@dataclass(frozen=True)
class Finished:
    """A batch that runs no more lines, as a check saw it: what its lines say, by custom_id,
    when it was submitted and checked (a line ran in between), and why a line without a
    result did not run."""

    results: dict[str, Any]
    submitted_at: datetime
    checked_at: datetime
    not_run: str
    status: str


def judge_line(
    line: Any, answers: dict[str, Any], has_paid_access: bool, generator: OpenAIChatGenerator, batch: Finished
) -> Judged:
    """What one batch result line (None: the batch ended before it ran) gives. A line is
    the server's word: anything it holds that is not what OpenAI documents fails that line,
    not the collection."""
    if line is None:
        return Judged("failed", error=f"not run: {batch.not_run}")
    error = line.get("error") if isinstance(line, dict) else "the result line is not a JSON object"
    if error:
        said = f"{error.get('code') or 'error'}: {error.get('message') or ''}" if isinstance(error, dict) else error
        return Judged("failed", error=one_line(str(said)))
    response = line.get("response")
    body = response.get("body") if isinstance(response, dict) else None
    if not isinstance(response, dict) or response.get("status_code") != 200:
        status = response.get("status_code") if isinstance(response, dict) else None
        inner = body.get("error") if isinstance(body, dict) else None
        said = inner.get("message") if isinstance(inner, dict) else None
        return Judged("failed", error=one_line(f"HTTP {status}: {said or 'no message'}"))
    try:
        completion = ChatCompletion.model_validate(body)
    except ValidationError:
        return Judged("invalid", error="the result is not a chat completion")
    # When the line ran, by its own word, within when the batch was submitted and checked:
    # a program's TTL runs from then, and a server's clock (or its unit) is not trusted further.
    ran = datetime.fromtimestamp(min(max(completion.created, 0), 2**32), UTC)
    generated_at = min(max(ran, batch.submitted_at), batch.checked_at)
    try:
        generation = generator.from_completion(completion)
    except GenerationError as exc:
        return Judged("invalid", billed_tokens(exc), error=str(exc))
    return _judged(generation, answers, has_paid_access, "staged", generated_at)


def _record(connection: Connection, row_id: int, judged: Judged, ttl: timedelta) -> bool:
    """Record a pending program's result; whether this call did (another may have first)."""
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
        **judged.tokens,
    }
    done = connection.execute(
        update(rollout_programs).where(asked.id == row_id, asked.state == "pending").values(**values)
    )
    return done.rowcount == 1


def _pending(connection: Connection, condition: Any) -> list[Any]:
    query = select(asked.id, asked.cache_key, asked.onboarding_responses, asked.has_paid_access).where(
        condition, asked.state == "pending"
    )
    return list(connection.execute(query))


def _run_live(engine: Engine, settings: Settings, generator: ProgramGenerator, rollout_id: int, *, stage: bool) -> None:
    """Generate every pending program of the rollout through the chat endpoint, a few at
    once, recording each as it comes back."""
    with engine.connect() as connection:
        pending = _pending(connection, asked.rollout_id == rollout_id)
    ttl = timedelta(hours=settings.cache_ttl_hours)
    valid: ProgramState = "staged" if stage else "tried"

    def one(row: Any) -> None:
        started, generated_at = perf_counter(), utcnow()
        try:
            generation = generator.generate(parse_onboarding(row.onboarding_responses), row.has_paid_access)
        except GenerationError as exc:
            judged = Judged("failed", billed_tokens(exc), error=str(exc))
        else:
            judged = _judged(generation, row.onboarding_responses, row.has_paid_access, valid, generated_at)
        with connect_to_write(engine) as connection, connection.begin():
            _record(connection, row.id, replace(judged, latency_ms=(perf_counter() - started) * 1000), ttl)

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


@dataclass(frozen=True)
class BatchCheck:
    batch_id: str
    rollout_id: int
    status: str  # as OpenAI said it; "unknown" when it could not be asked
    collected: bool  # whether this check collected it (a batch is collected once)
    recorded: dict[str, int] = field(default_factory=dict)  # states this check recorded
    problem: str | None = None  # why it could not be checked (it is checked again next time)


def check_batches(
    engine: Engine,
    settings: Settings,
    *,
    client: openai.OpenAI | None = None,
    generator_for: Callable[[str], OpenAIChatGenerator] | None = None,
) -> list[BatchCheck]:
    """Poll every batch not collected yet and collect those that finished: results are
    matched by custom_id (OpenAI keeps no order), judged, and recorded; lines a batch that
    expired or was cancelled never ran are recorded as failed. Safe to run twice at once:
    each pending program is recorded by one call only."""
    generator_for = generator_for or (lambda model: candidate(settings, model))
    _require_key(settings)
    client = client or batch_client(settings)
    with engine.connect() as connection:
        open_jobs = list(
            connection.execute(
                select(jobs.batch_id, jobs.rollout_id, jobs.submitted_at, runs.model, runs.generator_version)
                .join(rollouts, runs.id == jobs.rollout_id)
                .where(jobs.collected_at.is_(None))
                .order_by(jobs.submitted_at)
            )
        )
    checks = []
    for job in open_jobs:
        generator = generator_for(job.model)
        try:
            finished = _poll(engine, client, job.batch_id, job.submitted_at)
        except (openai.APIError, ValueError) as exc:
            # Left for the next check: nothing of this batch was recorded as collected.
            said = generator.describe(exc) if isinstance(exc, openai.APIError) else one_line(str(exc))
            checks.append(BatchCheck(job.batch_id, job.rollout_id, "unknown", False, problem=said))
            continue
        if isinstance(finished, str):
            checks.append(BatchCheck(job.batch_id, job.rollout_id, finished, False))
            continue
        recorded = _collect(engine, settings, generator, job, finished)
        with connect_to_write(engine) as connection, connection.begin():
            first = connection.execute(
                update(rollout_batches)
                .where(jobs.batch_id == job.batch_id, jobs.collected_at.is_(None))
                .values(collected_at=utcnow())
            ).rowcount
        checks.append(BatchCheck(job.batch_id, job.rollout_id, finished.status, first == 1, recorded))
    return checks


def _poll(engine: Engine, client: openai.OpenAI, batch_id: str, submitted_at: datetime) -> Finished | str:
    """The batch's status, recorded; when it runs no more lines, what they gave."""
    batch = client.batches.retrieve(batch_id)
    checked_at = utcnow()
    with connect_to_write(engine) as connection, connection.begin():
        connection.execute(
            update(rollout_batches).where(jobs.batch_id == batch_id).values(status=batch.status, checked_at=checked_at)
        )
    if batch.status not in FINISHED:
        return batch.status
    why = {"expired": "the batch expired first", "cancelled": "the batch was cancelled first"}
    not_run = why.get(batch.status, "the batch ended before this request")
    if batch.status == "failed":
        said = "; ".join(e.message or e.code or "" for e in (batch.errors.data or [])) if batch.errors else ""
        not_run = f"the batch failed: {one_line(said or 'no reason given')}"
    results = _results(client, batch.output_file_id, batch.error_file_id)
    return Finished(results, submitted_at, checked_at, not_run, batch.status)


def _collect(
    engine: Engine, settings: Settings, generator: OpenAIChatGenerator, job: Any, finished: Finished
) -> dict[str, int]:
    """Record each pending request of a finished batch from its line; the states this call
    recorded. A few hundred a transaction: a long write would hold up requests' writes."""
    ttl = timedelta(hours=settings.cache_ttl_hours)
    recorded: Counter[str] = Counter()
    with engine.connect() as connection:
        pending = _pending(connection, asked.batch_id == job.batch_id)
    for start in range(0, len(pending), RECORDS_PER_TRANSACTION):
        with connect_to_write(engine) as connection, connection.begin():
            for row in pending[start : start + RECORDS_PER_TRANSACTION]:
                line = finished.results.get(custom_id(job.generator_version, row.cache_key))
                judged = judge_line(line, row.onboarding_responses, row.has_paid_access, generator, finished)
                if _record(connection, row.id, judged, ttl):
                    recorded[judged.state] += 1
    return dict(recorded)


def _results(client: openai.OpenAI, *file_ids: str | None) -> dict[str, Any]:
    """A finished batch's result lines, output and errors, by custom_id; a line that is no
    JSON object with a custom_id matches no request, which is then recorded as not run."""
    results: dict[str, Any] = {}
    for file_id in file_ids:
        if file_id:
            for text in client.files.content(file_id).text.splitlines():
                try:
                    line = json.loads(text)
                except ValueError:
                    continue
                if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                    results[line["custom_id"]] = line
    return results


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
    with connect_to_write(engine) as connection, connection.begin():
        _ask(connection, rollout_id, generator.identity.version, found)
    _run_live(engine, settings, generator, rollout_id, stage=False)
    return rollout_id


def _recent_profiles(connection: Connection, sample: int) -> list[Target]:
    latest = _newest_answers(programs.cache_key.is_not(None))
    shown = (latest.c.cache_key, latest.c.user_id, latest.c.onboarding_responses, latest.c.has_paid_access)
    query = select(*shown).where(latest.c.n == 1).order_by(latest.c.created_at.desc())
    # Streamed, so that taking the newest few reads no more of a long history than it needs.
    rows = connection.execution_options(yield_per=100).execute(query)
    return _usable((Target(row[0], str(row[1]), row[2], row[3]) for row in rows), sample)
