"""A coach rejects a program (issue 22): recorded with who, when and why; the key's entry
invalidated at once when it still holds that program, so the same answers are a miss
`rejected` and generate anew; an older program's rejection leaves the entry alone; the
rejection survives cleanup; through the CLI, on an adopted Supabase-style table and in
Chromium, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from core.contract.generation import Generation, Rejected
from core.contract.models import ContractError, OnboardingResponses, parse_onboarding
from core.generators.base import OnProgress
from core.operations import admin, monitoring
from core.serving.miss_reasons import MISS_REASON_TEXT
from core.serving.results import GenerationFailed, GenerationResult
from core.serving.service import ProgramService
from core.store import rejections
from core.store.db import make_engine
from core.store.schema import ai_coach_cache, cache_entry_fates, program_rejections, training_programs
from pages.common import HANDED_BACK_TEXT
from testkit.counting import CountingGenerator
from tests.conftest import CliRun, Run
from tests.fake_openai import FakeOpenAI
from tests.generators.test_openai_generator import openai_service
from tests.helpers import PROFILE, count_rows, expire_entries
from tests.pages.test_browser import browser, settle
from tests.pages.test_browser_history_admin import server
from tests.store.test_adoption import USER as UUID_USER
from tests.store.test_adoption import ProductDatabase, product, succeeded
from tests.store.test_adoption import generate as generate_in

__all__ = ["browser", "product", "server"]  # fixtures, shared with the files that define them
USER = "coach-client-1"


def generate(service: ProgramService, **kwargs: Any) -> GenerationResult:
    kwargs.setdefault("has_paid_access", False)
    return service.generate(user_id=USER, onboarding_responses=PROFILE, **kwargs)


def recorded(engine: Engine) -> list[tuple[Any, ...]]:
    columns = program_rejections.c
    query = select(
        columns.training_program_id, columns.cache_key, columns.rejected_by, columns.category, columns.note
    ).order_by(columns.id)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def entry_data(engine: Engine) -> Any:
    with engine.connect() as connection:
        return connection.execute(select(ai_coach_cache.c.data)).scalar_one_or_none()


def test_rejecting_the_served_program_makes_the_same_answers_a_miss_that_generates_anew(
    service: ProgramService, generator: CountingGenerator, engine: Engine
) -> None:
    generate(service)
    hit = generate(service)  # on PostgreSQL this process has now validated the entry's version
    assert hit.cache_hit and hit.training_program_id is not None
    outcome = rejections.reject(
        engine, program_id=hit.training_program_id, category="wrong_level", note="  too  hard ", actor="ann@example.com"
    )
    assert (outcome.entry, outcome.cache_key, outcome.rejected_by) == ("invalidated", hit.cache_key, "ann@example.com")
    assert outcome.text == "rejected; the cached entry was invalidated, the next request generates anew"
    assert recorded(engine) == [(hit.training_program_id, hit.cache_key, "ann@example.com", "wrong_level", "too hard")]
    assert count_rows(engine, ai_coach_cache) == 0

    again = generate(service)
    assert (again.cache_hit, again.miss_reason) == (False, "rejected")
    assert MISS_REASON_TEXT["rejected"] == "a coach rejected the cached program"
    assert generator.calls == 2
    assert generate(service).cache_hit  # the new program is cached as any other
    rejection = rejections.rejections_of(engine, [hit.training_program_id, again.training_program_id])
    assert list(rejection) == [hit.training_program_id]
    assert rejection[hit.training_program_id].reason == "wrong level: too hard"


class Rewriting(CountingGenerator):
    """A generator whose every program differs from the one before (as an LLM's do)."""

    def generate(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        generation = super().generate(profile, has_paid_access, on_progress, rejected)
        return replace(generation, program={**generation.program, "title": f"Program {self.calls}"})


class Unmoved(CountingGenerator):
    """A generator that writes the same program whatever it is told (as a model at temperature 0 may)."""

    def generate(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        return super().generate(profile, has_paid_access, on_progress)

    def varies_after_rejection(self, profile: OnboardingResponses, has_paid_access: bool, program: Any) -> bool:
        return False


def test_the_program_after_a_rejection_is_another_one_never_the_one_rejected(engine: Engine) -> None:
    client = {**PROFILE, "equipment": ["dumbbells", "machines", "pull_up_bar"]}
    service = ProgramService(engine=engine, generator=CountingGenerator(), lock_wait_seconds=30)
    served = service.generate(user_id=USER, onboarding_responses=client, has_paid_access=False)
    assert served.training_program_id is not None
    rejections.reject(engine, program_id=served.training_program_id, category="other", note=None, actor="cli")
    again = service.generate(user_id=USER, onboarding_responses=client, has_paid_access=False)
    assert again.miss_reason == "rejected"
    # The offline coach chose other exercises wherever the client's kit allowed them.
    before = Rejected("other", None, served.program).exercise_names()
    after = Rejected("other", None, again.program).exercise_names()
    assert after != before and len(after - before) >= len(after) // 2

    unmoved = ProgramService(engine=engine, generator=Unmoved(), lock_wait_seconds=30)
    first = unmoved.generate(user_id="client-2", onboarding_responses=client, has_paid_access=False)
    assert first.training_program_id is not None
    rejections.reject(engine, program_id=first.training_program_id, category="other", note=None, actor="cli")
    with pytest.raises(GenerationFailed, match="is the very program the coach rejected") as refused:
        unmoved.generate(user_id="client-2", onboarding_responses=client, has_paid_access=False)
    assert "Nothing was cached or saved" in str(refused.value)
    assert count_rows(engine, ai_coach_cache) == 1 and count_rows(engine, training_programs) == 3  # USER's


# Bodyweight alone and a sore knee leave the offline coach one choice for each movement.
NO_OTHER_CHOICE = {**PROFILE, "goal": "general_fitness", "equipment": ["bodyweight"], "injuries": "sore left knee"}


@pytest.mark.parametrize(("client", "varies"), [(PROFILE, True), (NO_OTHER_CHOICE, False)])
def test_the_generator_says_beforehand_whether_a_rejection_can_give_another_program(
    engine: Engine, client: dict[str, Any], varies: bool
) -> None:
    generator = CountingGenerator()
    service = ProgramService(engine=engine, generator=generator, lock_wait_seconds=30)
    served = service.generate(user_id=USER, onboarding_responses=client, has_paid_access=False)
    assert served.training_program_id is not None
    said = generator.varies_after_rejection(parse_onboarding(client), False, served.program)
    rejections.reject(engine, program_id=served.training_program_id, category="other", note=None, actor="cli")
    try:
        service.generate(user_id=USER, onboarding_responses=client, has_paid_access=False)
        handed_back = False
    except GenerationFailed as failed:
        handed_back = "is the very program the coach rejected" in str(failed)
    assert said is varies and handed_back is not varies


@pytest.mark.parametrize(("client", "varies"), [(PROFILE, True), (NO_OTHER_CHOICE, False)])
def test_the_reject_form_says_before_regenerating_that_the_same_program_would_come_back(
    tmp_path: Path, app_test: Callable[..., AppTest], client: dict[str, Any], varies: bool
) -> None:
    app = app_test(f"sqlite:///{tmp_path}/coach.db").run()
    app.text_input(key="user_id").set_value("reject-client")
    for field, value in client.items():
        app.session_state[f"form_{field}"] = value
    app.button(key="FormSubmitter:questionnaire-Generate program").click().run()
    assert not app.exception
    warned = [w.value for w in app.warning if w.value == HANDED_BACK_TEXT]
    assert warned == ([] if varies else [HANDED_BACK_TEXT])


def test_the_llm_is_told_the_rejection_s_reason_and_note_after_the_shared_prefix(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    service = openai_service(engine, fake_openai)
    served = generate(service)
    assert served.training_program_id is not None
    rejections.reject(
        engine, program_id=served.training_program_id, category="wrong_level", note="too hard for her", actor="cli"
    )
    assert generate(service).miss_reason == "rejected"
    first, after = fake_openai.requests
    assert after["messages"][0] == first["messages"][0] and after["response_format"] == first["response_format"]
    told = json.loads(after["messages"][1]["content"])["coach_rejected_the_last_program"]
    assert told["reason"] == "wrong level" and told["note"] == "too hard for her"
    assert told["its_exercises"] == sorted(Rejected("", None, served.program).exercise_names())


def test_rejecting_a_program_the_entry_no_longer_holds_leaves_the_entry_alone(engine: Engine) -> None:
    service = ProgramService(engine=engine, generator=Rewriting(), lock_wait_seconds=30)
    older = generate(service)
    newer = generate(service, force_refresh=True)  # the entry now holds "Program 2"
    assert older.training_program_id is not None and older.cache_key == newer.cache_key
    held = entry_data(engine)
    outcome = rejections.reject(
        engine, program_id=older.training_program_id, category="ignores_limitation", note=None, actor="dashboard"
    )
    assert outcome.entry == "left_alone"
    assert outcome.text == "rejected; the cache now holds a newer program, left alone"
    assert entry_data(engine) == held
    with engine.connect() as connection:
        assert connection.execute(select(cache_entry_fates.c.fate)).scalars().all() == ["written"]
    served = generate(service)
    assert served.cache_hit and served.program["title"] == "Program 2"
    assert recorded(engine) == [(older.training_program_id, older.cache_key, "dashboard", "ignores_limitation", None)]


def test_the_rejection_and_its_miss_reason_survive_cleanup(service: ProgramService, engine: Engine) -> None:
    first = generate(service)
    assert first.training_program_id is not None
    rejections.reject(engine, program_id=first.training_program_id, category="other", note="n", actor="cli")
    service.generate(user_id="coach-client-2", onboarding_responses=PROFILE, has_paid_access=False)
    expire_entries(engine)
    assert admin.delete_expired_entries(engine, actor="cli").deleted == 1  # the other user's entry
    assert count_rows(engine, ai_coach_cache) == 0
    assert recorded(engine) == [(first.training_program_id, first.cache_key, "cli", "other", "n")]
    assert generate(service).miss_reason == "rejected"


def test_a_rejection_is_checked_before_anything_is_written(service: ProgramService, engine: Engine) -> None:
    program_id = generate(service).training_program_id
    assert program_id is not None
    cases: list[tuple[Any, Any, str | None, str]] = [
        (program_id, "too_easy", None, "category: must be one of ignores_limitation, wrong_level"),
        (program_id, None, None, "category: is required"),
        (program_id, "other", "x" * 501, "note: must be at most 500 characters, not 501"),
        (9_999, "other", None, "program_id: there is no program 9999"),
        ("not-an-id", "other", None, "program_id: must be a whole number, or a uuid where ids are uuids"),
    ]
    for given, category, note, says in cases:
        with pytest.raises(ContractError, match=says):
            rejections.reject(engine, program_id=given, category=category, note=note, actor="cli")
    assert recorded(engine) == [] and count_rows(engine, ai_coach_cache) == 1


# The command line, in this process (`core.cli.main`).


def test_reject_from_the_command_line_prints_one_json_object(
    cli: Callable[..., CliRun], database_url: str, profile_file: Path
) -> None:
    made = cli(database_url, "generate", "--user-id", USER, "--profile", str(profile_file)).json()
    program_id = str(made["training_program_id"])
    done = cli(database_url, "reject", "--program-id", program_id, "--reason", "wrong_equipment", "--note", "-3kg")
    printed = done.json()
    assert (printed["training_program_id"], printed["category"], printed["rejected_by"]) == (
        made["training_program_id"],
        "wrong_equipment",
        "cli",
    )
    assert (printed["entry"], printed["cache_key"]) == ("invalidated", made["cache_key"])
    assert done.stdout.count("\n") == 1 and done.stderr == ""
    again = cli(database_url, "generate", "--user-id", USER, "--profile", str(profile_file)).json()
    assert (again["cache_hit"], again["miss_reason"]) == (False, "rejected")

    unknown = cli(database_url, "reject", "--program-id", "424242", "--reason", "other")
    assert (unknown.code, unknown.stdout) == (2, "")
    assert unknown.stderr.strip().splitlines() == ["error: invalid rejection: program_id: there is no program 424242"]
    refused = cli(database_url, "reject", "--program-id", program_id, "--reason", "too_easy")
    assert (refused.code, refused.stdout) == (2, "")
    assert refused.stderr.count("\n") == 1 and "argument --reason: invalid choice: 'too_easy'" in refused.stderr
    long_note = cli(database_url, "reject", "--program-id", program_id, "--reason", "other", "--note", "x" * 501)
    assert long_note.code == 2 and "note: must be at most 500 characters" in long_note.stderr
    assert [g["rejected"] for g in cli(database_url, "stats").json()["generators"]] == [1]


@pytest.mark.parametrize("given", ["1.0", "1e0", "+1", " 1", "0x1", "１"])
def test_a_program_id_is_read_by_one_rule_on_both_databases(
    cli: Callable[..., CliRun], database_url: str, given: str, profile_file: Path
) -> None:
    # SQLite took `1.0` for program 1, PostgreSQL refused it: neither takes anything but the id as printed.
    made = cli(database_url, "generate", "--user-id", USER, "--profile", str(profile_file)).json()
    assert made["training_program_id"] == 1
    done = cli(database_url, "reject", "--program-id", given, "--reason", "other")
    assert (done.code, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "error: invalid rejection: program_id: must be a whole number, or a uuid where ids are uuids, "
        "as generate prints it"
    ]
    engine = make_engine(database_url)
    assert recorded(engine) == [] and count_rows(engine, ai_coach_cache) == 1
    engine.dispose()


# An adopted Supabase-style database: uuid ids, other features' rows.


def test_a_rejection_on_adopted_tables_works_and_changes_no_other_features_rows(
    run: Run, product: ProductDatabase, profile_file: Path
) -> None:
    succeeded(run(product.url, "migrate"))
    succeeded(generate_in(run, product.url, profile_file))
    hit = succeeded(generate_in(run, product.url, profile_file))
    assert hit["cache_hit"]
    rejected = succeeded(
        run(product.url, "reject", "--program-id", str(hit["training_program_id"]), "--reason", "wrong_level")
    )
    assert (rejected["training_program_id"], rejected["entry"]) == (hit["training_program_id"], "invalidated")
    # A program of the product's own, from before Coach Cache: recorded, no entry to touch.
    legacy = product.run("SELECT id::text FROM training_programs WHERE program->>'name' = 'Legacy plan'")[0][0]
    own = succeeded(run(product.url, "reject", "--program-id", legacy, "--reason", "other", "--note", "old"))
    assert own["entry"] == "no_entry"
    unknown = run(product.url, "reject", "--program-id", "client-7", "--reason", "other")
    assert unknown.returncode == 2 and "program_id: must be a whole number" in unknown.stderr.decode()
    number = run(product.url, "reject", "--program-id", "7", "--reason", "other")
    assert number.returncode == 2 and "there is no program 7" in number.stderr.decode()

    again = succeeded(generate_in(run, product.url, profile_file))
    assert (again["cache_hit"], again["miss_reason"]) == (False, "rejected")
    assert product.rows() == product.rows_before
    assert product.run("SELECT count(*) FROM ai_coach_cache WHERE cache_key LIKE 'recommendation:%'") == [(3,)]
    stored = product.run("SELECT training_program_id::text, category FROM program_rejections ORDER BY id")
    assert stored == [(str(hit["training_program_id"]), "wrong_level"), (legacy, "other")]
    assert product.run(f"SELECT count(*) FROM training_programs WHERE user_id = '{UUID_USER}'") == [(4,)]


# Monitoring: rejections per generator identity, as a share of the programs it handed out.


def test_rejections_are_counted_per_generator_as_a_share_of_the_programs_it_handed_out(engine: Engine) -> None:
    offline = ProgramService(engine=engine, generator=CountingGenerator(), lock_wait_seconds=30)
    rewriting = Rewriting()
    rewriting.identity = replace(rewriting.identity, version="offline-r1-rewriting")
    other = ProgramService(engine=engine, generator=rewriting, lock_wait_seconds=30)
    handed_out = [
        offline.generate(user_id=f"u{i}", onboarding_responses=PROFILE, has_paid_access=False) for i in range(3)
    ]
    handed_out.append(offline.generate(user_id="u0", onboarding_responses=PROFILE, has_paid_access=False))  # a hit
    other.generate(user_id="v0", onboarding_responses=PROFILE, has_paid_access=False)
    for result, category in [(handed_out[0], "wrong_level"), (handed_out[3], "other"), (handed_out[3], "other")]:
        assert result.training_program_id is not None
        rejections.reject(engine, program_id=result.training_program_id, category=category, note=None, actor="t")

    usage = {u.generator_version: u for u in monitoring.usage_by_generator(engine)}
    ours, theirs = usage[offline.generator.identity.version], usage["offline-r1-rewriting"]
    # Two of its four programs handed out (the second rejected twice, counted once).
    assert (ours.hits + ours.generations, ours.rejected, ours.rejected_share) == (4, 2, 0.5)
    assert (theirs.rejected, theirs.rejected_share) == (0, 0.0)
    # Per time bucket, each counted in the bucket its program was handed out in.
    over_time: Counter[str | None] = Counter()
    for _, bucket_usage in monitoring.usage_over_time(engine, None, "hour"):
        over_time[bucket_usage.generator_version] += bucket_usage.rejected
    assert over_time == {ours.generator_version: 2, "offline-r1-rewriting": 0}


def test_the_ttl_what_if_generates_after_a_rejection_whatever_the_ttl(service: ProgramService, engine: Engine) -> None:
    first = generate(service)
    assert first.training_program_id is not None
    rejections.reject(engine, program_id=first.training_program_id, category="other", note=None, actor="t")
    generate(service)
    [replayed] = monitoring.replay_ttls(engine, [72.0])
    assert (replayed.requests, replayed.generations) == (2, 2)


# In Chromium: the coach rejects the program just served, and asks again at once.


@pytest.mark.browser
def test_a_coach_rejects_the_served_program_and_the_same_answers_generate_anew(
    server: str, browser: Browser, engine: Engine
) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    page.get_by_role("textbox", name="User ID").fill("reject-client")
    page.get_by_role("button", name="Generate program").click()
    settle(page)
    expect(page.get_by_text("Cache miss")).to_be_visible()
    page.get_by_text("Reject this program").click()
    page.get_by_test_id("stRadio").filter(has_text="Reason").get_by_text("Wrong level", exact=True).click()
    page.get_by_role("textbox", name="Note", exact=True).fill("far too hard for her knee")
    page.get_by_role("button", name="Reject", exact=True).click()  # at once: the first click counts
    expect(
        page.get_by_text("rejected; the cached entry was invalidated, the next request generates anew")
    ).to_be_visible()
    assert recorded(engine)[0][2:] == ("dashboard", "wrong_level", "far too hard for her knee")
    page.get_by_role("button", name="Generate program").click()
    settle(page)
    expect(page.get_by_text("Cache miss")).to_be_visible()
    expect(page.get_by_text(MISS_REASON_TEXT["rejected"])).to_be_visible()
    assert count_rows(engine, training_programs) == 2
    page.close()
