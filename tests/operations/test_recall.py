"""A recall of programs that got out wrong: who was handed one (hits included), by generator,
key or program over a time range, as JSON or CSV; recalled, their entries go (the next
request a miss `recalled`) and history says so; a pre-warm regenerates them ahead."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from streamlit.testing.v1 import AppTest

from core.generators import OfflineGenerator
from core.operations import monitoring, recall
from core.serving.results import GenerationResult
from core.serving.service import ProgramService
from core.store.schema import (
    admin_actions,
    ai_coach_cache,
    cache_entry_fates,
    rollout_programs,
    training_programs,
    utcnow,
)
from testkit.pg_server import PostgresServer
from tests.conftest import CliRun, Run
from tests.helpers import PROFILE, as_read, count_rows
from tests.pages.test_auth import AUTH
from tests.pages.test_pages import fill, submit
from tests.store.test_adoption import SUPABASE_TABLES, USER, ProductDatabase, generate, succeeded

Cli = Callable[..., CliRun]
OFFLINE = OfflineGenerator.identity.version
programs = training_programs.c


def hand_out(service: ProgramService) -> tuple[GenerationResult, GenerationResult, GenerationResult]:
    """client-a's program, generated then served again from the cache, and client-b's."""
    first = service.generate(user_id="client-a", onboarding_responses=PROFILE, has_paid_access=False)
    hit = service.generate(user_id="client-a", onboarding_responses=PROFILE, has_paid_access=False)
    other = service.generate(user_id="client-b", onboarding_responses=PROFILE, has_paid_access=False)
    assert (first.cache_hit, hit.cache_hit, other.cache_hit) == (False, True, False)
    return first, hit, other


def listed(done: CliRun) -> list[tuple[str, Any, str]]:
    return [(h["user_id"], h["training_program_id"], h["how"]) for h in done.json()["handouts"]]


def test_each_selector_lists_every_hand_out_of_its_programs_cache_hits_included(
    database_url: str, service: ProgramService, cli: Cli
) -> None:
    first, hit, other = hand_out(service)
    client_a = [
        ("client-a", first.training_program_id, "generated"),
        ("client-a", hit.training_program_id, "cache_hit"),
    ]
    assert listed(cli(database_url, "recall", "--program-id", str(hit.training_program_id))) == client_a
    assert listed(cli(database_url, "recall", "--key", first.cache_key)) == client_a
    by_generator = cli(database_url, "recall", "--generator", OFFLINE).json()
    assert (by_generator["count"], by_generator["clients"]) == (3, 2)
    assert [h["training_program_id"] for h in by_generator["handouts"]] == [
        first.training_program_id,
        hit.training_program_id,
        other.training_program_id,
    ]
    nothing = cli(database_url, "recall", "--generator", "prompt-v0")
    assert nothing.json()["count"] == 0 and nothing.stderr.count("\n") == 1 and "nothing to recall" in nothing.stderr
    unknown = cli(database_url, "recall", "--program-id", "999")
    assert (unknown.code, unknown.stdout) == (2, "")
    assert unknown.stderr == "error: invalid recall: program_id: there is no program 999\n"


def test_the_time_range_bounds_the_hand_outs(
    database_url: str, engine: Engine, service: ProgramService, cli: Cli
) -> None:
    first, hit, other = hand_out(service)
    two_days_ago = utcnow() - timedelta(days=2)
    with engine.begin() as connection:
        connection.execute(
            update(training_programs).where(programs.id == first.training_program_id).values(created_at=two_days_ago)
        )
    yesterday = (utcnow() - timedelta(days=1)).date().isoformat()
    since = cli(database_url, "recall", "--generator", OFFLINE, "--since", yesterday).json()["handouts"]
    assert [h["training_program_id"] for h in since] == [hit.training_program_id, other.training_program_id]
    until = cli(database_url, "recall", "--key", first.cache_key, "--until", f"{yesterday}T00:00:00+00:00").json()
    assert [h["training_program_id"] for h in until["handouts"]] == [first.training_program_id]
    bad = cli(database_url, "recall", "--key", first.cache_key, "--since", "yesterday")
    assert bad.code == 2 and bad.stderr.count("\n") == 1 and "--since: must be an ISO 8601 date or time" in bad.stderr
    backwards = cli(database_url, "recall", "--key", first.cache_key, "--since", "2026-12-02", "--until", "2026-12-01")
    assert backwards.stderr == "error: invalid recall: until: must be later than since\n" and backwards.code == 2


def test_the_hand_outs_are_written_as_csv(database_url: str, service: ProgramService, cli: Cli, tmp_path: Path) -> None:
    first, hit, _ = hand_out(service)
    out = tmp_path / "recall.csv"
    report = cli(database_url, "recall", "--key", first.cache_key, "--csv", str(out)).json()
    assert report == {"selection": f"key {first.cache_key}", "count": 2, "clients": 1, "csv": str(out)}
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["user_id"], r["training_program_id"], r["how"]) for r in rows] == [
        ("client-a", str(first.training_program_id), "generated"),
        ("client-a", str(hit.training_program_id), "cache_hit"),
    ]
    assert {r["generator_version"] for r in rows} == {OFFLINE} and {r["recalled_at"] for r in rows} == {""}


def test_recalling_deletes_the_entry_marks_history_and_the_next_request_is_a_miss_recalled(
    database_url: str, engine: Engine, service: ProgramService, cli: Cli
) -> None:
    first, hit, other = hand_out(service)
    refused = cli(database_url, "recall", "--key", first.cache_key, "--invalidate")
    assert (
        refused.code == 2
        and refused.stderr == "error: invalid recall: reason: is required: say why the programs are recalled\n"
    )
    assert count_rows(engine, ai_coach_cache) == 2  # nothing done

    report = cli(database_url, "recall", "--key", first.cache_key, "--invalidate", "--reason", "ignored the sore knee")
    assert report.json()["recalled"] == {
        "entries_deleted": 1,
        "bytes_reclaimed": report.json()["recalled"]["bytes_reclaimed"],
        "history_rows_marked": 2,
        "staged_voided": 0,
    }
    with engine.connect() as connection:
        keys = connection.execute(select(ai_coach_cache.c.cache_key)).scalars().all()
        fate = connection.execute(
            select(cache_entry_fates).where(cache_entry_fates.c.cache_key == first.cache_key)
        ).one()
        marked = connection.execute(
            select(programs.id, programs.recall_reason, programs.recalled_by, programs.recalled_at).order_by(
                programs.id
            )
        ).all()
        action = connection.execute(select(admin_actions)).one()
    assert keys == [other.cache_key]  # client-b's program was not recalled
    assert (fate.fate, fate.actor) == ("recalled", "cli")
    recalled = {first.training_program_id, hit.training_program_id}
    assert [(r.recall_reason, r.recalled_by) for r in marked if r.id in recalled] == [
        ("ignored the sore knee", "cli")
    ] * 2
    assert [r.recalled_at for r in marked if r.id not in recalled] == [None]
    assert (action.actor, action.action, action.target, action.rows_affected) == (
        "cli",
        "recall",
        f"key {first.cache_key}",
        1,
    )

    again = service.generate(user_id="client-a", onboarding_responses=PROFILE, has_paid_access=False)
    assert (again.cache_hit, again.miss_reason) == (False, "recalled")
    # Told what was recalled, as after a rejection: the offline coach chooses other exercises.
    assert again.program != first.program


def test_a_prewarm_regenerates_the_recalled_keys_ahead_and_the_next_request_is_a_hit(
    database_url: str, engine: Engine, service: ProgramService, cli: Cli
) -> None:
    hand_out(service)
    # A prompt version that got out wrong made them; the app now runs the offline coach.
    with engine.begin() as connection:
        for table in (ai_coach_cache, training_programs):
            connection.execute(update(table).values(generator_version="prompt-v7"))
    args = ("recall", "--generator", "prompt-v7", "--invalidate", "--reason", "ignored injuries", "--prewarm", "--live")
    report = cli(database_url, *args).json()
    assert report["recalled"]["entries_deleted"] == 2
    assert (report["prewarm"]["kind"], report["prewarm"]["requested"]) == ("live", 2)
    assert count_rows(engine, rollout_programs, rollout_programs.c.state == "staged") == 2
    served = service.generate(user_id="client-b", onboarding_responses=PROFILE, has_paid_access=False)
    assert served.cache_hit and served.prewarmed_by == report["prewarm"]["rollout_id"]
    assert served.generator_version == OFFLINE


def test_a_prewarm_with_the_generator_that_made_the_programs_is_refused_and_nothing_is_recalled(
    database_url: str, engine: Engine, service: ProgramService, cli: Cli
) -> None:
    first, _, _ = hand_out(service)
    done = cli(database_url, "recall", "--key", first.cache_key, "--invalidate", "--reason", "x", "--prewarm", "--live")
    assert done.code == 2 and done.stdout == ""
    assert (
        done.stderr
        == f"error: invalid recall: prewarm: the app still runs {OFFLINE}, which made programs recalled: switch first\n"
    )
    assert (
        count_rows(engine, ai_coach_cache) == 2
        and count_rows(engine, training_programs, programs.recalled_at.is_not(None)) == 0
    )
    alone = cli(database_url, "recall", "--key", first.cache_key, "--prewarm")
    assert alone.code == 2 and "give --invalidate too" in alone.stderr


def test_the_ttl_replay_counts_the_miss_after_a_recall_as_the_headline_does(
    engine: Engine, service: ProgramService
) -> None:
    first, _, _ = hand_out(service)
    recall.recall(engine, recall.Selection(cache_key=first.cache_key), reason="ignored the knee", actor="test")
    assert service.generate(user_id="client-a", onboarding_responses=PROFILE, has_paid_access=False).miss_reason == (
        "recalled"
    )
    [configured] = monitoring.replay_ttls(engine, [24])
    assert monitoring.summary(engine).hit_rate == configured.hit_rate == 1 / 4


@pytest.fixture
def supabase(pg: PostgresServer) -> Iterator[ProductDatabase]:
    database = ProductDatabase(pg, SUPABASE_TABLES)
    yield database
    pg.admin(f"DROP DATABASE {database.name} WITH (FORCE)")


def test_a_recall_on_an_adopted_table_with_uuid_ids(run: Run, supabase: ProductDatabase, profile_file: Path) -> None:
    succeeded(run(supabase.url, "migrate"))
    miss = succeeded(generate(run, supabase.url, profile_file))
    hit = succeeded(generate(run, supabase.url, profile_file))
    assert run(supabase.url, "recall", "--program-id", "1").returncode == 2  # not an id of this table
    args = ("recall", "--program-id", miss["training_program_id"], "--invalidate", "--reason", "ignored the knee")
    report = succeeded(run(supabase.url, *args))
    assert [(h["user_id"], h["how"]) for h in report["handouts"]] == [(USER, "generated"), (USER, "cache_hit")]
    assert [h["training_program_id"] for h in report["handouts"]] == [
        miss["training_program_id"],
        hit["training_program_id"],
    ]
    assert (report["recalled"]["entries_deleted"], report["recalled"]["history_rows_marked"]) == (1, 2)
    assert succeeded(generate(run, supabase.url, profile_file))["miss_reason"] == "recalled"
    # The product's own rows and recommendations are untouched.
    assert supabase.rows() == supabase.rows_before
    assert supabase.run("SELECT count(*) FROM training_programs WHERE recalled_at IS NOT NULL") == [(2,)]


@pytest.fixture
def app(tmp_path: Path, app_test: Callable[..., AppTest]) -> AppTest:
    return app_test(f"sqlite:///{tmp_path}/coach.db").run()


def recall_on_page(at: AppTest, by: str, value: str, reason: str = "", button: str = "Recall") -> AppTest:
    at.radio(key="recall_by").set_value(by)  # in a form: sent with the click
    at.text_input(key="recall_value").set_value(value)
    at.text_input(key="recall_reason").set_value(reason)
    return at.button(key=f"FormSubmitter:recall-{button}").click().run()


def test_the_admin_page_previews_confirms_and_history_shows_the_recall(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "knee-client"))
    submit(app)  # a hit: the same program handed out again
    submit(fill(app, "other-client"))
    app.switch_page("pages/admin.py").run()
    recall_on_page(app, "Program id", "1", button="Preview hand-outs")
    preview = next(d.value for d in app.dataframe if "How" in d.value)
    assert preview[["User", "Program", "How"]].values.tolist() == [
        ["knee-client", "1", "generated"],
        ["knee-client", "2", "cache hit"],
    ]
    assert "2 hand-outs to 1 client." in [c.value for c in app.caption]
    recall_on_page(app, "Program id", "1")
    assert as_read(app.error[0].value) == "invalid recall: reason: is required: say why the programs are recalled"
    recall_on_page(app, "Program id", "1", "ignored the *sore* knee")
    assert app.warning[-1].value.startswith("Recall the programs of `program 1`?")
    assert count_rows(app_engine, ai_coach_cache) == 2  # nothing yet: a confirmation is asked
    app.button(key="recall_yes").click().run()
    assert app.success[0].value == "Recalled 2 hand-outs; deleted 1 entry still holding them."
    assert count_rows(app_engine, ai_coach_cache) == 1

    app.switch_page("pages/history.py")
    app.query_params["program"] = "2"
    app.run()
    [recalled] = [e.value for e in app.error]
    assert recalled.startswith("**Recalled** by `dashboard` on ")
    assert as_read(recalled).endswith("UTC: ignored the *sore* knee. Do not use this program.")  # text, not Markdown
    table = next(d.value for d in app.dataframe if "Recalled" in d.value.columns)
    assert table["Recalled"].tolist() == ["", "ignored the *sore* knee", "ignored the *sore* knee"]


def test_a_signed_in_coach_may_preview_but_not_recall(tmp_path: Path, app_test: Callable[..., AppTest]) -> None:
    app = app_test(f"sqlite:///{tmp_path}/coach.db", ADMIN_EMAILS="ops.lead@example.com")
    app.secrets["auth"] = AUTH
    app.user = {"is_logged_in": True, "email": "coach@example.com"}
    app.run()
    submit(fill(app, "knee-client"))
    app.switch_page("pages/admin.py").run()
    assert app.button(key="FormSubmitter:recall-Recall").disabled
    recall_on_page(app, "Program id", "1", button="Preview hand-outs")
    assert not app.exception and "1 hand-out to 1 client." in [c.value for c in app.caption]
    assert not [b for b in app.button if b.label == "Yes, recall"]
