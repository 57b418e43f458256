"""Issue 20: text from the database (an adopted table's earlier rows, admin actions, cache
entries) and from the URL is shown as text on the history and admin pages, never as a link or
an image, in Chromium, on SQLite and PostgreSQL; no request leaves the browser for it."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, insert

from core.contract.models import parse_onboarding
from core.formatting import markdown_code
from core.generators.offline import build_program
from core.store.schema import admin_actions, ai_coach_cache, training_programs, utcnow
from tests.helpers import PROFILE
from tests.pages.test_browser import grid_cells, settle
from tests.pages.test_browser_history_admin import browser, server
from tests.quiet_http import QuietHTTPServer

__all__ = ["browser", "server"]  # the fixtures, shared with the other browser tests


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("client-7", "`client-7`"),
        ("[x](http://h/p) ![i](http://h/i.png)", "`[x](http://h/p) ![i](http://h/i.png)`"),
        ("a`b", "``a`b``"),
        ("``x` y", "``` ``x` y ```"),  # a fence longer than any run inside, padded where it touches one
        ("ends`", "`` ends` ``"),
        ("two\n\nlines\r\n# heading", "`two lines # heading`"),  # a blank line would end the span
        ("", "` `"),
        (42, "`42`"),
    ],
)
def test_a_value_is_one_code_span_that_holds_it_whole(value: object, span: str) -> None:
    assert markdown_code(value) == span


class Listener(QuietHTTPServer):
    """A host the hostile text points at: any request the browser makes for it is recorded."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), Record)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Record(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        assert isinstance(self.server, Listener)
        self.server.requests.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_HEAD = do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `requests`
        pass


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener() as listening:
        thread = threading.Thread(target=listening.serve_forever, daemon=True)
        thread.start()
        yield listening
        listening.shutdown()
        thread.join(10)


def shown_markup(page: Page, listener: Listener) -> list[str]:
    """Links and images the hostile text would have made: any to the listener or to the
    `www.` host, and any image at all in the app's Markdown."""
    return page.evaluate(
        """([base]) => [...document.querySelectorAll(
            "a[href], img, [data-testid='stMarkdownContainer'] img")].filter(e =>
            e.tagName === "IMG" && e.closest("[data-testid='stMarkdownContainer']")
            || (e.getAttribute("href") || e.getAttribute("src") || "").startsWith(base)
            || /evil[.]example/.test(e.getAttribute("href") || e.getAttribute("src") || "")
        ).map(e => e.outerHTML)""",
        [listener.base],
    )


def literally(page: Page, text: str) -> None:
    """`text` is on the page as it is, in a caption, notice or question."""
    expect(page.get_by_text(text, exact=False).first).to_be_visible()


@pytest.mark.browser
def test_hostile_text_from_the_database_and_the_url_is_shown_as_text(
    server: str, browser: Browser, engine: Engine, listener: Listener
) -> None:
    base = listener.base
    user = f"![p]({base}/pixel.png) [**Click to re-login**]({base}/phish)"  # the user id
    actor = f"<img src={base}/actor.png> www.evil.example/actor"
    target = f"[**target**]({base}/target) me@evil.example"
    version = f"![v]({base}/v.png) www.evil.example"
    model = f"[model]({base}/model) :red[boom]"
    key = f"program:![k]({base}/k.png)"
    now = utcnow()
    with engine.begin() as connection:
        # A program in the product's own format, as an adopted table's earlier rows hold, with
        # what a table Coach Cache created requires besides.
        legacy = {"user_id": user, "program": {"name": "Legacy plan"}, "created_at": now - timedelta(hours=1)}
        required = {"onboarding_responses": {}, "has_paid_access": False, "source": "offline", "latency_ms": 1}
        program_id = connection.execute(
            insert(training_programs).values(**legacy, **required, cache_key=key).returning(training_programs.c.id)
        ).scalar_one()
        connection.execute(
            insert(ai_coach_cache).values(
                cache_key=key,
                user_id=user,
                data={"title": "old"},
                onboarding_hash="h",
                created_at=now,
                updated_at=now,
                expires_at=now + timedelta(hours=1),
                generator_version=version,
                model=model,
            )
        )
        connection.execute(
            insert(admin_actions).values(
                created_at=now, actor=actor, action="invalidate_user", target=target, rows_affected=1
            )
        )
    page = browser.new_page(viewport={"width": 1440, "height": 1000})

    page.goto(f"{server}/history?program={program_id}")
    settle(page)
    literally(page, f"Program #{program_id} for {user}, offline,")
    literally(page, "This program was not written by Coach Cache; it is shown as stored.")
    expect(grid_cells(page, user)).to_have_count(1)
    assert shown_markup(page, listener) == []

    page.goto(f"{server}/history?program={urllib.parse.quote(user)}")
    settle(page)
    literally(page, f"There is no program #{user}.")
    assert shown_markup(page, listener) == []

    page.goto(f"{server}/admin")
    settle(page)
    for text in (user, key, version, model, actor, target):
        expect(grid_cells(page, text)).to_have_count(1)
    page.get_by_test_id("stSelectbox").filter(has_text="Generator to retire").click()
    page.get_by_role("option", name=version, exact=True).click()
    page.get_by_role("button", name="Retire its entries").click()
    literally(page, f"Delete every cached program made by {version}?")
    page.get_by_role("button", name="Yes, retire").click()
    literally(page, f"Retired 1 entry made by {version}.")
    expect(grid_cells(page, version)).to_have_count(1)  # the action's target, now the entry is gone
    # A user id as a coach may type one, that GitHub-flavoured Markdown would make a link.
    page.get_by_role("textbox", name="User ID to invalidate").fill("www.evil.example")
    page.get_by_role("button", name="Invalidate", exact=True).click()
    literally(page, "The cache holds no programs of www.evil.example: nothing to invalidate.")
    settle(page)
    assert shown_markup(page, listener) == []
    page.close()
    assert listener.requests == []


@pytest.mark.browser
def test_program_text_with_addresses_is_shown_as_text_not_links(
    server: str, browser: Browser, engine: Engine, listener: Listener
) -> None:
    # Program text comes from the LLM (and the database): the generate and history pages
    # render it with one function, escape_markdown, which also keeps bare addresses text.
    program = build_program(parse_onboarding(PROFILE), False)
    program["title"] = f"Plan at {listener.base}/title"
    program["summary"] = f"Read www.evil.example or {listener.base}/summary, mail coach@evil.example &amp; more"
    program["safety_notes"] = [*program["safety_notes"], f"Visit {listener.base.upper()}/NOTE"]
    with engine.begin() as connection:
        program_id = connection.execute(
            insert(training_programs)
            .values(
                user_id="client-9",
                program=program,
                onboarding_responses=parse_onboarding(PROFILE).normalized(),
                has_paid_access=False,
                source="llm",
                cache_key="program:uclient-9:paidfalse:dx",
                latency_ms=1,
                created_at=utcnow(),
            )
            .returning(training_programs.c.id)
        ).scalar_one()
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(f"{server}/history?program={program_id}")
    settle(page)
    shown = page.evaluate(
        """() => [...document.querySelectorAll("[data-testid='stMarkdownContainer']")]
            .map(e => e.innerText.replaceAll("\\u2060", "")).join("\\n")"""
    )
    assert shown_markup(page, listener) == []
    assert page.locator("a[href^='mailto:']").count() == 0
    for text in (program["title"], program["summary"], program["safety_notes"][-1]):
        assert text in shown
    page.close()
    assert listener.requests == []
