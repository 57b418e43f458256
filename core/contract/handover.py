"""A program as a coach hands it over: a printable Markdown document (one table per
session, then how each exercise is done, from the catalogue) and the contract's JSON, in
files named after the user and the date."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from core.contract.catalogue import catalogue
from core.formatting import counted, escape_markdown, markdown_code, one_line

EXERCISE_COLUMNS = {"name": "Exercise", "sets": "Sets", "reps": "Reps", "rest_seconds": "Rest (s)", "notes": "Notes"}


def file_name(user_id: str, created_at: datetime, extension: str) -> str:
    # User ids are letters, digits and . _ @ - (cache_key.check_user_id): safe in a file name.
    return f"training-program-{user_id}-{created_at:%Y-%m-%d}.{extension}"


def program_json(program: dict[str, Any]) -> str:
    """Exactly the contract's document, readable."""
    return json.dumps(program, indent=2, ensure_ascii=False)


def session_table(session: dict[str, Any]) -> str:
    """A session's exercises as a Markdown table, each value as text on one line."""
    lines = ["| " + " | ".join(EXERCISE_COLUMNS.values()) + " |", "|" + "---|" * len(EXERCISE_COLUMNS)]
    lines += ["| " + " | ".join(one_line(e[c]) for c in EXERCISE_COLUMNS) + " |" for e in session["exercises"]]
    return "\n".join(lines)


def program_markdown(program: dict[str, Any], *, user_id: str, created_at: datetime) -> str:
    """The program as a client reads it. Its text (the client's answers echoed, whatever the
    LLM wrote) is escaped as the pages escape it: the document fetches no image and links
    nowhere, wherever it is opened."""
    goal = program["goal"].replace("_", " ")
    lines = [
        f"# {one_line(program['title'])}",
        "",
        f"For **{markdown_code(user_id)}**, {created_at:%Y-%m-%d}. {goal.capitalize()}, {program['experience_level']}, "
        f"{counted(program['duration_weeks'], 'week')}, {counted(program['days_per_week'], 'day')} a week.",
        "",
        escape_markdown(program["summary"]),
    ]
    for week in program["weeks"]:
        lines += ["", f"## Week {week['week']}: {one_line(week['theme'])}"]
        for session in week["sessions"]:
            lines += [
                "",
                f"### Day {session['day']}: {one_line(session['focus'])} ({session['duration_minutes']} min)",
                "",
                session_table(session),
            ]
    if program["safety_notes"]:
        lines += ["", "## Safety notes", ""] + [f"- {one_line(note)}" for note in program["safety_notes"]]
    guide = exercise_guide(program["weeks"])
    if guide:
        lines += ["", "## How to do the exercises", "", guide]
    return "\n".join(lines) + "\n"


def exercise_guide(weeks: list[Any]) -> str:
    """Each exercise of these weeks once, in the order first met, as the catalogue describes it:
    the muscles it works and how it is done, as text. Names not in the catalogue (a program
    made before it) are left out."""
    entries = catalogue()
    names = dict.fromkeys(e["name"] for w in weeks for s in w["sessions"] for e in s["exercises"])
    parts = []
    for entry in (entries[name] for name in names if name in entries):
        muscles = ", ".join(entry.primary_muscles)
        if entry.secondary_muscles:
            muscles += f" (also {', '.join(entry.secondary_muscles)})"
        steps = [f"{n}. {one_line(step)}" for n, step in enumerate(entry.instructions, start=1)]
        parts.append("\n".join([f"**{one_line(entry.name)}** · works the {one_line(muscles)}", "", *steps]))
    return "\n\n".join(parts)
