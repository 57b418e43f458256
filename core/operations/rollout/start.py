"""Starting a pre-warm: one request per key, from the answers history recorded for it, submitted as
OpenAI batches (half price, within 24 h), or run live at a bounded concurrency for servers
without a Batch API. One start per candidate at a time, across instances."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import openai
from sqlalchemy import Engine, insert, update

from core.contract.models import parse_onboarding
from core.generators import OpenAIChatGenerator, ProgramGenerator
from core.generators.openai_chat import tls_context
from core.operations.rollout.live import run_live
from core.operations.rollout.plan import Selection, plan, refuse_past_budget
from core.operations.rollout.records import (
    STATUS_MAX_CHARS,
    RolloutFailed,
    RolloutKind,
    RolloutRefused,
    Target,
    ask,
    new_rollout,
)
from core.serving.single_flight import Lease
from core.settings import Settings
from core.store.db import connect_to_write
from core.store.schema import (
    rollout_batches,
    rollouts,
    utcnow,
)

log = logging.getLogger(__name__)
runs = rollouts.c

# OpenAI's limits on one batch input file.
BATCH_MAX_LINES = 50_000


BATCH_MAX_BYTES = 200 * 2**20


BATCH_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"


def batch_client(settings: Settings) -> openai.OpenAI:
    """The client for the Files and Batches APIs, at OPENAI_BASE_URL like the generator's."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return openai.OpenAI(
        api_key=key,
        base_url=settings.openai_base_url,
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        http_client=openai.DefaultHttpxClient(verify=tls_context()),
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
    lease = Lease.claim(engine, f"rollout:{generator.identity.version}", settings.generation_lease_seconds)
    if lease is None:
        raise RolloutFailed(f"a pre-warm for {generator.identity.model} is being started elsewhere; try again after it")
    with lease:
        return _start(engine, settings, generator, actor, selection, live, client)


def check_kind(generator: ProgramGenerator, live: bool) -> None:
    if not live and not isinstance(generator, OpenAIChatGenerator):
        raise RolloutRefused("live", "is the only way for a generator without a Batch API")


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
    check_kind(generator, live)
    planned = plan(engine, settings, generator, selection)
    found = planned.targets
    if not found:
        return Started(None, kind, 0)
    estimated = planned.live_cost if live else planned.batch_cost
    refuse_past_budget(engine, settings, estimated, f"a pre-warm of {len(found)} keys ({kind})")
    rollout_id = new_rollout(engine, kind, generator, len(found), actor)
    version = generator.identity.version
    if live:
        run_live(engine, settings, generator, rollout_id, found, stage=True)
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
                ask(connection, rollout_id, version, chunk, state="failed", error=error)
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
            ask(connection, rollout_id, version, chunk, batch_id=batch.id)
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
