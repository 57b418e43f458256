"""The spend guard: before a miss starts an LLM generation, the spend so far is read from the
database (core/operations/spend.py); once a budget (LLM_DAILY_BUDGET_USD,
LLM_MONTHLY_BUDGET_USD) is spent, the generation is not started. BUDGET_EXCEEDED=offline
(default) makes the offline coach's program instead, cached under the offline generator's
identity, so that the next miss once the budget allows replaces it with an LLM program (it
is then an entry of another generator: `generator_changed`); BUDGET_EXCEEDED=refuse makes
none. Cache hits never reach here.

How far spend can go past a budget: a generation starts only when the spend recorded is
below it, and its own spend is recorded when it ends. So what is spent past the budget is
at most the generations that were in flight when the spend crossed it, each started while
it was below: one per instance that generates one program at a time (the command line, a
cron job), one per concurrent generation in an instance that runs several."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from core.generators import OfflineGenerator, ProgramGenerator
from core.operations.spend import against_budgets
from core.settings import Settings
from core.store.db import describe_db_error

log = logging.getLogger(__name__)


class BudgetRefused(RuntimeError):
    """A generation not started because a budget is spent (BUDGET_EXCEEDED=refuse); the
    message says which, in one line."""


@dataclass(frozen=True)
class Guard:
    """The budgets and what to do once one is spent, with the prices spend is counted at."""

    settings: Settings

    @property
    def limits(self) -> bool:
        return self.settings.llm_daily_budget_usd is not None or self.settings.llm_monthly_budget_usd is not None

    def reached(self, engine: Engine) -> str | None:
        """Which budget is spent, in words; None while every one has some left. A spend
        that cannot be read counts as reached: a budget is a promise the guard keeps even
        when it cannot check."""
        try:
            spends = against_budgets(engine, self.settings)
        except DBAPIError as exc:
            log.warning("Could not read the LLM spend; treating the budget as reached: %s", describe_db_error(exc))
            return f"the LLM spend could not be read to check the budget ({describe_db_error(exc)})"
        spent = [s for s in spends if s.reached]
        return f"the LLM budget is spent ({spent[0].describe()})" if spent else None


@dataclass(frozen=True)
class Chosen:
    """The generator a generation starts with, and why it is not the configured one."""

    generator: ProgramGenerator
    budget_reached: str | None = None  # set: the offline coach, because this budget is spent


def generator_within_budget(guard: Guard | None, engine: Engine, generator: ProgramGenerator) -> Chosen:
    """The generator to start a generation with: `generator` while within budget (or when it
    costs nothing); once a budget is spent, the offline coach, or BudgetRefused."""
    if guard is None or not guard.limits or generator.identity.kind != "openai":
        return Chosen(generator)
    reached = guard.reached(engine)
    if reached is None:
        return Chosen(generator)
    if guard.settings.budget_exceeded == "refuse":
        raise BudgetRefused(
            f"{reached}; BUDGET_EXCEEDED=refuse, so no program was generated. Nothing was cached or saved."
        )
    return Chosen(OfflineGenerator(), reached)
