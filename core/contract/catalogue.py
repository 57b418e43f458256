"""The exercises a program may use: the public-domain Free Exercise DB (`core/exercises/`,
source and licence in SOURCE.md), each entry mapped onto the contract's equipment. One
catalogue for every generator, and for the rules that judge what a generator wrote."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from core.contract.models import Equipment, ExperienceLevel, Goal, OnboardingResponses

SOURCE = Path(__file__).parents[1] / "exercises" / "free-exercise-db.json"


@dataclass(frozen=True)
class CatalogueExercise:
    name: str
    needs: frozenset[Equipment]  # every one of these; none: the body alone
    level: ExperienceLevel
    category: str  # the source's: strength, cardio, stretching, plyometrics, powerlifting, …
    mechanic: str | None  # compound or isolation, where the source says
    primary_muscles: tuple[str, ...]
    secondary_muscles: tuple[str, ...]
    instructions: tuple[str, ...]

    def possible_with(self, equipment: Iterable[str]) -> bool:
        return self.needs <= set(equipment)


def _kit(*names: Equipment) -> frozenset[Equipment]:
    return frozenset(names)


BODY_ONLY = _kit()
# The source's equipment field as the contract names it; None: nothing in the contract stands
# for it (a medicine ball, a foam roller, a sled...), and such entries are left out unless
# curated below.
SOURCE_EQUIPMENT: dict[str | None, frozenset[Equipment] | None] = {
    "body only": BODY_ONLY,
    None: BODY_ONLY,
    "dumbbell": _kit("dumbbells"),
    "barbell": _kit("barbell"),
    "e-z curl bar": _kit("barbell"),
    "kettlebells": _kit("kettlebells"),
    "bands": _kit("resistance_bands"),
    "machine": _kit("machines"),
    "cable": _kit("machines"),
    "other": None,
    "medicine ball": None,
    "exercise ball": None,
    "foam roll": None,
}
HANGS_FROM_A_BAR = "hangs from a bar, whatever the source's 'body only' says"
NO_SUCH_KIT = "needs kit the contract has no value for"
# Entries whose needs the source's field does not tell: the needs (None: left out), and why.
CURATED: dict[str, tuple[frozenset[Equipment] | None, str]] = {
    **{
        name: (_kit("pull_up_bar"), HANGS_FROM_A_BAR)
        for name in (
            "Chin-Up",
            "Gorilla Chin/Crunch",
            "Hanging Leg Raise",
            "Hanging Pike",
            "Pullups",
            "Scapular Pull-Up",
            "V-Bar Pullup",
            "Wide-Grip Rear Pull-Up",
            "Mixed Grip Chin",
            "One Arm Chin-Up",
            "Side To Side Chins",
            "Gironda Sternum Chins",
            "Rocky Pull-Ups/Pulldowns",
            "Muscle Up",
            "Kipping Muscle Up",
        )
    },
    "Band Assisted Pull-Up": (_kit("pull_up_bar", "resistance_bands"), "a band looped over a pull-up bar"),
    "Inverted Row": (None, "needs a bar fixed at hip height, which is not a pull-up bar"),
    "Dips - Triceps Version": (None, "needs parallel bars: " + NO_SUCH_KIT),
    "Crunch - Legs On Exercise Ball": (None, "needs an exercise ball: " + NO_SUCH_KIT),
    "Hyperextensions (Back Extensions)": (_kit("machines"), "on a hyperextension bench, gym equipment"),
}
# Cardio entries on a machine (a treadmill, a rower, a bike) need a cardio machine, not a weights machine.
CARDIO = "cardio"
LEVELS: dict[str, ExperienceLevel] = {"beginner": "beginner", "intermediate": "intermediate", "expert": "advanced"}


def _needs(entry: dict[str, Any]) -> frozenset[Equipment] | None:
    if entry["name"] in CURATED:
        return CURATED[entry["name"]][0]
    if entry["category"] == CARDIO and entry["equipment"] == "machine":
        return _kit("cardio_machine")
    return SOURCE_EQUIPMENT[entry["equipment"]]


@cache
def catalogue() -> Mapping[str, CatalogueExercise]:
    """Every usable entry by its exact name (names are unique in the source)."""
    out: dict[str, CatalogueExercise] = {}
    for entry in json.loads(SOURCE.read_text(encoding="utf-8")):
        needs = _needs(entry)
        if needs is None:
            continue
        out[entry["name"]] = CatalogueExercise(
            name=entry["name"],
            needs=needs,
            level=LEVELS[entry["level"]],
            category=entry["category"],
            mechanic=entry["mechanic"],
            primary_muscles=tuple(entry["primaryMuscles"]),
            secondary_muscles=tuple(entry["secondaryMuscles"]),
            instructions=tuple(entry["instructions"]),
        )
    return out


@dataclass(frozen=True)
class Move:
    name: str  # a catalogue entry's, which says what equipment and level it needs
    stresses: frozenset[str] = frozenset()  # body parts (core.fit.BODY_PARTS) an injury rules it out for
    hold_seconds: int | None = None  # held for a time, not repeated


def _move(name: str, stresses: str = "", hold_seconds: int | None = None) -> Move:
    return Move(name, frozenset(stresses.split()), hold_seconds)


# The staple movements, by pattern, each with entries from most to least preferred: the
# offline coach gives a client the first their equipment, level and injuries allow, and an
# LLM is offered every one that suits the client before the rest of the catalogue.
STAPLES: dict[str, list[Move]] = {
    "squat": [
        _move("Barbell Squat", "knee back"),
        _move("Goblet Squat", "knee"),
        _move("Dumbbell Squat", "knee"),
        _move("Leg Press", "knee"),
        _move("Squats - With Bands", "knee"),
        _move("Bodyweight Squat", "knee"),
        _move("Butt Lift (Bridge)"),
    ],
    "hinge": [
        _move("Romanian Deadlift", "back"),
        _move("Stiff-Legged Dumbbell Deadlift", "back"),
        _move("One-Arm Kettlebell Swings", "back"),
        _move("Band Good Morning", "back"),
        _move("Single Leg Glute Bridge"),
    ],
    "push": [
        _move("Barbell Bench Press - Medium Grip", "shoulder"),
        _move("Dumbbell Bench Press", "shoulder"),
        _move("Machine Bench Press", "shoulder"),
        _move("Bench Press - With Bands", "shoulder"),
        _move("Pushups", "shoulder wrist"),
        _move("Incline Push-Up", "wrist"),
    ],
    "pull": [
        _move("Pullups", "shoulder elbow"),
        _move("Wide-Grip Lat Pulldown", "shoulder"),
        _move("One-Arm Dumbbell Row"),
        _move("Bent Over Barbell Row", "back"),
        _move("Band Assisted Pull-Up", "shoulder elbow"),
        _move("Superman", "back"),
    ],
    "overhead": [
        _move("Standing Military Press", "shoulder back"),
        _move("Dumbbell Shoulder Press", "shoulder"),
        _move("Two-Arm Kettlebell Military Press", "shoulder"),
        _move("Leverage Shoulder Press", "shoulder"),
        _move("Shoulder Press - With Bands", "shoulder"),
        _move("Push Up to Side Plank", "shoulder wrist"),
    ],
    "lunge": [
        _move("Dumbbell Lunges", "knee"),
        _move("Barbell Walking Lunge", "knee"),
        _move("Bodyweight Walking Lunge", "knee"),
        _move("Step-up with Knee Raise", "knee"),
        _move("Glute Kickback"),
    ],
    "core": [
        _move("Hanging Leg Raise", "shoulder"),
        _move("Pallof Press"),
        _move("Dead Bug"),
        _move("Plank", "wrist", hold_seconds=30),
    ],
    "conditioning": [
        _move("Bicycling, Stationary"),
        _move("Walking, Treadmill"),
        _move("One-Arm Kettlebell Swings", "back"),
        _move("Trail Running/Walking", "knee"),
        _move("Mountain Climbers", "knee wrist"),
    ],
}


@cache
def revision() -> str:
    """Changes whenever what the catalogue says changes (its source or the curation here):
    part of every generator's identity, since their programs are made from it."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:12]


def usable_kit(profile: OnboardingResponses) -> frozenset[str]:
    """What the client can train with: their equipment, and always their own body."""
    return frozenset({*profile.equipment, "bodyweight"})


LEVEL_ORDER: tuple[ExperienceLevel, ...] = ("beginner", "intermediate", "advanced")


def suits(entry: CatalogueExercise, profile: OnboardingResponses) -> bool:
    """The client has what the entry needs, and it is of their level or below."""
    return _within(entry, usable_kit(profile), profile.experience_level)


def _within(entry: CatalogueExercise, kit: frozenset[str], level: ExperienceLevel) -> bool:
    return entry.possible_with(kit) and _rank(entry.level) <= _rank(level)


def _rank(level: ExperienceLevel) -> int:
    return LEVEL_ORDER.index(level)


# At most this many names in a request's enum: OpenAI's strict mode holds an enum of more than
# 250 values to 15,000 characters in all, and the source's longest names would pass that.
MAX_CHOICES = 250
# The source's categories by how well they serve a goal, most useful first; others are left out.
GOAL_CATEGORIES: dict[Goal, tuple[str, ...]] = {
    "strength": ("powerlifting", "strength", "olympic weightlifting", "plyometrics", "stretching", "cardio"),
    "hypertrophy": ("strength", "powerlifting", "stretching", "cardio"),
    "fat_loss": ("cardio", "plyometrics", "strength", "stretching"),
    "endurance": ("cardio", "plyometrics", "strength", "stretching"),
    "general_fitness": ("strength", "cardio", "stretching", "plyometrics"),
}


def choices_for(profile: OnboardingResponses) -> list[str]:
    """The names a generator may choose from for this client, at most MAX_CHOICES: the entries
    that suit them (their equipment, their level or below) in the categories that serve their
    goal, the staples first. Where there are more, the categories take turns, each giving its compound movements
    first, then those of the levels closest to the client's; so every category keeps a share.
    Sorted by name, so the request reads the same every time."""
    return list(_choices(usable_kit(profile), profile.experience_level, profile.goal))


# What the choice depends on, remembered: ranking the catalogue takes 2.5 ms, and every
# request (and each generator's identity, from 28 sample clients) asks. 3,840 kits, levels and
# goals exist; the most recent 512 are kept.
@lru_cache(maxsize=512)
def _choices(kit: frozenset[str], experience_level: ExperienceLevel, goal: Goal) -> tuple[str, ...]:
    entries, level = catalogue(), _rank(experience_level)
    staples = dict.fromkeys(
        m.name for moves in STAPLES.values() for m in moves if _within(entries[m.name], kit, experience_level)
    )
    queues: dict[str, list[CatalogueExercise]] = {category: [] for category in GOAL_CATEGORIES[goal]}
    for entry in entries.values():
        if entry.category in queues and entry.name not in staples and _within(entry, kit, experience_level):
            queues[entry.category].append(entry)
    for queue in queues.values():
        queue.sort(key=lambda e: (e.mechanic != "compound", level - _rank(e.level), e.name), reverse=True)
    chosen = list(staples)
    while len(chosen) < MAX_CHOICES and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < MAX_CHOICES:
                chosen.append(queue.pop().name)
    return tuple(sorted(chosen))
