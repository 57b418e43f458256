"""`python -m bench --browser`: how long a coach waits, in Chromium, from the click on
"Generate program" to the "Cache hit" badge, beside a bare Streamlit page's click-to-text;
and on a miss, with the OpenAI stand-in streaming at a set pace, from the click to the first
session shown and to the whole program.

All are timed inside the page (performance.now() at the click event, and when a
MutationObserver sees the new text), so Playwright's own round trips are not counted."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import summarize
from testkit.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, dashboard

BARE_APP = """
import streamlit as st
st.session_state.setdefault("n", 0)
if st.button("Click"):
    st.session_state.n += 1
st.success(f"Clicked {st.session_state.n}.")
"""
# Records when each click happened and when each text first appeared, in page time.
OBSERVER = """
() => {
  window.__clicks = [];
  window.__seen = {};
  document.addEventListener("click", () => window.__clicks.push(performance.now()), true);
  new MutationObserver(() => {
    for (const alert of document.querySelectorAll("[data-testid^='stAlert']")) {
      const text = alert.textContent;
      if (!(text in window.__seen)) window.__seen[text] = performance.now();
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""
SETTLED = "[data-testid='stApp'][data-test-script-state='notRunning']"
# On a miss: when, after the last click, this click's first session ("Day 1 · … · N min",
# N this click's session length) and the finished program's "Cache miss" badge first
# appeared. Each click asks for another session length than the last: the previous program stays
# in the page until this run's elements replace it, and is only marked stale while a run is
# in progress, not between the quarter-second runs of a request in flight.
MISS_OBSERVER = """
() => {
  window.__miss = {};
  document.addEventListener("click", () => { window.__miss = {clicked: performance.now()}; }, true);
  new MutationObserver(() => {
    const miss = window.__miss;
    if (miss.clicked === undefined) return;
    const minutes = ` · ${window.__minutes} min`;
    const session = [...document.querySelectorAll("p")].some(
      e => e.textContent.startsWith("Day 1 · ") && e.textContent.includes(minutes));
    if (miss.session === undefined && session) miss.session = performance.now();
    if (miss.complete === undefined && session
        && [...document.querySelectorAll("[data-testid^='stAlert']")].some(
          e => e.textContent.includes("Cache miss: first program for this user")))
      miss.complete = performance.now();
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""
# The stand-in's pace: half a second to the first token, then 80 tokens a second.
FIRST_TOKEN_SECONDS, TOKENS_PER_SECOND = 0.5, 80.0
STREAMED = {"free_3_days": (3, False), "paid_5_days": (5, True)}
# Each a whole generation at that pace (about 35 s and over 2 minutes): ten of each.
STREAMED_CLICKS = 10


def click_to_text(page: Any, button: str, expected: Callable[[int], str], clicks: int) -> list[float]:
    """Milliseconds from each click on `button` to the alert reading `expected(i)`."""
    page.evaluate(OBSERVER)
    waits = []
    for i in range(clicks):
        text = expected(i)
        page.get_by_role("button", name=button).click()
        page.wait_for_function("text => Object.keys(window.__seen).some(t => t.includes(text))", arg=text)
        page.wait_for_selector(SETTLED)
        clicked = page.evaluate("() => window.__clicks[window.__clicks.length - 1]")
        seen = page.evaluate("text => Object.entries(window.__seen).find(([t]) => t.includes(text))[1]", text)
        waits.append(seen - clicked)
    return waits


def click_to_program(page: Any, user_prefix: str, clicks: int) -> dict[str, list[float]]:
    """For each click, a new user and session length (so a miss, and a program told apart
    from the last): milliseconds to the first session shown and to the finished program."""
    page.evaluate(MISS_OBSERVER)
    waits: dict[str, list[float]] = {"first_session": [], "complete": []}
    for i in range(clicks):
        minutes = 45 - i % 2  # the same program's size either way: three exercises a session
        page.get_by_role("textbox", name="User ID").fill(f"{user_prefix}-{i}")
        page.get_by_role("spinbutton", name="Session length (minutes)").fill(str(minutes))
        page.evaluate("minutes => { window.__minutes = minutes; }", minutes)
        page.get_by_role("button", name="Generate program").click()
        page.wait_for_function("() => window.__miss.complete !== undefined", timeout=600_000)
        page.wait_for_selector(SETTLED)
        miss = page.evaluate("() => window.__miss")
        waits["first_session"].append(miss.get("session", miss["complete"]) - miss["clicked"])
        waits["complete"].append(miss["complete"] - miss["clicked"])
    return waits


def measure_streamed(page: Any, env: dict[str, str], clicks: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Misses on the dashboard generating with the OpenAI stand-in, streamed at its pace."""
    from tests.fake_openai import Behaviour, FakeOpenAI

    stand_in = FakeOpenAI(Behaviour(delay_seconds=FIRST_TOKEN_SECONDS, tokens_per_second=TOKENS_PER_SECOND)).start()
    streamed: dict[str, Any] = {"first_token_seconds": FIRST_TOKEN_SECONDS, "tokens_per_second": TOKENS_PER_SECOND}
    llm = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": stand_in.base_url, "LLM_MAX_RETRIES": "0"}
    try:
        with dashboard(ROOT / "app.py", {**env, **llm}) as url:
            page.goto(url)
            page.wait_for_selector(SETTLED)
            for name, (days, paid) in STREAMED.items():
                page.get_by_role("spinbutton", name="Days per week").fill(str(days))
                if paid:
                    page.get_by_text("Paid access").click()
                waits = click_to_program(page, f"bench-{name}", clicks)
                streamed[name] = {what: summarize(ms) for what, ms in waits.items()}
                log(
                    f"{name}: first session p50 {streamed[name]['first_session']['p50_ms']} ms, "
                    f"complete p50 {streamed[name]['complete']['p50_ms']} ms"
                )
    finally:
        stand_in.stop()
    return streamed


def measure(clicks: int, log: Callable[[str], None]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit("Debian's chromium is not installed: ./scripts/test installs it")
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "STREAMLIT_"))}
        # Each click is a request of its own here, however fast the clicks come.
        env.update(DATABASE_URL=f"sqlite:///{folder}/bench.db", DOUBLE_CLICK_SECONDS="0", PYTHONPATH=str(ROOT))
        bare = Path(folder) / "bare.py"
        bare.write_text(BARE_APP)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            with dashboard(bare, env) as url:
                page.goto(url)
                page.wait_for_selector(SETTLED)
                bare_ms = click_to_text(page, "Click", lambda i: f"Clicked {i + 1}.", clicks)
            log(f"bare page: p50 {summarize(bare_ms)['p50_ms']} ms")
            with dashboard(ROOT / "app.py", env) as url:
                page.goto(url)
                page.wait_for_selector(SETTLED)
                page.get_by_role("textbox", name="User ID").fill("bench-coach")
                page.get_by_role("button", name="Generate program").click()
                page.get_by_text("Cache miss").wait_for()
                page.wait_for_selector(SETTLED)
                # Program #1 was the miss; every later click is a hit saved as the next program.
                hit_ms = click_to_text(
                    page,
                    "Generate program",
                    lambda i: f"Cache hit: served from the cache, no LLM call. Program #{i + 2}.",
                    clicks,
                )
            log(f"cache hit badge: p50 {summarize(hit_ms)['p50_ms']} ms")
            streamed = measure_streamed(page, env, STREAMED_CLICKS, log)
            browser.close()
    return {
        "clicks": clicks,
        "hit_badge": summarize(hit_ms),
        "bare_page": summarize(bare_ms),
        "streamed_miss": {"clicks": STREAMED_CLICKS, **streamed},
    }
