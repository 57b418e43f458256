"""The OpenAI path end to end: the real SDK against a local OpenAI-compatible server."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from core.generators import OpenAIChatGenerator
from core.schema import ai_coach_cache, training_programs
from core.service import GenerationFailed, ProgramService
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import PROFILE, count_rows


def openai_service(engine: Engine, fake: FakeOpenAI, *, timeout: float = 5, retries: int = 0) -> ProgramService:
    generator = OpenAIChatGenerator(
        api_key="sk-test-not-a-secret",
        model="gpt-test",
        base_url=fake.base_url,
        timeout_seconds=timeout,
        max_retries=retries,
    )
    return ProgramService(engine=engine, generator=generator, lock_wait_seconds=30)


def test_a_good_answer_is_validated_cached_and_saved_with_token_usage(engine: Engine, fake_openai: FakeOpenAI) -> None:
    service = openai_service(engine, fake_openai)
    result = service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=True)

    assert result.cache_hit is False and result.model == "gpt-test"
    assert result.program["duration_weeks"] == 8 and len(result.program["weeks"]) == 8
    request = fake_openai.requests[0]
    assert request["model"] == "gpt-test"
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["strict"] is True
    assert request["response_format"]["json_schema"]["schema"]["required"][0] == "title"
    with engine.connect() as connection:
        row = connection.execute(training_programs.select()).one()
    assert (row.prompt_tokens, row.completion_tokens, row.model) == (420, 1800, "gpt-test")

    again = service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=True)
    assert again.cache_hit and fake_openai.calls == 1


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        (Behaviour(mode="malformed"), "malformed JSON"),
        (Behaviour(mode="wrong_shape"), "has 4 sessions, days_per_week is 3"),
        (Behaviour(mode="status", status=500), "HTTP 500"),
        (Behaviour(mode="status", status=429, retry_after="0"), "HTTP 429"),
        (Behaviour(mode="hang"), "timeout"),
    ],
)
def test_a_bad_answer_caches_and_saves_nothing(
    engine: Engine, fake_openai: FakeOpenAI, behaviour: Behaviour, says: str
) -> None:
    fake_openai.reset(behaviour)
    service = openai_service(engine, fake_openai, timeout=0.5)
    with pytest.raises(GenerationFailed) as error:
        service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    assert says in str(error.value)
    assert "Nothing was cached or saved" in str(error.value)
    assert count_rows(engine, ai_coach_cache) == 0
    assert count_rows(engine, training_programs) == 0
    # The single-flight lock was released: the next request reaches the LLM again.
    fake_openai.reset()
    assert service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False).cache_hit is False


def test_the_sdk_retries_a_429_that_says_when_to_retry(engine: Engine, fake_openai: FakeOpenAI) -> None:
    fake_openai.reset(Behaviour(fail_first=1, status=429, retry_after="0"))
    result = openai_service(engine, fake_openai, retries=2).generate(
        user_id="u1", onboarding_responses=PROFILE, has_paid_access=False
    )
    assert result.training_program_id is not None
    assert fake_openai.calls == 2
