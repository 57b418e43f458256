"""Whether a program is right for the client who asked, beyond the contract's shape: rules of
what the client said, each with a name and a one-line message that names what broke it.

Every way a program enters the cache or a client's history is judged by `validate_program`
(or `validate_program_json`): a live answer, a rollout's batch line or pre-warm, a trial, and
a cached entry before it is served. A program that breaks a rule is refused as an invalid
answer is: not cached, not saved."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from core.contract.catalogue import catalogue, usable_kit
from core.contract.models import (
    ContractError,
    FieldError,
    OnboardingResponses,
    Session,
    TrainingProgram,
    parse_program,
    parse_program_json,
)

Rule = Literal["goal", "experience_level", "weeks", "session_length", "reps", "days", "catalogue", "injury"]

# Paid access buys a longer, progressive block; that is why the flag is part of the cache key.
FREE_WEEKS = 4
PAID_WEEKS = 8


def program_weeks(has_paid_access: bool) -> int:
    return PAID_WEEKS if has_paid_access else FREE_WEEKS


# The days of the week a program's sessions go on, by sessions a week, spread out to leave
# rest between them. Every generator keeps to it: the offline coach writes it, and an LLM's
# sessions are given it by their place (it is not asked to choose), as its weeks are numbered.
TRAINING_DAYS: dict[int, tuple[int, ...]] = {
    1: (3,),
    2: (2, 5),
    3: (1, 3, 5),
    4: (1, 2, 4, 5),
    5: (1, 2, 3, 5, 6),
    6: (1, 2, 3, 4, 5, 6),
    7: (1, 2, 3, 4, 5, 6, 7),
}


@dataclass(frozen=True)
class RuleBroken(FieldError):
    """A field that breaks a fit rule, and the rule's name (for monitoring by rule)."""

    rule: Rule


class UnfitProgram(ContractError):
    """A well-formed program that is wrong for its client."""

    def __init__(self, broken: list[RuleBroken]) -> None:
        self.broken = broken
        self.rules: list[Rule] = sorted({b.rule for b in broken})
        super().__init__(f"training program for this client (rules broken: {', '.join(self.rules)})", _shown(broken))


def validate_program(data: Any, profile: OnboardingResponses, has_paid_access: bool) -> TrainingProgram:
    """The contract, the profile's shape, and every fit rule (UnfitProgram names the rules broken)."""
    return _fitting(parse_program(data, profile), profile, has_paid_access)


def validate_program_json(text: str | bytes, profile: OnboardingResponses, has_paid_access: bool) -> TrainingProgram:
    return _fitting(parse_program_json(text, profile), profile, has_paid_access)


def _fitting(program: TrainingProgram, profile: OnboardingResponses, has_paid_access: bool) -> TrainingProgram:
    broken = list(broken_rules(program, profile, has_paid_access))
    if broken:
        raise UnfitProgram(broken)
    return program


def broken_rules(program: TrainingProgram, profile: OnboardingResponses, has_paid_access: bool) -> Iterator[RuleBroken]:
    if program["goal"] != profile.goal:
        yield RuleBroken("goal", f"is {program['goal']}, the client's goal is {profile.goal}", "goal")
    if program["experience_level"] != profile.experience_level:
        level = f"is {program['experience_level']}, the client is {profile.experience_level}"
        yield RuleBroken("experience_level", level, "experience_level")
    weeks = program_weeks(has_paid_access)
    if program["duration_weeks"] != weeks:
        access = "paid" if has_paid_access else "free"
        yield RuleBroken("duration_weeks", f"is {program['duration_weeks']}, {access} access gives {weeks}", "weeks")
    for w, week in enumerate(program["weeks"]):
        days = [int(s["day"]) for s in week["sessions"]]
        if days != sorted(set(days)):
            message = f"are on days {days}; a week's sessions go on distinct days, in order"
            yield RuleBroken(f"weeks.{w}.sessions", message, "days")
        for s, session in enumerate(week["sessions"]):
            yield from _session_rules(f"weeks.{w}.sessions.{s}", session, profile)
    yield from _injury_named(program["safety_notes"], profile.injuries)


def _session_rules(where: str, session: Session, profile: OnboardingResponses) -> Iterator[RuleBroken]:
    minutes = profile.session_minutes
    if session["duration_minutes"] > minutes:
        message = f"is {session['duration_minutes']}, the client has {minutes} minutes"
        yield RuleBroken(f"{where}.duration_minutes", message, "session_length")
    kit, known = usable_kit(profile), catalogue()
    for e, exercise in enumerate(session["exercises"]):
        name, at = exercise["name"], f"{where}.exercises.{e}"
        if name not in known:
            yield RuleBroken(f"{at}.name", f"{name!r} is not in the exercise catalogue", "catalogue")
        elif not known[name].possible_with(kit):
            lacking = ", ".join(sorted(known[name].needs - kit))
            yield RuleBroken(f"{at}.name", f"{name!r} needs {lacking}, which the client does not have", "catalogue")
        if set_seconds(exercise["reps"]) is None:
            yield RuleBroken(f"{at}.reps", f"{exercise['reps']!r} is not {READABLE_REPS}", "reps")
    taken = session_seconds(session)
    if taken is not None and taken > minutes * 60:
        message = f"take about {-(-taken // 60)} minutes (sets, work and rests), the client has {minutes}"
        yield RuleBroken(f"{where}.exercises", message, "session_length")


# How long one set takes. A repetition done under control takes about 3 s; a set "as many
# repetitions as possible" about a minute; a set given as a time takes that time.
SECONDS_PER_REP = 3
AMRAP_SECONDS = 60
UNIT_SECONDS = {"s": 1, "sec": 1, "seconds": 1, "min": 60, "minutes": 60, "reps": SECONDS_PER_REP}
# What `reps` may say, as a JSON Schema pattern too (the LLM request carries it): a count or a
# range, maybe with a unit, maybe on each side; or AMRAP.
REPS_PATTERN = (
    r"^(AMRAP|([0-9]{1,3} ?(-|to) ?)?[0-9]{1,3}( ?(" + "|".join(UNIT_SECONDS) + r"))?( (each|per) (side|leg|arm))?)$"
)
READABLE_REPS = "a count ('10', '8-12'), a time ('30 s', '10 min') or 'AMRAP'"
_REPS = re.compile(REPS_PATTERN)


def set_seconds(reps: str) -> int | None:
    """How long one set of `reps` takes; None when `reps` is not as REPS_PATTERN says."""
    match = _REPS.match(reps)
    if match is None:
        return None
    if reps == "AMRAP":
        return AMRAP_SECONDS
    most = int(re.findall(r"[0-9]+", reps)[-1])
    unit, sides = match.group(5), match.group(6)
    return most * UNIT_SECONDS.get(unit, SECONDS_PER_REP) * (2 if sides else 1)


def session_seconds(session: Session) -> int | None:
    """What a session's exercises take: every set and the rest after it, but for the session's
    last rest. None when a set's length cannot be read."""
    total, last_rest = 0, 0
    for exercise in session["exercises"]:
        one_set = set_seconds(exercise["reps"])
        if one_set is None:
            return None
        total += int(exercise["sets"]) * (one_set + int(exercise["rest_seconds"]))
        last_rest = int(exercise["rest_seconds"])
    return total - last_rest


# Body parts an injury note names, with the words that name them: patterns matched at a word's
# start ("knee" in "knees", "spin" in "spine" and "spinal", but no "disc" in "discomfort").
BODY_PARTS: dict[str, tuple[str, ...]] = {
    "knee": ("knee", "acl", "menisc", "patell"),
    "back": ("back", "spin", r"discs?\b", "lumbar", "sciatic"),
    "shoulder": ("shoulder", "rotator"),
    "wrist": ("wrist",),
    "elbow": ("elbow",),
    "hip": ("hip",),
    "ankle": ("ankle", "achilles"),
    "neck": ("neck", "cervical"),
}
# Words of an injury note too common to show that the notes took it up.
_FILLER = frozenset(
    ("with", "from", "have", "been", "after", "before", "since", "about", "when", "left", "right", "pain")
)


def _names(text: str, words: tuple[str, ...]) -> bool:
    return re.search(r"\b(?:" + "|".join(words) + ")", text) is not None


def injured_parts(injuries: str | None) -> set[str]:
    text = (injuries or "").lower()
    return {part for part, words in BODY_PARTS.items() if _names(text, words)}


def _limitation_words(injuries: str) -> list[str]:
    """The words of an injury note that names no body part, in the order written."""
    return list(dict.fromkeys(w for w in re.findall(r"[^\W\d_]{4,}", injuries.lower()) if w not in _FILLER))


def words_to_name(injuries: str | None) -> dict[str, str]:
    """A word that names each thing the injury rule asks the safety notes to name: each body
    part as its own word, or, for a note that names none, its first word the rule takes (an
    LLM request asks for a note beginning with it)."""
    if not injuries:
        return {}
    parts = injured_parts(injuries)
    if parts:
        return {part: part for part in sorted(parts)}
    words = _limitation_words(injuries)
    return {"limitation": words[0]} if words else {}


def _injury_named(safety_notes: list[str], injuries: str | None) -> Iterator[RuleBroken]:
    """A reported injury or limitation is named in the safety notes: each body part it names,
    or, where it names none, at least one of its words."""
    if not injuries:
        return
    notes = " ".join(safety_notes).lower()
    parts = injured_parts(injuries)
    if parts:
        missing = sorted(p for p in parts if not _names(notes, BODY_PARTS[p]))
    else:
        words = _limitation_words(injuries)
        # A note's words as the injuries' are read (letters only), so that a word written
        # against a digit ('0aaa') is named where the client wrote it so.
        written = re.findall(r"[^\W\d_]+", notes)
        missing = [] if not words or any(w.startswith(tuple(words)) for w in written) else ["limitation"]
    if missing:
        message = f"do not name the client's {' or '.join(missing)} (injuries: {injuries[:80]!r})"
        yield RuleBroken("safety_notes", message, "injury")


# A program of 8 weeks of 7 sessions can break a rule hundreds of times: each rule's first few are shown.
SHOWN_PER_RULE = 3


def _shown(broken: list[RuleBroken]) -> list[FieldError]:
    shown: list[FieldError] = []
    for rule in dict.fromkeys(b.rule for b in broken):
        of_rule = [b for b in broken if b.rule == rule]
        shown += of_rule[:SHOWN_PER_RULE]
        if len(of_rule) > SHOWN_PER_RULE:
            shown.append(FieldError(f"({rule})", f"and {len(of_rule) - SHOWN_PER_RULE} more like these"))
    return shown
