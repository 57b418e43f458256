"""A program while the LLM is still writing it: what of it is complete enough to show.

The answer arrives as a growing prefix of JSON. `parse_partial` reads any prefix
(pydantic-core's partial mode, strings cut short kept as they are); `program_so_far` keeps
only what the parser has moved past, so nothing shown can still change: a value is complete
when it is not the last one of its object or array, the one still being written. A longer
prefix therefore never shows less. Nothing here is validated as a program: the service
validates the whole answer, and only that is cached and saved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from core.contract.fit import TRAINING_DAYS
from core.contract.models import EXPERIENCE_LEVELS, GOALS, Session, Week

_SESSION = TypeAdapter(Session)
# How often, at most, the growing answer is parsed again to see what more is complete.
PROGRESS_INTERVAL_SECONDS = 0.1


@dataclass(frozen=True)
class ProgramSoFar:
    """The complete parts of a program being written; None (or no weeks) for what is not yet.
    Weeks are numbered by their place, as the service numbers the answer's weeks; a week is
    listed once one of its sessions is complete, with those sessions only."""

    title: str | None = None
    summary: str | None = None
    goal: str | None = None
    experience_level: str | None = None
    duration_weeks: int | None = None
    days_per_week: int | None = None
    weeks: tuple[Week, ...] = ()

    @property
    def sessions(self) -> int:
        return sum(len(week["sessions"]) for week in self.weeks)


def parse_partial(text: str) -> Any:
    """The JSON value a prefix of an answer begins; None when the prefix is not the start of
    one (a model that writes something else)."""
    try:
        return from_json(text, allow_partial="trailing-strings")
    except ValueError:
        return None


def _settled(node: dict[str, Any] | list[Any], complete: bool) -> int:
    """How many of `node`'s values (in the order written) are complete: all of a complete
    node's, all but the last of one still being written."""
    return len(node) if complete else max(0, len(node) - 1)


def program_so_far(partial: Any) -> ProgramSoFar:
    """What `partial` (an answer's prefix, as `parse_partial` read it) holds that is complete.
    Never raises, whatever the model wrote."""
    if not isinstance(partial, dict):
        return ProgramSoFar()
    done = dict(list(partial.items())[: _settled(partial, False)])

    def text(name: str) -> str | None:
        value = done.get(name)
        return value if isinstance(value, str) and value.strip() else None

    def count(name: str) -> int | None:
        value = done.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    goal, level, days_per_week = done.get("goal"), done.get("experience_level"), count("days_per_week")
    return ProgramSoFar(
        title=text("title"),
        summary=text("summary"),
        goal=goal if goal in GOALS else None,
        experience_level=level if level in EXPERIENCE_LEVELS else None,
        duration_weeks=count("duration_weeks"),
        days_per_week=days_per_week,
        weeks=_weeks(
            partial.get("weeks"), complete="weeks" in done, days=TRAINING_DAYS.get(count("days_per_week") or 0)
        ),
    )


def _weeks(weeks: Any, *, complete: bool, days: tuple[int, ...] | None) -> tuple[Week, ...]:
    if not isinstance(weeks, list):
        return ()
    shown: list[Week] = []
    for number, week in enumerate(weeks, start=1):
        if not isinstance(week, dict):
            break
        week_complete = complete or number < len(weeks)
        done = dict(list(week.items())[: _settled(week, week_complete)])
        sessions = week.get("sessions")
        written = _sessions(sessions, complete="sessions" in done, days=days) if isinstance(sessions, list) else []
        if not written:
            break  # a later week cannot have a session complete before this one has
        theme = done.get("theme")
        shown.append(Week(week=number, theme=theme if isinstance(theme, str) else "", sessions=written))
    return tuple(shown)


def _sessions(sessions: list[Any], *, complete: bool, days: tuple[int, ...] | None) -> list[Session]:
    """The complete sessions, up to the first that is not a session: the page shows them.
    A session the LLM was not asked the day of is on the day its place gives it, as the
    service gives it once the answer is whole (TRAINING_DAYS)."""
    written: list[Session] = []
    for place, session in enumerate(sessions[: _settled(sessions, complete)]):
        if isinstance(session, dict) and "day" not in session and days is not None and place < len(days):
            session = {"day": days[place], **session}
        try:
            written.append(_SESSION.validate_python(session))
        except ValidationError:
            break
    return written


def progress_line(so_far: ProgramSoFar) -> str | None:
    """One line on how far the writing is, as `python -m core generate --progress` prints it."""
    if not so_far.weeks:
        if so_far.summary is not None:
            return "title and summary written"
        return "title written" if so_far.title is not None else None
    week = so_far.weeks[-1]
    of_weeks = f" of {so_far.duration_weeks}" if so_far.duration_weeks is not None else ""
    of_sessions = f" of {so_far.days_per_week}" if so_far.days_per_week is not None else ""
    return f"week {week['week']}{of_weeks}: {len(week['sessions'])}{of_sessions} sessions written"


class ProgressReporter:
    """Hands `on_progress` what is complete of an answer as it grows: when more of it is,
    looking at most every `interval` seconds, so a token-by-token stream costs a few parses
    a second rather than one a token."""

    def __init__(
        self,
        on_progress: Callable[[ProgramSoFar], None] | None,
        *,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._on_progress, self._interval, self._clock = on_progress, interval, clock
        self._looked_at: float | None = None
        self._shown = ProgramSoFar()

    def written(self, text: Callable[[], str]) -> None:
        """The answer has grown; `text()` is all of it so far (asked for only when looked at)."""
        if self._on_progress is None:
            return
        now = self._clock()
        if self._looked_at is not None and now - self._looked_at < self._interval:
            return
        self._looked_at = now
        partial = parse_partial(text())
        if partial is None:
            return  # not JSON, or not yet: what was shown stays
        so_far = program_so_far(partial)
        if so_far != self._shown:
            self._shown = so_far
            self._on_progress(so_far)
