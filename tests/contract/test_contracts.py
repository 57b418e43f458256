"""The Pydantic models accept and reject exactly what the JSON contracts do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from core.contract.fit import validate_program
from core.contract.models import (
    EQUIPMENT,
    EXPERIENCE_LEVELS,
    GOALS,
    ContractError,
    OnboardingResponses,
    TrainingProgram,
    load_contract,
    parse_onboarding,
    parse_program,
)
from core.generators.offline import build_program
from tests.helpers import PROFILE, REQUIRED_ANSWERS

SHARED = Path(__file__).resolve().parents[3] / "shared" / "contracts"
ONBOARDING_SCHEMA = jsonschema.Draft202012Validator(load_contract("onboarding_responses"))
PROGRAM_SCHEMA = jsonschema.Draft202012Validator(load_contract("training_program"))


@pytest.mark.skipif(not SHARED.exists(), reason="shared/ is not beside this checkout")
@pytest.mark.parametrize("name", ["onboarding_responses", "training_program"])
def test_the_shipped_contracts_are_the_shared_ones(name: str) -> None:
    assert load_contract(name) == json.loads((SHARED / f"{name}.schema.json").read_text())


def accepts(model: Any, data: Any) -> bool:
    try:
        TypeAdapter(model).validate_python(data)
        return True
    except ValueError:
        return False


# Values of every JSON type, near and at the contract's limits.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 1200),
    st.sampled_from([5.0, 5.5, 13.0, 1e3]),
    st.text(max_size=20),
    st.sampled_from([*GOALS, *EXPERIENCE_LEVELS, *EQUIPMENT, "5", " ", "x" * 501, "y" * 1001]),
)
field_values = st.one_of(json_scalars, st.lists(st.one_of(st.sampled_from(EQUIPMENT), json_scalars), max_size=10))
onboarding_like = st.dictionaries(
    st.sampled_from([*PROFILE.keys(), "age", "injuries", "notes", "unknown"]), field_values, max_size=9
)


@settings(max_examples=600, deadline=None)
@given(
    st.fixed_dictionaries({}, optional={k: field_values for k in [*PROFILE, "age", "injuries", "notes"]})
    | onboarding_like
)
def test_onboarding_model_agrees_with_the_schema(data: dict[str, Any]) -> None:
    assert accepts(OnboardingResponses, data) == ONBOARDING_SCHEMA.is_valid(data)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        REQUIRED_ANSWERS,
        optional={"age": st.integers(13, 100), "injuries": st.text(max_size=60), "notes": st.text(max_size=60)},
    ),
    st.booleans(),
)
def test_every_valid_profile_gets_a_valid_offline_program_that_fits_it(data: dict[str, Any], paid: bool) -> None:
    assert ONBOARDING_SCHEMA.is_valid(data)
    profile = parse_onboarding(data)
    program = build_program(profile, paid)
    assert PROGRAM_SCHEMA.is_valid(program)
    validate_program(program, profile, paid)


def mutations(program: dict[str, Any]) -> list[Any]:
    exercise = program["weeks"][0]["sessions"][0]["exercises"][0]
    bad = []
    for key, value in [
        ("sets", 0),
        ("sets", "3"),
        ("sets", 3.0),
        ("rest_seconds", 601),
        ("name", ""),
        ("extra", 1),
        ("notes", None),
        ("reps", 10),
    ]:
        changed = json.loads(json.dumps(program))
        changed["weeks"][0]["sessions"][0]["exercises"][0][key] = value
        bad.append(changed)
    for key, value in [
        ("title", ""),
        ("title", "t" * 121),
        ("summary", "s" * 2001),
        ("duration_weeks", 17),
        ("safety_notes", [1]),
        ("goal", "flexibility"),
        ("weeks", []),
    ]:
        bad.append({**program, key: value})
    missing = dict(program)
    missing.pop("safety_notes")
    bad.append(missing)
    assert exercise  # the mutated path exists
    return bad


def test_program_model_agrees_with_the_schema_on_mutations() -> None:
    program = build_program(parse_onboarding(PROFILE), False)
    assert accepts(TrainingProgram, program) and PROGRAM_SCHEMA.is_valid(program)
    for candidate in mutations(program):
        assert accepts(TrainingProgram, candidate) == PROGRAM_SCHEMA.is_valid(candidate), candidate


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p.update(days_per_week=4), "days_per_week"),
        (lambda p: p["weeks"].pop(), "weeks"),
        (lambda p: p["weeks"][1].update(week=7), "weeks"),
        (lambda p: p["weeks"][2]["sessions"].pop(), "weeks.2.sessions"),
    ],
)
def test_program_semantic_rules(change: Any, field: str) -> None:
    profile = parse_onboarding(PROFILE)
    program = build_program(profile, False)
    change(program)
    with pytest.raises(ContractError) as error:
        parse_program(program, profile)
    assert field in [e.field for e in error.value.errors]
