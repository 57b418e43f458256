"""Spend as the invoice counts it (issue 23): cached input at the cached-input price, batch at
the batch price, reasoning tokens recorded; and a request whose cacheable prefix (the system
prompt and the schema) comes before the client's answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from core.contract.generation import GenerationError
from core.contract.models import parse_onboarding
from core.formatting import format_dollars
from core.operations import monitoring
from core.prices import DEFAULT_MODEL_PRICES, NOT_BILLED, Billed, ModelPrice, Spend
from core.serving.results import GenerationFailed
from core.settings import Settings
from core.store.schema import ai_coach_cache, generation_events, generation_stats_hourly, training_programs, utcnow
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.generators.test_openai_generator import openai_generator, openai_service
from tests.helpers import PROFILE
from tests.pages.test_pages import fill, submit

MILLION = 1_000_000


def test_cached_input_is_billed_at_the_cached_price_and_reasoning_as_output() -> None:
    price = Settings().price_of("gpt-4o-mini")
    assert price is not None
    # 1 M input tokens of which 400 k cached, 1 M output tokens (reasoning among them).
    assert price.cost(Billed(MILLION, MILLION, cached_tokens=400_000)) == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.60)
    assert price.cost(Billed(MILLION, MILLION)) == pytest.approx(0.15 + 0.60)


def test_the_listed_models_have_openais_cached_input_prices() -> None:
    cached = {name: price.cached_input for name, price in DEFAULT_MODEL_PRICES.items()}
    assert cached == {
        "gpt-4o-mini": 0.075,
        "gpt-4o": 1.25,
        "gpt-4.1": 0.50,
        "gpt-4.1-mini": 0.10,
        "gpt-4.1-nano": 0.025,
        "o4-mini": 0.275,
        "o3": 0.50,
        "offline-rules-v1": None,
    }


def test_the_batch_price_is_half_of_each_live_price_unless_given() -> None:
    price = ModelPrice(input=2.0, cached_input=0.5, output=8.0)
    live = price.cost(Billed(MILLION, MILLION, cached_tokens=MILLION // 2))
    assert live == pytest.approx(0.5 * 2.0 + 0.5 * 0.5 + 8.0)
    assert price.cost(Billed(MILLION, MILLION, cached_tokens=MILLION // 2), "batch") == pytest.approx(live / 2)
    given = ModelPrice(input=2.0, output=8.0, batch_input=1.5, batch_output=3.0)
    assert given.cost(Billed(MILLION, MILLION), "batch") == pytest.approx(1.5 + 3.0)


def test_a_user_price_without_cached_input_bills_cached_input_at_the_input_price() -> None:
    prices = {"my-model": {"input": 1.0, "output": 2.0}, "gpt-4.1": {"input": 3.0, "output": 9.0}}
    settings = Settings(model_prices=json.dumps(prices))
    mine, overridden = settings.price_of("my-model"), settings.price_of("gpt-4.1")
    assert mine is not None and overridden is not None
    assert mine.cost(Billed(MILLION, 0, cached_tokens=MILLION)) == pytest.approx(1.0)
    # An override replaces the listed price whole: its cached input is its input price too.
    assert overridden.cost(Billed(MILLION, 0, cached_tokens=MILLION)) == pytest.approx(3.0)
    assert Settings(model_prices='{"m": {"input": 1, "output": 2, "cached_input": 0.25}}').price_of("m") == ModelPrice(
        input=1, output=2, cached_input=0.25
    )


def test_the_generator_reads_the_usage_details_and_keeps_none_when_not_reported(fake_openai: FakeOpenAI) -> None:
    generator = openai_generator(fake_openai)
    fake_openai.reset(Behaviour(prompt_tokens=1500, cached_tokens=1024, completion_tokens=900, reasoning_tokens=300))
    generation = generator.generate(parse_onboarding(PROFILE), False)
    assert (generation.billed.prompt_tokens, generation.billed.cached_tokens) == (1500, 1024)
    assert (generation.billed.completion_tokens, generation.billed.reasoning_tokens) == (900, 300)

    fake_openai.reset(Behaviour(prompt_tokens=1500, completion_tokens=900))
    generation = generator.generate(parse_onboarding(PROFILE), False)
    assert (generation.billed.cached_tokens, generation.billed.reasoning_tokens) == (None, None)

    # A failed answer is billed too, cached input and reasoning included.
    fake_openai.reset(Behaviour(mode="truncated", cached_tokens=256, reasoning_tokens=64))
    with pytest.raises(GenerationError) as failed:
        generator.generate(parse_onboarding(PROFILE), False)
    assert (failed.value.billed.cached_tokens, failed.value.billed.reasoning_tokens) == (256, 64)


def test_the_clients_answers_come_last_after_a_prefix_shared_by_every_client_the_same_schema_fits(
    fake_openai: FakeOpenAI,
) -> None:
    """OpenAI caches the longest prefix it has seen, the response format included: the system
    prompt and the schema are the same for every client with the same goal, level, equipment,
    days a week, minutes, access and injured body parts (what the schema holds them to); the
    rest of the answers come last."""
    generator = openai_generator(fake_openai)
    other = {**PROFILE, "age": 64, "notes": "prefers mornings"}
    for answers in (PROFILE, other):
        generator.generate(parse_onboarding(answers), True)
    first, second = fake_openai.requests
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    # Everything but the last message and the answers in it is the same: the cacheable prefix.
    assert first["messages"][:-1] == second["messages"][:-1]
    assert first["response_format"] == second["response_format"]
    assert "notes" not in json.loads(first["messages"][-1]["content"])["onboarding_responses"]
    assert json.loads(second["messages"][-1]["content"])["onboarding_responses"]["notes"] == "prefers mornings"


def test_cached_and_reasoning_tokens_reach_the_event_the_entry_history_the_rollup_and_the_split(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    service = openai_service(engine, fake_openai, model="gpt-4.1")
    fake_openai.reset(Behaviour(prompt_tokens=2000, cached_tokens=1500, completion_tokens=1000, reasoning_tokens=400))
    assert not service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False).cache_hit
    assert service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False).cache_hit
    fake_openai.reset(Behaviour(mode="truncated", prompt_tokens=2000, cached_tokens=1024, completion_tokens=16000))
    with pytest.raises(GenerationFailed):
        service.generate(user_id="u2", onboarding_responses=PROFILE, has_paid_access=False)

    events = generation_events.c
    with engine.connect() as connection:
        logged = connection.execute(
            select(
                events.outcome,
                events.cached_tokens,
                events.reasoning_tokens,
                events.saved_cached_tokens,
                events.saved_reasoning_tokens,
            ).order_by(events.id)
        ).all()
        entry = connection.execute(select(ai_coach_cache.c.cached_tokens, ai_coach_cache.c.reasoning_tokens)).one()
        history = connection.execute(
            select(training_programs.c.cached_tokens, training_programs.c.reasoning_tokens).order_by(
                training_programs.c.id
            )
        ).all()
    # The hit saved what its entry's generation was billed, every kind: its cached input and reasoning included.
    assert [tuple(r) for r in logged] == [
        ("miss", 1500, 400, None, None),
        ("hit", None, None, 1500, 400),
        ("error", 1024, None, None, None),
    ]
    assert tuple(entry) == (1500, 400)
    assert [tuple(r) for r in history] == [(1500, 400), (None, None)]  # the hit's row bills nothing

    [usage] = monitoring.usage_by_generator(engine)
    assert (usage.billed.prompt_tokens, usage.billed.cached_tokens, usage.billed.reasoning_tokens) == (4000, 2524, 400)
    assert usage.cached_share == pytest.approx(2524 / 4000)
    assert usage.saved == Billed(prompt_tokens=2000, completion_tokens=1000, cached_tokens=1500, reasoning_tokens=400)
    price = Settings().price_of("gpt-4.1")
    assert price is not None
    spend = usage.spend(Settings())
    assert spend is not None
    assert spend.input == pytest.approx((4000 - 2524) * 2.00 / MILLION)
    assert spend.cached_input == pytest.approx(2524 * 0.50 / MILLION)
    assert spend.output == pytest.approx(17000 * 8.00 / MILLION)
    assert usage.cost_saved(Settings()) == pytest.approx(price.cost(Billed(2000, 1000, cached_tokens=1500)))
    costs = monitoring.costs([usage], Settings())
    assert costs.spend == spend and costs.spent == pytest.approx(spend.total)

    # The rollup keeps the parts: the numbers are the same from it as from the raw events.
    monitoring.refresh_rollup(engine, utcnow() + timedelta(hours=3))
    with engine.connect() as connection:
        rolled = connection.execute(
            select(
                generation_stats_hourly.c.cached_tokens,
                generation_stats_hourly.c.reasoning_tokens,
                generation_stats_hourly.c.saved_cached_tokens,
                generation_stats_hourly.c.saved_reasoning_tokens,
            )
        ).all()
    assert [sum(column) for column in zip(*rolled, strict=True)] == [2524, 400, 1500, 400]
    assert monitoring.usage_by_generator(engine) == [usage]


def test_the_monitoring_page_splits_spend_by_kind_of_token_and_shows_the_cached_share(
    tmp_path: Path, app_test: Callable[..., AppTest], fake_openai: FakeOpenAI
) -> None:
    app = app_test(
        f"sqlite:///{tmp_path}/coach.db",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_MODEL="gpt-4o-mini",
        LLM_MAX_RETRIES="0",
    ).run()
    fake_openai.reset(Behaviour(prompt_tokens=2000, cached_tokens=1500, completion_tokens=1000, reasoning_tokens=400))
    submit(fill(app, "cached-client"))
    app.switch_page("pages/monitoring.py").run()
    assert not app.exception
    spend = Spend.of(
        ModelPrice(input=0.15, cached_input=0.075, output=0.60),
        Billed(prompt_tokens=2000, completion_tokens=1000, cached_tokens=1500),
    )
    assert {m.label: m.value for m in app.metric}["LLM spend"] == format_dollars(spend.total)
    parts = (format_dollars(spend.input), format_dollars(spend.cached_input), format_dollars(spend.output))
    assert any(
        f"LLM spend: {parts[0]} input, {parts[1]} cached input" in c.value and f"{parts[2]} output" in c.value
        for c in app.caption
    )
    [row] = next(d.value for d in app.dataframe if "Cached input" in d.value.columns).to_dict("records")
    shown = (row["Input"], row["Cached input"], row["Output"])
    assert shown == pytest.approx((spend.input, spend.cached_input, spend.output))
    assert (row["Input cached"], row["Reasoning tokens"]) == (0.75, 400)


def test_billed_tokens_add_up_kind_by_kind_and_unknown_stays_unknown() -> None:
    first = Billed(prompt_tokens=1500, completion_tokens=900, cached_tokens=1024)
    again = Billed(prompt_tokens=1600, completion_tokens=800)
    assert first + again == Billed(prompt_tokens=3100, completion_tokens=1700, cached_tokens=1024)
    assert (first + again).as_columns()["reasoning_tokens"] is None
    assert Billed() + Billed() == NOT_BILLED
