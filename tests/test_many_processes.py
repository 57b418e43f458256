"""Single-flight across processes: separate app instances sharing one PostgreSQL."""

from __future__ import annotations

import multiprocessing
from typing import Any

from sqlalchemy import select

from core.db import make_engine
from core.generators import OpenAIChatGenerator
from core.schema import generation_events
from core.service import ProgramService
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import PROFILE


def _instance(database_url: str, base_url: str, start: Any, results: Any) -> None:
    engine = make_engine(database_url)
    generator = OpenAIChatGenerator(
        api_key="sk-test", model="gpt-test", base_url=base_url, timeout_seconds=30, max_retries=0
    )
    service = ProgramService(engine=engine, generator=generator, lock_wait_seconds=60)
    start.wait()
    result = service.generate(user_id="shared-user", onboarding_responses=PROFILE, has_paid_access=True)
    results.put(result.cache_hit)


def test_four_processes_generating_the_same_profile_make_one_llm_call(pg_url: str, fake_openai: FakeOpenAI) -> None:
    fake_openai.reset(Behaviour(delay_seconds=1.0))
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_instance, args=(pg_url, fake_openai.base_url, start, results)) for _ in range(4)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert sorted(results.get(timeout=5) for _ in range(4)) == [False, True, True, True]
    assert fake_openai.calls == 1
    engine = make_engine(pg_url)
    with engine.connect() as connection:
        outcomes = sorted(connection.execute(select(generation_events.c.outcome)).scalars())
    engine.dispose()
    assert outcomes == ["hit", "hit", "hit", "miss"]
