"""LLM spend as the invoice counts it, and against the budgets (LLM_DAILY_BUDGET_USD,
LLM_MONTHLY_BUDGET_USD): the guard that stops generations (core/serving/budget.py), the
monitoring page and the spend alert all read it here.

What counts is every billed token: live requests (cached input at its price, failed
generations' tokens included, as monitoring's usage counts them) and rollouts (trials, live
pre-warms, batches at the Batch API's price, as the rollout reports count them). A model
without a price in MODEL_PRICES counts nothing. A day and a month start at 00:00 UTC by the
database's clock, so every instance agrees on when a budget starts afresh."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Engine

from core.operations.monitoring.usage import costs, usage_by_generator
from core.operations.rollout import reports
from core.settings import Settings
from core.store.entries import database_time

Period = Literal["day", "month"]


def spent(engine: Engine, settings: Settings, since: datetime) -> float:
    """USD billed since `since` (UTC, on the hour: the request log is summed by the hour),
    requests and rollouts together. A rollout's spend counts from when it was started."""
    requests = costs(usage_by_generator(engine, since), settings).spent
    return requests + reports.spend(engine, settings, since).total


def period_start(now: datetime, period: Period) -> datetime:
    """When the day or the month holding `now` began (00:00 UTC)."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


@dataclass(frozen=True)
class BudgetSpend:
    """One budget, and what was spent against it since its period began."""

    period: Period
    setting: str  # the environment variable that sets it
    budget: float
    spent: float
    since: datetime

    @property
    def reached(self) -> bool:
        return self.spent >= self.budget

    @property
    def share(self) -> float:
        """Spent as a share of the budget (1.0 at the budget; a budget of 0 is reached at once)."""
        return self.spent / self.budget if self.budget else 1.0

    def describe(self) -> str:
        """E.g. `LLM_DAILY_BUDGET_USD=5.00: $5.0123 spent since 2026-12-07 00:00 UTC`."""
        return f"{self.setting}={self.budget:.2f}: ${self.spent:.4f} spent since {self.since:%Y-%m-%d %H:%M} UTC"


# Each period's budget, by its Settings field; the environment variable is the field's name
# in capitals.
BUDGET_FIELDS: tuple[tuple[Period, str], ...] = (("day", "llm_daily_budget_usd"), ("month", "llm_monthly_budget_usd"))


def budgets(settings: Settings) -> list[tuple[Period, str, float]]:
    """The budgets set: each period, its environment variable and its amount."""
    named = ((period, field, getattr(settings, field)) for period, field in BUDGET_FIELDS)
    return [(period, field.upper(), amount) for period, field, amount in named if amount is not None]


def against_budgets(engine: Engine, settings: Settings) -> list[BudgetSpend]:
    """Spend today and this month against each budget set (none: an empty list, and no query)."""
    found = budgets(settings)
    if not found:
        return []
    now = database_time(engine)
    found_spend = []
    for period, name, amount in found:
        since = period_start(now, period)
        found_spend.append(BudgetSpend(period, name, amount, spent(engine, settings, since), since))
    return found_spend
