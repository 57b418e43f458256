"""A recall of programs that got out wrong (a prompt change that ignored injuries for a day):
the history rows of one generator identity, one cache key or one program, over a time range,
and every client handed one of them, a cache hit included (a hit hands out the same program).

Recalling them deletes the cache entries that still hold such a program (each key's fate
`recalled`, so its next request is a miss `recalled`), voids what a rollout staged for a
recalled generator, and marks the rows recalled: when, why, by whom. A pre-warm regenerates
the recalled keys ahead with the generator the app runs, as a rollout does for a new model."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TextIO

from sqlalchemy import Engine, and_, or_, select, update
from sqlalchemy.exc import DataError

from core.contract.models import ContractError, FieldError, collapse_whitespace
from core.generators import ProgramGenerator, make_generator
from core.operations import admin
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import start as rollout_start
from core.settings import Settings
from core.store import entries, staged_programs
from core.store.db import connect_to_write
from core.store.history import spreadsheet_cell
from core.store.rejections import program_id_of
from core.store.schema import ProgramId, database_now, rollout_programs, training_programs

programs = training_programs.c
REASON_MAX_CHARS = 500
# How a program was handed out: generated for the request, or served from the cache; a row an
# adopted table held before Coach Cache does not say.
How = Literal["generated", "cache_hit", "unknown"]
HOW_BY_SOURCE: dict[str | None, How] = {"llm": "generated", "offline": "generated", "cache": "cache_hit"}
CSV_COLUMNS = [
    "user_id",
    "training_program_id",
    "handed_out_at",
    "how",
    "cache_key",
    "generator_version",
    "recalled_at",
]


class RecallRefused(ContractError):
    def __init__(self, name: str, rule: str) -> None:
        super().__init__("recall", [FieldError(name, rule)])


@dataclass(frozen=True)
class Selection:
    """Which programs: those one generator identity made, those handed out for one cache key,
    or the program of one history row (every hand-out of that very program for its key),
    handed out from `since` and before `until` when given."""

    generator_version: str | None = None
    cache_key: str | None = None
    program_id: ProgramId | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.generator_version, self.cache_key, self.program_id) if v not in (None, "")]
        if len(given) != 1:
            raise RecallRefused("selection", "name exactly one of a generator version, a cache key or a program id")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise RecallRefused("until", "must be later than since")

    @property
    def target(self) -> str:
        """The selection in words, as an admin action records it."""
        if self.generator_version:
            named = f"generator {self.generator_version}"
        elif self.cache_key:
            named = f"key {self.cache_key}"
        else:
            named = f"program {self.program_id}"
        since = f" from {self.since:%Y-%m-%d %H:%M}" if self.since else ""
        until = f" before {self.until:%Y-%m-%d %H:%M}" if self.until else ""
        return named + since + until


def _condition(engine: Engine, selection: Selection) -> Any:
    """The history rows `selection` names, as a condition on training_programs."""
    if selection.generator_version:
        chosen: Any = programs.generator_version == selection.generator_version
    elif selection.cache_key:
        chosen = programs.cache_key == selection.cache_key
    else:
        chosen = _same_program(engine, selection.program_id)
    if selection.since is not None:
        chosen = and_(chosen, programs.created_at >= selection.since)
    if selection.until is not None:
        chosen = and_(chosen, programs.created_at < selection.until)
    return chosen


def _same_program(engine: Engine, given: ProgramId | None) -> Any:
    """The row `given` names, and every row that handed out its program for its key. Read
    through an alias, so that a statement on training_programs itself does not take the row
    it reads for its own."""
    try:
        wanted = program_id_of(given if given is not None else "")
    except ContractError as exc:
        raise ContractError("recall", exc.errors) from None
    named = training_programs.alias("named")
    try:
        with engine.connect() as connection:
            found = connection.execute(select(named.c.id).where(named.c.id == wanted)).first()
    except DataError:  # not an id of this table's type (a whole number where ids are uuids)
        found = None
    if found is None:
        raise RecallRefused("program_id", f"there is no program {given}")
    key = select(named.c.cache_key).where(named.c.id == found.id).scalar_subquery()
    program = select(named.c.program).where(named.c.id == found.id).scalar_subquery()
    return or_(programs.id == found.id, and_(programs.cache_key == key, programs.program == program))


@dataclass(frozen=True)
class Handout:
    """A program handed out to a client: one history row."""

    user_id: str
    training_program_id: ProgramId
    handed_out_at: datetime
    how: How
    cache_key: str | None
    generator_version: str | None
    recalled_at: datetime | None


def handouts(engine: Engine, selection: Selection, *, limit: int | None = None) -> Iterator[Handout]:
    """Every hand-out the selection covers, oldest first, streamed (at most `limit`)."""
    query = (
        select(
            programs.user_id,
            programs.id,
            programs.created_at,
            programs.source,
            programs.cache_key,
            programs.generator_version,
            programs.recalled_at,
        )
        .where(_condition(engine, selection))
        .order_by(programs.created_at, programs.id)
        .limit(limit)
    )
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=1_000).execute(query):
            how = HOW_BY_SOURCE.get(row.source, "unknown")
            yield Handout(str(row.user_id), row.id, row.created_at, how, *row[4:])


def write_csv(engine: Engine, selection: Selection, out: TextIO) -> tuple[int, int]:
    """The hand-outs as CSV on `out`, every cell data (core.history.spreadsheet_cell);
    how many rows, and how many clients."""
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_COLUMNS)
    rows, clients = 0, set()
    for handout in handouts(engine, selection):
        writer.writerow([spreadsheet_cell(getattr(handout, column)) for column in CSV_COLUMNS])
        rows += 1
        clients.add(handout.user_id)
    return rows, len(clients)


def check_reason(reason: str | None) -> str:
    text = collapse_whitespace(reason or "")
    if not text:
        raise RecallRefused("reason", "is required: say why the programs are recalled")
    if len(text) > REASON_MAX_CHARS:
        raise RecallRefused("reason", f"must be at most {REASON_MAX_CHARS} characters, not {len(text)}")
    return text


@dataclass(frozen=True)
class Recalled:
    entries_deleted: int
    bytes_reclaimed: int
    history_rows_marked: int
    # Programs a rollout staged (or still asked for) for a recalled generator, voided.
    staged_voided: int


def recall(engine: Engine, selection: Selection, *, reason: str, actor: str) -> Recalled:
    """Delete the entries that still hold a selected program, void what rollouts staged for a
    recalled generator and mark the rows not yet recalled, in one transaction; then record
    the admin action. Raises RecallRefused (nothing is done) for a missing reason."""
    reason = check_reason(reason)
    chosen = _condition(engine, selection)
    with connect_to_write(engine) as connection, connection.begin():
        removal = entries.delete_entries_holding(connection, chosen, actor=actor)
        voided = 0
        if selection.generator_version:
            covered = rollout_programs.c.generator_version == selection.generator_version
            voided = staged_programs.void(connection, covered, f"voided: generator recalled by {actor}: {reason}")
        marked = connection.execute(
            update(training_programs)
            .where(chosen, programs.recalled_at.is_(None))
            .values(recalled_at=database_now(connection.dialect.name), recall_reason=reason, recalled_by=actor)
        ).rowcount
    done = Recalled(removal.deleted, removal.bytes_reclaimed, marked, voided)
    admin.record_action(engine, actor=actor, action="recall", target=selection.target[:512], removal=removal)
    return done


def regenerator(engine: Engine, settings: Settings, selection: Selection, *, live: bool) -> ProgramGenerator:
    """The generator a pre-warm of the recalled keys runs: the one the app runs. Refused (so
    that nothing is recalled either) when it made any of the programs recalled: it would
    make them again, unasked why; or when it cannot run as asked."""
    generator = make_generator(settings)
    version = generator.identity.version
    made = select(programs.id).where(_condition(engine, selection), programs.generator_version == version)
    with engine.connect() as connection:
        if connection.execute(made.limit(1)).first() is not None:
            raise RecallRefused("prewarm", f"the app still runs {version}, which made programs recalled: switch first")
    rollout_start.check_kind(generator, live)
    return generator


def prewarm(
    engine: Engine, settings: Settings, selection: Selection, generator: ProgramGenerator, *, actor: str, live: bool
) -> rollout_start.Started:
    """Regenerate the selected keys ahead with `generator` (see `regenerator`), as a rollout
    (core/operations/rollout/): batched, or live with `live`. After `recall`, whose deletions leave
    the keys without an entry for the rollout to skip."""
    keys = select(programs.cache_key).where(_condition(engine, selection), programs.cache_key.is_not(None)).distinct()
    return rollout_start.start(
        engine, settings, generator, actor=actor, selection=rollout_plan.Selection(keys=keys), live=live
    )
