"""Bad and hostile input: refused with the field named, or stored as given and shown as text."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from core.contract.cache_key import cache_key
from core.contract.models import EQUIPMENT, EXPERIENCE_LEVELS, GOALS, ContractError, parse_onboarding
from core.serving.service import ProgramService
from core.store.db import make_engine, migrate
from core.store.schema import training_programs
from pages.common import escape_markdown
from testkit.counting import CountingGenerator
from tests.helpers import PROFILE, REQUIRED_ANSWERS, as_read, table_counts

FIELDS = {*PROFILE, "age", "injuries", "notes"}
HOSTILE = [
    "'; DROP TABLE training_programs; --",
    '" OR 1=1 --',
    "<script>alert('x')</script>",
    "<img src=x onerror=alert(1)>",
    "[click me](javascript:alert(1)) ![](http://tracker.invalid/p.png)",
    ":red[**shout**] $\\LaTeX$ # heading",
    "Robert'); DELETE FROM ai_coach_cache;--",
    "emoji 🏋️ and RTL \u202e text",
]


@pytest.fixture(scope="module")
def sqlite_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProgramService]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('bad')}/coach.db")
    migrate(engine)
    yield ProgramService(engine=engine, generator=CountingGenerator())
    engine.dispose()


text_values = st.one_of(st.text(max_size=40), st.sampled_from(HOSTILE), st.just("x" * 501))
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 200),
    st.floats(allow_nan=True),
    text_values,
    st.sampled_from([*GOALS, *EXPERIENCE_LEVELS]),
    st.lists(st.sampled_from([*EQUIPMENT, "rocket", 1]), max_size=10),
)
profiles = st.one_of(
    st.fixed_dictionaries(
        REQUIRED_ANSWERS,
        optional={"age": values, "injuries": text_values, "notes": text_values},
    ),
    st.dictionaries(st.sampled_from([*FIELDS, "extra"]), values, max_size=9),
)
user_ids = st.one_of(st.sampled_from(["client-1", "a@b.c"]), st.text(max_size=12))


def equivalent(profile: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same answers as a coach might type them again: reordered, repeated, re-spaced."""
    twin = dict(rng.sample(list(profile.items()), len(profile)))
    if len(profile["equipment"]) <= 4:
        twin["equipment"] = list(reversed(profile["equipment"])) * 2
    for field in ("injuries", "notes"):
        text = profile.get(field)
        if isinstance(text, str) and len(text) < 480:
            twin[field] = "  " + text.replace(" ", " \t ") + "\n"
    return twin


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user_id=user_ids, profile=profiles, seed=st.integers(0, 1000))
def test_every_input_is_served_or_refused_by_field_and_never_crashes(
    sqlite_service: ProgramService, user_id: str, profile: dict[str, Any], seed: int
) -> None:
    before = table_counts(sqlite_service.engine)
    try:
        result = sqlite_service.generate(user_id=user_id, onboarding_responses=profile, has_paid_access=False)
    except ContractError as error:
        assert error.errors
        for e in error.errors:
            assert e.field.split(".")[0] in FIELDS | {"extra", "user_id"}
        assert table_counts(sqlite_service.engine) == before
        return
    twin = equivalent(profile, random.Random(seed))
    assert cache_key(user_id, parse_onboarding(twin), False) == result.cache_key


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_text_is_stored_as_given(engine: Engine, hostile: str) -> None:
    service = ProgramService(engine=engine, generator=CountingGenerator())
    result = service.generate(
        user_id="client-1",
        onboarding_responses={**PROFILE, "notes": hostile, "injuries": hostile[:500]},
        has_paid_access=False,
    )
    with engine.connect() as connection:
        stored = connection.execute(
            select(training_programs.c.onboarding_responses).where(training_programs.c.id == result.training_program_id)
        ).scalar_one()
    assert stored["notes"] == " ".join(hostile.split())
    assert table_counts(engine) == (1, 1, 1)  # no statement was smuggled in


def test_control_characters_and_nul_are_whitespace_in_free_text(engine: Engine) -> None:
    service = ProgramService(engine=engine, generator=CountingGenerator())
    result = service.generate(
        user_id="client-1",
        onboarding_responses={**PROFILE, "notes": "left\x00knee\x07 \x1b[31mred"},
        has_paid_access=False,
    )
    assert result.training_program_id is not None and not result.warnings
    assert parse_onboarding({**PROFILE, "notes": "left\x00knee\x07 \x1b[31mred"}).notes == "left knee [31mred"


@pytest.mark.parametrize("field", ["injuries", "notes"])
def test_ten_megabytes_of_text_is_refused_by_field(engine: Engine, field: str) -> None:
    service = ProgramService(engine=engine, generator=CountingGenerator())
    with pytest.raises(ContractError) as error:
        service.generate(user_id="u1", onboarding_responses={**PROFILE, field: "x" * 10_000_000}, has_paid_access=False)
    assert [e.field for e in error.value.errors] == [field]
    assert "at most" in str(error.value)
    assert table_counts(engine) == (0, 0, 0)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_markup_is_escaped_before_it_reaches_markdown(hostile: str) -> None:
    escaped = escape_markdown(hostile)
    # HTML, links and images, Streamlit directives, LaTeX, emphasis: none left unescaped.
    assert re.search(r"(?<!\\)[<>\[\]:$*#!]", escaped) is None
    assert as_read(escaped) == hostile.replace("\\", "")
