"""End to end in a real browser: `streamlit run` on a free port against a throwaway
PostgreSQL and a local OpenAI-compatible server, driven by Playwright in Debian's Chromium.
Screenshots of each page land in test-artifacts/."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import streamlit
from playwright.sync_api import Browser, BrowserContext, Locator, Page, WebSocket, expect, sync_playwright

from core.formatting import DOLLAR_PRINTF, format_dollars
from core.store.db import make_engine
from core.store.schema import ai_coach_cache, training_programs
from testkit.browser import CHROMIUM, CHROMIUM_ARGS, dashboard
from testkit.pg_server import PostgresServer
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.generators.test_openai_generator import openai_service
from tests.helpers import PROFILE, app_environment, count_rows, expire_entries
from tests.operations.test_generator_monitoring import bill
from tests.quiet_http import QuietHTTPServer
from tests.test_formatting import DOLLARS_SHOWN

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
# For every browser test (they import this module): a busy machine, four workers on two cores
# and other work besides, may draw a page later than Playwright's default of 5 s. An expectation
# that holds returns at once, so only a failure waits longer.
expect.set_options(timeout=30_000)
ARTIFACTS = ROOT / "test-artifacts"
API_KEY = "sk-e2e-secret-value-7f3a"


def throwaway_database(pg: PostgresServer) -> Iterator[str]:
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    pg.admin(f"CREATE DATABASE {name} TEMPLATE coach_template")
    yield pg.url(name)
    pg.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def database(pg: PostgresServer) -> Iterator[str]:
    yield from throwaway_database(pg)


@pytest.fixture
def server_settings() -> dict[str, str]:
    """More of the dashboard's environment, for a test that parametrizes it."""
    return {}


def stand_in_environment(database: str, fake_openai: FakeOpenAI, model: str, **settings: str) -> dict[str, str]:
    """A dashboard's environment on `database`, generating with `model` at the local stand-in."""
    return app_environment(
        database,
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_MODEL=model,
        LLM_MAX_RETRIES="0",
        **settings,
    )


@pytest.fixture
def server(database: str, fake_openai: FakeOpenAI, server_settings: dict[str, str]) -> Iterator[str]:
    env = stand_in_environment(database, fake_openai, "gpt-e2e", **server_settings)
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "streamlit-e2e.log", "ab") as log, dashboard(ROOT / "app.py", env, log) as url:
        yield url


# The tests that need no dashboard of their own (each asks for user ids no other one uses) share
# one, on one worker, one after another.
SHARED = pytest.mark.xdist_group("shared-dashboard")


@pytest.fixture(scope="module")
def shared_dashboard_database(pg: PostgresServer) -> Iterator[str]:
    yield from throwaway_database(pg)


@pytest.fixture(scope="module")
def shared_dashboard(shared_dashboard_database: str, fake_openai_server: FakeOpenAI) -> Iterator[str]:
    env = stand_in_environment(shared_dashboard_database, fake_openai_server, "gpt-e2e")
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "streamlit-e2e.log", "ab") as log, dashboard(ROOT / "app.py", env, log) as url:
        yield url


@pytest.fixture
def shared_server(shared_dashboard: str, fake_openai: FakeOpenAI) -> str:
    """The shared dashboard, its stand-in reset for this test."""
    return shared_dashboard


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run ./scripts/test, which installs it")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def settle(page: Page) -> None:
    """Wait for the script run the last action started to finish, and for the request it
    made, if any: while one is in flight the generate page runs again every quarter second,
    not running for a moment between runs. Then for the page to be drawn as a coach sees it:
    connected, and every widget in place of its placeholder. A fresh browser profile loads
    each kind of widget's code after the first run, and each one drawn moves what is under
    it, and a click whose press and release straddle such a move reaches no button: the
    likeliest cause of the one first click (after a paste, under load) that was not taken."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)
    expect(page.get_by_role("button", name="Stop waiting")).to_have_count(0, timeout=60_000)
    expect(page.locator("[data-testid='stApp'][data-test-connection-state='CONNECTED']")).to_have_count(1)
    expect(page.locator("[data-testid='stSkeleton'], [data-stale='true']")).to_have_count(0, timeout=60_000)


def shot(page: Page, name: str) -> None:
    page.wait_for_timeout(700)  # charts and grids draw just after the run ends
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def grid_cells(page: Page, text: str) -> Locator:
    # st.dataframe draws on a canvas; its accessible grid holds the cell text, visually hidden.
    return page.locator("[role='gridcell']", has_text=re.compile(f"^{re.escape(text)}$"))


def streamlit_sprintf(page: Page, template: str, values: list[float]) -> list[str]:
    """What the dataframe draws for `values` in a column of printf format `template`: the
    installed Streamlit's own sprintf module, imported in the page as the grid imports it."""
    static = Path(streamlit.__file__).parent / "static" / "static" / "js"
    [module] = static.glob("sprintfjs.*.js")
    return page.evaluate(
        "async ([path, template, values]) => {"
        " const sprintf = Object.values(await import(path))[0];"
        " return values.map(v => sprintf(template, v)); }",
        [f"/static/js/{module.name}", template, values],
    )


def cut_off(page: Page) -> list[str]:
    """Text the page does not show whole: metric labels wider than their box (an ellipsis),
    and segmented-control options drawn past their control's edge (under the next column)."""
    return page.evaluate(
        """() => {
        const labels = [...document.querySelectorAll("[data-testid='stMetricLabel'], [data-testid='stMetricLabel'] *")]
            .filter(e => e.scrollWidth > e.clientWidth);
        const options = [...document.querySelectorAll("[data-testid='stButtonGroup']")].flatMap(group =>
            [...group.querySelectorAll("button")].filter(
                b => b.getBoundingClientRect().right > group.getBoundingClientRect().right + 0.5));
        return [...labels, ...options].map(e => e.textContent);
        }"""
    )


def generate(page: Page) -> None:
    page.get_by_role("button", name="Generate program").click()
    settle(page)


def go_to(page: Page, title: str) -> None:
    page.get_by_role("link", name=title).click()
    settle(page)
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible()


def test_a_coach_and_an_operator_through_every_page(
    server: str, browser: Browser, fake_openai: FakeOpenAI, database: str
) -> None:
    fake_openai.reset()
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar).to_contain_text("PostgreSQL 127.0.0.1")
    # In a code span, not a link: what a coach copies is the address itself.
    assert f"OpenAI gpt-e2e at {fake_openai.base_url}" in sidebar.inner_text()
    assert sidebar.locator(f"a[href^='{fake_openai.base_url}']").count() == 0

    page.get_by_role("textbox", name="User ID").fill("e2e-client")
    generate(page)
    expect(page.get_by_text("Cache miss")).to_be_visible()
    expect(page.get_by_text("first program for this user")).to_be_visible()
    assert fake_openai.calls == 1
    shot(page, "1-generate-miss")

    generate(page)
    expect(page.get_by_text("Cache hit")).to_be_visible()
    assert fake_openai.calls == 1
    shot(page, "2-generate-hit")

    days = page.get_by_role("spinbutton", name="Days per week")
    days.fill("5")
    days.press("Tab")
    generate(page)
    expect(page.get_by_text("Cache miss")).to_be_visible()
    expect(page.get_by_text("the profile changed (Days per week)")).to_be_visible()
    assert fake_openai.calls == 2
    assert API_KEY not in page.content()

    go_to(page, "Program history")
    expect(grid_cells(page, "e2e-client")).to_have_count(3)
    expect(grid_cells(page, "cache")).to_have_count(1)
    expect(grid_cells(page, "llm")).to_have_count(2)
    # Pick the newest row (the row marker column at the grid's left edge) to see its program.
    page.get_by_test_id("stDataFrame").first.click(position={"x": 18, "y": 52})
    settle(page)
    expect(page.get_by_text("Program #3 for e2e-client")).to_be_visible()
    expect(page.get_by_role("radio", name="Week 1").or_(page.get_by_role("button", name="Week 1"))).to_be_visible()
    shot(page, "3-history")

    go_to(page, "Cache monitoring")
    hit_rate = page.get_by_test_id("stMetric").filter(has_text="Hit rate")
    expect(hit_rate).to_contain_text("33.3%")
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    # The local LLM's model has no price: named, not priced at someone else's.
    expect(page.get_by_text("No price for gpt-e2e")).to_be_visible()
    expect(page.get_by_role("heading", name="By generator")).to_be_visible()
    shot(page, "4-monitoring")

    engine = make_engine(database)
    expire_entries(engine, ai_coach_cache.c.cache_key.like("%:paidfalse:%"))
    expired_before = count_rows(engine, ai_coach_cache)
    go_to(page, "Cache admin")
    page.get_by_role("button", name="Delete expired entries").click()
    settle(page)
    expect(page.get_by_text("expired entries? Valid entries are kept.")).to_be_visible()
    page.get_by_role("button", name="Yes, delete").click()
    settle(page)
    expect(page.get_by_text("Deleted 2 expired entries")).to_be_visible()
    assert (expired_before, count_rows(engine, ai_coach_cache)) == (2, 0)
    shot(page, "5-admin")
    engine.dispose()
    assert API_KEY not in page.content()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """One browser profile, whose cache keeps Streamlit's scripts; each page in it is a new session."""
    clipboard = ["clipboard-read", "clipboard-write"]
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, permissions=clipboard)
    yield context
    context.close()


def open_fresh(context: BrowserContext, server: str) -> Page:
    page = context.new_page()
    page.goto(server)
    settle(page)
    return page


def type_id(page: Page, how: str, user_id: str) -> None:
    """Enter the User ID the way a coach does, then nothing: the click follows at once."""
    box = page.get_by_role("textbox", name="User ID")
    if how == "fill":
        box.fill(user_id)
    elif how == "keystrokes":
        box.press_sequentially(user_id)
    elif how == "paste":
        page.evaluate("text => navigator.clipboard.writeText(text)", user_id)
        box.click()
        box.press("Control+V")
    elif how == "tab":
        box.fill(user_id)
        box.press("Tab")
    elif how == "enter":
        box.fill(user_id)
        box.press("Enter")


FRESH_SESSIONS = 3


@SHARED
@pytest.mark.parametrize("how", ["fill", "keystrokes", "paste", "tab", "enter"])
def test_the_first_click_generates_whatever_the_coach_did_just_before(
    shared_server: str, context: BrowserContext, shared_dashboard_database: str, how: str
) -> None:
    engine = make_engine(shared_dashboard_database)
    # Each attempt is a new session, whose first click is the one that was lost (streamlit#8725).
    for attempt in range(FRESH_SESSIONS):
        page = open_fresh(context, shared_server)
        user_id = f"click-{how}-{attempt}"
        type_id(page, how, user_id)
        page.get_by_role("button", name="Generate program").click()
        expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=20_000)
        assert count_rows(engine, training_programs, training_programs.c.user_id == user_id) == 1, attempt
        page.close()
    engine.dispose()


# Forced: the second click of the double click comes unticked and is still the first one's
# (test_pages tests either kind of double click's logic; this, that a browser's is one request).
@SHARED
def test_a_double_click_is_one_generation_one_llm_call_one_result(
    shared_server: str, context: BrowserContext, shared_dashboard_database: str, fake_openai: FakeOpenAI
) -> None:
    engine = make_engine(shared_dashboard_database)
    page = open_fresh(context, shared_server)
    user_id = "double-clicker"
    type_id(page, "fill", user_id)
    force = page.get_by_role("checkbox", name="Force refresh")
    page.get_by_text("Force refresh", exact=True).click()
    page.get_by_role("button", name="Generate program").dblclick()
    expect(page.get_by_text("Cache miss: a refresh was forced")).to_be_visible(timeout=20_000)
    settle(page)
    assert count_rows(engine, training_programs, training_programs.c.user_id == user_id) == 1
    assert fake_openai.calls == 1
    expect(page.get_by_text(re.compile(r"Program #\d+\."))).to_have_count(1)  # the dashboard's database is shared
    expect(force).not_to_be_checked()  # a refresh is for the click it was ticked for
    engine.dispose()


# No double-click window: the click after coming back is a request of its own.
@pytest.mark.parametrize("server_settings", [{"DOUBLE_CLICK_SECONDS": "0"}])
def test_the_answers_sent_are_still_in_the_form_after_a_visit_to_another_page(
    server: str, context: BrowserContext, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset()
    page = open_fresh(context, server)
    type_id(page, "fill", "client-2")
    page.get_by_role("textbox", name="Injuries or limitations").fill("Sore left knee")
    page.get_by_role("button", name="Generate program").click()
    expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=20_000)
    page.close()

    page = open_fresh(context, server)
    type_id(page, "fill", "client-2")
    page.get_by_role("button", name="Load latest").click()
    expect(page.get_by_text("Loaded the answers of client-2's latest program")).to_be_visible()
    page.get_by_role("spinbutton", name="Session length (minutes)").fill("60")
    page.get_by_role("button", name="Generate program").click()
    expect(page.get_by_text("Cache miss: the profile changed (Session length (minutes))")).to_be_visible(timeout=20_000)
    go_to(page, "Program history")
    go_to(page, "Generate program")
    page.get_by_role("button", name="Generate program").click()
    # The same answers, the injuries included: the program just generated, from the cache.
    expect(page.get_by_text("Cache hit")).to_be_visible(timeout=20_000)
    assert fake_openai.calls == 2
    expect(page.get_by_role("textbox", name="User ID")).to_have_value("client-2")
    expect(page.get_by_role("textbox", name="Injuries or limitations")).to_have_value("Sore left knee")
    expect(page.get_by_role("spinbutton", name="Session length (minutes)")).to_have_value("60")


def test_a_click_while_a_program_is_generated_is_refused_in_words_and_every_click_is_accounted_for(
    server: str, context: BrowserContext, database: str, fake_openai: FakeOpenAI
) -> None:
    # Client-1's answer holds once its first session is written, until the refused click is seen:
    # however long typing takes on a loaded machine, client-1's program is still being generated.
    fake_openai.reset(Behaviour(delay_seconds=3, hold_after_first_session=True))
    engine = make_engine(database)
    page = open_fresh(context, server)
    generate_button, force = (
        page.get_by_role("button", name="Generate program"),
        page.get_by_role("checkbox", name="Force refresh"),
    )

    type_id(page, "fill", "client-1")
    generate_button.click()
    expect(page.get_by_text("Cache miss (first program for this user): OpenAI")).to_be_visible()
    type_id(page, "fill", "client-2")
    page.get_by_text("Force refresh", exact=True).click()
    generate_button.click()
    refused = "Not requested: the program for client-2, because the one for client-1"
    expect(page.get_by_text(f"{refused} is being generated")).to_be_visible()
    expect(force).to_be_checked()  # the refresh it asked for is still to be had
    fake_openai.go_on()
    expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=20_000)
    expect(page.get_by_text(f"{refused} was being generated")).to_be_visible()
    expect(page.get_by_role("textbox", name="User ID")).to_have_value("client-2")
    expect(force).to_be_checked()
    # The next click, once client-1's program is shown, is taken: with the refresh it asked for.
    generate_button.click()
    expect(page.get_by_text("Cache miss: a refresh was forced")).to_be_visible(timeout=20_000)
    expect(page.get_by_text("Not requested")).to_have_count(0)
    expect(force).not_to_be_checked()

    # Waiting can be stopped, and the next click is taken; the generation goes on and is cached.
    type_id(page, "fill", "client-3")
    generate_button.click()
    page.get_by_role("button", name="Stop waiting").click()
    expect(page.get_by_text("Stopped waiting for the program for client-3")).to_be_visible()
    type_id(page, "fill", "client-4")
    generate_button.click()
    # Away and back while it is generated: the page waits for it still.
    go_to(page, "Program history")
    go_to(page, "Generate program")
    expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=20_000)
    type_id(page, "fill", "client-3")
    generate_button.click()
    expect(page.get_by_text("Cache hit")).to_be_visible(timeout=20_000)
    settle(page)

    def programs(user_id: str) -> int:
        return count_rows(engine, training_programs, training_programs.c.user_id == user_id)

    # What the page said: client-1 generated; client-2 refused, then generated; client-3
    # left to run, then served from the cache; client-4 generated.
    assert fake_openai.calls == 4
    assert [programs(f"client-{n}") for n in range(1, 5)] == [1, 1, 2, 1]
    engine.dispose()


def inside(inner: dict[str, float] | None, outer: dict[str, float] | None) -> bool:
    assert inner is not None and outer is not None
    return (
        outer["x"] <= inner["x"]
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"]
        and outer["y"] <= inner["y"]
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"]
    )


@SHARED
@pytest.mark.parametrize("width", [1280, 1440, 1920])
def test_every_week_of_a_paid_program_can_be_opened_beside_the_form(
    shared_server: str, browser: Browser, width: int
) -> None:
    page = browser.new_page(viewport={"width": width, "height": 1200})
    page.goto(shared_server)
    settle(page)
    type_id(page, "fill", f"paid-client-{width}")
    page.get_by_text("Paid access").click()
    generate(page)
    expect(page.get_by_role("heading", name=re.compile("^8-week "))).to_be_visible()
    weeks = page.get_by_test_id("stButtonGroup")
    column = page.get_by_test_id("stColumn").filter(has=weeks).last
    viewport = {"x": 0, "y": 0, "width": width, "height": 1200}
    for number in range(1, 9):
        # A week scrolled out of its row still counts as visible: its box must lie within.
        box = page.get_by_role("radio", name=f"Week {number}").bounding_box()
        assert inside(box, weeks.bounding_box()) and inside(box, column.bounding_box()), number
        assert inside(box, viewport), number
    shot(page, f"7-eight-weeks-{width}")
    theme = page.get_by_test_id("stCaptionContainer")
    expect(theme.filter(has_text="Foundation: learn the movements")).to_be_visible()
    page.get_by_role("radio", name="Week 8").click()
    settle(page)
    expect(page.get_by_role("radio", name="Week 8")).to_be_checked()
    expect(theme.filter(has_text="Deload: lighter loads")).to_be_visible()
    # Its three sessions' tables, with the deload's notes rather than week 1's.
    expect(page.get_by_role("table")).to_have_count(3)
    expect(page.get_by_role("cell", name="About 60% of last week's load").first).to_be_visible()
    expect(page.get_by_role("cell", name="Pick a load you could lift 3 more times")).to_have_count(0)


def test_a_miss_says_what_is_happening_and_for_how_long(
    server: str, context: BrowserContext, fake_openai: FakeOpenAI
) -> None:
    # The answer holds once its first session is written until the count is seen to go on: on a
    # loaded machine the page may draw its first count late, and a fixed delay could end first.
    fake_openai.reset(Behaviour(delay_seconds=2.5, hold_after_first_session=True))
    page = open_fresh(context, server)
    type_id(page, "fill", "patient-client")
    page.get_by_role("button", name="Generate program").click()
    progress = page.get_by_text(re.compile(r"Cache miss \(first program for this user\): OpenAI gpt-e2e .* is writing"))
    # Its first program: nothing to say about how long this generator takes.
    expect(progress).to_have_text(re.compile(r"is writing the program… \d+ s so far\.$"))
    expect(page.get_by_text(re.compile(r"(?:[1-9]|\d{2,}) s so far"))).to_be_visible()
    fake_openai.go_on()
    expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=20_000)
    expect(progress).to_have_count(0)
    # The next one is said to take what the first took (2.5 s and a little more), not a fixed range.
    type_id(page, "fill", "patient-client-2")
    page.get_by_role("button", name="Generate program").click()
    lately = re.compile(r"is writing the program, which has taken it about ([3-9]|[1-9]\d+) s lately… ")
    expect(page.get_by_text(lately)).to_be_visible()


def test_the_dashboard_starts_without_its_database_and_saves_once_it_is_back(
    browser: Browser, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset()
    postgres = PostgresServer()  # not started: nothing listens on its port yet
    # A password in the URL (the throwaway server trusts everyone) that must never be shown.
    url = postgres.url().replace("postgres@", "postgres:hunter2-secret@")
    env = app_environment(url, OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=fake_openai.base_url, LLM_MAX_RETRIES="0")
    try:
        with dashboard(ROOT / "app.py", env) as app:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(app)
            settle(page)
            banner = page.get_by_text("The database is unavailable")
            expect(banner).to_be_visible()
            expect(page.get_by_test_id("stAlert").filter(has=banner)).to_contain_text(f"127.0.0.1:{postgres.port}")

            page.get_by_role("textbox", name="User ID").fill("offline-client")
            generate(page)
            expect(page.get_by_text("Cache miss")).to_be_visible()
            expect(page.get_by_text("Program not saved")).to_be_visible()
            expect(page.get_by_role("button", name="Retry saving to history")).to_be_visible()
            expect(page.get_by_role("button", name="Download JSON")).to_be_visible()
            shot(page, "6-database-down")

            go_to(page, "Program history")
            expect(page.get_by_text("The database is unavailable").first).to_be_visible()
            expect(page.get_by_test_id("stException")).to_have_count(0)
            assert "hunter2-secret" not in page.content() and "Traceback" not in page.content()

            postgres.start()  # an empty database: the app's next action migrates it
            go_to(page, "Generate program")
            expect(page.get_by_text("The database is unavailable")).to_have_count(0)
            page.get_by_role("button", name="Retry saving to history").click()
            settle(page)
            expect(page.get_by_text("Program #1.")).to_be_visible()

            go_to(page, "Program history")
            expect(grid_cells(page, "offline-client")).to_have_count(1)
            expect(page.get_by_test_id("stException")).to_have_count(0)
            assert fake_openai.calls == 1
    finally:
        postgres.stop()


def test_the_monitoring_page_reads_in_full_and_its_tables_show_the_headlines_costs(
    browser: Browser, fake_openai: FakeOpenAI, database: str
) -> None:
    fake_openai.reset()
    engine = make_engine(database)
    service = openai_service(engine, fake_openai, model="gpt-4o-mini")  # a priced model
    for user_id in ("u1", "u1", "u1", "u1", "u2"):  # two generations, three hits
        service.generate(user_id=user_id, onboarding_responses=PROFILE, has_paid_access=False)
    engine.dispose()
    env = stand_in_environment(database, fake_openai, "gpt-4o-mini")
    with dashboard(ROOT / "app.py", env) as url:
        for width in (1280, 1920):
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(url)
            settle(page)
            go_to(page, "Cache monitoring")
            metrics = page.get_by_test_id("stMetric")
            expect(metrics.filter(has_text="Hit rate")).to_contain_text("60.0%")
            assert cut_off(page) == [], width
            shot(page, f"7-monitoring-{width}-headline")

            spent, saved = (
                metrics.filter(has_text=label).get_by_test_id("stMetricValue").inner_text()
                for label in ("LLM spend", "Cost saved")
            )
            assert (spent, saved) == ("$0.002286", "$0.003429")  # 2 and 3 x (420 x $0.15 + 1,800 x $0.60) / 1 M
            # The grid's accessible cells hold its values; it draws them with Streamlit's sprintf.
            generators = page.get_by_test_id("stDataFrame").first
            generators.scroll_into_view_if_needed()  # the grid fills its cells where it is seen
            expect(generators.locator("[role='gridcell']").first).to_have_text(re.compile("gpt-4o-mini"))
            row = dict(
                zip(
                    generators.locator("[role='columnheader']").all_inner_texts(),
                    generators.locator("[role='gridcell']").all_inner_texts(),
                    strict=True,
                )
            )
            drawn = streamlit_sprintf(page, DOLLAR_PRINTF, [float(row["LLM spend"]), float(row["Cost saved"])])
            assert drawn == [spent, saved]
            # And for amounts of every size, the grid's rule is the headline's.
            amounts = [amount for amount, _ in DOLLARS_SHOWN]
            assert streamlit_sprintf(page, DOLLAR_PRINTF, amounts) == [format_dollars(a) for a in amounts]
            what_if = page.get_by_test_id("stDataFrame").last
            what_if.scroll_into_view_if_needed()
            expect(what_if.locator("[role='gridcell']").first).to_have_text("1 h")
            shot(page, f"7-monitoring-{width}-ttl")
            # Every table whole: none scrolls sideways to show its last columns.
            for table in page.get_by_test_id("stDataFrame").all():
                scroller = table.locator(".dvn-scroller")
                assert scroller.evaluate("e => e.scrollWidth - e.clientWidth") <= 0, width
            page.close()


def served_requests(database: str, fake_openai: FakeOpenAI, model: str = "gpt-e2e") -> None:
    """A generation billed by `model`, and a hit on it."""
    engine = make_engine(database)
    bill(fake_openai, 420, 1800)
    service = openai_service(engine, fake_openai, model=model)
    for _ in range(2):
        service.generate(user_id="watched", onboarding_responses=PROFILE, has_paid_access=False)
    engine.dispose()


def frames_received(page: Page) -> list[bytes]:
    """Every websocket frame the server sends `page` from now on."""
    frames: list[bytes] = []

    def on_socket(socket: WebSocket) -> None:
        socket.on("framereceived", lambda frame: frames.append(frame if isinstance(frame, bytes) else frame.encode()))

    page.on("websocket", on_socket)
    return frames


def test_another_custom_ttl_reruns_only_the_what_if(
    server: str, browser: Browser, fake_openai: FakeOpenAI, database: str
) -> None:
    served_requests(database, fake_openai)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    # A full run sends the page every element, a fragment's run only the fragment's.
    received = frames_received(page)
    page.goto(server)
    settle(page)
    go_to(page, "Cache monitoring")
    assert any(b"LLM calls avoided" in frame for frame in received)  # the headline, as a full run sends it
    received.clear()
    custom = page.get_by_role("spinbutton", name="Custom TTL (hours)")
    custom.fill("7")
    custom.press("Enter")
    what_if = page.get_by_test_id("stDataFrame").last
    what_if.scroll_into_view_if_needed()
    expect(what_if.locator("[role='gridcell']", has_text=re.compile("^7 h$"))).to_have_count(1)
    settle(page)
    # The what-if was sent again, the headline (written before it in a full run) was not.
    assert any(b"Custom TTL" in frame for frame in received)
    assert not any(b"LLM calls avoided" in frame for frame in received)
    page.close()


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request: what a hostile link or image would reach."""
    heard: list[str] = []

    class Recording(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            heard.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    http = QuietHTTPServer(("127.0.0.1", 0), Recording)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_address[1]}", heard
    http.shutdown()
    http.server_close()
    thread.join()


def test_a_hostile_model_name_is_shown_as_text_and_fetches_nothing(
    server: str, browser: Browser, fake_openai: FakeOpenAI, database: str, listener: tuple[str, list[str]]
) -> None:
    origin, heard = listener
    hostile = f'![p]({origin}/pixel.png) <a href="{origin}/x">click</a> :red[boom] **bold** `tick`'
    served_requests(database, fake_openai, model=hostile)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server)
    settle(page)
    go_to(page, "Cache monitoring")
    expect(page.get_by_text(f"No price for {hostile}: its tokens")).to_be_visible()
    legends = page.locator(".legendtext", has_text=hostile)
    expect(legends.first).to_be_visible()
    shot(page, "8-monitoring-hostile-model")
    linked = page.evaluate(
        """origin => [...document.querySelectorAll("img, a, image")]
            .filter(e => [...e.attributes].some(a => a.value.includes(origin))).map(e => e.outerHTML)""",
        origin,
    )
    assert linked == [], "\n".join(linked)
    assert heard == []
    page.close()
