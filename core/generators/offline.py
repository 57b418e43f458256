"""A rule-based coach: builds a sensible program that fits the client, from the catalogue's
staples, with no network and no model. Deterministic: the same profile and access give the
same program, and after a coach's rejection, one of other exercises where there are any."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.contract.catalogue import STAPLES, Move, catalogue, revision, suits
from core.contract.fit import TRAINING_DAYS, injured_parts, program_weeks, session_seconds
from core.contract.generation import Generation, GeneratorIdentity, Rejected, fingerprint
from core.contract.models import Exercise, OnboardingResponses, Session
from core.formatting import counted
from core.generators.base import OnProgress
from core.prices import OFFLINE_MODEL

# Session templates by training days per week: each is a focus and its patterns.
SPLITS: dict[int, list[tuple[str, list[str]]]] = {
    1: [("Full body", ["squat", "push", "hinge", "pull", "core", "conditioning"])],
    2: [
        ("Full body A", ["squat", "push", "pull", "core", "conditioning"]),
        ("Full body B", ["hinge", "overhead", "lunge", "pull", "core"]),
    ],
    3: [
        ("Full body A", ["squat", "push", "pull", "core", "conditioning"]),
        ("Full body B", ["hinge", "overhead", "pull", "lunge", "core"]),
        ("Full body C", ["lunge", "push", "hinge", "pull", "conditioning"]),
    ],
    4: [
        ("Upper body", ["push", "pull", "overhead", "pull", "core"]),
        ("Lower body", ["squat", "hinge", "lunge", "core", "conditioning"]),
        ("Upper body", ["overhead", "pull", "push", "pull", "core"]),
        ("Lower body", ["hinge", "squat", "lunge", "core", "conditioning"]),
    ],
}
SPLITS[5] = SPLITS[4] + [("Conditioning and core", ["conditioning", "core", "lunge", "pull"])]
SPLITS[6] = SPLITS[4] + [
    ("Full body", ["squat", "push", "pull", "core"]),
    ("Conditioning and core", ["conditioning", "core", "lunge"]),
]
SPLITS[7] = SPLITS[6] + [("Active recovery and mobility", ["core", "conditioning"])]

# (sets, reps, rest) by goal; conditioning work is prescribed by time instead.
PRESCRIPTION: dict[str, tuple[int, str, int]] = {
    "strength": (4, "4-6", 150),
    "hypertrophy": (3, "8-12", 90),
    "fat_loss": (3, "10-15", 45),
    "endurance": (2, "15-20", 30),
    "general_fitness": (3, "8-12", 60),
}
LEVEL_SET_CHANGE = {"beginner": -1, "intermediate": 0, "advanced": 1}
GOAL_WORDS = {
    "strength": "get stronger on the big lifts",
    "hypertrophy": "build muscle",
    "fat_loss": "lose fat while keeping muscle",
    "endurance": "build stamina",
    "general_fitness": "get fitter all round",
}


@dataclass(frozen=True)
class Avoid:
    """What a client's movements keep clear of: the body parts they injured (never loaded),
    and the exercises of a program their coach rejected (others are chosen where there are)."""

    parts: frozenset[str]
    rejected: frozenset[str] = frozenset()


def choose(pattern: str, profile: OnboardingResponses, avoid: Avoid, used: set[str]) -> Move | None:
    """The first option the client can do safely and has not done yet this session, one the
    rejected program did not have where there is one; None when every option needs what they
    lack or loads what they injured."""
    entries = catalogue()
    safe = [
        m
        for m in STAPLES[pattern]
        if m.name not in used and suits(entries[m.name], profile) and not (m.stresses & avoid.parts)
    ]
    return next((m for m in safe if m.name not in avoid.rejected), next(iter(safe), None))


# Bumped by hand when the rules change what they write; the fingerprint of this module's
# source catches any change that was not bumped (at the cost of regenerating after a
# change that only touched a comment).
RULES_VERSION = "r3"
MODEL = OFFLINE_MODEL


class OfflineGenerator:
    """The embedded default generator."""

    name = "offline"
    identity = GeneratorIdentity(
        model=MODEL,
        version=f"offline-{RULES_VERSION}-{fingerprint(Path(__file__).read_text(encoding='utf-8'), revision())}",
    )

    def generate(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        # Done in milliseconds: there is nothing to show before the whole program.
        shunned = frozenset(rejected.exercise_names()) if rejected is not None else frozenset()
        return Generation(program=build_program(profile, has_paid_access, shunned), model=MODEL)

    def varies_after_rejection(self, profile: OnboardingResponses, has_paid_access: bool, program: Any) -> bool:
        # Its choice is fixed by the answers: it varies only where the client's kit and
        # injuries leave exercises the rejected program did not have.
        shunned = Rejected(reason="", note=None, program=program).exercise_names()
        return build_program(profile, has_paid_access, frozenset(shunned)) != program


def build_program(
    profile: OnboardingResponses, has_paid_access: bool, rejected: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The client's program; with `rejected`, the exercises of a program their coach rejected,
    made of others where the client's equipment, level and injuries allow them."""
    weeks = program_weeks(has_paid_access)
    avoid = Avoid(frozenset(injured_parts(profile.injuries)), rejected)
    templates = SPLITS[profile.days_per_week]
    return {
        "title": _title(profile, weeks),
        "summary": _summary(profile, weeks, has_paid_access),
        "goal": profile.goal,
        "experience_level": profile.experience_level,
        "duration_weeks": weeks,
        "days_per_week": profile.days_per_week,
        "weeks": [
            {
                "week": week,
                "theme": _theme(week, weeks),
                "sessions": [
                    _session(profile, week, weeks, day, focus, patterns, avoid)
                    for day, (focus, patterns) in zip(TRAINING_DAYS[profile.days_per_week], templates, strict=True)
                ],
            }
            for week in range(1, weeks + 1)
        ],
        "safety_notes": _safety_notes(profile, avoid.parts),
    }


def _is_deload(week: int, weeks: int) -> bool:
    return weeks >= 4 and week % 4 == 0


def _theme(week: int, weeks: int) -> str:
    if _is_deload(week, weeks):
        return "Deload: lighter loads, same movements, recover"
    if week == 1:
        return "Foundation: learn the movements, leave 3 reps in reserve"
    if week == weeks:
        return "Consolidate: your best quality reps of the block"
    return "Build: add a little load or a rep each session"


# A session holds at most this many lifts; a long one adds lifts (a second round of its
# patterns, with other movements), and the time left goes to a conditioning block of at most
# this many minutes.
MAX_LIFTS = 6
MAX_CONDITIONING_MINUTES = 90
MIN_CONDITIONING_MINUTES = 5


def _session(
    profile: OnboardingResponses, week: int, weeks: int, day: int, focus: str, patterns: list[str], avoid: Avoid
) -> dict[str, Any]:
    """The template's lifts, as many as fit the client's minutes (core.fit counts what each
    takes), then a conditioning block in the time that is left."""
    budget = profile.session_minutes * 60
    exercises: list[Exercise] = []
    lifts = [p for p in patterns if p != "conditioning"]
    for pattern in lifts + lifts:  # the second round only where time is left
        move = choose(pattern, profile, avoid, {e["name"] for e in exercises})
        if move is None or len(exercises) == MAX_LIFTS:
            continue
        candidate = _lift(profile, week, weeks, pattern, move)
        if exercises and _seconds([*exercises, candidate]) > budget:
            break
        exercises.append(candidate)
    move = choose("conditioning", profile, avoid, {e["name"] for e in exercises})
    if move is not None:
        # What is left once the last lift's rest, which the block now follows, is counted.
        left = budget - _seconds([*exercises, _conditioning(move, 0)])
        minutes = min(MAX_CONDITIONING_MINUTES, left // 60)
        if minutes >= MIN_CONDITIONING_MINUTES:
            exercises.append(_conditioning(move, minutes))
    minutes = max(5, -(-_seconds(exercises) // 60))
    return {"day": day, "focus": focus, "duration_minutes": minutes, "exercises": exercises}


def _seconds(exercises: list[Exercise]) -> int:
    return session_seconds(Session(day=1, focus="", duration_minutes=5, exercises=exercises)) or 0


def _lift(profile: OnboardingResponses, week: int, weeks: int, pattern: str, move: Move) -> Exercise:
    sets, reps, rest = PRESCRIPTION[profile.goal]
    sets = max(1, sets + LEVEL_SET_CHANGE[profile.experience_level] - (1 if _is_deload(week, weeks) else 0))
    return Exercise(
        name=move.name,
        sets=sets,
        reps=f"{move.hold_seconds} s" if move.hold_seconds else reps,
        rest_seconds=rest,
        notes=_exercise_note(week, weeks, pattern),
    )


def _conditioning(move: Move, minutes: int) -> Exercise:
    return Exercise(
        name=move.name,
        sets=1,
        reps=f"{minutes} min",
        rest_seconds=0,
        notes="Conversational pace; you should be able to speak in short sentences.",
    )


def _exercise_note(week: int, weeks: int, pattern: str) -> str:
    if _is_deload(week, weeks):
        return "About 60% of last week's load; stop well short of fatigue."
    if week == 1:
        return "Pick a load you could lift 3 more times; focus on form."
    if pattern == "core":
        return "Slow and controlled; add 5 seconds or 2 reps when it feels easy."
    return "Add load or a rep when every set reaches the top of the range."


def _title(profile: OnboardingResponses, weeks: int) -> str:
    goal = profile.goal.replace("_", " ")
    return f"{weeks}-week {goal} plan, {counted(profile.days_per_week, 'day')} a week ({profile.experience_level})"


def _summary(profile: OnboardingResponses, weeks: int, has_paid_access: bool) -> str:
    kit = ", ".join(e.replace("_", " ") for e in profile.equipment) or "bodyweight only"
    parts = [
        f"{counted(weeks, 'week')} to {GOAL_WORDS[profile.goal]}: {counted(profile.days_per_week, 'session')} a week "
        f"of about {profile.session_minutes} minutes, using {kit}.",
        "Every fourth week is a deload." if weeks >= 4 else "",
        "Paid plan: a full progressive block." if has_paid_access else "Free plan: a 4-week starter block.",
    ]
    if profile.notes:
        parts.append(f"Coach notes considered: {profile.notes}")
    return " ".join(p for p in parts if p)[:2000]


def _safety_notes(profile: OnboardingResponses, avoid: frozenset[str]) -> list[str]:
    notes = ["Warm up for 5-10 minutes before each session.", "Stop any exercise that causes sharp pain."]
    if profile.injuries:
        notes.append(f"Reported injuries or limitations: {profile.injuries}.")
    if avoid:
        parts = ", ".join(sorted(avoid))
        notes.append(f"Exercises loading the {parts} were replaced with gentler options.")
    elif profile.injuries:
        notes.append("Check the reported limitation with a professional before loading it.")
    if profile.age is not None and profile.age >= 60:
        notes.append("Over 60: progress loads slowly and favour balance work.")
    if profile.age is not None and profile.age < 18:
        notes.append("Under 18: train with supervision and prioritise technique over load.")
    return notes
