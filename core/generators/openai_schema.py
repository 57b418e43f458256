"""The response format an OpenAI-compatible request asks for: the program contract's JSON schema,
held to this client (their goal, level, weeks, days, minutes, the exercises their equipment
allows, a note on each injury), within what strict mode or a full-schema server enforces; and
the answer made whole again (weeks and days numbered by their place, injury notes first)."""

from __future__ import annotations

import copy
from typing import Any, Literal

from openai.types.shared_params import ResponseFormatJSONSchema

from core.contract.catalogue import choices_for
from core.contract.fit import REPS_PATTERN, TRAINING_DAYS, program_weeks, words_to_name
from core.contract.models import OnboardingResponses, load_contract

# Where the `full` request is tighter than the contract, so that no string or list of a small
# model's answer can run on to the token cap. A path names properties, down
# through arrays' items; "[]" is an array's items themselves.
# How much of JSON Schema the server enforces: `strict`, OpenAI's Structured Outputs subset
# (no string lengths; fine-tuned models no number or array bounds either), or `full`, as
# llama.cpp's and vLLM's grammars enforce it (string lengths included).
SchemaFlavour = Literal["strict", "full"]
MAX_SETS, MAX_REST_SECONDS = 10, 600  # the contract's
ANSWER_LIMITS: dict[str, dict[str, int]] = {
    "title": {"maxLength": 60},
    "summary": {"maxLength": 200},
    "weeks.theme": {"minLength": 1, "maxLength": 60},
    "weeks.sessions.focus": {"minLength": 1, "maxLength": 40},
    "weeks.sessions.exercises": {"maxItems": 4},
    "weeks.sessions.exercises.reps": {"minLength": 1, "maxLength": 12},
    "weeks.sessions.exercises.notes": {"maxLength": 80},
    "safety_notes": {"maxItems": 3},
    "safety_notes.[]": {"maxLength": 100},
}


# In the `full` request a set takes at most a minute of work (core.fit counts it: 20
# repetitions, 60 s, or AMRAP), so that bounds on sets and rests, worked out from the client's
# minutes, keep every session a grammar lets through within them: a small model does not add
# up what its sessions take.
FULL_REPS_PATTERN = r"^(([1-9]|1[0-9]|20)(-([1-9]|1[0-9]|20))?|([1-9]|[1-5][0-9]|60) s|AMRAP)$"


LONGEST_SET_SECONDS = 60


# The request's property for a reported injury's notes (`_ask_for_injury_notes`), and how
# long such a note is: at least a few words, and for OpenAI's models as long as the title.
INJURY_NOTES = "injury_notes"


INJURY_NOTE_MIN_CHARS = 10


INJURY_NOTE_CHARS = 120


# Strict mode supports no string length keywords, and fine-tuned models refuse number and
# array bounds too. Such keywords are left out of the request and stated in the node's
# description instead; the service validates every answer against the contract.
STRING_LENGTHS = {"minLength": "at least {} characters", "maxLength": "at most {} characters"}


BOUNDS = {
    "minimum": "at least {}",
    "maximum": "at most {}",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
}


PATTERN = {"pattern": "matching the regular expression {}"}


FINE_TUNED_PREFIX = "ft:"


def _state_in_words(node: Any, keywords: dict[str, str]) -> None:
    if isinstance(node, list):
        for item in node:
            _state_in_words(item, keywords)
        return
    if not isinstance(node, dict):
        return
    if "minItems" in keywords and node.get("minItems") is not None and node.get("minItems") == node.get("maxItems"):
        words = [f"exactly {node.pop('minItems')} items"]
        node.pop("maxItems")
    else:
        words = []
    words += [text.format(node.pop(k)) for k, text in keywords.items() if k in node]
    if words:
        described = node.get("description")
        node["description"] = f"{described} ({', '.join(words)})" if described else ", ".join(words)
    for value in node.values():
        _state_in_words(value, keywords)


def _node(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for name in path.split("."):
        if name == "[]":
            node = node["items"]
            continue
        if node["type"] == "array":
            node = node["items"]
        node = node["properties"][name]
    return node


def program_response_format(
    model: str, profile: OnboardingResponses, has_paid_access: bool, *, flavour: SchemaFlavour = "strict"
) -> ResponseFormatJSONSchema:
    """The program contract for one client as a `json_schema` response format, with what the
    service checks beyond it (core.fit) fixed in it where a schema keyword can say it: the
    client's goal, level, days a week and weeks, each week's sessions, no session longer than
    theirs, reps as the rules read them, and exercises only from the catalogue entries that
    suit them. Week numbers and days are left to `numbered` (no keyword OpenAI takes can
    demand 1..n in order). In the `strict` flavour OpenAI accepts it for `model`
    (tests/openai_strict.py checks it against the documented rules); the `full` one keeps
    every string length for a server that enforces them."""
    schema = {k: v for k, v in copy.deepcopy(load_contract("training_program")).items() if not k.startswith("$")}
    schema.pop("examples", None)
    if flavour == "full":
        # A small model on its own server fills strings and lists to their bounds: these keep
        # its answer short. OpenAI's models get the contract's own room (an 8-exercise session).
        for path, limits in ANSWER_LIMITS.items():
            node = _node(schema, path)
            for keyword, value in limits.items():
                tighter = max if keyword.startswith("min") else min
                node[keyword] = tighter(node.get(keyword, value), value)
    weeks, days_per_week = program_weeks(has_paid_access), profile.days_per_week
    properties = schema["properties"]
    properties["goal"] = {"type": "string", "enum": [profile.goal]}
    properties["experience_level"] = {"type": "string", "enum": [profile.experience_level]}
    properties["duration_weeks"] = {"type": "integer", "enum": [weeks]}
    properties["days_per_week"] = {"type": "integer", "enum": [days_per_week]}
    properties["weeks"].update(minItems=weeks, maxItems=weeks)
    week = properties["weeks"]["items"]
    _leave_out(week, "week")
    week["properties"]["sessions"].update(minItems=days_per_week, maxItems=days_per_week)
    session = week["properties"]["sessions"]["items"]
    _leave_out(session, "day")
    session["properties"]["duration_minutes"]["maximum"] = profile.session_minutes
    exercise = session["properties"]["exercises"]["items"]["properties"]
    exercise["name"] = {"type": "string", "enum": choices_for(profile)}
    exercise["reps"]["pattern"] = REPS_PATTERN
    if flavour == "full":
        _bound_the_work(session["properties"]["exercises"], profile.session_minutes)
    _ask_for_injury_notes(schema, profile, flavour)
    if flavour == "strict":
        fine_tuned = model.startswith(FINE_TUNED_PREFIX)
        _state_in_words(schema, {**STRING_LENGTHS, **BOUNDS, **PATTERN} if fine_tuned else STRING_LENGTHS)
    # `strict` tells OpenAI to hold the schema to its subset; the servers `full` is for ignore it.
    strict = flavour == "strict"
    return {"type": "json_schema", "json_schema": {"name": "training_program", "strict": strict, "schema": schema}}


def _bound_the_work(exercises: dict[str, Any], session_minutes: int) -> None:
    """Sets and rests bounded so that the most exercises a session holds, each of its longest
    sets and rests, stay within the client's minutes (core.fit.session_seconds)."""
    share = session_minutes * 60 // exercises["maxItems"]  # each exercise's part of the session
    sets = max(1, min(MAX_SETS, share // (LONGEST_SET_SECONDS + 60)))
    rest = min(MAX_REST_SECONDS, share // sets - LONGEST_SET_SECONDS)
    exercise = exercises["items"]["properties"]
    exercise["sets"]["maximum"], exercise["rest_seconds"]["maximum"] = sets, rest
    exercise["reps"]["pattern"] = FULL_REPS_PATTERN


def _ask_for_injury_notes(schema: dict[str, Any], profile: OnboardingResponses, flavour: SchemaFlavour) -> None:
    """For a client who reported an injury, a safety note on each thing the injury rule asks
    the notes to name (core.fit), asked for before the weeks and beginning with its word:
    `numbered` puts them first in safety_notes. A small model asked only for safety notes in
    general wrote about warming up and never named the knee; what follows the word is its own."""
    named = words_to_name(profile.injuries)
    if not named:
        return
    longest = ANSWER_LIMITS["safety_notes.[]"]["maxLength"] if flavour == "full" else INJURY_NOTE_CHARS
    notes = {key: {"type": "string", "pattern": _note_pattern(word, longest)} for key, word in named.items()}
    injury_notes = {"type": "object", "additionalProperties": False, "required": list(notes), "properties": notes}
    properties = schema["properties"]
    at = list(properties).index("weeks")
    schema["properties"] = {
        **dict(list(properties.items())[:at]),
        INJURY_NOTES: injury_notes,
        **dict(list(properties.items())[at:]),
    }
    schema["required"].insert(schema["required"].index("weeks"), INJURY_NOTES)


def _note_pattern(word: str, longest: int) -> str:
    # The word (letters alone, so nothing to escape) capitalized, then the model's own text on
    # one line: no quote, backslash or line break, which a grammar that makes the pattern a
    # JSON string's characters would let through raw.
    prefix = f"{word.capitalize()}: "
    return rf'^{prefix}[^"\\\n]{{{INJURY_NOTE_MIN_CHARS},{longest - len(prefix)}}}$'


def _leave_out(node: dict[str, Any], name: str) -> None:
    del node["properties"][name]
    node["required"].remove(name)


def numbered(answer: Any) -> Any:
    """The program an answer to `program_response_format` stands for: its weeks numbered
    1..n in the order given, each week's sessions on the days TRAINING_DAYS gives them by
    their place, and its injury notes first among its safety notes. Anything else is left
    for validation to refuse."""
    if not (isinstance(answer, dict) and isinstance(answer.get("weeks"), list)):
        return answer
    weeks = [_numbered_week(i, week) for i, week in enumerate(answer["weeks"], start=1)]
    return _with_injury_notes({**answer, "weeks": weeks})


def _with_injury_notes(answer: dict[str, Any]) -> dict[str, Any]:
    notes, safety_notes = answer.get(INJURY_NOTES), answer.get("safety_notes")
    if not (isinstance(notes, dict) and isinstance(safety_notes, list)):
        return answer
    rest = {k: v for k, v in answer.items() if k != INJURY_NOTES}
    return {**rest, "safety_notes": [*notes.values(), *safety_notes]}


def _numbered_week(number: int, week: Any) -> Any:
    if not isinstance(week, dict):
        return week
    sessions = week.get("sessions")
    if isinstance(sessions, list) and len(sessions) in TRAINING_DAYS:
        sessions = [
            {"day": day, **{k: v for k, v in session.items() if k != "day"}} if isinstance(session, dict) else session
            for day, session in zip(TRAINING_DAYS[len(sessions)], sessions, strict=True)
        ]
    return {"week": number, **{k: sessions if k == "sessions" else v for k, v in week.items() if k != "week"}}
