"""The admin page's generator rollout in Chromium, as an operator clicks it: each button
right after typing the candidate model (a first click counts), a plan, a batch started and
collected, and a trial's programs side by side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine

from core.settings import Settings
from testkit.browser import dashboard
from tests.fake_openai import BatchBehaviour, FakeOpenAI
from tests.helpers import app_environment
from tests.operations.test_rollout import CANDIDATE, CURRENT, current, staged_rows
from tests.pages.test_browser import browser, go_to, grid_cells, settle

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
__all__ = ["browser", "current"]  # fixtures shared with the other tests


@pytest.fixture
def server(current: Settings, fake_openai: FakeOpenAI) -> Iterator[str]:
    """The dashboard running the current model, with three valid entries it made."""
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MODEL": CURRENT}
    with dashboard(ROOT / "app.py", app_environment(current.database_url, **env)) as url:
        yield url


def press(page: Page, button: str) -> None:
    """Type the candidate and click `button` at once: no pause, Enter or Tab."""
    page.get_by_role("textbox", name="Candidate model").fill(CANDIDATE)
    page.get_by_role("button", name=button).click()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_operator_plans_starts_collects_and_tries_a_rollout(
    server: str, browser: Browser, engine: Engine, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0))
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    page.goto(server)
    settle(page)
    go_to(page, "Cache admin")

    hours_left = page.get_by_role("spinbutton", name="Pre-warm entries valid for at least (hours)")
    hours_left.fill("25")  # every entry expires within 24 h
    press(page, "Plan pre-warm")
    planned = page.get_by_test_id("stMetric").filter(has_text="Programs to regenerate")
    expect(planned.get_by_test_id("stMetricValue")).to_have_text("0")
    hours_left.fill("0")
    press(page, "Plan pre-warm")
    expect(planned.get_by_test_id("stMetricValue")).to_have_text("3")

    press(page, "Start pre-warm")
    expect(page.get_by_text(f"Regenerate 3 programs with {CANDIDATE} as a batch")).to_be_visible()
    page.get_by_role("button", name="Yes, start").click()
    expect(page.get_by_text("Rollout #1: 3 requests submitted in 1 batch.")).to_be_visible()
    assert len(fake_openai.batches) == 1 and fake_openai.calls == 0

    page.get_by_role("button", name="Check batches now").click()
    expect(page.get_by_text("Checked 1 batch; 1 collected.")).to_be_visible()
    expect(grid_cells(page, "collected")).to_have_count(1)
    assert {row.state for row in staged_rows(engine)} == {"staged"}

    press(page, "Try it")
    expect(page.get_by_text(f"Trial #2 of {CANDIDATE} against the current generator")).to_be_visible()
    for side in ("Current", "Candidate"):
        expect(page.locator("strong", has_text=side)).to_be_visible()
    expect(page.get_by_role("button", name="Download Markdown")).to_have_count(2)  # both programs, side by side
    assert fake_openai.calls == 3  # a trial of three profiles, live
    page.close()
