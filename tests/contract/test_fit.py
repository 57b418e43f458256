"""A program is right for its client: every fit rule, what breaks it and what it says; the
exercise catalogue; and how the offline coach fills a session (tests/contract/test_contracts.py checks
that its every program fits)."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from core.contract.catalogue import MAX_CHOICES, STAPLES, catalogue, choices_for
from core.contract.fit import UnfitProgram, session_seconds, set_seconds, validate_program, validate_program_json
from core.contract.models import EQUIPMENT, EXPERIENCE_LEVELS, GOALS, ContractError, parse_onboarding
from core.generators.offline import build_program

# The client of "what matters most": 30 minutes, bodyweight only, a knee problem.
CLIENT = {
    "goal": "general_fitness",
    "experience_level": "beginner",
    "days_per_week": 3,
    "session_minutes": 30,
    "equipment": ["bodyweight"],
    "injuries": "left knee: no deep squats",
}
Program = dict[str, Any]


def fitting() -> Program:
    return build_program(parse_onboarding(CLIENT), False)


def _first_exercise(p: Program) -> dict[str, Any]:
    exercise: dict[str, Any] = p["weeks"][1]["sessions"][0]["exercises"][0]
    return exercise


def _eight_weeks(p: Program) -> None:
    p["weeks"] += [{**copy.deepcopy(w), "week": w["week"] + 4} for w in p["weeks"]]
    p["duration_weeks"] = 8


# Each rule, a way to break it, and what the refusal says.
BREAKS: dict[str, tuple[Callable[[Program], None], str]] = {
    "goal": (lambda p: p.update(goal="fat_loss"), "goal: is fat_loss, the client's goal is general_fitness"),
    "experience_level": (
        lambda p: p.update(experience_level="advanced"),
        "experience_level: is advanced, the client is beginner",
    ),
    "weeks": (_eight_weeks, "duration_weeks: is 8, free access gives 4"),
    "session_length": (
        lambda p: p["weeks"][1]["sessions"][0].update(duration_minutes=90),
        "weeks.1.sessions.0.duration_minutes: is 90, the client has 30 minutes",
    ),
    "session_length (what the exercises take)": (
        lambda p: _first_exercise(p).update(sets=10, rest_seconds=600),
        "weeks.1.sessions.0.exercises: take about",
    ),
    "reps": (
        lambda p: _first_exercise(p).update(reps='");{"'),
        "weeks.1.sessions.0.exercises.0.reps: '\");{\"' is not",
    ),
    "days": (
        lambda p: p["weeks"][2]["sessions"][1].update(day=1),
        "weeks.2.sessions: are on days [1, 1, 5]; a week's sessions go on distinct days, in order",
    ),
    "catalogue": (
        lambda p: _first_exercise(p).update(name="Amar"),
        "weeks.1.sessions.0.exercises.0.name: 'Amar' is not in the exercise catalogue",
    ),
    "catalogue (equipment)": (
        lambda p: _first_exercise(p).update(name="Barbell Squat"),
        "weeks.1.sessions.0.exercises.0.name: 'Barbell Squat' needs barbell, which the client does not have",
    ),
    "injury": (
        lambda p: p.update(safety_notes=["Warm up first."]),
        "safety_notes: do not name the client's knee (injuries: 'left knee: no deep squats')",
    ),
}


@pytest.mark.parametrize("broken", BREAKS)
def test_a_program_that_breaks_a_rule_is_refused_naming_the_field_and_the_rule(broken: str) -> None:
    program = fitting()
    breaking, message = BREAKS[broken]
    breaking(program)
    with pytest.raises(UnfitProgram) as refused:
        validate_program(program, parse_onboarding(CLIENT), False)
    assert refused.value.rules == [broken.split(" ")[0]]
    assert message in str(refused.value)
    # The same from stored JSON, as a cached entry is judged.
    with pytest.raises(UnfitProgram):
        validate_program_json(json.dumps(program), parse_onboarding(CLIENT), False)


def test_a_program_broken_many_times_shows_each_rule_s_first_few() -> None:
    program = build_program(parse_onboarding({**CLIENT, "days_per_week": 7}), True)
    for week in program["weeks"]:
        for session in week["sessions"]:
            session["duration_minutes"] = 90
    with pytest.raises(UnfitProgram) as refused:
        validate_program(program, parse_onboarding({**CLIENT, "days_per_week": 7}), True)
    assert len(refused.value.broken) == 56
    assert str(refused.value).count("is 90, the client has 30 minutes") == 3
    assert "(session_length): and 53 more like these" in str(refused.value)


def test_a_program_that_breaks_the_contract_is_refused_before_any_fit_rule() -> None:
    program = fitting()
    program["title"] = ""
    with pytest.raises(ContractError) as refused:
        validate_program(program, parse_onboarding(CLIENT), False)
    assert not isinstance(refused.value, UnfitProgram)


@pytest.mark.parametrize(
    ("injuries", "notes", "fits"),
    [
        ("lower back pain", ["Keep your spine neutral."], True),  # another word for the same part
        ("lower back pain", ["Mind the knees."], False),
        ("Knee and shoulder surgery", ["Protect the knee."], False),  # both parts are named, or it fails
        ("asthma, carry an inhaler", ["Keep the inhaler close."], True),  # no body part: one of its words
        ("asthma, carry an inhaler", ["Warm up first."], False),
        ("some discomfort", ["Stop if the discomfort grows."], True),  # "disc" in "discomfort" is no back
        ("0AAA¹", ["0AAA¹: take it easy."], True),  # a word written against a digit is named as written
    ],
)
def test_an_injury_is_named_in_the_safety_notes(injuries: str, notes: list[str], fits: bool) -> None:
    profile = parse_onboarding({**CLIENT, "injuries": injuries})
    program = {**build_program(profile, False), "safety_notes": notes}
    if fits:
        validate_program(program, profile, False)
    else:
        with pytest.raises(UnfitProgram, match="safety_notes"):
            validate_program(program, profile, False)


@pytest.mark.parametrize(
    ("reps", "seconds"),
    [
        ("10", 30),
        ("8-12", 36),
        ("5 to 8", 24),
        ("12 reps", 36),
        ("30 s", 30),
        ("10 min", 600),
        ("8-10 each side", 60),
        ("AMRAP", 60),
        ('");{"', None),
        ("", None),
        ("ten", None),
    ],
)
def test_a_set_takes_its_repetitions_or_its_time(reps: str, seconds: int | None) -> None:
    assert set_seconds(reps) == seconds


def test_a_session_takes_every_set_and_the_rest_after_it_but_the_last() -> None:
    session: Any = {
        "day": 1,
        "focus": "f",
        "duration_minutes": 30,
        "exercises": [
            {"name": "Pushups", "sets": 3, "reps": "10", "rest_seconds": 60, "notes": ""},
            {"name": "Plank", "sets": 2, "reps": "30 s", "rest_seconds": 45, "notes": ""},
        ],
    }
    assert session_seconds(session) == 3 * (30 + 60) + 2 * (30 + 45) - 45


def test_the_catalogue_maps_the_source_onto_the_contract_s_equipment() -> None:
    entries = catalogue()
    assert 650 < len(entries) < 873  # entries needing kit the contract has no value for are left out
    assert {kit for e in entries.values() for kit in e.needs} == set(EQUIPMENT) - {"bodyweight"}
    # Curated where the source's field says too little.
    assert entries["Pullups"].needs == {"pull_up_bar"} and entries["Chin-Up"].needs == {"pull_up_bar"}
    assert entries["Barbell Bench Press - Medium Grip"].needs == {"barbell"}
    assert entries["Dumbbell Bench Press"].needs == {"dumbbells"}
    assert entries["Walking, Treadmill"].needs == {"cardio_machine"}
    assert "Medicine Ball Chest Pass" not in entries and "Dips - Triceps Version" not in entries
    assert entries["Pushups"].instructions and entries["Pushups"].primary_muscles == ("chest",)
    assert all(m.name in entries for moves in STAPLES.values() for m in moves)


@pytest.mark.parametrize(("goal", "level"), list(itertools.product(GOALS, EXPERIENCE_LEVELS)))
def test_an_llm_is_offered_what_suits_the_client_and_every_staple_the_offline_coach_would_use(
    goal: str, level: str
) -> None:
    for size in (0, 2, 8):
        for kit in itertools.combinations(EQUIPMENT, size):
            profile = parse_onboarding(
                {**CLIENT, "goal": goal, "experience_level": level, "equipment": list(kit), "session_minutes": 180}
            )
            offered = choices_for(profile)
            assert len(offered) <= MAX_CHOICES and offered == sorted(set(offered))
            assert all(catalogue()[name].possible_with({*kit, "bodyweight"}) for name in offered)
            used = {
                e["name"] for w in build_program(profile, True)["weeks"] for s in w["sessions"] for e in s["exercises"]
            }
            assert used <= set(offered)


@pytest.mark.parametrize("minutes", [15, 30, 45, 60, 90, 180])
def test_the_offline_coach_fills_the_client_s_minutes_without_passing_them(minutes: int) -> None:
    uninjured = {k: v for k, v in CLIENT.items() if k != "injuries"}
    profile = parse_onboarding({**uninjured, "session_minutes": minutes, "equipment": list(EQUIPMENT)})
    for week in build_program(profile, True)["weeks"]:
        for session in week["sessions"]:
            taken = session_seconds(session)
            # Up to two hours, at least three quarters of it is work; past that the work is
            # capped (six lifts and 90 minutes of conditioning), and the rest is the client's.
            assert taken is not None and 0.75 * min(minutes, 120) * 60 <= taken <= minutes * 60
