from __future__ import annotations

import csv
import io
import logging
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from core.contract.generation import GenerationError, GeneratorIdentity
from core.contract.models import ContractError, OnboardingResponses
from core.generators import OfflineGenerator, OpenAIChatGenerator
from core.operations import admin
from core.serving.results import GenerationFailed
from core.serving.service import ProgramService
from core.serving.single_flight import SingleFlightTimeout
from core.store import entries, history
from core.store.history import HistoryFilter
from core.store.schema import ai_coach_cache, generation_events, training_programs, utcnow
from testkit.counting import CountingGenerator
from tests.conftest import Faults
from tests.fake_openai import FakeOpenAI
from tests.helpers import PROFILE, count_rows, expire_entries, table_counts


def generate(service: ProgramService, profile: dict[str, Any] = PROFILE, **kwargs: Any) -> Any:
    kwargs.setdefault("user_id", "coach-client-1")
    kwargs.setdefault("has_paid_access", False)
    return service.generate(onboarding_responses=profile, **kwargs)


def events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(generation_events).order_by(generation_events.c.id))
        return [dict(r._mapping) for r in rows]


def programs(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(training_programs).order_by(training_programs.c.id))
        return [dict(r._mapping) for r in rows]


def set_entry(engine: Engine, key: str, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(update(ai_coach_cache).where(ai_coach_cache.c.cache_key == key).values(**values))


def test_miss_then_hit_and_both_saved_to_history(service: ProgramService, generator: CountingGenerator) -> None:
    first = generate(service)
    second = generate(service)

    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert generator.calls == 1
    assert second.program == first.program
    assert second.cache_key == first.cache_key
    rows = programs(service.engine)
    assert [(r["id"], r["source"]) for r in rows] == [
        (first.training_program_id, "offline"),
        (second.training_program_id, "cache"),
    ]
    assert rows[1]["program"] == rows[0]["program"]
    # Which generator made it, on the hit's row too (copied from the entry).
    made_by = ("offline-rules-v1", OfflineGenerator.identity.version)
    assert [(r["model"], r["generator_version"]) for r in rows] == [made_by, made_by]
    assert (second.model, second.generator_version) == made_by
    assert [e["outcome"] for e in events(service.engine)] == ["miss", "hit"]


def test_entry_expires_after_the_ttl(service: ProgramService) -> None:
    before = utcnow()
    result = generate(service)
    assert before + service.ttl <= result.expires_at <= utcnow() + service.ttl
    with service.engine.connect() as connection:
        stored = connection.execute(select(ai_coach_cache.c.expires_at, ai_coach_cache.c.data)).one()
    assert stored.expires_at == result.expires_at
    assert stored.data == result.program


def test_history_keeps_the_normalized_answers_and_access(service: ProgramService) -> None:
    messy = {**PROFILE, "equipment": ["dumbbells", "bodyweight", "dumbbells"], "injuries": "  sore   wrist "}
    generate(service, messy, has_paid_access=True)
    row = programs(service.engine)[0]
    assert row["onboarding_responses"]["equipment"] == ["bodyweight", "dumbbells"]
    assert row["onboarding_responses"]["injuries"] == "sore wrist"
    assert row["has_paid_access"] is True


def test_equivalent_answers_hit_the_same_entry(service: ProgramService, generator: CountingGenerator) -> None:
    generate(service, {**PROFILE, "notes": "mornings  please"})
    again = generate(service, {**PROFILE, "equipment": ["bodyweight", "dumbbells"], "notes": " mornings please "})
    assert again.cache_hit and generator.calls == 1


@pytest.mark.parametrize(
    ("user_id", "profile", "field"),
    [
        ("u1", {**PROFILE, "days_per_week": "5"}, "days_per_week"),
        ("u1", {**PROFILE, "days_per_week": 8}, "days_per_week"),
        ("u1", {**PROFILE, "favourite_colour": "blue"}, "favourite_colour"),
        ("u1", {**PROFILE, "age": None}, "age"),
        ("u1", {k: v for k, v in PROFILE.items() if k != "goal"}, "goal"),
        ("u1", {**PROFILE, "equipment": ["spaceship"]}, "equipment.0"),
        ("u:1", PROFILE, "user_id"),
        ("", PROFILE, "user_id"),
    ],
)
def test_invalid_input_names_the_field_and_writes_nothing(
    service: ProgramService, generator: CountingGenerator, user_id: str, profile: dict[str, Any], field: str
) -> None:
    with pytest.raises(ContractError) as error:
        generate(service, profile, user_id=user_id)
    assert field in [e.field for e in error.value.errors]
    assert str(error.value).count(field) >= 1
    assert table_counts(service.engine) == (0, 0, 0)
    assert generator.calls == 0


def test_miss_reasons(service: ProgramService) -> None:
    first = generate(service)
    assert first.miss_reason == "first_generation"

    expire_entries(service.engine, ai_coach_cache.c.cache_key == first.cache_key, ago=timedelta(seconds=1))
    expired = generate(service)
    assert (expired.cache_hit, expired.miss_reason) == (False, "expired")

    changed = generate(service, {**PROFILE, "days_per_week": 4, "age": 35})
    assert changed.miss_reason == "profile_changed"
    assert changed.changed_fields == ("age", "days_per_week")

    access = generate(service, {**PROFILE, "days_per_week": 4, "age": 35}, has_paid_access=True)
    assert (access.miss_reason, access.changed_fields) == ("access_changed", ("has_paid_access",))

    forced = generate(service, {**PROFILE, "days_per_week": 4, "age": 35}, has_paid_access=True, force_refresh=True)
    assert (forced.cache_hit, forced.miss_reason) == (False, "forced_refresh")
    assert [e["miss_reason"] for e in events(service.engine)] == [
        "first_generation",
        "expired",
        "profile_changed",
        "access_changed",
        "forced_refresh",
    ]


def test_force_refresh_regenerates_and_replaces_the_entry(
    service: ProgramService, generator: CountingGenerator
) -> None:
    first = generate(service)
    refreshed = generate(service, force_refresh=True)
    assert generator.calls == 2
    assert refreshed.expires_at > first.expires_at
    assert count_rows(service.engine, ai_coach_cache) == 1
    assert [e["outcome"] for e in events(service.engine)] == ["miss", "bypass"]
    assert generate(service).cache_hit


@pytest.mark.parametrize(
    "corruption",
    [
        {"surprise_field": 1},
        {"weeks": []},
        "a string",
        "days_per_week_mismatch",
        # Well-formed, made before the fit rules: right for another client, not this one.
        {"goal": "fat_loss"},
        {"experience_level": "advanced"},
    ],
)
def test_an_entry_that_no_longer_validates_is_a_miss_and_is_overwritten(
    service: ProgramService, generator: CountingGenerator, corruption: Any
) -> None:
    first = generate(service)
    if corruption == "days_per_week_mismatch":
        bad: Any = {**first.program, "days_per_week": 5}
    elif isinstance(corruption, dict):
        bad = {**first.program, **corruption}
    else:
        bad = corruption
    set_entry(service.engine, first.cache_key, data=bad)

    again = generate(service)
    assert (again.cache_hit, again.miss_reason) == (False, "invalid_entry")
    assert again.program == first.program
    assert generator.calls == 2
    with service.engine.connect() as connection:
        assert connection.execute(select(ai_coach_cache.c.data)).scalar_one() == first.program


class BrokenGenerator:
    name = "broken"
    identity = GeneratorIdentity(model="broken", version="broken-1")

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def generate(
        self, profile: OnboardingResponses, has_paid_access: bool, on_progress: Any = None, rejected: Any = None
    ) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        from core.contract.generation import Generation

        return Generation(program=self.answer, model="broken")


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (GenerationError("the LLM server answered HTTP 500"), "HTTP 500"),
        ({"title": "half a program"}, "is required"),
    ],
)
def test_failed_generation_caches_and_saves_nothing(engine: Engine, answer: Any, says: str) -> None:
    service = ProgramService(engine=engine, generator=BrokenGenerator(answer))
    with pytest.raises(GenerationFailed) as error:
        generate(service)
    assert says in str(error.value) and "Nothing was cached or saved" in str(error.value)
    assert count_rows(engine, ai_coach_cache) == 0
    assert count_rows(engine, training_programs) == 0
    assert [e["outcome"] for e in events(engine)] == ["error"]


def test_cache_read_error_is_a_warning_and_generation_proceeds(
    faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    service = ProgramService(engine=faults.engine, generator=CountingGenerator())
    generate(service)
    faults.deny("ai_coach_cache", "SELECT")

    with caplog.at_level(logging.WARNING, logger="core.serving.service"):
        result = generate(service)

    assert (result.cache_hit, result.miss_reason) == (False, "cache_unavailable")
    assert result.training_program_id is not None
    assert any("Cache read failed" in r.message for r in caplog.records)
    assert events(faults.engine)[-1]["cache_read_error"] is True


def test_cache_write_error_still_returns_and_saves_the_program(
    faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    service = ProgramService(engine=faults.engine, generator=CountingGenerator())
    faults.deny("ai_coach_cache", "INSERT", "UPDATE")

    with caplog.at_level(logging.WARNING, logger="core.serving.service"):
        result = generate(service)

    assert result.cache_hit is False and result.training_program_id is not None
    assert result.expires_at is None and result.warnings
    assert any("Cache write failed" in r.message for r in caplog.records)
    assert count_rows(faults.engine, ai_coach_cache) == 0
    assert programs(faults.engine)[0]["source"] == "offline"
    assert events(faults.engine)[-1]["cache_write_error"] is True


def test_history_save_error_is_reported_with_the_program_and_can_be_saved_again(faults: Faults) -> None:
    service = ProgramService(engine=faults.engine, generator=CountingGenerator())
    faults.deny("training_programs", "INSERT")

    result = generate(service)

    assert result.program["weeks"] and result.training_program_id is None
    assert result.history_error and "could not be saved" in result.history_error
    assert result.unsaved is not None
    assert count_rows(faults.engine, training_programs) == 0
    assert events(faults.engine)[-1]["history_error"] is True
    assert count_rows(faults.engine, ai_coach_cache) == 1  # cached all the same, its event recorded

    refused = service.save_again(result)
    assert refused.history_error and refused.unsaved is result.unsaved  # still refused: kept to try again

    faults.allow("training_programs", "INSERT")
    saved = service.save_again(refused)
    assert saved.history_error is None and saved.unsaved is None
    assert programs(faults.engine)[0]["id"] == saved.training_program_id
    assert programs(faults.engine)[0]["program"] == result.program
    assert len(events(faults.engine)) == 1  # the request's event was recorded the first time


def test_a_billed_miss_whose_event_could_not_be_recorded_is_recorded_when_its_program_is_saved(
    faults: Faults, fake_openai: FakeOpenAI
) -> None:
    generator = OpenAIChatGenerator(
        api_key="sk-test",
        model="gpt-test",
        base_url=fake_openai.base_url,
        timeout_seconds=5,
        max_retries=0,
        max_completion_tokens=16_000,
    )
    service = ProgramService(engine=faults.engine, generator=generator)
    faults.deny("training_programs", "INSERT")
    faults.deny("generation_events", "INSERT")
    result = generate(service)
    assert result.history_error and result.program["weeks"] and events(faults.engine) == []
    # No entry either: a hit on it would count as saved a generation never counted as spent.
    assert count_rows(faults.engine, ai_coach_cache) == 0

    faults.allow("training_programs", "INSERT")
    faults.allow("generation_events", "INSERT")
    saved = service.save_again(result)
    [event] = events(faults.engine)
    assert saved.history_error is None and saved.unsaved_event is None
    assert (event["outcome"], event["prompt_tokens"], event["completion_tokens"]) == ("miss", 420, 1800)
    assert event["history_error"] is True
    assert service.save_again(saved) is saved and len(programs(faults.engine)) == 1


def test_history_filters_are_whole_utc_days_and_open_ended_while_one_day_is_picked() -> None:
    picked = (date(2026, 11, 1), date(2026, 11, 3))
    flt = HistoryFilter.from_form(user_id="  client-1 ", days=picked, source="cache")
    assert (flt.user_id, flt.source) == ("client-1", "cache")
    assert (flt.since, flt.until) == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC))
    one_day = HistoryFilter.from_form(user_id="", days=picked[:1], source=None)
    assert (one_day.user_id, one_day.since, one_day.until) == (None, datetime(2026, 11, 1, tzinfo=UTC), None)


def test_the_user_filter_finds_every_id_that_begins_with_what_was_typed(service: ProgramService) -> None:
    for user_id in ("client-1", "client-2", "Client-3", "clientele", "my-client", "client_x", "clientAx"):
        generate(service, user_id=user_id)

    def users(typed: str) -> list[str]:
        return sorted(r.user_id for r in history.list_programs(service.engine, HistoryFilter(user_id=typed)).rows)

    assert users("client") == ["client-1", "client-2", "clientAx", "client_x", "clientele"]
    assert users("client-1") == ["client-1"]
    assert users("client_") == ["client_x"]  # "_" is itself, not any character
    assert users("Client") == ["Client-3"]  # as typed, on every database


def test_the_csv_export_holds_the_filtered_rows(service: ProgramService) -> None:
    generate(service)
    generate(service)
    rows = list(csv.reader(io.StringIO(history.export_csv(service.engine, HistoryFilter(source="cache")).decode())))
    assert rows[0] == history.CSV_COLUMNS
    assert [r[history.CSV_COLUMNS.index("source")] for r in rows[1:]] == ["cache"]


def test_concurrent_identical_requests_make_one_llm_call(engine: Engine) -> None:
    # More requests than the connection pool holds (10 + 10 overflow): waiters must not
    # keep connections while the winner still needs some to save its program.
    generator = CountingGenerator(delay_seconds=0.5)
    service = ProgramService(engine=engine, generator=generator, lock_wait_seconds=30)
    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(30)

    def request() -> None:
        barrier.wait()
        try:
            results.append(generate(service))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert generator.calls == 1
    assert sorted(r.cache_hit for r in results) == [False] + [True] * 29
    assert all(r.program == results[0].program for r in results)
    assert count_rows(engine, training_programs) == 30


def test_a_waiter_gives_up_after_a_bounded_time(engine: Engine) -> None:
    generator = CountingGenerator(delay_seconds=2.0)
    service = ProgramService(engine=engine, generator=generator, lock_wait_seconds=0.3)
    first = threading.Thread(target=generate, args=(service,))
    first.start()
    while generator.calls == 0:
        threading.Event().wait(0.01)
    with pytest.raises(SingleFlightTimeout, match="try again"):
        generate(service)
    first.join()
    assert generator.calls == 1
    assert [e["outcome"] for e in events(engine)] == ["error", "miss"]


def test_the_lock_is_released_after_a_failed_generation(engine: Engine) -> None:
    broken = ProgramService(engine=engine, generator=BrokenGenerator(GenerationError("down")), lock_wait_seconds=1)
    with pytest.raises(GenerationFailed):
        generate(broken)
    working = ProgramService(engine=engine, generator=CountingGenerator(), lock_wait_seconds=1)
    assert generate(working).cache_hit is False


def test_different_users_do_not_share_entries(service: ProgramService, generator: CountingGenerator) -> None:
    a = generate(service, user_id="alice")
    b = generate(service, user_id="bob")
    assert a.cache_key != b.cache_key and not b.cache_hit
    assert generator.calls == 2


def test_entries_count_their_hits_since_written(service: ProgramService) -> None:
    generate(service)
    generate(service)
    generate(service)
    generate(service, user_id="someone-else")
    counts = {e.user_id: e.hit_count for e in entries.list_entries(service.engine)}
    assert counts == {"coach-client-1": 2, "someone-else": 0}
    generate(service, force_refresh=True)  # a new entry: its count starts again
    assert entries.list_entries(service.engine, user_id="coach-client-1")[0].hit_count == 0


def test_an_entry_changed_after_a_validated_hit_is_validated_again(service: ProgramService) -> None:
    # The first hit validates the entry's version and remembers it; a hand edit of the row
    # must still be caught on the next hit, not served from what was remembered.
    first = generate(service)
    assert generate(service).cache_hit
    assert generate(service).cache_hit
    set_entry(service.engine, first.cache_key, data={**first.program, "weeks": []})
    again = generate(service)
    assert (again.cache_hit, again.miss_reason) == (False, "invalid_entry")
    assert again.program == first.program


def test_an_entry_rewritten_after_a_validated_hit_is_served_as_it_now_is(service: ProgramService) -> None:
    # Another instance rewrote the entry with a valid program: the version this instance
    # validated is gone, so its one-statement hit copies nothing, and the entry is read,
    # validated and served as a hit all the same, its new program saved to history.
    first = generate(service)
    assert generate(service).cache_hit
    rewritten = {**first.program, "title": "Rewritten by another instance"}
    set_entry(service.engine, first.cache_key, data=rewritten)
    served = generate(service)
    assert (served.cache_hit, served.program) == (True, rewritten)
    assert programs(service.engine)[-1]["program"] == rewritten
    assert [e["outcome"] for e in events(service.engine)] == ["miss", "hit", "hit"]
    assert generate(service).program == rewritten  # and this version is the one remembered now


def test_a_hit_on_an_entry_validated_before_is_saved_like_any_other(service: ProgramService) -> None:
    first = generate(service)
    assert generate(service).cache_hit  # validates this version of the entry
    hot = generate(service)  # reads the entry without its program (PostgreSQL) and copies it
    assert hot.cache_hit and hot.program == first.program
    saved = programs(service.engine)[-1]
    assert saved["id"] == hot.training_program_id
    assert (saved["source"], saved["program"], saved["cache_key"]) == ("cache", first.program, first.cache_key)
    assert saved["latency_ms"] > 0 and saved["generator_version"] == first.generator_version
    logged = events(service.engine)
    assert [e["outcome"] for e in logged] == ["miss", "hit", "hit"]
    hot_event = logged[-1]
    assert hot_event["latency_ms"] > 0 and hot_event["user_id"] == "coach-client-1"
    assert (hot_event["cache_key"], hot_event["generator_version"]) == (first.cache_key, first.generator_version)
    assert hot_event["created_at"] >= hot.requested_at


@pytest.mark.parametrize("validated_before", [False, True], ids=["first-hit", "validated-hit"])
@pytest.mark.parametrize("refused", ["generation_events", "training_programs"])
def test_a_hit_saves_its_history_row_and_its_event_together_or_neither(
    faults: Faults, validated_before: bool, refused: str
) -> None:
    service = ProgramService(engine=faults.engine, generator=CountingGenerator())
    generate(service)
    if validated_before:
        assert generate(service).cache_hit
    before = len(programs(faults.engine)), len(events(faults.engine))
    faults.deny(refused, "INSERT")
    hit = generate(service)
    assert hit.cache_hit and hit.history_error and hit.training_program_id is None
    # The event of the failed save is the one row that may land (when its table accepts it).
    failure_events = 0 if refused == "generation_events" else 1
    assert (len(programs(faults.engine)), len(events(faults.engine))) == (before[0], before[1] + failure_events)
    faults.allow(refused, "INSERT")
    saved = service.save_again(hit)
    assert saved.training_program_id is not None
    assert (len(programs(faults.engine)), len(events(faults.engine))) == (before[0] + 1, before[1] + 1)


def test_a_hit_whose_entry_was_rewritten_before_its_copy_saves_the_program_it_served_with_one_event(
    service: ProgramService, engine: Engine
) -> None:
    served = generate(service)
    hit = generate(service)
    record = history.HistoryRecord(
        user_id="u1",
        program_json=hit.program_json,
        onboarding_responses=hit.onboarding_responses,
        has_paid_access=False,
        source="cache",
        cache_key=hit.cache_key,
        latency_ms=1.0,
    )
    event = history.GenerationEvent(user_id="u1", cache_key=hit.cache_key, outcome="hit", latency_ms=1.0)
    before = len(programs(engine)), len(events(engine))
    # Written at another time than the entry's: the entry was rewritten since it was read.
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    saved = history.save_program_and_event(engine, record, event, entry_written_at=long_ago)
    assert (len(programs(engine)), len(events(engine))) == (before[0] + 1, before[1] + 1)
    assert programs(engine)[-1]["id"] == saved and programs(engine)[-1]["program"] == served.program


def test_entries_of_the_same_answers_share_their_onboarding_hash_whatever_the_access(engine: Engine) -> None:
    service = ProgramService(engine=engine, generator=CountingGenerator(), key_secret=b"team-secret")
    free, paid = generate(service, has_paid_access=False), generate(service, has_paid_access=True)
    other = generate(service, {**PROFILE, "session_minutes": 60})
    with engine.connect() as connection:
        hashes = dict(connection.execute(select(ai_coach_cache.c.cache_key, ai_coach_cache.c.onboarding_hash)).all())
    assert free.cache_key != paid.cache_key and hashes[free.cache_key] == hashes[paid.cache_key]
    assert hashes[other.cache_key] != hashes[free.cache_key]
    # The secret keys the digest: the same answers without it are another key.
    assert generate(ProgramService(engine=engine, generator=CountingGenerator())).cache_key != free.cache_key


class OtherModel(CountingGenerator):
    """The same programs, as if from another model: another generator identity."""

    def __init__(self) -> None:
        super().__init__()
        self.identity = GeneratorIdentity(model="gpt-other", version="openai-p1-000000000000")


def test_an_entry_of_another_generator_is_a_miss_and_is_overwritten(service: ProgramService) -> None:
    first = generate(service)
    assert generate(service).cache_hit  # on PostgreSQL this version is now validated here
    service.generator = OtherModel()
    changed = generate(service)
    assert (changed.cache_hit, changed.miss_reason) == (False, "generator_changed")
    assert changed.generator_version == "openai-p1-000000000000" and changed.cache_key == first.cache_key
    again = generate(service)
    assert again.cache_hit and again.generator_version == "openai-p1-000000000000"
    rows = programs(service.engine)
    assert [r["source"] for r in rows] == ["offline", "cache", "llm", "cache"]
    assert [e["outcome"] for e in events(service.engine)] == ["miss", "hit", "miss", "hit"]
    assert count_rows(service.engine, ai_coach_cache) == 1


def test_with_serve_an_entry_of_another_generator_is_still_a_hit_that_says_who_made_it(
    service: ProgramService,
) -> None:
    first = generate(service)
    service.generator, service.serve_other_generators = OtherModel(), True
    served = generate(service)
    assert served.cache_hit and served.program == first.program
    assert (served.model, served.generator_version) == ("offline-rules-v1", OfflineGenerator.identity.version)
    assert programs(service.engine)[-1]["model"] == "offline-rules-v1"


# Miss reasons from what the database recorded about the key (more in test_miss_reasons.py).


@pytest.mark.parametrize("how", ["user", "generator"])
def test_an_invalidated_entry_says_invalidated(service: ProgramService, how: str) -> None:
    generate(service)
    if how == "user":
        admin.invalidate_user(service.engine, actor="test", user_id="coach-client-1")
    else:
        version = service.generator.identity.version
        admin.retire_generator(service.engine, actor="test", generator_version=version)
    assert generate(service).miss_reason == "invalidated"


def test_an_entry_invalidated_after_it_expired_says_expired(service: ProgramService) -> None:
    generate(service)
    expire_entries(service.engine)
    admin.invalidate_user(service.engine, actor="test", user_id="coach-client-1")
    assert generate(service).miss_reason == "expired"


def test_a_program_that_could_not_be_cached_says_so_next_time(faults: Faults) -> None:
    service = ProgramService(engine=faults.engine, generator=CountingGenerator())
    faults.deny("ai_coach_cache", "INSERT", "UPDATE")
    assert generate(service).expires_at is None
    faults.allow("ai_coach_cache", "INSERT", "UPDATE")
    again = generate(service)
    assert (again.cache_hit, again.miss_reason) == (False, "not_cached")
    assert generate(service).cache_hit
