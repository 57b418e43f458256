"""Monitoring per generator identity (issue 9): a model change shows apart, each model is
priced at its own price, and a hit saves what the generation that made its entry was billed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from core.generators import OfflineGenerator
from core.operations import monitoring
from core.prices import Billed, ModelPrice
from core.serving.results import GenerationFailed
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.schema import utcnow
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.generators.test_openai_generator import openai_service
from tests.helpers import PROFILE

OTHER_PROFILE = {**PROFILE, "days_per_week": 5}


def ask(service: ProgramService, user_id: str, *, paid: bool = False, profile: dict = PROFILE) -> bool:
    """Generate, returning whether it was a hit."""
    return service.generate(user_id=user_id, onboarding_responses=profile, has_paid_access=paid).cache_hit


def bill(fake: FakeOpenAI, prompt_tokens: int, completion_tokens: int, mode: str = "good") -> None:
    fake.reset(Behaviour(mode=mode, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))


def test_each_generator_is_counted_apart_and_priced_at_its_models_price(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    big = openai_service(engine, fake_openai, model="gpt-4.1")
    bill(fake_openai, 500, 3000)
    assert not ask(big, "u1", paid=True)
    bill(fake_openai, 400, 1000)
    assert not ask(big, "u2")
    # Twice the first entry (the second hit is PostgreSQL's one-statement hit), once the second.
    assert ask(big, "u1", paid=True) and ask(big, "u1", paid=True) and ask(big, "u2")

    # The team switches model: u1's entry is the old model's, regenerated once.
    small = openai_service(engine, fake_openai, model="gpt-4.1-mini")
    bill(fake_openai, 450, 2000)
    assert not ask(small, "u1", paid=True)
    assert ask(small, "u1", paid=True)
    bill(fake_openai, 450, 16000, mode="truncated")  # billed, though no program came of it
    with pytest.raises(GenerationFailed):
        ask(small, "u3")

    offline = ProgramService(engine=engine, generator=OfflineGenerator(), lock_wait_seconds=30)
    assert not ask(offline, "u4") and ask(offline, "u4")
    unlisted = openai_service(engine, fake_openai, model="local-llama")
    bill(fake_openai, 100, 200)
    assert not ask(unlisted, "u5", profile=OTHER_PROFILE)

    usage = monitoring.usage_by_generator(engine)
    by_model = {u.model: u for u in usage}
    assert set(by_model) == {"gpt-4.1", "gpt-4.1-mini", "offline-rules-v1", "local-llama"}
    old, new, rules = by_model["gpt-4.1"], by_model["gpt-4.1-mini"], by_model["offline-rules-v1"]
    assert old.generator_version == big.generator.identity.version
    assert new.generator_version == small.generator.identity.version
    assert (old.hits, old.generations, old.errors, old.llm_calls, old.hit_rate) == (3, 2, 0, 2, 3 / 5)
    assert (new.hits, new.generations, new.errors, new.llm_calls, new.hit_rate) == (1, 1, 1, 2, 1 / 2)
    assert (rules.hits, rules.generations, rules.llm_calls, rules.llm_calls_avoided) == (1, 1, 0, 0)
    assert (old.billed.prompt_tokens, old.billed.completion_tokens) == (900, 4000)
    assert (new.billed.prompt_tokens, new.billed.completion_tokens) == (900, 18000)

    # One model's price overridden; the others keep the listed prices (gpt-4.1-mini: 0.40 / 1.60).
    settings = Settings(model_prices={"gpt-4.1": {"input": 3.0, "output": 12.0}})
    old_price, new_price = ModelPrice(input=3.0, output=12.0), ModelPrice(input=0.40, output=1.60)
    assert old.cost_spent(settings) == pytest.approx(old_price.cost(Billed(900, 4000)))
    # What each hit's entry was billed, not an average: 2 x u1's generation + 1 x u2's.
    assert old.cost_saved(settings) == pytest.approx(
        2 * old_price.cost(Billed(500, 3000)) + old_price.cost(Billed(400, 1000))
    )
    assert new.cost_spent(settings) == pytest.approx(new_price.cost(Billed(900, 18000)))
    assert new.cost_saved(settings) == pytest.approx(new_price.cost(Billed(450, 2000)))
    assert rules.cost_spent(settings) == rules.cost_saved(settings) == 0.0
    assert by_model["local-llama"].cost_spent(settings) is None

    costs = monitoring.costs(usage, settings)
    assert costs.spent == pytest.approx(old_price.cost(Billed(900, 4000)) + new_price.cost(Billed(900, 18000)))
    assert costs.saved == pytest.approx(old.cost_saved(settings) + new.cost_saved(settings))
    assert (costs.llm_calls, costs.llm_calls_avoided) == (5, 4)  # the failed call was a call
    assert costs.unpriced_models == ("local-llama",) and costs.hits_saving_unknown == 0

    # Over time: the buckets add up to the window, and the rollup changes nothing.
    buckets = monitoring.usage_over_time(engine, None, "hour")
    assert sum(u.hits for _, u in buckets if u.model == "gpt-4.1") == 3
    monitoring.refresh_rollup(engine, utcnow() + timedelta(hours=3))
    assert monitoring.usage_by_generator(engine) == usage
    assert monitoring.usage_over_time(engine, None, "hour") == buckets


def test_a_dated_snapshot_is_priced_as_its_model_and_the_offline_generator_is_free() -> None:
    settings = Settings()
    assert settings.price_of("gpt-4o-mini-2024-07-18") == settings.model_prices["gpt-4o-mini"]
    assert settings.price_of("gpt-4.1-mini-2025-04-14") == settings.model_prices["gpt-4.1-mini"]
    assert settings.price_of("gpt-4.1") != settings.price_of("gpt-4.1-mini")
    assert settings.price_of("gpt-5-turbo") is None
    assert settings.price_of(OfflineGenerator.identity.model) == ModelPrice(input=0, output=0)


def test_a_generator_s_kind_comes_from_its_model_whatever_its_version_looks_like() -> None:
    # An LLM's calls and cost do not silently become 0 when the version's format changes.
    llm = monitoring.GeneratorUsage("v2-5f1c0e", "gpt-4.1", hits=4, generations=2, errors=1)
    offline = monitoring.GeneratorUsage("v2-5f1c0e", OfflineGenerator.identity.model, hits=4, generations=2)
    assert (llm.kind, llm.llm_calls, llm.llm_calls_avoided) == ("openai", 3, 4)
    assert (offline.kind, offline.llm_calls, offline.price(Settings()).input) == ("offline", 0, 0.0)
