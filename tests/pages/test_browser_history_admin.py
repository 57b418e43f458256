"""The history page's CSV export, the admin page's invalidation and a refused rejection, in
Chromium, on SQLite and PostgreSQL: the file a coach downloads, the first click after typing a
user id, and the reject form left open beside its message."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine

from core.store.history import CSV_COLUMNS, HistoryRecord, insert_program
from core.store.schema import ai_coach_cache, utcnow
from testkit.browser import dashboard
from tests.helpers import app_environment, count_rows, insert_entries
from tests.pages.test_browser import browser, go_to, grid_cells, settle

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
__all__ = ["browser"]  # the fixture, shared with the other browser tests


@pytest.fixture
def server(database_url: str, engine: Engine) -> Iterator[str]:
    """The dashboard with the offline generator on `database_url`, already migrated."""
    with dashboard(ROOT / "app.py", app_environment(database_url)) as url:
        yield url


def save_programs(engine: Engine, *user_ids: str) -> list[str]:
    """A history row per user id, a minute apart, oldest first; their ids as the CSV has them."""
    start = utcnow() - timedelta(hours=1)
    ids = []
    with engine.begin() as connection:
        for minute, user_id in enumerate(user_ids):
            record = HistoryRecord(
                user_id=user_id,
                program_json='{"title": "t"}',
                onboarding_responses={"goal": "strength"},
                has_paid_access=False,
                source="offline",
                cache_key=f"program:u{user_id}:paidfalse:dx",
                latency_ms=12.5,
                created_at=start + timedelta(minutes=minute),
            )
            ids.append(str(insert_program(connection, record)))
    return ids


def export(page: Page) -> list[dict[str, str]]:
    """Click "Export CSV" and read the file the browser received."""
    with page.expect_download() as downloading:
        page.get_by_role("button", name="Export CSV").click()
    download = downloading.value
    assert download.suggested_filename == "training_programs.csv"
    with open(download.path(), encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == CSV_COLUMNS
    return [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]


def test_export_csv_downloads_the_rows_the_page_shows(server: str, browser: Browser, engine: Engine) -> None:
    ids = save_programs(engine, "csv-ann", "csv-bob", "csv-ann")
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    go_to(page, "Program history")
    expect(grid_cells(page, "csv-ann")).to_have_count(2)
    expect(grid_cells(page, "csv-bob")).to_have_count(1)
    rows = export(page)
    assert [(r["id"], r["user_id"]) for r in rows] == list(zip(ids, ["csv-ann", "csv-bob", "csv-ann"], strict=True))[
        ::-1
    ]
    assert {(r["source"], r["latency_ms"], r["has_paid_access"]) for r in rows} == {("offline", "12.5", "False")}

    user = page.get_by_role("textbox", name="User")
    user.fill("csv-bob")
    user.press("Enter")
    settle(page)
    expect(grid_cells(page, "csv-ann")).to_have_count(0)
    expect(grid_cells(page, "csv-bob")).to_have_count(1)
    assert [(r["id"], r["user_id"]) for r in export(page)] == [(ids[1], "csv-bob")]
    page.close()


def test_the_file_holds_the_rows_shown_whatever_was_typed_just_before_export(
    server: str, browser: Browser, engine: Engine
) -> None:
    users = ("csv-ann", "csv-bob", "csv-ann")
    save_programs(engine, *users)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    go_to(page, "Program history")
    expect(grid_cells(page, "csv-ann")).to_have_count(2)
    user = page.get_by_role("textbox", name="User")
    user.fill("csv-bob")
    exported = [r["user_id"] for r in export(page)]  # at once: no pause, no Enter
    settle(page)
    for name in set(users):
        expect(grid_cells(page, name)).to_have_count(exported.count(name))
    assert sorted(exported) == sorted(users)  # typed, not applied: neither the rows nor the file
    user.fill("csv-ann")
    page.get_by_role("button", name="Apply filters").click()  # right after typing: applied
    settle(page)
    expect(grid_cells(page, "csv-bob")).to_have_count(0)
    expect(grid_cells(page, "csv-ann")).to_have_count(2)
    assert [r["user_id"] for r in export(page)] == ["csv-ann", "csv-ann"]
    page.close()


def test_a_spreadsheet_formula_in_a_user_id_arrives_as_text(server: str, browser: Browser, engine: Engine) -> None:
    # An adopted table holds the product's earlier rows, whose user ids Coach Cache never checked.
    save_programs(engine, '=HYPERLINK("http://x","click")', "-1+2")
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    go_to(page, "Program history")
    expect(grid_cells(page, "-1+2")).to_have_count(1)
    assert [r["user_id"] for r in export(page)] == ["'-1+2", '\'=HYPERLINK("http://x","click")']
    page.close()


@pytest.mark.parametrize("how", ["fill", "keystrokes"])
def test_the_first_click_on_invalidate_counts_right_after_typing(
    server: str, browser: Browser, engine: Engine, how: str
) -> None:
    users = [f"u{attempt}" for attempt in range(5)]  # the users insert_entries names
    insert_entries(engine, [f"program:u{user}:paidfalse:dx" for user in users], expired=False)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    go_to(page, "Cache admin")
    box = page.get_by_role("textbox", name="User ID to invalidate")
    for user in users:
        if how == "fill":
            box.fill(user)
        else:
            box.press_sequentially(user)
        page.get_by_role("button", name="Invalidate", exact=True).click()  # at once: no pause, Enter or Tab
        expect(page.get_by_text(f"Delete 1 cached program of {user}?")).to_be_visible()
        page.get_by_role("button", name="Yes, invalidate").click()
        expect(page.get_by_text(f"Invalidated 1 entry of {user}.")).to_be_visible()
        assert count_rows(engine, ai_coach_cache, ai_coach_cache.c.user_id == user) == 0, user
        box.clear()
    assert count_rows(engine, ai_coach_cache) == 0
    page.close()


def test_a_rejection_without_a_reason_keeps_the_form_open_with_the_message_beside_the_field(
    server: str, browser: Browser, engine: Engine
) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    page.get_by_role("textbox", name="User ID").fill("rejecting-client")
    page.get_by_role("button", name="Generate program").click()
    expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=20_000)
    page.get_by_text("Reject this program").click()
    page.get_by_role("button", name="Reject", exact=True).click()
    settle(page)
    section = page.get_by_test_id("stExpander").filter(has_text="Reject this program")
    expect(section.get_by_text("Reason: is required. Nothing was recorded.")).to_be_visible()
    section.get_by_text("Wrong equipment").click()  # still open: the reason is one click away
    page.get_by_role("button", name="Reject", exact=True).click()
    expect(page.get_by_text("rejected; the cached entry was invalidated")).to_be_visible()
    assert count_rows(engine, ai_coach_cache) == 0
    page.close()
