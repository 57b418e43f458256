"""Alert rules over the tables, and the webhook that is told when one starts firing or resolves.

A rule is one function `(engine, settings, now) -> Finding` listed in RULES, its thresholds
settings: it says in words what it saw, and whether that fires. `python -m core alerts check`
(cron) evaluates them, records their states in the database and POSTs each change to
ALERT_WEBHOOK_URL once across instances (core/store/alert_states.py); the monitoring page
only evaluates them, for its banner, and never sends: a coach's view never waits on a webhook."""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from sqlalchemy import Engine

from core.formatting import counted
from core.operations import admin, monitoring, spend
from core.operations.fit_report import fit_by_generator
from core.settings import Settings
from core.store import alert_states, entries
from core.store.schema import utcnow

log = logging.getLogger("core.alerts")

HOUR = timedelta(hours=1)
ERROR_WINDOW = timedelta(minutes=15)
BASELINE_DAYS = 7
# A message claimed by a checker that died while sending is sent by a check this many
# webhook timeouts later (the claim outlasts any POST of a checker still alive).
CLAIM_TIMEOUTS = 3
# The dashboard's path to the Cache monitoring page (app.py names it by its file).
MONITORING_PATH = "/monitoring"


@dataclass(frozen=True)
class Finding:
    firing: bool
    seen: str  # what the rule saw, in words, firing or not
    figures: dict[str, Any]


RuleCheck = Callable[[Engine, Settings, datetime], Finding]


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def hit_rate_collapse(engine: Engine, settings: Settings, now: datetime) -> Finding:
    """The last hour's hit rate below ALERT_HIT_RATE_SHARE of the same hour's on the previous
    7 days (their requests pooled), once each served ALERT_HIT_RATE_MIN_REQUESTS."""
    last = monitoring.summary_between(engine, now - HOUR, now)
    days = [now - timedelta(days=day) for day in range(1, BASELINE_DAYS + 1)]
    baseline = [monitoring.summary_between(engine, end - HOUR, end) for end in days]
    base_hits, base_served = sum(s.hits for s in baseline), sum(s.served for s in baseline)
    figures = {
        "requests": last.served,
        "hit_rate": last.hit_rate,
        "baseline_requests": base_served,
        "baseline_hit_rate": monitoring.hit_rate(base_hits, base_served),
        "threshold_share": settings.alert_hit_rate_share,
    }
    least = settings.alert_hit_rate_min_requests
    if last.served < least or base_served < least:
        seen = (
            f"{counted(last.served, 'request')} served in the last hour and {base_served:,} at this hour on the "
            f"previous {BASELINE_DAYS} days: {least:,} each are needed to judge the hit rate"
        )
        return Finding(False, seen, figures)
    rate, base = _share(last.hits, last.served), _share(base_hits, base_served)
    seen = (
        f"hit rate {rate:.0%} in the last hour against {base:.0%} on the previous {BASELINE_DAYS} days at this "
        f"hour; {counted(last.served, 'request')}"
    )
    return Finding(rate < settings.alert_hit_rate_share * base, seen, figures)


def errors(engine: Engine, settings: Settings, now: datetime) -> Finding:
    """Failed generations and cache read or write errors above ALERT_ERROR_SHARE of the last
    15 minutes' requests, once there were ALERT_ERROR_MIN_REQUESTS."""
    last = monitoring.summary_between(engine, now - ERROR_WINDOW, now)
    count = last.errors + last.cache_read_errors + last.cache_write_errors
    minutes = int(ERROR_WINDOW.total_seconds() // 60)
    figures = {
        "requests": last.requests,
        "failed_generations": last.errors,
        "cache_read_errors": last.cache_read_errors,
        "cache_write_errors": last.cache_write_errors,
        "threshold_share": settings.alert_error_share,
    }
    seen = (
        f"{counted(count, 'error')} among {counted(last.requests, 'request')} in the last {minutes} minutes "
        f"({_share(count, last.requests):.0%}): {last.errors:,} failed generations, "
        f"{last.cache_read_errors:,} cache read and {last.cache_write_errors:,} cache write errors"
    )
    enough = last.requests >= settings.alert_error_min_requests
    if not enough:
        seen += f"; {settings.alert_error_min_requests:,} requests are needed to judge"
    return Finding(enough and _share(count, last.requests) > settings.alert_error_share, seen, figures)


def refusals(engine: Engine, settings: Settings, now: datetime) -> Finding:
    """Programs refused by validation (the contract or a fit rule, every attempt) above
    ALERT_REFUSAL_SHARE of the last hour's generations: a model or prompt gone wrong."""
    reports = fit_by_generator(engine, now - HOUR)
    refused = sum(report.refused for report in reports)
    generations = monitoring.summary_between(engine, now - HOUR, now).generations + refused
    by_rule: dict[str, int] = {}
    for report in reports:
        for rule, count in report.by_rule.items():
            by_rule[rule] = by_rule.get(rule, 0) + count
    figures = {
        "generations": generations,
        "refused": refused,
        "rules_broken": by_rule,
        "threshold_share": settings.alert_refusal_share,
    }
    seen = (
        f"{refused:,} of {counted(generations, 'generation')} in the last hour refused by validation "
        f"({_share(refused, generations):.0%})"
    )
    if by_rule:
        worst = max(sorted(by_rule), key=lambda rule: by_rule[rule])
        seen += f"; the rule broken most: {worst} ({counted(by_rule[worst], 'generation')})"
    enough = generations >= settings.alert_refusal_min_generations
    if not enough:
        seen += f"; {settings.alert_refusal_min_generations:,} generations are needed to judge"
    return Finding(enough and _share(refused, generations) > settings.alert_refusal_share, seen, figures)


def cleanup_overdue(engine: Engine, settings: Settings, _now: datetime) -> Finding:
    """The oldest expired program entry expired more than ALERT_CLEANUP_OVERDUE_HOURS ago:
    cleanup is not scheduled, or failing (a cleanup that fails records nothing, and one that
    finishes deletes every expired entry)."""
    expired = entries.expired_entries(engine)
    last_cleanup = admin.last_cleanup(engine)
    hours = (expired.now - expired.oldest_expired_at).total_seconds() / 3600 if expired.oldest_expired_at else 0.0
    figures = {
        "expired_entries": expired.entries,
        "oldest_expired_hours": round(hours, 1),
        "last_cleanup_at": last_cleanup.isoformat() if last_cleanup else None,
        "threshold_hours": settings.alert_cleanup_overdue_hours,
    }
    ran = f"the last cleanup finished {last_cleanup:%Y-%m-%d %H:%M} UTC" if last_cleanup else "no cleanup has run"
    oldest = f"the oldest expired {hours:,.0f} h ago" if expired.oldest_expired_at else "none"
    seen = f"{counted(expired.entries, 'expired entry', 'expired entries')} left ({oldest}); {ran}"
    return Finding(hours > settings.alert_cleanup_overdue_hours, seen, figures)


def _spend_today(engine: Engine, settings: Settings) -> spend.BudgetSpend | None:
    return next((b for b in spend.against_budgets(engine, settings) if b.period == "day"), None)


def _spend_finding(today: spend.BudgetSpend | None, share: float) -> Finding:
    if today is None:
        return Finding(False, "no daily budget is set (LLM_DAILY_BUDGET_USD)", {})
    figures = {"spent_usd": round(today.spent, 4), "budget_usd": today.budget, "threshold_share": share}
    seen = f"{today.share:.0%} of the daily budget spent: {today.describe()}"
    return Finding(today.share >= share, seen, figures)


def spend_near_budget(engine: Engine, settings: Settings, _now: datetime) -> Finding:
    """Spend today, as invoiced, past ALERT_SPEND_SHARE of the daily budget: told before the
    spend guard bites."""
    return _spend_finding(_spend_today(engine, settings), settings.alert_spend_share)


def spend_at_budget(engine: Engine, settings: Settings, _now: datetime) -> Finding:
    """Spend today at the daily budget: misses get what BUDGET_EXCEEDED says until tomorrow."""
    return _spend_finding(_spend_today(engine, settings), 1.0)


@dataclass(frozen=True)
class Rule:
    name: str  # as alert_states and the webhook's `rule` name it
    title: str
    check: RuleCheck


RULES: tuple[Rule, ...] = (
    Rule("hit_rate", "Hit rate below its baseline", hit_rate_collapse),
    Rule("errors", "Errors above their share of requests", errors),
    Rule("refusals", "Programs refused by validation", refusals),
    Rule("cleanup", "Expired entries not cleaned up", cleanup_overdue),
    Rule("spend", "LLM spend near the daily budget", spend_near_budget),
    Rule("budget", "LLM daily budget spent", spend_at_budget),
)


@dataclass(frozen=True)
class Alert:
    """A rule as one evaluation found it."""

    rule: str
    title: str
    firing: bool
    seen: str
    figures: dict[str, Any]


def evaluate(engine: Engine, settings: Settings, now: datetime | None = None) -> list[Alert]:
    """Every rule, read only: what the page shows."""
    at = now or utcnow()
    found = [(rule, rule.check(engine, settings, at)) for rule in RULES]
    return [Alert(rule.name, rule.title, f.firing, f.seen, f.figures) for rule, f in found]


@dataclass(frozen=True)
class Delivery:
    rule: str
    state: str  # firing | resolved
    error: str | None  # why it was not sent (retried on the next check)


@dataclass(frozen=True)
class Checked:
    alerts: list[Alert]
    deliveries: list[Delivery]


def check(engine: Engine, settings: Settings, now: datetime | None = None) -> Checked:
    """Evaluate every rule, record the states, and POST each change not told yet."""
    # By the database's clock, read before the rules: which of two checks read the tables
    # later is judged alike whatever their hosts' clocks say.
    read_at = entries.database_time(engine)
    alerts = evaluate(engine, settings, now)
    alert_states.record(engine, [alert_states.Observed(a.rule, a.firing, a.seen, a.figures) for a in alerts], read_at)
    return Checked(alerts, notify(engine, settings))


def notify(engine: Engine, settings: Settings) -> list[Delivery]:
    if settings.alert_webhook_url is None:
        return []
    url = settings.alert_webhook_url.get_secret_value()
    deliveries = []
    timeout = settings.alert_webhook_timeout_seconds
    # Claimed one at a time, just before its POST: a claim outlasts the POST it covers.
    claims = (alert_states.claim(engine, rule.name, CLAIM_TIMEOUTS * timeout) for rule in RULES)
    for message in (claimed for claimed in claims if claimed is not None):
        error = _post(url, message_body(message, settings), timeout)
        alert_states.settle(engine, message, error)
        state = "firing" if message.firing else "resolved"
        # A failure is the caller's to say (the CLI's one line), with what else failed.
        if error is None:
            log.info("Alert %s %s: sent to %s", message.rule, state, settings.describe_webhook())
        deliveries.append(Delivery(message.rule, state, error))
    return deliveries


def _title(rule: str) -> str:
    return next((r.title for r in RULES if r.name == rule), rule)


def message_body(message: alert_states.Message, settings: Settings) -> dict[str, Any]:
    """Slack-compatible (`text`), with the rule, its figures and the page's address."""
    state = "firing" if message.firing else "resolved"
    link = settings.dashboard_url.rstrip("/") + MONITORING_PATH if settings.dashboard_url else None
    text = f"Coach Cache alert {state}: {_title(message.rule)}: {message.seen}"
    return {
        "text": text + (f" <{link}|Cache monitoring>" if link else ""),
        "rule": message.rule,
        "state": state,
        "seen": message.seen,
        "figures": message.figures,
        "since": message.changed_at.isoformat(),
        "dashboard_url": link,
    }


def _post(url: str, body: dict[str, Any], timeout: float) -> str | None:
    """None once the webhook accepted it, else why not in words that never hold the URL."""
    headers = {"Content-Type": "application/json"}
    parts = urlsplit(url)
    if parts.username is not None:
        # urllib does not read a `user:password@` in a URL: it is sent as Basic authentication.
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return f"no answer: {exc.reason}" if isinstance(exc.reason, str) else f"no answer: {type(exc.reason).__name__}"
    except (TimeoutError, OSError) as exc:
        return f"no answer: {type(exc).__name__}"
