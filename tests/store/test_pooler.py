"""Through PgBouncer in transaction pooling mode, as in a managed PostgreSQL (Supabase's
Supavisor has the same constraints): each transaction may run on another server
connection, so nothing may rely on session state (prepared statements, session locks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from core.operations import monitoring
from core.serving.service import ProgramService
from core.store import entries, history
from core.store.db import make_engine
from core.store.history import HistoryFilter
from core.store.schema import training_programs
from testkit.counting import CountingGenerator
from tests.helpers import PROFILE, count_rows

THREADS = 4  # one per kind of page below
HITS_PER_THREAD = 100


@pytest.fixture
def pooled_engine(pooled_url: str) -> Iterator[Engine]:
    engine = make_engine(pooled_url)
    yield engine
    engine.dispose()


def test_hundreds_of_hits_in_a_row_from_several_threads(pooled_engine: Engine) -> None:
    # psycopg prepares a statement on its 5th run on one connection; behind the pooler the
    # next run may land on a server connection without it, or where the name is taken by
    # another statement. So each thread also runs its own other pages' queries between hits,
    # as the dashboard's users do.
    generator = CountingGenerator()
    service = ProgramService(engine=pooled_engine, generator=generator, lock_wait_seconds=30)
    first = service.generate(user_id="pooled", onboarding_responses=PROFILE, has_paid_access=True)
    errors: list[BaseException] = []
    hits: list[bool] = []

    def coach(look_around: Callable[[], object]) -> None:
        for _ in range(HITS_PER_THREAD):
            try:
                result = service.generate(user_id="pooled", onboarding_responses=PROFILE, has_paid_access=True)
                hits.append(result.cache_hit and not result.warnings and result.history_error is None)
                look_around()
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)

    pages: list[Callable[[], object]] = [
        lambda: None,
        lambda: monitoring.summary(pooled_engine),
        lambda: history.list_programs(pooled_engine, HistoryFilter()),
        lambda: entries.count_entries(pooled_engine),
    ]
    threads = [threading.Thread(target=coach, args=(page,)) for page in pages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert first.cache_hit is False and hits == [True] * (THREADS * HITS_PER_THREAD)
    assert generator.calls == 1
    assert count_rows(pooled_engine, training_programs) == 1 + THREADS * HITS_PER_THREAD
