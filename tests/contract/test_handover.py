"""A program handed over: printable Markdown with a table per session, the contract's JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from core.contract.catalogue import catalogue
from core.contract.handover import file_name, program_json, program_markdown
from core.contract.models import parse_onboarding, parse_program
from core.generators.offline import build_program
from tests.helpers import PROFILE, as_read

WHEN = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def test_markdown_has_one_table_per_session_and_every_exercise() -> None:
    profile = parse_onboarding({**PROFILE, "notes": "knees | hips"})
    program = build_program(profile, True)
    text = program_markdown(program, user_id="client-1", created_at=WHEN)
    sessions = [s for w in program["weeks"] for s in w["sessions"]]
    assert text.count("| Exercise | Sets | Reps | Rest (s) | Notes |") == len(sessions) == 8 * 3
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Exercise |" not in line]
    assert len(rows) == sum(len(s["exercises"]) for s in sessions)
    assert all(line.count(" | ") == 4 for line in rows)  # a pipe in the text never opens a column
    assert text.startswith(f"# {program['title']}\n") and "For **`client-1`**, 2026-11-25." in text


def test_json_is_exactly_the_contract_document_and_files_are_named_after_user_and_date() -> None:
    profile = parse_onboarding(PROFILE)
    program = build_program(profile, False)
    assert parse_program(json.loads(program_json(program)), profile) == program
    assert file_name("client-1", WHEN, "md") == "training-program-client-1-2026-11-25.md"


def test_one_day_a_week_reads_in_the_singular_in_the_title_summary_and_hand_out() -> None:
    program = build_program(parse_onboarding({**PROFILE, "days_per_week": 1}), False)
    text = program_markdown(program, user_id="client-1", created_at=WHEN)
    assert "1 day a week" in program["title"] and "1 session a week" in program["summary"]
    assert "4 weeks, 1 day a week." in text
    assert "1 days" not in text and "1 sessions" not in text


def test_links_and_images_in_the_clients_text_and_the_llms_stay_text_in_the_hand_out() -> None:
    link, image = "[Click to re-login](http://evil.example/phish)", "![p](http://evil.example/p.png)"
    bare = "www.evil.example or https://evil.example/x, mail coach@evil.example &amp; <img src=x>"
    injuries = f"knee {link} {image}"
    program = build_program(parse_onboarding({**PROFILE, "injuries": injuries, "notes": bare}), False)
    program["title"], program["weeks"][0]["theme"] = f"Plan {image}", f"Theme {link}"
    session = program["weeks"][0]["sessions"][0]
    session["focus"], session["exercises"][0]["notes"] = f"Focus {bare}", f"Cue {image}"
    text = program_markdown(program, user_id="client-1", created_at=WHEN)
    # No link, image, HTML or entity is left to a Markdown reader, GitHub's bare addresses included.
    assert re.search(r"(?<!\\)[<>\[\]!&]", text) is None
    assert re.search(r"(?i)(https?|www)[:.]|\w@\w", text) is None
    for shown in (injuries, bare, program["title"], program["weeks"][0]["theme"], session["exercises"][0]["notes"]):
        assert shown in as_read(text)


def test_the_hand_out_says_how_each_exercise_is_done_from_the_catalogue_once_each() -> None:
    program = build_program(parse_onboarding(PROFILE), False)
    program["weeks"][0]["sessions"][0]["exercises"][0]["name"] = "Made-up lift"  # not in the catalogue
    text = program_markdown(program, user_id="client-1", created_at=WHEN)
    guide = text.split("## How to do the exercises\n", 1)[1]
    entry = catalogue()["Dumbbell Bench Press"]
    assert guide.count("**Dumbbell Bench Press** · works the chest (also shoulders, triceps)") == 1
    assert f"1. {entry.instructions[0]}" in as_read(guide)
    assert "Made-up lift" not in guide
