"""A program as a coach hands it over: a printable Markdown document (one table per
session) and the contract's JSON, in files named after the user and the date."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from core.formatting import counted

EXERCISE_COLUMNS = {"name": "Exercise", "sets": "Sets", "reps": "Reps", "rest_seconds": "Rest (s)", "notes": "Notes"}


def file_name(user_id: str, created_at: datetime, extension: str) -> str:
    # User ids are letters, digits and . _ @ - (cache_key.check_user_id): safe in a file name.
    return f"training-program-{user_id}-{created_at:%Y-%m-%d}.{extension}"


def program_json(program: dict[str, Any]) -> str:
    """Exactly the contract's document, readable."""
    return json.dumps(program, indent=2, ensure_ascii=False)


def _cell(value: object) -> str:
    # A table cell is one line, and a pipe would end it.
    return " ".join(str(value).split()).replace("|", "\\|")


def session_table(session: dict[str, Any], cell: Callable[[object], str] = _cell) -> str:
    """A session's exercises as a Markdown table; `cell` makes a value safe for a cell."""
    lines = ["| " + " | ".join(EXERCISE_COLUMNS.values()) + " |", "|" + "---|" * len(EXERCISE_COLUMNS)]
    lines += ["| " + " | ".join(cell(e[c]) for c in EXERCISE_COLUMNS) + " |" for e in session["exercises"]]
    return "\n".join(lines)


def program_markdown(program: dict[str, Any], *, user_id: str, created_at: datetime) -> str:
    goal = program["goal"].replace("_", " ")
    lines = [
        f"# {_cell(program['title'])}",
        "",
        f"For **{user_id}**, {created_at:%Y-%m-%d}. {goal.capitalize()}, {program['experience_level']}, "
        f"{counted(program['duration_weeks'], 'week')}, {counted(program['days_per_week'], 'day')} a week.",
        "",
        program["summary"],
    ]
    for week in program["weeks"]:
        lines += ["", f"## Week {week['week']}: {_cell(week['theme'])}"]
        for session in week["sessions"]:
            lines += [
                "",
                f"### Day {session['day']}: {_cell(session['focus'])} ({session['duration_minutes']} min)",
                "",
                session_table(session),
            ]
    if program["safety_notes"]:
        lines += ["", "## Safety notes", ""] + [f"- {_cell(note)}" for note in program["safety_notes"]]
    return "\n".join(lines) + "\n"
