"""`training_programs` (every program handed out, from the LLM or the cache) and
`generation_events` (one row per request, for monitoring)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, get_args

from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    String,
    bindparam,
    cast,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DataError

from core.contract.cache_key import key_sample
from core.contract.generation import Rejected
from core.contract.models import PAID_ACCESS, PROGRAM
from core.prices import NOT_BILLED, TOKEN_FIELDS, Billed
from core.store.db import connect_for_one_statement, connect_to_write
from core.store.entries import CacheEntry
from core.store.schema import (
    SAVED,
    ProgramId,
    ai_coach_cache,
    generation_events,
    json_text,
    training_programs,
    utcnow,
)

programs = training_programs.c
cache = ai_coach_cache.c
Outcome = Literal["hit", "miss", "bypass", "error"]
# Who made a program handed out: the LLM, the offline coach (configured as the generator, or
# standing in because the LLM budget was spent: `budget`, core/serving/budget.py), or the cache.
Source = Literal["llm", "offline", "budget", "cache"]
SOURCES: tuple[Source, ...] = get_args(Source)


@dataclass(frozen=True)
class GenerationEvent:
    user_id: str
    cache_key: str
    outcome: Outcome
    latency_ms: float
    miss_reason: str | None = None
    llm_latency_ms: float | None = None
    # What the generation was billed (a hit's: nothing) ...
    billed: Billed = NOT_BILLED
    cache_read_error: bool = False
    cache_write_error: bool = False
    history_error: bool = False
    error: str | None = None
    entry_expires_at: datetime | None = None
    generator_version: str | None = None
    model: str | None = None
    # ... and, a hit's, what the generation that made its entry was billed: what it saved.
    saved: Billed = NOT_BILLED
    # A generation's: how many attempts it took (a repair is one more), and the core.fit rules
    # any attempt broke, comma-separated.
    attempts: int | None = None
    rules_broken: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    def served_from(self, entry: CacheEntry) -> GenerationEvent:
        """This hit event, naming the generator that made `entry` and what it cost."""
        return replace(self, generator_version=entry.generator_version, model=entry.model, saved=entry.billed)


@dataclass(frozen=True)
class HistoryRecord:
    """A program handed out, ready to be saved; kept by the caller if the save fails so
    that it can be saved again."""

    user_id: str
    program_json: str
    onboarding_responses: dict[str, Any]
    has_paid_access: bool
    source: Source
    cache_key: str
    latency_ms: float
    model: str | None = None
    generator_version: str | None = None
    billed: Billed = NOT_BILLED  # a hit's: nothing
    created_at: datetime = field(default_factory=utcnow)


# A record's Billed fields, each written to a column per kind of token named after its prefix.
_BILLED_PREFIX = {"billed": "", "saved": SAVED}


def _columns(record: Any) -> dict[str, Any]:
    # Shallow, unlike dataclasses.asdict, which would deep-copy the whole program.
    columns: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        columns.update(value.as_columns(_BILLED_PREFIX[f.name]) if f.name in _BILLED_PREFIX else {f.name: value})
    return columns


def _column_names(record_type: type) -> list[str]:
    """The columns `_columns` writes a record of `record_type` to."""
    names: list[str] = []
    for f in fields(record_type):
        prefix = _BILLED_PREFIX.get(f.name)
        names += [f.name] if prefix is None else [prefix + kind for kind in TOKEN_FIELDS]
    return names


# Statements built once: the hit path runs them for every request, and building a
# construct with its values costs more than the database round trip.
_INSERT_EVENT = insert(generation_events)
_INSERT_PROGRAM = {
    dialect: insert(training_programs).values(program=json_text("program_json", dialect)).returning(programs.id)
    for dialect in ("postgresql", "sqlite")
}
# A hit's history row takes its program and the generator that made it from the entry
# (history column: entry column), and everything else from its HistoryRecord.
_FROM_ENTRY = {"program": "data", "model": "model", "generator_version": "generator_version"}
_COPIED = tuple(name for name in _column_names(HistoryRecord) if name not in ("program_json", *_FROM_ENTRY))
# A hit's program copied inside the database from the very entry version that was
# validated: nothing is sent back, and PostgreSQL neither parses nor compresses it again.
_INSERT_PROGRAM_FROM_CACHE = (
    insert(training_programs)
    .from_select(
        [*_FROM_ENTRY, *_COPIED],
        select(
            *(ai_coach_cache.c[name] for name in _FROM_ENTRY.values()),
            *(bindparam(name, type_=programs[name].type) for name in _COPIED),
        ).where(
            ai_coach_cache.c.cache_key == bindparam("entry_key"),
            ai_coach_cache.c.updated_at == bindparam("entry_written_at"),
        ),
    )
    .returning(programs.id)
)


def _event_values(event: GenerationEvent, prefix: str = "") -> dict[str, Any]:
    values = {**_columns(event), "key_sample": key_sample(event.cache_key)}
    return {prefix + name: value for name, value in values.items()}


def insert_event(connection: Connection, event: GenerationEvent) -> None:
    connection.execute(_INSERT_EVENT, _event_values(event))


def insert_program(
    connection: Connection, record: HistoryRecord, *, entry_written_at: datetime | None = None
) -> ProgramId:
    """Save `record`; with `entry_written_at` (the cache entry's `updated_at`), copy the
    program from that write of its cache entry, or send it if the entry was written since."""
    if entry_written_at is not None:
        row = connection.execute(_INSERT_PROGRAM_FROM_CACHE, _copy_values(record, entry_written_at)).first()
        if row is not None:
            return row[0]
    values = _columns(record)
    return connection.execute(_INSERT_PROGRAM[connection.dialect.name], values).scalar_one()


def _copy_values(record: HistoryRecord, entry_written_at: datetime) -> dict[str, Any]:
    return {
        **{name: value for name, value in _columns(record).items() if name in _COPIED},
        "entry_key": record.cache_key,
        "entry_written_at": entry_written_at,
    }


# On PostgreSQL the history row, copied from the entry, and the event go in one statement:
# the event is inserted for each program row inserted, so the statement writes both or
# neither, and needs no transaction around it (autocommit: one round trip, not three).
_EVENT_COLUMNS = [c.name for c in generation_events.columns if c.name != "id"]
_PROGRAM_ROW = _INSERT_PROGRAM_FROM_CACHE.cte("program_row")
_PROGRAM_AND_EVENT = select(_PROGRAM_ROW.c.id).add_cte(
    insert(generation_events)
    .from_select(
        _EVENT_COLUMNS,
        select(
            *(bindparam(f"event_{name}", type_=generation_events.c[name].type) for name in _EVENT_COLUMNS)
        ).select_from(_PROGRAM_ROW),
    )
    .cte("event_row")
)


def save_program_and_event(
    engine: Engine, record: HistoryRecord, event: GenerationEvent, *, entry_written_at: datetime | None
) -> ProgramId:
    """The history row (copied from the cache entry written at `entry_written_at` when
    given) and the request's event: both or neither."""
    if entry_written_at is not None and engine.dialect.name == "postgresql":
        params = {**_copy_values(record, entry_written_at), **_event_values(event, prefix="event_")}
        with connect_for_one_statement(engine) as connection:
            row = connection.execute(_PROGRAM_AND_EVENT, params).first()
        if row is not None:
            return row[0]
        # The entry was rewritten since it was read, and nothing was written: the program
        # validated and served is sent instead.
        entry_written_at = None
    with connect_to_write(engine) as connection, connection.begin():
        program_id = insert_program(connection, record, entry_written_at=entry_written_at)
        insert_event(connection, event)
        return program_id


@dataclass(frozen=True)
class ProgramRow:
    # Rows written before an adopted table was adopted have no source, answers or latency.
    id: ProgramId
    user_id: str
    created_at: datetime
    source: str | None
    has_paid_access: bool | None
    latency_ms: float | None
    model: str | None
    cache_key: str | None
    program: dict[str, Any] | None = None
    onboarding_responses: dict[str, Any] | None = None


def get_program(engine: Engine, program_id: str) -> ProgramRow | None:
    """The program whose id reads `program_id` (an integer or a uuid, as the table has it)."""
    query = select(*_list_columns(), programs.program, programs.onboarding_responses).where(programs.id == program_id)
    with engine.connect() as connection:
        try:
            row = connection.execute(query).first()
        except DataError:  # not an id of this table's type at all
            return None
    return ProgramRow(**row._mapping) if row else None


@dataclass(frozen=True)
class Answers:
    """The answers and access a program was made from."""

    program_id: ProgramId
    created_at: datetime
    onboarding_responses: dict[str, Any]
    has_paid_access: bool


def latest_answers(connection: Connection, user_id: str, *, except_program: ProgramId | None = None) -> Answers | None:
    """The answers of the user's newest program (other than `except_program`): the baseline
    a new request is compared with, and what a coach may load into the form."""
    query = (
        select(programs.id, programs.created_at, programs.onboarding_responses, programs.has_paid_access)
        # Rows an adopted table held before carry no answers to compare with.
        .where(programs.user_id == user_id, programs.onboarding_responses.is_not(None))
        .order_by(programs.created_at.desc(), programs.id.desc())
        .limit(1)
    )
    if except_program is not None:
        query = query.where(programs.id != except_program)
    row = connection.execute(query).first()
    return Answers(row.id, row.created_at, row.onboarding_responses, row.has_paid_access) if row else None


@dataclass(frozen=True)
class Change:
    field: str
    before: Any
    after: Any


def changed_answers(before: Answers, after: dict[str, Any], has_paid_access: bool) -> list[Change]:
    """What differs between two sets of normalized answers, field by field (an answer
    left out is None), paid access last."""
    old, new = before.onboarding_responses, after
    changes = [Change(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if before.has_paid_access != has_paid_access:
        changes.append(Change(PAID_ACCESS, before.has_paid_access, has_paid_access))
    return changes


def _list_columns() -> list[Any]:
    return [
        programs.id,
        programs.user_id,
        programs.created_at,
        programs.source,
        programs.has_paid_access,
        programs.latency_ms,
        programs.model,
        programs.cache_key,
    ]


@dataclass(frozen=True)
class HistoryFilter:
    user_id: str | None = None  # every user id that begins with it
    since: datetime | None = None
    until: datetime | None = None
    source: Source | None = None

    @classmethod
    def from_form(cls, *, user_id: str, days: Sequence[date], source: Source | None) -> HistoryFilter:
        """From the page's fields: whole UTC days, the last one included. While only the
        first day of a range is picked, the range is open-ended."""
        since = datetime.combine(days[0], time.min, UTC) if days else None
        until = datetime.combine(days[1] + timedelta(days=1), time.min, UTC) if len(days) == 2 else None
        return cls(user_id=user_id.strip() or None, since=since, until=until, source=source)


@dataclass(frozen=True)
class HistoryPage:
    rows: list[ProgramRow]
    # Keyset cursor: (created_at, id) of the last row, None on the last page.
    next_cursor: tuple[datetime, ProgramId] | None


def _filtered(query: Any, flt: HistoryFilter) -> Any:
    if flt.user_id:
        # Every id that begins with it, as typed: substr, not LIKE, whose `_` is any character
        # and which SQLite compares without case; on text, as an adopted table's uuid column
        # has no substr. An index on user_id cannot serve it: the rows are found walking
        # ix_training_programs_created_at back, newest first, until a page is full.
        typed = cast(programs.user_id, String)
        query = query.where(func.substr(typed, 1, len(flt.user_id)) == flt.user_id)
    if flt.since:
        query = query.where(programs.created_at >= flt.since)
    if flt.until:
        query = query.where(programs.created_at < flt.until)
    if flt.source:
        query = query.where(programs.source == flt.source)
    return query


def list_programs(
    engine: Engine, flt: HistoryFilter, *, after: tuple[datetime, ProgramId] | None = None, page_size: int = 50
) -> HistoryPage:
    """Newest first, paginated by keyset so page 1,000 costs what page 1 does."""
    query = _filtered(select(*_list_columns()), flt)
    if after is not None:
        created_at, row_id = after
        query = query.where(
            (programs.created_at < created_at) | ((programs.created_at == created_at) & (programs.id < row_id))
        )
    query = query.order_by(programs.created_at.desc(), programs.id.desc()).limit(page_size + 1)
    with engine.connect() as connection:
        rows = [ProgramRow(**r._mapping) for r in connection.execute(query)]
    more = len(rows) > page_size
    rows = rows[:page_size]
    return HistoryPage(rows, (rows[-1].created_at, rows[-1].id) if more else None)


def iter_programs(engine: Engine, flt: HistoryFilter, *, chunk: int = 5_000) -> Any:
    """Every filtered row, streamed for CSV export without holding the table in memory."""
    query = _filtered(select(*_list_columns()), flt).order_by(programs.created_at.desc(), programs.id.desc())
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=chunk).execute(query)
        for row in result:
            yield ProgramRow(**row._mapping)


CSV_COLUMNS = ["id", "created_at", "user_id", "source", "has_paid_access", "latency_ms", "model", "cache_key"]
# What Excel, LibreOffice and Google Sheets take as the start of a formula in a cell
# (OWASP, "CSV Injection"): a user id typed as `=HYPERLINK(...)` would run when opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """`value` as a CSV cell that no spreadsheet runs, as OWASP advises: a number stays a
    number; anything else is text, with a leading `'` when it would start a formula (the
    writer quotes every cell too)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def export_csv(engine: Engine, flt: HistoryFilter) -> bytes:
    """The filtered rows as CSV. Streamlit holds a download as bytes whatever it is given,
    so the rows are streamed from the database into one buffer, built only when the
    download is asked for (the button's callable), never as a list of rows."""
    buffer = io.BytesIO()
    text = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    writer = csv.writer(text, quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_COLUMNS)
    writer.writerows([spreadsheet_cell(getattr(row, c)) for c in CSV_COLUMNS] for row in iter_programs(engine, flt))
    text.flush()
    text.detach()
    return buffer.getvalue()


def in_coach_cache_format(row: ProgramRow) -> bool:
    """Whether the row's program is in Coach Cache's program contract. An adopted table's
    earlier rows hold the product's programs in its own format: they are shown as stored."""
    if row.program is None:
        return False
    try:
        PROGRAM.validate_python(row.program)
    except ValidationError:
        return False
    return True


@dataclass(frozen=True)
class RecallNote:
    recalled_at: datetime
    recalled_by: str
    reason: str


def recalls_of(engine: Engine, program_ids: list[ProgramId]) -> dict[ProgramId, RecallNote]:
    """The recall of each of these history rows that was recalled."""
    if not program_ids:
        return {}
    query = select(programs.id, programs.recalled_at, programs.recalled_by, programs.recall_reason).where(
        programs.id.in_(program_ids), programs.recalled_at.is_not(None)
    )
    with engine.connect() as connection:
        return {row.id: RecallNote(*row[1:]) for row in connection.execute(query)}


def latest_recalled(connection: Connection, cache_key: str) -> Rejected | None:
    """The program last recalled among those handed out for this key, and why: what the
    generation after the recall is told, as after a coach's rejection, so that it never hands
    the recalled program back."""
    query = (
        select(programs.recall_reason, programs.program)
        .where(programs.cache_key == cache_key, programs.recalled_at.is_not(None))
        .order_by(programs.recalled_at.desc(), programs.created_at.desc())
        .limit(1)
    )
    row = connection.execute(query).first()
    return None if row is None else Rejected(reason=f"recalled: {row.recall_reason}", note=None, program=row.program)
