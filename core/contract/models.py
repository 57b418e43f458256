"""The onboarding responses and the training program, exactly as the JSON contracts in
`core/contracts` define them (copies of `shared/contracts`; a test keeps them equal).

Strict: JSON Schema's integer accepts 5 and 5.0 but neither "5" nor true; optional fields
may be absent but never null; unknown fields are refused."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

CONTRACTS_DIR = Path(__file__).parents[1] / "contracts"

Goal = Literal["strength", "hypertrophy", "fat_loss", "endurance", "general_fitness"]
ExperienceLevel = Literal["beginner", "intermediate", "advanced"]
Equipment = Literal[
    "bodyweight",
    "dumbbells",
    "barbell",
    "kettlebells",
    "resistance_bands",
    "machines",
    "pull_up_bar",
    "cardio_machine",
]
GOALS: tuple[Goal, ...] = get_args(Goal)
EXPERIENCE_LEVELS: tuple[ExperienceLevel, ...] = get_args(ExperienceLevel)
EQUIPMENT: tuple[Equipment, ...] = get_args(Equipment)
# The paid-access flag, named as an answer is when what changed between two requests is listed.
PAID_ACCESS = "has_paid_access"


def _integral_float_to_int(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer; strict pydantic would not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def collapse_whitespace(value: str) -> str | None:
    # Control characters count as whitespace: they carry no meaning in free text, and
    # PostgreSQL's JSONB cannot store NUL at all. NFC: "épaule" typed as one character or
    # as "e" and a combining accent is the same answer, with the same key.
    collapsed = " ".join(CONTROL_CHARACTERS.sub(" ", value).split())
    return unicodedata.normalize("NFC", collapsed) or None


def _as_set(values: list[Equipment]) -> list[Equipment]:
    return sorted(set(values))


def _bounded_int(ge: int, le: int | None = None) -> Any:
    return Annotated[int, BeforeValidator(_integral_float_to_int), Field(ge=ge, le=le, strict=True)]


def _free_text(max_length: int) -> Any:
    return Annotated[str, Field(max_length=max_length, strict=True), AfterValidator(collapse_whitespace)]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OnboardingResponses(_Contract):
    """Validated and normalized: equipment sorted without repeats, free text trimmed with
    inner whitespace collapsed, empty text dropped. Equal answers give equal models."""

    goal: Goal
    experience_level: ExperienceLevel
    days_per_week: _bounded_int(1, 7)  # type: ignore[valid-type]
    session_minutes: _bounded_int(15, 180)  # type: ignore[valid-type]
    equipment: Annotated[list[Equipment], Field(max_length=8), AfterValidator(_as_set)]
    # Defaults of None are not validated, so an explicit null is still refused like the schema does.
    age: _bounded_int(13, 100) = None  # type: ignore[valid-type]
    injuries: _free_text(500) = None  # type: ignore[valid-type]
    notes: _free_text(1000) = None  # type: ignore[valid-type]

    def normalized(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# A new client's questionnaire before the coach changes an answer: the commonest beginner's
# profile. Built as the model, so a starting answer out of the contract's bounds fails at import.
STARTING_ANSWERS = OnboardingResponses(
    goal="general_fitness", experience_level="beginner", days_per_week=3, session_minutes=45, equipment=["bodyweight"]
)


def answer_limits(field: str) -> dict[str, int]:
    """An answer's bounds as the model holds them, for a form to draw: `ge` and `le` of a
    number, `max_length` of a text or a list (its most characters or choices)."""
    limits: dict[str, int] = {}
    for rule in OnboardingResponses.model_fields[field].metadata:
        limits |= {name: getattr(rule, name) for name in ("ge", "le", "max_length") if hasattr(rule, name)}
    return limits


# The program is validated on every cache hit, so it is checked entirely inside
# pydantic-core: TypedDicts (no model objects to build) and integers as a union of strict
# int and integral float (no Python validator per number; 5.0 stays 5.0, as JSON allows).
_STRICT_DICT = ConfigDict(extra="forbid", strict=True)


def _program_int(ge: int, le: int | None = None) -> Any:
    return Annotated[int, Field(ge=ge, le=le)] | Annotated[float, Field(ge=ge, le=le, multiple_of=1)]


@with_config(_STRICT_DICT)
class Exercise(TypedDict):
    name: Annotated[str, Field(min_length=1)]
    sets: _program_int(1, 10)  # type: ignore[valid-type]
    reps: str
    rest_seconds: _program_int(0, 600)  # type: ignore[valid-type]
    notes: str


@with_config(_STRICT_DICT)
class Session(TypedDict):
    day: _program_int(1, 7)  # type: ignore[valid-type]
    focus: str
    duration_minutes: _program_int(5, 240)  # type: ignore[valid-type]
    exercises: Annotated[list[Exercise], Field(min_length=1)]


@with_config(_STRICT_DICT)
class Week(TypedDict):
    week: _program_int(1)  # type: ignore[valid-type]
    theme: str
    sessions: Annotated[list[Session], Field(min_length=1)]


@with_config(_STRICT_DICT)
class TrainingProgram(TypedDict):
    title: Annotated[str, Field(min_length=1, max_length=120)]
    summary: Annotated[str, Field(max_length=2000)]
    goal: Goal
    experience_level: ExperienceLevel
    duration_weeks: _program_int(1, 16)  # type: ignore[valid-type]
    days_per_week: _program_int(1, 7)  # type: ignore[valid-type]
    weeks: Annotated[list[Week], Field(min_length=1)]
    safety_notes: list[str]


PROGRAM = TypeAdapter(TrainingProgram)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ContractError(ValueError):
    """Input that breaks a contract; each error names the field and the rule."""

    def __init__(self, what: str, errors: list[FieldError]) -> None:
        self.what = what
        self.errors = errors
        super().__init__(f"invalid {what}: " + "; ".join(str(e) for e in errors))


def _field_errors(error: ValidationError) -> list[FieldError]:
    out: dict[str, FieldError] = {}
    for item in error.errors(include_url=False):
        # Union members add their tag ("constrained-int") to the location; one error a field.
        parts = [str(p) for p in item["loc"] if not (isinstance(p, str) and p.startswith("constrained-"))]
        field = ".".join(parts) or "(root)"
        message = item["msg"]
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field"
        out.setdefault(field, FieldError(field, message))
    return list(out.values())


def parse_onboarding(data: Any) -> OnboardingResponses:
    try:
        return OnboardingResponses.model_validate(data)
    except ValidationError as exc:
        raise ContractError("onboarding responses", _field_errors(exc)) from None


def parse_program(data: Any, profile: OnboardingResponses) -> TrainingProgram:
    """The contract's schema plus its rules beyond the schema: weeks numbered 1..n, n the
    declared duration, each week with exactly days_per_week sessions, as many as the profile asked."""
    try:
        program = PROGRAM.validate_python(data)
    except ValidationError as exc:
        raise ContractError("training program", _field_errors(exc)) from None
    return _check_shape(program, profile)


def parse_program_json(text: str | bytes, profile: OnboardingResponses) -> TrainingProgram:
    """The same from JSON text, parsed and validated in one pass."""
    try:
        program = PROGRAM.validate_json(text)
    except ValidationError as exc:
        raise ContractError("training program", _field_errors(exc)) from None
    return _check_shape(program, profile)


def _check_shape(program: TrainingProgram, profile: OnboardingResponses) -> TrainingProgram:
    errors = []
    days, duration = program["days_per_week"], program["duration_weeks"]
    if days != profile.days_per_week:
        errors.append(FieldError("days_per_week", f"is {days}, the profile asks for {profile.days_per_week}"))
    numbers = [w["week"] for w in program["weeks"]]
    if numbers != list(range(1, int(duration) + 1)):
        errors.append(FieldError("weeks", f"must be numbered 1..{duration} in order, got {numbers}"))
    for i, week in enumerate(program["weeks"]):
        if len(week["sessions"]) != days:
            errors.append(
                FieldError(f"weeks.{i}.sessions", f"has {len(week['sessions'])} sessions, days_per_week is {days}")
            )
    if errors:
        raise ContractError("training program", errors)
    return program


def load_contract(name: str) -> dict[str, Any]:
    return json.loads((CONTRACTS_DIR / f"{name}.schema.json").read_text())
