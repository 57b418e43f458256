"""The generate page while the LLM writes the program, in Chromium against the local
OpenAI stand-in streaming at a set pace: the sessions appear as each is complete, marked as
not saved; the finished program, the saved one, replaces them; a failing stream leaves the
error alone on screen and nothing cached."""

from __future__ import annotations

import json
import re
from time import perf_counter

import pytest
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import select

from core.store.db import make_engine
from core.store.schema import ai_coach_cache, training_programs
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import count_rows
from tests.pages.test_browser import (
    browser,
    context,
    database,
    open_fresh,
    server,
    server_settings,
    settle,
    shot,
    type_id,
)

pytestmark = pytest.mark.browser
__all__ = ["browser", "context", "database", "server", "server_settings"]  # fixtures shared with test_browser

WRITING = "Still being written — not saved yet"
FIRST_SESSION = re.compile(r"^Day 1 · ")


def downloaded_json(page: Page) -> object:
    with page.expect_download() as downloading:
        page.get_by_role("button", name="Download JSON").click()
    with open(downloading.value.path(), encoding="utf-8") as file:
        return json.load(file)


def test_the_first_session_is_shown_long_before_the_program_is_complete_which_is_the_one_saved(
    server: str, context: BrowserContext, database: str, fake_openai: FakeOpenAI
) -> None:
    # A free 3-day program is about 1,800 tokens: some 3.6 s at this pace, after half a second.
    fake_openai.reset(Behaviour(delay_seconds=0.5, tokens_per_second=500))
    page = open_fresh(context, server)
    type_id(page, "fill", "streamed-client")
    page.get_by_role("button", name="Generate program").click()
    clicked = perf_counter()
    writing = page.get_by_text(WRITING)
    expect(writing).to_be_visible(timeout=20_000)
    expect(page.get_by_text(FIRST_SESSION).first).to_be_visible(timeout=20_000)
    first_session = perf_counter() - clicked
    done = page.get_by_text("Cache miss: first program for this user")
    expect(done).to_have_count(0)  # still being written
    shot(page, "8-program-being-written")
    expect(done).to_be_visible(timeout=30_000)
    complete = perf_counter() - clicked
    expect(writing).to_have_count(0)
    assert first_session < complete / 2, (first_session, complete)
    settle(page)

    engine = make_engine(database)
    with engine.connect() as connection:
        saved_id, saved = connection.execute(
            select(training_programs.c.id, training_programs.c.program).where(
                training_programs.c.user_id == "streamed-client"
            )
        ).one()
    engine.dispose()
    assert downloaded_json(page) == saved
    page.goto(f"{server}/history?program={saved_id}")
    settle(page)
    assert downloaded_json(page) == saved
    assert fake_openai.calls == 1


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("cut", "the connection to the LLM server dropped before the answer was complete"),
        ("truncated", "the LLM's answer was cut off at max_tokens=16000"),
        ("wrong_shape", "the generated program is invalid"),
    ],
)
def test_a_stream_that_fails_takes_the_partial_program_off_the_page_and_caches_nothing(
    server: str, context: BrowserContext, database: str, fake_openai: FakeOpenAI, mode: str, says: str
) -> None:
    fake_openai.reset(Behaviour(mode=mode, tokens_per_second=800, hold_after_first_session=True))
    page = open_fresh(context, server)
    type_id(page, "fill", f"failing-{mode}")
    page.get_by_role("button", name="Generate program").click()
    expect(page.get_by_text(FIRST_SESSION).first).to_be_visible(timeout=20_000)
    expect(page.get_by_text(WRITING)).to_be_visible()
    fake_openai.go_on()
    failed = page.get_by_text(f"No program: generation failed: {says}")
    if mode == "wrong_shape":
        failed = page.get_by_text(f"No program: {says}")
    expect(failed).to_be_visible(timeout=30_000)
    expect(page.get_by_text(WRITING)).to_have_count(0)
    expect(page.get_by_text(FIRST_SESSION)).to_have_count(0)
    settle(page)
    engine = make_engine(database)
    assert count_rows(engine, ai_coach_cache) == 0
    assert count_rows(engine, training_programs) == 0
    engine.dispose()


def test_the_previous_program_leaves_the_page_while_the_next_one_is_being_written(
    server: str, context: BrowserContext, database: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(tokens_per_second=2_000))
    page = open_fresh(context, server)
    type_id(page, "fill", "earlier-client")
    page.get_by_role("button", name="Generate program").click()
    expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name="Download JSON")).to_have_count(1)
    settle(page)

    # The next client's program takes a while to begin: nothing of the earlier one may stay.
    fake_openai.reset(Behaviour(delay_seconds=4, tokens_per_second=2_000))
    type_id(page, "fill", "next-client")
    page.get_by_role("button", name="Generate program").click()
    writing = re.compile(r"is writing the program, which has taken it about \d+ s lately… \d+ s so far")
    expect(page.get_by_text(writing)).to_be_visible(timeout=10_000)
    # Looked at every 50 ms for two seconds, across several of the page's quarter-second looks.
    seen = page.evaluate(
        """async () => {
            const seen = [];
            for (let i = 0; i < 40; i++) {
                const buttons = [...document.querySelectorAll("button")];
                seen.push(buttons.filter((b) => b.innerText.includes("Download JSON")).length);
                await new Promise((done) => setTimeout(done, 50));
            }
            return seen;
        }"""
    )
    assert seen == [0] * 40, seen
    expect(page.get_by_text("Cache miss: first program for this user")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name="Download JSON")).to_have_count(1)
    settle(page)
