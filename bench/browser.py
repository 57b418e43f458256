"""`python -m bench --browser`: how long a coach waits, in Chromium, from the click on
"Generate program" to the "Cache hit" badge, beside a bare Streamlit page's click-to-text.

Both are timed inside the page (performance.now() at the click event, and when a
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
            browser.close()
    return {
        "clicks": clicks,
        "hit_badge": summarize(hit_ms),
        "bare_page": summarize(bare_ms),
    }
