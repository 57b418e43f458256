"""A rule-based coach: builds a sensible, contract-valid program from the profile with no
network and no model. Deterministic: the same profile and access give the same program."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.formatting import counted
from core.generators.base import Generation, GeneratorIdentity, OnProgress, fingerprint, program_weeks
from core.models import OnboardingResponses
from core.settings import OFFLINE_MODEL


@dataclass(frozen=True)
class Move:
    name: str
    needs: frozenset[str]  # any one of these is enough; empty means no equipment
    stresses: frozenset[str] = frozenset()  # body parts an injury note can rule out


def _move(name: str, needs: str = "", stresses: str = "") -> Move:
    return Move(name, frozenset(needs.split()), frozenset(stresses.split()))


# Movement patterns, each with options from most to least preferred.
LIBRARY: dict[str, list[Move]] = {
    "squat": [
        _move("Barbell back squat", "barbell", "knee back"),
        _move("Goblet squat", "dumbbells kettlebells", "knee"),
        _move("Leg press", "machines", "knee"),
        _move("Box squat to bench", "", "knee"),
        _move("Glute bridge", ""),
    ],
    "hinge": [
        _move("Romanian deadlift", "barbell dumbbells", "back"),
        _move("Kettlebell swing", "kettlebells", "back"),
        _move("Banded good morning", "resistance_bands", "back"),
        _move("Single-leg hip thrust", ""),
    ],
    "push": [
        _move("Barbell bench press", "barbell", "shoulder"),
        _move("Dumbbell bench press", "dumbbells", "shoulder"),
        _move("Chest press machine", "machines", "shoulder"),
        _move("Push-up", "", "shoulder wrist"),
        _move("Incline push-up", ""),
    ],
    "pull": [
        _move("Pull-up", "pull_up_bar", "shoulder elbow"),
        _move("Lat pulldown", "machines", "shoulder"),
        _move("One-arm dumbbell row", "dumbbells"),
        _move("Banded row", "resistance_bands"),
        _move("Inverted row under a table", ""),
    ],
    "overhead": [
        _move("Standing overhead press", "barbell dumbbells", "shoulder back"),
        _move("Kettlebell press", "kettlebells", "shoulder"),
        _move("Banded face pull", "resistance_bands"),
        _move("Prone Y-T-W raise", ""),
    ],
    "lunge": [
        _move("Dumbbell walking lunge", "dumbbells", "knee"),
        _move("Bulgarian split squat", "", "knee"),
        _move("Step-up", "", "knee"),
        _move("Side-lying leg raise", ""),
    ],
    "core": [
        _move("Hanging knee raise", "pull_up_bar", "shoulder"),
        _move("Pallof press", "resistance_bands machines"),
        _move("Dead bug", ""),
        _move("Front plank", ""),
    ],
    "conditioning": [
        _move("Intervals on the cardio machine", "cardio_machine"),
        _move("Kettlebell swing intervals", "kettlebells", "back"),
        _move("Brisk walk or easy jog", "", "knee"),
        _move("Low-impact circuit (march, step-back, shadow boxing)", ""),
    ],
}

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

# Which days of the week carry the sessions, spread out to leave rest between them.
TRAINING_DAYS: dict[int, list[int]] = {
    1: [3],
    2: [2, 5],
    3: [1, 3, 5],
    4: [1, 2, 4, 5],
    5: [1, 2, 3, 5, 6],
    6: [1, 2, 3, 4, 5, 6],
    7: [1, 2, 3, 4, 5, 6, 7],
}

# (sets, reps, rest) by goal; conditioning work is prescribed by time instead.
PRESCRIPTION: dict[str, tuple[int, str, int]] = {
    "strength": (4, "4-6", 150),
    "hypertrophy": (3, "8-12", 90),
    "fat_loss": (3, "10-15", 45),
    "endurance": (2, "15-20", 30),
    "general_fitness": (3, "8-12", 60),
}
LEVEL_SET_CHANGE = {"beginner": -1, "intermediate": 0, "advanced": 1}
INJURY_WORDS = {
    "knee": ("knee", "acl", "menisc", "patell"),
    "back": ("back", "spine", "disc", "lumbar"),
    "shoulder": ("shoulder", "rotator"),
    "wrist": ("wrist",),
    "elbow": ("elbow",),
}
GOAL_WORDS = {
    "strength": "get stronger on the big lifts",
    "hypertrophy": "build muscle",
    "fat_loss": "lose fat while keeping muscle",
    "endurance": "build stamina",
    "general_fitness": "get fitter all round",
}


def injured_parts(injuries: str | None) -> set[str]:
    text = (injuries or "").lower()
    return {part for part, words in INJURY_WORDS.items() if any(w in text for w in words)}


def choose(pattern: str, equipment: set[str], avoid: set[str], used: set[str]) -> Move:
    """The first option the client can do safely, preferring one not yet in the session."""
    options = LIBRARY[pattern]
    usable = [m for m in options if (not m.needs or m.needs & equipment) and not (m.stresses & avoid)] or options[
        -1:
    ]  # the last option of every pattern needs nothing and stresses nothing
    return next((m for m in usable if m.name not in used), usable[0])


# Bumped by hand when the rules change what they write; the fingerprint of this module's
# source catches any change that was not bumped (at the cost of regenerating after a
# change that only touched a comment).
RULES_VERSION = "r2"
MODEL = OFFLINE_MODEL


class OfflineGenerator:
    """The embedded default generator."""

    name = "offline"
    identity = GeneratorIdentity(
        kind="offline",
        model=MODEL,
        version=f"offline-{RULES_VERSION}-{fingerprint(Path(__file__).read_text(encoding='utf-8'))}",
    )

    def generate(
        self, profile: OnboardingResponses, has_paid_access: bool, on_progress: OnProgress | None = None
    ) -> Generation:
        # Done in milliseconds: there is nothing to show before the whole program.
        return Generation(program=build_program(profile, has_paid_access), model=MODEL)


def build_program(profile: OnboardingResponses, has_paid_access: bool) -> dict[str, Any]:
    weeks = program_weeks(has_paid_access)
    equipment: set[str] = {*profile.equipment, "bodyweight"}
    avoid = injured_parts(profile.injuries)
    exercises_per_session = max(2, min(8, (profile.session_minutes - 10) // 9))
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
                    _session(profile, week, weeks, day, focus, patterns[:exercises_per_session], equipment, avoid)
                    for day, (focus, patterns) in zip(TRAINING_DAYS[profile.days_per_week], templates, strict=True)
                ],
            }
            for week in range(1, weeks + 1)
        ],
        "safety_notes": _safety_notes(profile, avoid),
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


def _session(
    profile: OnboardingResponses,
    week: int,
    weeks: int,
    day: int,
    focus: str,
    patterns: list[str],
    equipment: set[str],
    avoid: set[str],
) -> dict[str, Any]:
    sets, reps, rest = PRESCRIPTION[profile.goal]
    sets = max(1, sets + LEVEL_SET_CHANGE[profile.experience_level] - (1 if _is_deload(week, weeks) else 0))
    exercises: list[dict[str, Any]] = []
    for pattern in patterns:
        move = choose(pattern, equipment, avoid, {e["name"] for e in exercises})
        if pattern == "conditioning":
            minutes = 10 + min(week, 4) * 2
            exercises.append(
                {
                    "name": move.name,
                    "sets": 1,
                    "reps": f"{minutes} min",
                    "rest_seconds": 0,
                    "notes": "Conversational pace; you should be able to speak in short sentences.",
                }
            )
        else:
            exercises.append(
                {
                    "name": move.name,
                    "sets": sets,
                    "reps": reps,
                    "rest_seconds": rest,
                    "notes": _exercise_note(week, weeks, pattern),
                }
            )
    return {"day": day, "focus": focus, "duration_minutes": profile.session_minutes, "exercises": exercises}


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


def _safety_notes(profile: OnboardingResponses, avoid: set[str]) -> list[str]:
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
