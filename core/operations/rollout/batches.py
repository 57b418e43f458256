"""Collecting a rollout's batches (start.py submits them), from cron and safe twice at
once: each batch not collected yet is polled; one that finished has its result files read as
they stream in, each line matched to its request by custom_id, judged against the contract and
its profile, and recorded, the valid ones staged for the candidate (core/store/staged_programs.py).
A line is the server's word and is bounded before it is recorded: one line breaking a rule
fails that line, not the collection. A batch the server no longer knows (404 on
NOT_FOUND_CHECKS consecutive checks) is given up, and an operator may cancel a rollout's
batches; either way its keys can be planned again."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletion
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, select, update

from core.contract.generation import GenerationError
from core.generators import OpenAIChatGenerator
from core.generators.openai_chat import one_line, reported_usage
from core.operations.rollout.plan import candidate, require_key
from core.operations.rollout.records import (
    RECORDS_PER_TRANSACTION,
    STATUS_MAX_CHARS,
    Judged,
    RolloutRefused,
    bill_voided,
    judge_generation,
    max_chars,
    pending_programs,
    record_result,
)
from core.operations.rollout.start import batch_client, custom_id
from core.prices import Billed
from core.settings import Settings
from core.store.db import connect_to_write
from core.store.schema import rollout_batches, rollout_programs, rollouts, utcnow

T = TypeVar("T")
runs = rollouts.c
jobs = rollout_batches.c
asked = rollout_programs.c
# Consecutive checks answered 404 before a batch is given up: one may be a server's hiccup,
# three an hour apart (from cron) are a batch it lost, as after a change of API key.
NOT_FOUND_CHECKS = 3
# A batch in one of these states runs no more lines: what it has is collected.
FINISHED = ("completed", "expired", "cancelled", "failed")


@dataclass(frozen=True)
class Finished:
    """A batch that runs no more lines, as a check saw it: its result files (output, then
    errors), when it was submitted and checked (a line ran in between), and why a line
    without a result did not run."""

    file_ids: tuple[str | None, ...]
    submitted_at: datetime
    checked_at: datetime
    not_run: str
    status: str


# What one result line may put in a row, checked before it reaches the database: past these
# PostgreSQL refuses the statement (and SQLite's driver a number past 2^63), which would fail
# the whole collection on every run; and a negative count would lower the spend reported.
MODEL_MAX_CHARS = max_chars(asked.model)
COUNT_MAX = 2**31 - 1  # the token columns are INTEGER


def out_of_bounds(completion: ChatCompletion) -> str | None:
    """Which field of an answer breaks which rule, so that it cannot be recorded as the server
    wrote it (None: it can)."""
    for name, count in reported_usage(completion.usage).items():
        if count is not None and not 0 <= count <= COUNT_MAX:
            return f"usage.{name} is {count}, not a count from 0 to {COUNT_MAX}"
    if len(completion.model) > MODEL_MAX_CHARS:
        return f"model is {len(completion.model)} characters, more than {MODEL_MAX_CHARS}"
    if not completion.model.isprintable():
        return "model holds a control character"
    return None


def judge_line(
    line: Any, answers: dict[str, Any], has_paid_access: bool, generator: OpenAIChatGenerator, batch: Finished
) -> Judged:
    """What one batch result line (None: the batch ended before it ran) gives. A line is
    the server's word: anything it holds that is not what OpenAI documents, or that no
    column can hold, fails that line, not the collection."""
    if line is None:
        return Judged("failed", error=f"not run: {batch.not_run}")
    error = line.get("error") if isinstance(line, dict) else "the result line is not a JSON object"
    if error:
        said = f"{error.get('code') or 'error'}: {error.get('message') or ''}" if isinstance(error, dict) else error
        return Judged("failed", error=_text(str(said)))
    response = line.get("response")
    body = response.get("body") if isinstance(response, dict) else None
    if not isinstance(response, dict) or response.get("status_code") != 200:
        status = response.get("status_code") if isinstance(response, dict) else None
        inner = body.get("error") if isinstance(body, dict) else None
        said = inner.get("message") if isinstance(inner, dict) else None
        return Judged("failed", error=_text(f"HTTP {status}: {said or 'no message'}"))
    try:
        completion = ChatCompletion.model_validate(body)
    except ValidationError:
        return Judged("invalid", error="the result is not a chat completion")
    if broken := out_of_bounds(completion):
        # Nothing of such a line is trusted, its usage included.
        return Judged("failed", error=f"{broken}; its tokens are not recorded")
    # When the line ran, by its own word, within when the batch was submitted and checked:
    # a program's TTL runs from then, and a server's clock (or its unit) is not trusted further.
    ran = datetime.fromtimestamp(min(max(completion.created, 0), 2**32), UTC)
    generated_at = min(max(ran, batch.submitted_at), batch.checked_at)
    try:
        generation = generator.from_completion(completion)
    except GenerationError as exc:
        return Judged("invalid", exc.billed, error=str(exc))
    return judge_generation(generation, answers, has_paid_access, "staged", generated_at)


def _text(said: str) -> str:
    """A server's words as one line a text column takes (PostgreSQL's refuses NUL)."""
    return one_line(said.replace("\x00", " "))


@dataclass(frozen=True)
class BatchCheck:
    batch_id: str
    rollout_id: int
    status: str  # as OpenAI said it; "unknown" when it could not be asked, "not_found" once given up
    collected: bool  # whether this check collected it (a batch is collected once)
    recorded: dict[str, int] = field(default_factory=dict)  # states this check recorded
    problem: str | None = None  # why it could not be checked (it is checked again next time)
    given_up: str | None = None  # why this check gave it up: its keys can be planned again


def _open_jobs(engine: Engine, *where: Any) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(jobs.batch_id, jobs.rollout_id, jobs.submitted_at, runs.model, runs.generator_version)
                .join(rollouts, runs.id == jobs.rollout_id)
                .where(jobs.collected_at.is_(None), *where)
                .order_by(jobs.submitted_at)
            )
        )


def check_batches(
    engine: Engine,
    settings: Settings,
    *,
    client: openai.OpenAI | None = None,
    generator_for: Callable[[str], OpenAIChatGenerator] | None = None,
) -> list[BatchCheck]:
    """Poll every batch not collected yet and collect those that finished: results are
    matched by custom_id (OpenAI keeps no order), judged, and recorded; lines a batch that
    expired or was cancelled never ran are recorded as failed; one the server answers 404 for
    on NOT_FOUND_CHECKS checks in a row is given up. Safe to run twice at once: each pending
    program is recorded by one call only."""
    generator_for = generator_for or (lambda model: candidate(settings, model))
    require_key(settings)
    client = client or batch_client(settings)
    checks = []
    for job in _open_jobs(engine):
        generator = generator_for(job.model)
        try:
            finished = _poll(engine, client, job.batch_id, job.submitted_at)
        except openai.NotFoundError as exc:
            checks.append(_not_found(engine, job, generator.describe(exc)))
            continue
        except (openai.APIError, ValueError) as exc:
            # Left for the next check: nothing of this batch was recorded as collected.
            said = generator.describe(exc) if isinstance(exc, openai.APIError) else one_line(str(exc))
            checks.append(BatchCheck(job.batch_id, job.rollout_id, "unknown", False, problem=said))
            continue
        if isinstance(finished, str):
            checks.append(BatchCheck(job.batch_id, job.rollout_id, finished, False))
            continue
        recorded = _collect(engine, settings, client, generator, job, finished)
        with connect_to_write(engine) as connection, connection.begin():
            first = connection.execute(
                update(rollout_batches)
                .where(jobs.batch_id == job.batch_id, jobs.collected_at.is_(None))
                .values(collected_at=utcnow())
            ).rowcount
        checks.append(BatchCheck(job.batch_id, job.rollout_id, finished.status, first == 1, recorded))
    return checks


def _not_found(engine: Engine, job: Any, said: str) -> BatchCheck:
    """A check the server answered 404: counted; the NOT_FOUND_CHECKS-th in a row gives the
    batch up. Until then it is a problem, checked again next time."""
    with connect_to_write(engine) as connection, connection.begin():
        counted = connection.execute(
            update(rollout_batches)
            .where(jobs.batch_id == job.batch_id, jobs.collected_at.is_(None))
            .values(not_found_checks=jobs.not_found_checks + 1, checked_at=utcnow())
            .returning(jobs.not_found_checks)
        ).scalar()
    if counted is None:  # another check gave it up meanwhile
        return BatchCheck(job.batch_id, job.rollout_id, "not_found", False)
    if counted < NOT_FOUND_CHECKS:
        problem = (
            f"the server does not know this batch ({said}); check {counted} of {NOT_FOUND_CHECKS} before it is given up"
        )
        return BatchCheck(job.batch_id, job.rollout_id, "unknown", False, problem=problem)
    why = f"the server no longer knows the batch (404 on {NOT_FOUND_CHECKS} checks in a row)"
    return give_up(engine, job.batch_id, job.rollout_id, why)


def give_up(engine: Engine, batch_id: str, rollout_id: int, why: str) -> BatchCheck:
    """Stop waiting for a batch: its pending lines are recorded as not run, saying `why`, and
    it counts as collected, so that its keys can be planned again. One transaction, taken by
    one caller only."""
    with connect_to_write(engine) as connection, connection.begin():
        first = connection.execute(
            update(rollout_batches)
            .where(jobs.batch_id == batch_id, jobs.collected_at.is_(None))
            .values(collected_at=utcnow(), status="not_found")
        ).rowcount
        failed = 0
        if first:
            failed = connection.execute(
                update(rollout_programs)
                .where(asked.batch_id == batch_id, asked.state == "pending")
                .values(state="failed", error=f"not run: {why}")
            ).rowcount
    recorded = {"failed": failed} if failed else {}
    return BatchCheck(batch_id, rollout_id, "not_found", first == 1, recorded, given_up=why if first else None)


def cancel(
    engine: Engine, settings: Settings, rollout_id: int, *, client: openai.OpenAI | None = None
) -> list[BatchCheck]:
    """An operator's way out of a rollout's batches still out: each is cancelled on the server
    and its keys can be planned again at once; what it ran before the cancel took hold is
    still collected by `check_batches` (it was billed), and the rest is recorded as not run
    then. A batch the server no longer knows is given up at once."""
    require_key(settings)
    found = _open_jobs(engine, jobs.rollout_id == rollout_id)
    if not found:
        raise RolloutRefused("rollout_id", f"rollout {rollout_id} has no batch still out to cancel")
    client = client or batch_client(settings)
    checks = []
    for job in found:
        try:
            status = client.batches.cancel(job.batch_id).status
        except openai.NotFoundError:
            checks.append(
                give_up(engine, job.batch_id, rollout_id, "the batch was cancelled, and the server no longer knows it")
            )
            continue
        except openai.ConflictError:
            problem = "not cancelled: it has already ended; `rollout status` collects it"
            checks.append(BatchCheck(job.batch_id, rollout_id, "unknown", False, problem=problem))
            continue
        except openai.APIError as exc:
            said = candidate(settings, job.model).describe(exc)
            checks.append(BatchCheck(job.batch_id, rollout_id, "unknown", False, problem=f"not cancelled: {said}"))
            continue
        with connect_to_write(engine) as connection, connection.begin():
            connection.execute(
                update(rollout_batches).where(jobs.batch_id == job.batch_id).values(cancel_requested_at=utcnow())
            )
        checks.append(BatchCheck(job.batch_id, rollout_id, status[:STATUS_MAX_CHARS], False))
    return checks


def _poll(engine: Engine, client: openai.OpenAI, batch_id: str, submitted_at: datetime) -> Finished | str:
    """The batch's status, recorded; when it runs no more lines, where they are."""
    batch = client.batches.retrieve(batch_id)
    checked_at = utcnow()
    with connect_to_write(engine) as connection, connection.begin():
        connection.execute(
            update(rollout_batches)
            .where(jobs.batch_id == batch_id)
            .values(status=batch.status[:STATUS_MAX_CHARS], checked_at=checked_at, not_found_checks=0)
        )
    if batch.status not in FINISHED:
        return batch.status
    why = {"expired": "the batch expired first", "cancelled": "the batch was cancelled first"}
    not_run = why.get(batch.status, "the batch ended before this request")
    if batch.status == "failed":
        said = "; ".join(e.message or e.code or "" for e in (batch.errors.data or [])) if batch.errors else ""
        not_run = f"the batch failed: {one_line(said or 'no reason given')}"
    return Finished((batch.output_file_id, batch.error_file_id), submitted_at, checked_at, not_run, batch.status)


@dataclass
class _Collection:
    """What one collector recorded of a batch, by custom_id: each program's state and the
    tokens its lines were billed so far. A line whose custom_id repeats (in one file or in
    both) adds its tokens to its program's, and a valid answer replaces a failed or invalid
    one; the program is counted once. Only the collector that recorded a program's first line
    adds the rest, so that two collecting at once count each line once."""

    ttl: timedelta
    recorded: Counter[str] = field(default_factory=Counter)
    mine: dict[str, tuple[str, Billed]] = field(default_factory=dict)

    def line(self, connection: Connection, custom: str, row: Any, judged: Judged) -> None:
        earlier = self.mine.get(custom)
        if earlier is None:
            if record_result(connection, row.id, judged, self.ttl):
                self._count(custom, None, judged.state, judged.tokens)
            elif row.state == "voided" and bill_voided(connection, row.id, judged.tokens):
                self.mine[custom] = ("voided", judged.tokens)
            return
        state, tokens = earlier
        billed = _added(tokens, judged.tokens)
        better = judged.state == "staged" and state in ("failed", "invalid")
        if better and record_result(connection, row.id, replace(judged, tokens=billed), self.ttl, was=state):
            return self._count(custom, state, judged.state, billed)
        connection.execute(
            update(rollout_programs).where(asked.id == row.id, asked.state == state).values(**billed.as_columns())
        )
        self.mine[custom] = (state, billed)

    def _count(self, custom: str, old: str | None, new: str, tokens: Billed) -> None:
        if old is not None:
            self.recorded[old] -= 1
        self.recorded[new] += 1
        self.mine[custom] = (new, tokens)


def _added(one: Billed, other: Billed) -> Billed:
    """Two lines' tokens in all, at most what a column holds."""
    total = (one + other).as_columns()
    return Billed(**{name: None if count is None else min(count, COUNT_MAX) for name, count in total.items()})


def _collect(
    engine: Engine,
    settings: Settings,
    client: openai.OpenAI,
    generator: OpenAIChatGenerator,
    job: Any,
    finished: Finished,
) -> dict[str, int]:
    """Record each pending request of a finished batch from its lines, read as they stream
    in (a full batch's files are gigabytes), then those no line answered as not run; the
    states this call recorded. A few hundred lines a transaction: a long write would hold up
    requests' writes."""
    collection = _Collection(timedelta(hours=settings.cache_ttl_hours))
    prefix = custom_id(job.generator_version, "")
    for lines in _batched(_result_lines(client, finished.file_ids), RECORDS_PER_TRANSACTION):
        keys = {custom[len(prefix) :]: custom for custom, _ in lines if custom.startswith(prefix)}
        with connect_to_write(engine) as connection, connection.begin():
            rows = {
                row.cache_key: row
                for row in connection.execute(
                    select(
                        asked.id, asked.cache_key, asked.onboarding_responses, asked.has_paid_access, asked.state
                    ).where(asked.batch_id == job.batch_id, asked.cache_key.in_(keys))
                )
            }
            for custom, line in lines:
                row = rows.get(custom[len(prefix) :]) if custom.startswith(prefix) else None
                if row is not None:
                    judged = judge_line(line, row.onboarding_responses, row.has_paid_access, generator, finished)
                    collection.line(connection, custom, row, judged)
    not_run = Judged("failed", error=f"not run: {finished.not_run}")
    while True:
        with connect_to_write(engine) as connection, connection.begin():
            left = pending_programs(connection, asked.batch_id == job.batch_id, limit=RECORDS_PER_TRANSACTION)
            for row in left:
                collection.line(connection, custom_id(job.generator_version, row.cache_key), row, not_run)
        if len(left) < RECORDS_PER_TRANSACTION:
            return {state: n for state, n in collection.recorded.items() if n}


def _result_lines(client: openai.OpenAI, file_ids: Iterable[str | None]) -> Iterator[tuple[str, Any]]:
    """A finished batch's result lines with their custom_id, output then errors, one at a time
    as the files stream in; a line that is no JSON object with a custom_id matches no
    request, which is then recorded as not run."""
    for file_id in file_ids:
        if not file_id:
            continue
        with client.files.with_streaming_response.content(file_id) as response:
            for text in response.iter_lines():
                try:
                    line = json.loads(text)
                except ValueError:
                    continue
                if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                    yield line["custom_id"], line


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
