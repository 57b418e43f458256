"""Alerts: each rule says what it saw and fires past its threshold; a change is POSTed to the
webhook once across checkers and cron runs, again after a failure, never with its secret shown."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from sqlalchemy import Engine

from core.operations import alerts
from core.prices import Billed
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.db import make_engine
from core.store.history import GenerationEvent, insert_event
from core.store.schema import utcnow
from tests.conftest import CliRun, Shared
from tests.helpers import PROFILE, insert_entries, start_cli
from tests.quiet_http import QuietHTTPServer

# A Slack-style URL: its path is the secret, and a password in it for good measure.
SECRET_PATH = "/services/T0001/B0002/xoxSecretPathToken"
PASSWORD = "hook-password"


@dataclass
class Listener:
    """A webhook on a free local port: what it was sent, answering `statuses` in turn (then
    200); while `hold` is clear, the first POST waits for it before being answered."""

    port: int = 0
    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://hook:{PASSWORD}@127.0.0.1:{self.port}{SECRET_PATH}"

    @property
    def origin(self) -> str:
        """The webhook as logs and errors may name it."""
        return f"http://127.0.0.1:{self.port}"

    def states(self) -> list[tuple[str, str]]:
        return [(body["rule"], body["state"]) for body in self.received]


@pytest.fixture
def listener() -> Iterator[Listener]:
    heard = Listener()
    heard.hold.set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                heard.received.append(body)
                status = heard.statuses.pop(0) if heard.statuses else 200
            heard.hold.wait(timeout=120)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: Any) -> None:
            pass

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    heard.port = server.server_address[1]
    yield heard
    heard.hold.set()
    server.shutdown()
    server.server_close()


def insert_events(engine: Engine, outcomes: list[tuple[timedelta, str]], **fields: Any) -> None:
    """Events `ago` before now with their outcome, as the service records them."""
    now = utcnow()
    with engine.begin() as connection:
        for i, (ago, outcome) in enumerate(outcomes):
            insert_event(
                connection,
                GenerationEvent(
                    user_id="u",
                    cache_key=f"program:k{i}",
                    outcome=outcome,
                    latency_ms=5.0,
                    created_at=now - ago,
                    **fields,
                ),
            )


# Two hits at this hour on each of the previous 7 days: a baseline hit rate of 100%.
BASELINE = [(timedelta(days=day, minutes=30 + n), "hit") for day in range(1, 8) for n in range(2)]


def profile(i: int) -> dict[str, Any]:
    return {**PROFILE, "session_minutes": 20 + i}


def test_a_hit_rate_collapse_is_posted_once_firing_and_once_resolved(
    engine: Engine, service: ProgramService, listener: Listener
) -> None:
    settings = Settings(
        alert_webhook_url=listener.url, alert_hit_rate_min_requests=10, dashboard_url="https://coach.example/"
    )
    insert_events(engine, BASELINE)

    def serve_all() -> None:
        for i in range(10):
            service.generate(user_id=f"client-{i}", onboarding_responses=profile(i), has_paid_access=False)

    serve_all()  # ten new clients after a deploy: ten misses, a hit rate of 0%
    for _ in range(2):
        alerts.check(engine, settings)
    assert listener.states() == [("hit_rate", "firing")]
    fired = listener.received[0]
    assert fired["text"] == (
        "Coach Cache alert firing: Hit rate below its baseline: hit rate 0% in the last hour against 100% on the "
        "previous 7 days at this hour; 10 requests <https://coach.example/monitoring|Cache monitoring>"
    )
    assert fired["figures"]["hit_rate"] == 0 and fired["figures"]["baseline_hit_rate"] == 1
    assert fired["dashboard_url"] == "https://coach.example/monitoring"

    for _ in range(3):
        serve_all()  # the same clients again: 30 hits of 40, 75%, above half of 100%
    for _ in range(2):
        alerts.check(engine, settings)
    assert listener.states() == [("hit_rate", "firing"), ("hit_rate", "resolved")]
    assert "hit rate 75% in the last hour against 100%" in listener.received[1]["text"]


@pytest.mark.process
def test_two_checkers_at_once_send_it_once(shared_database: Shared, listener: Listener) -> None:
    engine = make_engine(shared_database.url)
    insert_events(engine, [*BASELINE, *[(timedelta(minutes=5), "miss")] * 10])
    engine.dispose()
    # The first POST is answered only once the other checker is done: a checker that did not
    # see it claimed would send it again meanwhile.
    listener.hold.clear()
    env = {"ALERT_WEBHOOK_URL": listener.url, "ALERT_HIT_RATE_MIN_REQUESTS": "10", **shared_database.env()}
    checkers = [start_cli(shared_database.url, "alerts", "check", **env) for _ in range(2)]
    deadline = time.monotonic() + 120
    while all(c.poll() is None for c in checkers) and len(listener.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    listener.hold.set()
    outputs = [c.communicate(timeout=120) for c in checkers]
    assert [c.returncode for c in checkers] == [0, 0], [err.decode() for _, err in outputs]
    assert listener.states() == [("hit_rate", "firing")]
    sent = [json.loads(out)["sent"] for out, _ in outputs]
    assert sorted(sent, key=len) == [[], [{"rule": "hit_rate", "state": "firing", "error": None}]]


def test_a_webhook_that_fails_gets_it_on_the_next_check_and_its_secret_is_never_shown(
    engine: Engine, database_url: str, cli: Callable[..., CliRun], listener: Listener
) -> None:
    listener.statuses = [500]
    insert_entries(engine, ["program:old"], expired=True)  # expired an hour ago
    env = {"ALERT_WEBHOOK_URL": listener.url, "ALERT_CLEANUP_OVERDUE_HOURS": "0.5"}

    failed = cli(database_url, "alerts", "check", **env)
    assert failed.code == 1
    assert failed.stderr == (
        f"error: webhook {listener.origin} answered HTTP 500: cleanup firing not sent; sent again on the next check\n"
    )
    assert json.loads(failed.stdout)["firing"] == ["cleanup"]
    again = cli(database_url, "alerts", "check", **env)
    assert again.code == 0, again.stderr
    assert again.stderr == f"INFO core.alerts: Alert cleanup firing: sent to {listener.origin}\n"
    assert json.loads(again.stdout)["sent"] == [{"rule": "cleanup", "state": "firing", "error": None}]
    assert cli(database_url, "alerts", "check", **env).json()["sent"] == []
    assert listener.states() == [("cleanup", "firing")] * 2
    assert "1 expired entry left (the oldest expired 1 h ago); no cleanup has run" in listener.received[1]["text"]
    for shown in (failed.stdout, failed.stderr, again.stdout, again.stderr):
        assert "xoxSecretPathToken" not in shown and PASSWORD not in shown


def test_each_rule_says_what_it_saw_and_fires_past_its_threshold(engine: Engine) -> None:
    judged = {"alert_error_min_requests": 10, "alert_refusal_min_generations": 10}
    settings = Settings(**judged)
    recent = timedelta(minutes=5)
    insert_events(engine, [(recent, "miss")] * 8)
    insert_events(engine, [(recent, "error")] * 2, rules_broken="contract,session_minutes", attempts=2)
    insert_events(engine, [(recent, "hit")] * 9, cache_read_error=True)
    seen = {alert.rule: alert for alert in alerts.evaluate(engine, settings)}
    assert seen["errors"].firing and seen["errors"].seen == (
        "11 errors among 19 requests in the last 15 minutes (58%): 2 failed generations, 9 cache read and "
        "0 cache write errors"
    )
    assert seen["refusals"].firing and seen["refusals"].seen == (
        "2 of 10 generations in the last hour refused by validation (20%); the rule broken most: contract "
        "(2 generations)"
    )
    assert not seen["hit_rate"].firing and seen["hit_rate"].seen == (
        "17 requests served in the last hour and 0 at this hour on the previous 7 days: 100 each are needed to "
        "judge the hit rate"
    )
    assert not seen["cleanup"].firing
    calm = Settings(**judged, alert_error_share=0.6, alert_refusal_share=0.2)
    assert [a.rule for a in alerts.evaluate(engine, calm) if a.firing] == []


def test_the_spend_alert_fires_before_the_daily_budget_and_the_budget_alert_at_it(engine: Engine) -> None:
    # $1 per 1,000 input tokens: each generation below costs $1, against a $10 daily budget.
    prices = json.dumps({"gpt-test": {"input": 1000.0, "output": 0.0}})
    settings = Settings(model_prices=prices, llm_daily_budget_usd=10.0)
    billed = {
        "model": "gpt-test",
        "generator_version": "openai-gpt-test",
        "billed": Billed(prompt_tokens=1000, completion_tokens=0),
    }

    def firing(settings: Settings) -> list[str]:
        return [a.rule for a in alerts.evaluate(engine, settings) if a.firing and a.rule in ("spend", "budget")]

    insert_events(engine, [(timedelta(0), "miss")] * 7, **billed)
    assert firing(settings) == []
    insert_events(engine, [(timedelta(0), "miss")], **billed)
    seen = {alert.rule: alert for alert in alerts.evaluate(engine, settings)}
    assert firing(settings) == ["spend"] and seen["spend"].seen.startswith(
        "80% of the daily budget spent: LLM_DAILY_BUDGET_USD=10.00: $8.0000 spent since "
    )
    insert_events(engine, [(timedelta(0), "miss")] * 2, **billed)
    assert firing(settings) == ["spend", "budget"]
    assert firing(Settings(model_prices=prices)) == []  # no budget, nothing to alert on


def test_the_monitoring_page_shows_a_firing_alert_as_a_banner(app_test: Callable[..., Any], tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/coach.db"
    app = app_test(url, ALERT_CLEANUP_OVERDUE_HOURS="0.5")
    app.run()
    app.switch_page("pages/monitoring.py").run()
    assert not app.error
    engine = make_engine(url)
    insert_entries(engine, ["program:old"], expired=True)
    engine.dispose()
    next(button for button in app.button if button.label == "Refresh").click().run()
    assert [error.value for error in app.error] == [
        "**Expired entries not cleaned up**: 1 expired entry left (the oldest expired 1 h ago); no cleanup has run"
    ]
