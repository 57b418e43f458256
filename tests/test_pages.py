"""Every page through Streamlit's AppTest: the real scripts, a real SQLite database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from core import monitoring
from core.formatting import DOLLAR_PRINTF, format_dollars
from core.generators import OfflineGenerator
from core.history import GenerationEvent, insert_event
from core.schema import ai_coach_cache, training_programs
from core.settings import Settings
from tests.fake_openai import FakeOpenAI
from tests.helpers import count_rows, expire_entries, insert_entries
from tests.test_generator_monitoring import bill


@pytest.fixture
def app(tmp_path: Path, app_test: Callable[..., AppTest]) -> AppTest:
    return app_test(f"sqlite:///{tmp_path}/coach.db").run()


def fill(at: AppTest, user_id: str = "client-7", **answers: object) -> AppTest:
    """Type into the form without submitting it: the values travel with the next click."""
    at.text_input(key="user_id").set_value(user_id)
    for field, value in answers.items():
        at.session_state[f"form_{field}"] = value
    return at


def submit(at: AppTest) -> AppTest:
    return at.button(key="FormSubmitter:questionnaire-Generate program").click().run()


def test_shell_shows_four_pages_and_the_active_database_and_generator(app: AppTest) -> None:
    sidebar = " ".join(m.value for m in app.sidebar.markdown).replace("\\", "")  # markdown escapes
    assert "SQLite file" in sidebar and "Offline rule-based generator" in sidebar
    assert [t.value for t in app.title] == ["Generate program"]
    assert not app.exception


def test_a_bad_setting_is_one_plain_message_not_a_stack_trace(tmp_path: Path, app_test: Callable[..., AppTest]) -> None:
    at = app_test(f"sqlite:///{tmp_path}/coach.db", CACHE_TTL_HOURS="abc").run()
    assert not at.exception
    shown = [e.value.replace("\\", "") for e in at.error]  # markdown escapes
    assert shown == [
        "configuration: CACHE_TTL_HOURS=abc: Input should be a valid number, unable to parse string as a number"
    ]


def test_generate_miss_then_hit(app: AppTest) -> None:
    submit(fill(app, goal="strength", equipment=["dumbbells", "barbell"]))
    assert not app.exception and not app.error
    assert "Cache miss" in app.info[0].value and "first program for this user" in app.info[0].value
    labels = {m.label: m.value for m in app.metric}
    assert labels["Saved as program"] == "#1"
    files = {b.proto.label: b.proto for b in app.get("download_button")}
    assert set(files) == {"Download Markdown", "Download JSON"}

    submit(app)
    assert "Cache hit" in app.success[0].value
    assert {m.label: m.value for m in app.metric}["Saved as program"] == "#2"
    weeks = app.button_group[0]
    assert weeks.options[-1] == "Week 4"
    weeks.set_value(4).run()
    assert any("lighter loads" in c.value for c in app.caption)  # week 4 (a deload) is shown


def test_a_changed_field_is_named_in_the_miss_reason(app: AppTest) -> None:
    submit(fill(app))
    submit(fill(app, days_per_week=5))
    assert "the profile changed (Days per week)" in app.info[0].value


def load_latest(at: AppTest) -> AppTest:
    return at.button(key="FormSubmitter:questionnaire-Load latest").click().run()


def test_answers_typed_are_never_replaced_unless_the_coach_loads_the_latest(app: AppTest) -> None:
    submit(fill(app, "returning-client", goal="endurance", days_per_week=5, notes="early mornings"))
    # Another user ID, answers typed for them: nothing replaces them, on a submit or not.
    submit(fill(app, "someone-else", goal="strength", days_per_week=2))
    assert (app.session_state["form_goal"], app.session_state["form_days_per_week"]) == ("strength", 2)

    load_latest(fill(app, "returning-client"))
    assert app.session_state["form_goal"] == "endurance"
    assert app.session_state["form_days_per_week"] == 5
    assert app.session_state["form_notes"] == "early mornings"
    note = app.info[0].value
    assert note.startswith("Loaded the answers of returning-client's latest program, #1 of ") and "UTC" in note

    load_latest(fill(app, "nobody-yet", goal="fat_loss"))
    assert app.session_state["form_goal"] == "fat_loss"
    assert "No earlier program for nobody-yet" in app.info[0].value


def test_a_returning_users_changes_are_listed_with_a_link_to_the_previous_program(app: AppTest) -> None:
    submit(fill(app, "changing-client", goal="endurance", days_per_week=3))
    submit(fill(app, "changing-client", goal="strength", days_per_week=4))
    since = next(m.value for m in app.markdown if m.value.startswith("- "))
    assert since == "- Days per week: 3 → 4\n- Goal: Endurance → Strength"
    link = app.get("page_link")[0]
    assert link.proto.label.startswith("Previous program #1 (") and link.proto.query_string == "program=1"


@pytest.mark.parametrize("user_id", ["bad:id", "", "two words"])
def test_invalid_input_names_the_field_and_writes_nothing(app: AppTest, app_engine: Engine, user_id: str) -> None:
    app.session_state["user_id"] = user_id
    submit(app.run())
    assert "User ID" in app.error[0].value and "Nothing was saved" in app.error[0].value
    assert "1-128 characters" in app.error[0].value
    assert not app.info or "Cache" not in app.info[0].value
    assert count_rows(app_engine, ai_coach_cache) == 0


def test_empty_database_pages_show_friendly_empty_states(app: AppTest) -> None:
    app.switch_page("pages/history.py").run()
    assert not app.exception and "No programs match" in app.info[0].value
    app.switch_page("pages/monitoring.py").run()
    assert not app.exception and "No requests in this window yet" in app.info[0].value
    assert {m.label: m.value for m in app.metric}["Hit rate"] == "–"
    app.switch_page("pages/admin.py").run()
    assert not app.exception and "holds no program entries" in app.info[0].value


def test_history_lists_programs_and_shows_one(app: AppTest) -> None:
    submit(fill(app))
    submit(app)
    app.switch_page("pages/history.py").run()
    table = app.dataframe[0].value
    assert list(table["Source"]) == ["cache", "offline"]
    app.selectbox(key="history_source").set_value("offline")  # in a form: sent with the click
    apply_filters(app)
    assert list(app.dataframe[0].value["Source"]) == ["offline"]


def apply_filters(at: AppTest) -> AppTest:
    return at.button(key="FormSubmitter:history_filters-Apply filters").click().run()


def test_a_refused_user_filter_can_be_corrected_and_applied(app: AppTest) -> None:
    submit(fill(app, "kept-client"))
    app.switch_page("pages/history.py").run()
    app.text_input(key="history_user").set_value("bad:id")  # in a form: sent with the click
    apply_filters(app)
    assert "1-128 characters" in app.error[0].value and not app.dataframe
    app.text_input(key="history_user").set_value("kept-client")
    apply_filters(app)
    assert not app.error and list(app.dataframe[0].value["User"]) == ["kept-client"]


def test_monitoring_shows_hit_rate_and_charts(app: AppTest) -> None:
    submit(fill(app))
    submit(app)
    app.switch_page("pages/monitoring.py").run()
    assert not app.exception
    assert {m.label: m.value for m in app.metric}["Hit rate"] == "50.0%"
    # The offline generator billed no tokens: its hit rate is charted, not three empty charts.
    assert len(app.get("plotly_chart")) == 7
    assert any("the offline generator makes no LLM call" in c.value for c in app.caption)
    generators = next(d.value for d in app.dataframe if "Generator" in d.value.columns)
    [row] = generators.to_dict("records")
    assert row["Generator"].startswith("offline-rules-v1 · offline-")
    assert (row["Hits"], row["Generated"], row["LLM calls"], row["Cost saved"]) == (1, 1, 0, 0.0)


def test_cleanup_asks_for_confirmation_and_deletes_only_expired(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "expired-user"))
    submit(fill(app, "valid-user"))
    engine = app_engine
    expire_entries(engine, ai_coach_cache.c.user_id == "expired-user")
    app.switch_page("pages/admin.py").run()
    next(b for b in app.button if b.label == "Delete expired entries").click().run()
    assert count_rows(engine, ai_coach_cache) == 2  # nothing yet: a confirmation is asked
    assert "Delete 1 expired entry?" in app.warning[0].value
    app.button(key="cleanup_yes").click().run()
    assert "Deleted 1 expired entry," in app.success[0].value
    assert count_rows(engine, ai_coach_cache) == 1
    assert list(app.dataframe[-1].value["Action"]) == ["cleanup"]


def test_invalidate_a_user_with_confirmation(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "leaving-user"))
    app.switch_page("pages/admin.py").run()
    app.text_input(key="invalidate_user").set_value("leaving-user")  # in a form: sent with the click
    next(b for b in app.button if b.label == "Invalidate").click().run()
    app.button(key="invalidate_no").click().run()
    engine = app_engine
    assert count_rows(engine, ai_coach_cache) == 1
    next(b for b in app.button if b.label == "Invalidate").click().run()
    app.button(key="invalidate_yes").click().run()
    assert app.success[0].value == "Invalidated 1 entry of `leaving-user`."
    assert count_rows(engine, ai_coach_cache) == 0


def test_invalidating_says_what_the_next_request_does_and_with_which_generator(
    app: AppTest, tmp_path: Path, app_test: Callable[..., AppTest], fake_openai: FakeOpenAI
) -> None:
    app.switch_page("pages/admin.py").run()
    app.text_input(key="invalidate_user").set_value("leaving-user")
    next(b for b in app.button if b.label == "Invalidate").click().run()
    question = app.warning[0].value
    assert question.startswith("Delete every cached program of `leaving-user`?")
    assert "will generate a new program with the current generator, Offline rule-based generator." in question
    assert "LLM" not in question
    online = app_test(
        f"sqlite:///{tmp_path}/online.db",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_MODEL="gpt-e2e",
    ).run()
    online.switch_page("pages/admin.py").run()
    online.text_input(key="invalidate_user").set_value("leaving-user")
    next(b for b in online.button if b.label == "Invalidate").click().run()
    shown = online.warning[0].value.replace("\\", "")  # markdown escapes
    assert f"the current generator, OpenAI gpt-e2e at {fake_openai.base_url}." in shown


@pytest.mark.parametrize(("typed", "said"), [("", "Type a user id first."), ("bad:id", "1-128 characters")])
def test_invalidate_without_a_usable_user_id_says_why_and_asks_nothing(app: AppTest, typed: str, said: str) -> None:
    app.switch_page("pages/admin.py").run()
    app.text_input(key="invalidate_user").set_value(typed)
    next(b for b in app.button if b.label == "Invalidate").click().run()
    assert said in " ".join(m.value for m in [*app.warning, *app.error])
    assert not [b for b in app.button if b.label == "Yes, invalidate"]


def test_a_user_id_is_named_as_typed_never_as_markdown(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "__bold__"))
    app.switch_page("pages/admin.py").run()
    app.text_input(key="invalidate_user").set_value("__bold__")
    next(b for b in app.button if b.label == "Invalidate").click().run()
    assert app.warning[0].value.startswith("Delete every cached program of `__bold__`?")
    app.button(key="invalidate_yes").click().run()
    assert app.success[0].value == "Invalidated 1 entry of `__bold__`."


def test_the_entries_table_marks_expired_entries_and_counts_in_words(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "gone-user"))
    app.switch_page("pages/admin.py").run()
    assert "Newest 1 entry." in [c.value for c in app.caption]
    app.switch_page("pages/generate.py").run()
    submit(fill(app, "staying-user"))
    expire_entries(app_engine, ai_coach_cache.c.user_id == "gone-user")
    app.switch_page("pages/admin.py").run()
    assert "Newest 2 entries." in [c.value for c in app.caption]
    table = next(d.value for d in app.dataframe if "Status" in d.value)
    assert dict(zip(table["User"], table["Status"], strict=True)) == {"gone-user": "expired", "staying-user": "valid"}


def test_a_program_opens_from_a_link_and_a_missing_one_is_named(app: AppTest) -> None:
    submit(fill(app, "linked-client"))
    app.switch_page("pages/history.py")
    app.query_params["program"] = "1"
    app.run()
    assert any(c.value.startswith("Program #1 for `linked-client`, `offline`,") for c in app.caption)
    downloads = {b.proto.label: b.proto for b in app.get("download_button")}
    assert {"Download Markdown", "Download JSON", "Export CSV"} <= set(downloads)
    app.query_params["program"] = "999"
    app.run()
    assert app.warning[0].value == "There is no program #`999`."
    assert not app.exception


def test_a_second_identical_click_right_after_the_first_shows_the_same_result(
    tmp_path: Path, app_test: Callable[..., AppTest], app_engine: Engine
) -> None:
    app = app_test(f"sqlite:///{tmp_path}/coach.db", DOUBLE_CLICK_SECONDS="30").run()
    submit(fill(app, "double-clicker"))
    submit(app)  # the second click of a double click
    assert "Program #1." in app.info[0].value and not app.success
    assert count_rows(app_engine, training_programs) == 1
    submit(fill(app, "double-clicker", days_per_week=4))  # other answers: a new request
    assert "Program #2." in app.info[0].value


def test_a_refused_answer_is_named_under_its_field_and_every_answer_stays_as_typed(app: AppTest) -> None:
    # The widgets bound every answer; the User ID is what a coach can get wrong.
    submit(fill(app, "bad:id", goal="endurance", days_per_week=6, notes="early mornings"))
    assert [e.value for e in app.error] == [
        "**User ID**: must be 1-128 characters of letters, digits, '.', '\\_', '@' or '-'. Nothing was saved."
    ]
    kept = [app.session_state[f"form_{f}"] for f in ("goal", "days_per_week", "notes")]
    assert kept == ["endurance", 6, "early mornings"] and app.text_input(key="user_id").value == "bad:id"


def test_entries_are_grouped_by_generator_and_one_can_be_retired(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "client-a"))
    submit(fill(app, "client-b"))
    insert_entries(app_engine, ["program:uold:paidfalse:dold", "recommendation:uold:today"], expired=False)
    app.switch_page("pages/admin.py").run()
    groups = next(d.value for d in app.dataframe if "Generator version" in d.value)
    current = f"{OfflineGenerator.identity.version} (current)"
    assert sorted(zip(groups["Generator version"], groups["Entries"], strict=True)) == sorted(
        [(current, 2), ("unknown", 1)]
    )
    app.selectbox(key="retire_choice").set_value("unknown").run()
    next(b for b in app.button if b.label == "Retire its entries").click().run()
    app.button(key="retire_yes").click().run()
    assert app.success[0].value == "Retired 1 entry made by `unknown`."
    # The other namespace's row and the current generator's entries stay.
    assert count_rows(app_engine, ai_coach_cache) == 3
    assert list(app.dataframe[-1].value["Action"]) == ["retire generator"]


def chart_spec(at: AppTest, title: str) -> dict:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(s for s in specs if s["layout"]["title"]["text"] == title)


def test_latency_bins_read_fastest_first_whichever_outcome_is_drawn_first(app: AppTest, app_engine: Engine) -> None:
    # Hits drawn first have no 3 ms or 8 s bar: the axis must not list their bins first.
    with app_engine.begin() as connection:
        for outcome, latency_ms in [("hit", 1.5), ("hit", 30.0), ("miss", 3.0), ("miss", 8000.0)]:
            event = GenerationEvent(
                user_id="u", cache_key="program:uu:paidfalse:dk", outcome=outcome, latency_ms=latency_ms
            )
            insert_event(connection, event)
    app.switch_page("pages/monitoring.py").run()
    spec = chart_spec(app, "Latency: hits and misses")
    assert [trace["x"] for trace in spec["data"]] == [["< 2.0 ms", "< 50.0 ms"], ["< 5.0 ms", "< 10.0 s"]]
    assert spec["layout"]["xaxis"]["categoryarray"] == ["< 2.0 ms", "< 5.0 ms", "< 50.0 ms", "< 10.0 s"]
    assert list(monitoring.LATENCY_BIN_LABELS[:3]) == ["< 1.0 ms", "< 2.0 ms", "< 5.0 ms"]


def test_costs_read_in_the_tables_as_in_the_headline(
    tmp_path: Path, app_test: Callable[..., AppTest], fake_openai: FakeOpenAI
) -> None:
    model = "gpt-4o-mini"
    app = app_test(
        f"sqlite:///{tmp_path}/coach.db",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_MODEL=model,
        LLM_MAX_RETRIES="0",
    ).run()
    bill(fake_openai, 420, 1800)
    submit(fill(app, "priced-client"))
    submit(app)
    app.switch_page("pages/monitoring.py").run()
    assert not app.exception
    price = Settings().price_of(model)
    assert price is not None
    cost = price.cost(420, 1800)
    metrics = {m.label: m.value for m in app.metric}
    # Cents would read $0.00: the figure keeps its four significant digits.
    assert metrics["LLM spend"] == metrics["Cost saved"] == format_dollars(cost) == "$0.001143"
    tables = {frozenset(d.value.columns): d for d in app.dataframe}
    generators = next(d for cols, d in tables.items() if "Generator" in cols)
    what_if = next(d for cols, d in tables.items() if "TTL" in cols)
    [row] = generators.value.to_dict("records")
    assert row["LLM spend"] == row["Cost saved"] == pytest.approx(cost)
    configured = what_if.value[what_if.value["Configured"]].to_dict("records")
    assert [(r["TTL"], r["LLM cost"]) for r in configured] == [("24 h", pytest.approx(cost))]
    # The tables keep numbers (they sort) and show them with the headline's rule.
    for table, column in [(generators, "LLM spend"), (generators, "Cost saved"), (what_if, "LLM cost")]:
        assert json.loads(table.proto.columns)[column]["type_config"]["format"] == DOLLAR_PRINTF
