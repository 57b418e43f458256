"""Every page through Streamlit's AppTest: the real scripts, a real SQLite database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from core.schema import ai_coach_cache
from tests.helpers import count_rows, expire_entries


@pytest.fixture
def app(tmp_path: Path, app_test: Callable[..., AppTest]) -> AppTest:
    return app_test(f"sqlite:///{tmp_path}/coach.db").run()


def fill(at: AppTest, user_id: str = "client-7", **answers: object) -> AppTest:
    at.text_input(key="user_id").set_value(user_id).run()
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


def test_generate_miss_then_hit(app: AppTest) -> None:
    submit(fill(app, goal="strength", equipment=["dumbbells", "barbell"]))
    assert not app.exception and not app.error
    assert "Cache miss" in app.info[0].value and "first program for this user" in app.info[0].value
    labels = {m.label: m.value for m in app.metric}
    assert labels["Saved as program"] == "#1"

    submit(app)
    assert "Cache hit" in app.success[0].value
    assert {m.label: m.value for m in app.metric}["Saved as program"] == "#2"
    assert any(t.label == "Week 4" for t in app.tabs)


def test_a_changed_field_is_named_in_the_miss_reason(app: AppTest) -> None:
    submit(fill(app))
    submit(fill(app, days_per_week=5))
    assert "the profile changed (Days per week)" in app.info[0].value


def test_choosing_a_known_user_prefills_their_latest_answers(app: AppTest) -> None:
    submit(fill(app, "returning-client", goal="endurance", days_per_week=5, notes="early mornings"))
    app.text_input(key="user_id").set_value("someone-else").run()
    assert app.session_state["form_goal"] == "general_fitness"
    app.text_input(key="user_id").set_value("returning-client").run()
    assert app.session_state["form_goal"] == "endurance"
    assert app.session_state["form_days_per_week"] == 5
    assert app.session_state["form_notes"] == "early mornings"


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
    assert list(table["Source"]) == ["cache", "llm"]
    app.selectbox(key="history_source").set_value("llm").run()
    assert list(app.dataframe[0].value["Source"]) == ["llm"]


def test_monitoring_shows_hit_rate_and_charts(app: AppTest) -> None:
    submit(fill(app))
    submit(app)
    app.switch_page("pages/monitoring.py").run()
    assert not app.exception
    assert {m.label: m.value for m in app.metric}["Hit rate"] == "50.0%"
    assert len(app.get("plotly_chart")) >= 5


def test_cleanup_asks_for_confirmation_and_deletes_only_expired(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "expired-user"))
    submit(fill(app, "valid-user"))
    engine = app_engine
    expire_entries(engine, ai_coach_cache.c.user_id == "expired-user")
    app.switch_page("pages/admin.py").run()
    next(b for b in app.button if b.label == "Delete expired entries").click().run()
    assert count_rows(engine, ai_coach_cache) == 2  # nothing yet: a confirmation is asked
    assert "Delete 1 expired entries?" in app.warning[0].value
    app.button(key="cleanup_yes").click().run()
    assert "Deleted 1 expired entries" in app.success[0].value
    assert count_rows(engine, ai_coach_cache) == 1
    assert list(app.dataframe[-1].value["Action"]) == ["cleanup"]


def test_invalidate_a_user_with_confirmation(app: AppTest, app_engine: Engine) -> None:
    submit(fill(app, "leaving-user"))
    app.switch_page("pages/admin.py").run()
    app.text_input(key="invalidate_user").set_value("leaving-user").run()
    next(b for b in app.button if b.label == "Invalidate").click().run()
    app.button(key="invalidate_no").click().run()
    engine = app_engine
    assert count_rows(engine, ai_coach_cache) == 1
    next(b for b in app.button if b.label == "Invalidate").click().run()
    app.button(key="invalidate_yes").click().run()
    assert "Invalidated 1 entries of leaving-user" in app.success[0].value
    assert count_rows(engine, ai_coach_cache) == 0
