"""A coach's rejection of a program handed out: recorded in `program_rejections` (which
history row, who, when, why), and, when the key's cache entry still holds that very
program, the entry invalidated at once, so that the same answers are a miss `rejected` and
generate anew. Rejecting an older program than the entry holds changes no entry."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import DataError

from core.contract.generation import Rejected
from core.contract.models import ContractError, FieldError, collapse_whitespace
from core.store import entries, staged_programs
from core.store.db import connect_to_write
from core.store.schema import ProgramId, database_now, program_rejections, rollout_programs, training_programs

RejectionCategory = Literal["ignores_limitation", "wrong_level", "wrong_equipment", "other"]
CATEGORIES: tuple[RejectionCategory, ...] = get_args(RejectionCategory)
# What each category means, as a coach picks it and reads it in history.
CATEGORY_TEXT: dict[RejectionCategory, str] = {
    "ignores_limitation": "ignores an injury or limitation",
    "wrong_level": "wrong level",
    "wrong_equipment": "wrong equipment",
    "other": "other",
}
NOTE_MAX_CHARS = 500
# What the rejection did to the key's cache entry: removed it (it held this program), left
# it alone (it holds another program), or found none to touch.
EntryEffect = Literal["invalidated", "left_alone", "no_entry"]
EFFECT_TEXT: dict[EntryEffect, str] = {
    "invalidated": "rejected; the cached entry was invalidated, the next request generates anew",
    "left_alone": "rejected; the cache now holds a newer program, left alone",
    "no_entry": "rejected; no cached entry holds it",
}

rejections = program_rejections.c
programs = training_programs.c


class UnknownProgram(ContractError):
    """No history row has this id (or it is not an id of the table's type at all)."""

    def __init__(self, program_id: object) -> None:
        super().__init__("rejection", [FieldError("program_id", f"there is no program {program_id}")])


_WHOLE_NUMBER = re.compile(r"-?[0-9]+")


def program_id_of(given: ProgramId) -> ProgramId:
    """The history row id `given` names, read by one rule whatever the database: a whole
    number or a uuid, each as its canonical text (bound untyped, the database reads it as
    the column's own type); anything else is refused naming program_id (SQLite would take
    `1.0` for row 1, where PostgreSQL refuses it). Whether a row has that id, the table's
    integer or uuid ids included, is the database's to say (UnknownProgram)."""
    if isinstance(given, int) and not isinstance(given, bool):
        return given
    text = str(given)
    if _WHOLE_NUMBER.fullmatch(text):
        return str(int(text))
    try:
        return str(uuid.UUID(text))
    except ValueError:
        rule = "must be a whole number, or a uuid where ids are uuids, as generate prints it"
        raise ContractError("rejection", [FieldError("program_id", rule)]) from None


def check(category: object, note: str | None) -> tuple[RejectionCategory, str | None]:
    """The category, and the note as stored (whitespace collapsed, None when empty), or a
    ContractError naming each field and its rule."""
    errors = []
    checked = next((known for known in CATEGORIES if known == category), None)
    if category is None:
        errors.append(FieldError("category", "is required"))
    elif checked is None:
        errors.append(FieldError("category", f"must be one of {', '.join(CATEGORIES)}"))
    if note is not None and len(note) > NOTE_MAX_CHARS:
        errors.append(FieldError("note", f"must be at most {NOTE_MAX_CHARS} characters, not {len(note)}"))
    if checked is None or errors:
        raise ContractError("rejection", errors)
    return checked, collapse_whitespace(note) if note else None


@dataclass(frozen=True)
class RejectionOutcome:
    training_program_id: ProgramId
    category: RejectionCategory
    rejected_by: str
    rejected_at: datetime
    cache_key: str | None
    entry: EntryEffect
    # Programs a rollout staged for the key (or still asked for), voided: none is served after
    # a rejection, as its entry is not.
    staged_voided: int = 0

    @property
    def text(self) -> str:
        return EFFECT_TEXT[self.entry]


def reject(
    engine: Engine, *, program_id: ProgramId, category: object, note: str | None, actor: str
) -> RejectionOutcome:
    """Record the rejection of history row `program_id` and invalidate the key's entry if
    it still holds that program, in one transaction. Raises ContractError (UnknownProgram
    for an id no row has); nothing is written then."""
    wanted = program_id_of(program_id)
    checked, note = check(category, note)
    with connect_to_write(engine) as connection, connection.begin():
        history_id, key = _history_row(connection, wanted)
        recorded = (
            insert(program_rejections)
            .values(
                training_program_id=history_id,
                cache_key=key,
                rejected_by=actor,
                rejected_at=database_now(connection.dialect.name),
                category=checked,
                note=note,
            )
            .returning(rejections.rejected_at)
        )
        rejected_at = connection.execute(recorded).scalar_one()
        entry: EntryEffect = "no_entry"
        voided = 0
        if key is not None:
            if entries.delete_entry_holding(connection, key, history_id, actor=actor):
                entry = "invalidated"
            elif entries.has_entry(connection, key):
                entry = "left_alone"
            if entry != "left_alone":  # as the entry: one written since is another program
                covered = rollout_programs.c.cache_key == key
                voided = staged_programs.void(connection, covered, f"voided: rejected by {actor}")
    return RejectionOutcome(history_id, checked, actor, rejected_at, key, entry, voided)


def _history_row(connection: Connection, program_id: ProgramId) -> tuple[ProgramId, str | None]:
    """The id of history row `program_id`, as the table has it, and its cache key."""
    try:
        row = connection.execute(select(programs.id, programs.cache_key).where(programs.id == program_id)).first()
    except DataError:  # not an id of this table's type (a word where ids are uuids)
        raise UnknownProgram(program_id) from None
    if row is None:
        raise UnknownProgram(program_id)
    return row.id, row.cache_key


@dataclass(frozen=True)
class Rejection:
    training_program_id: ProgramId
    category: RejectionCategory
    note: str | None
    rejected_by: str
    rejected_at: datetime

    @property
    def reason(self) -> str:
        """The category as a coach reads it, with the note when there is one."""
        text = CATEGORY_TEXT.get(self.category, self.category)
        return f"{text}: {self.note}" if self.note else text


def rejections_of(engine: Engine, program_ids: list[ProgramId]) -> dict[ProgramId, Rejection]:
    """The latest rejection of each of these programs that has one."""
    if not program_ids:
        return {}
    query = (
        select(
            rejections.training_program_id,
            rejections.category,
            rejections.note,
            rejections.rejected_by,
            rejections.rejected_at,
        )
        .where(rejections.training_program_id.in_(program_ids))
        .order_by(rejections.rejected_at, rejections.id)
    )
    with engine.connect() as connection:
        # In time order: each program's latest rejection is the one left.
        return {row.training_program_id: Rejection(*row) for row in connection.execute(query)}


def latest_for_key(connection: Connection, cache_key: str) -> Rejected | None:
    """The program last rejected among those handed out for this key, and why: what the
    generation after the rejection is told (core.generators.base.Rejected)."""
    query = (
        select(rejections.category, rejections.note, programs.program)
        .join(training_programs, programs.id == rejections.training_program_id)
        .where(rejections.cache_key == cache_key)
        .order_by(rejections.rejected_at.desc(), rejections.id.desc())
        .limit(1)
    )
    row = connection.execute(query).first()
    if row is None:
        return None
    return Rejected(reason=CATEGORY_TEXT.get(row.category, row.category), note=row.note, program=row.program)
