"""What of a program still being written is shown: only what the parser has moved past."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest

from core.contract.models import parse_onboarding
from core.contract.partial_program import ProgramSoFar, ProgressReporter, parse_partial, program_so_far, progress_line
from core.generators.offline import build_program
from tests.helpers import PROFILE


def answer(profile: dict[str, Any], paid: bool) -> dict[str, Any]:
    """A real program as the LLM writes it: its weeks unnumbered (the service numbers them)."""
    program = build_program(parse_onboarding(profile), paid)
    return {**program, "weeks": [{k: v for k, v in w.items() if k != "week"} for w in program["weeks"]]}


# Non-ASCII text, so that offsets inside a multi-byte character and an escape are cut too.
INJURED = {**PROFILE, "injuries": "genou droit — « douleur » au squat", "notes": 'says "no burpees"\\ever'}


@pytest.mark.parametrize(("profile", "paid"), [(PROFILE, False), (INJURED, False)])
def test_every_prefix_of_a_real_program_shows_only_complete_sessions_and_never_fewer(
    profile: dict[str, Any], paid: bool
) -> None:
    written = answer(profile, paid)
    text = json.dumps(written, ensure_ascii=False)
    sessions = [(n, s) for n, week in enumerate(written["weeks"], start=1) for s in week["sessions"]]
    shown_before = 0
    title_seen = summary_seen = False
    for offset in range(len(text) + 1):
        so_far = program_so_far(parse_partial(text[:offset]))
        shown = [(week["week"], s) for week in so_far.weeks for s in week["sessions"]]
        # Whole sessions, the program's own, from the first on: never one still being written.
        assert shown == sessions[: len(shown)], offset
        assert len(shown) >= shown_before, offset
        shown_before = len(shown)
        assert so_far.title in (None, written["title"]), offset
        assert so_far.summary in (None, written["summary"]), offset
        assert not (title_seen and so_far.title is None) and not (summary_seen and so_far.summary is None)
        title_seen, summary_seen = so_far.title is not None, so_far.summary is not None
        for week in so_far.weeks:
            assert week["theme"] == written["weeks"][week["week"] - 1]["theme"], offset
    assert shown_before == len(sessions)  # the whole answer shows every session
    # Byte offsets too, as a client decoding bytes as they come would cut them.
    encoded = text.encode()
    for offset in range(0, len(encoded) + 1, 3):
        program_so_far(parse_partial(encoded[:offset].decode(errors="ignore")))


def test_a_session_is_shown_once_the_parser_has_moved_past_it() -> None:
    text = json.dumps(answer(PROFILE, False))
    first_session_ends = text.index("}]}", text.index('"sessions"')) + 3  # its last exercise, their list, itself
    # Closed, even followed by its comma, it is still the list's last element: the parser
    # has not moved past it until the next one begins.
    assert program_so_far(parse_partial(text[: first_session_ends + 2])).sessions == 0
    assert program_so_far(parse_partial(text[: first_session_ends + 3])).sessions == 1
    before_summary = text.index('"summary"')
    assert program_so_far(parse_partial(text[:before_summary])).title is None  # the title may go on
    assert program_so_far(parse_partial(text[: before_summary + 12])).title is not None


@pytest.mark.parametrize(
    "partial",
    [None, "text", 3, [], {"weeks": "soon"}, {"weeks": [3, {"sessions": [1]}]}, {"title": 5, "summary": None, "x": 1}],
)
def test_whatever_the_model_wrote_shows_nothing_it_cannot_and_never_raises(partial: Any) -> None:
    assert program_so_far(partial) == ProgramSoFar()


def test_a_session_that_is_not_one_ends_what_is_shown() -> None:
    good = answer(PROFILE, False)["weeks"][0]["sessions"][0]
    partial = {"title": "t", "weeks": [{"theme": "a", "sessions": [good, {"day": 2}, good, good]}], "safety_notes": []}
    so_far = program_so_far(partial)
    assert so_far.title == "t" and [len(w["sessions"]) for w in so_far.weeks] == [1]


def test_text_that_does_not_begin_a_json_value_parses_as_none() -> None:
    assert parse_partial("{'title': 'not json'") is None
    assert parse_partial("Sure! Here is") is None


@pytest.mark.parametrize(
    ("so_far", "line"),
    [
        (ProgramSoFar(), None),
        (ProgramSoFar(title="t"), "title written"),
        (ProgramSoFar(title="t", summary="s"), "title and summary written"),
        (
            ProgramSoFar(
                title="t",
                duration_weeks=8,
                days_per_week=4,
                weeks=({"week": 1, "theme": "", "sessions": []}, {"week": 2, "theme": "", "sessions": [{}] * 3}),  # type: ignore[list-item]
            ),
            "week 2 of 8: 3 of 4 sessions written",
        ),
        (ProgramSoFar(weeks=({"week": 1, "theme": "", "sessions": [{}]},)), "week 1: 1 sessions written"),  # type: ignore[list-item]
    ],
)
def test_the_progress_line_says_how_far_the_writing_is(so_far: ProgramSoFar, line: str | None) -> None:
    assert progress_line(so_far) == line


def test_progress_is_reported_when_more_is_complete_and_at_most_once_an_interval() -> None:
    text = json.dumps(answer(PROFILE, False))
    now = [0.0]
    heard: list[ProgramSoFar] = []
    reporter = ProgressReporter(heard.append, interval=0.1, clock=lambda: now[0])
    for offset in range(1, len(text) + 1):
        now[0] += 0.001  # a token a millisecond
        reporter.written(lambda: text[:offset])  # noqa: B023 (asked for at once)
    assert 5 < len(heard) <= len(text) * 0.001 / 0.1 + 1
    counts = [so_far.sessions for so_far in heard]
    assert counts == sorted(counts) and all(a != b for a, b in pairwise(heard))  # each tells more
    assert heard[-1].sessions == 12
    now[0] += 1
    reporter.written(lambda: "{'not json")  # what is not JSON tells nothing: what was shown stays
    assert len(heard) == len(counts)
