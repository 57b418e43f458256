"""`python -m bench --rollout`: three days of coaches' requests replayed through the service
across a switch of model, without a pre-warm, with one of every valid entry, and with one
that leaves out entries about to expire (core/operations/rollout/), on the counting generator billed
fixed tokens. Measured: the hit rate in the 24 h before the switch and in the 24 h after it,
and what regenerating the cache for the new model costs live against the pre-warm at the
Batch API's price.

The database's clock cannot be moved, so the data is aged instead: before a request at
simulated time t, every timestamp that expiry is judged by is moved back by the simulated
time since the last aging, less the real time that passed meanwhile (which the database's
clock counted already). Requests are served in simulated order; 0-24 h warms the cache up
and is not measured."""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import Engine, text

from core.contract.generation import Generation, GeneratorIdentity, Rejected
from core.contract.models import EQUIPMENT, EXPERIENCE_LEVELS, GOALS, OnboardingResponses
from core.generators import OnProgress
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import reports
from core.operations.rollout import start as rollout_start
from core.prices import Billed, ModelPrice, PriceTier
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.db import connect_to_write, is_postgres, make_engine, migrate
from testkit.counting import CountingGenerator

SEED = 23
USERS = 500  # both databases within about 4 minutes on 2 cores
MEAN_GAP_HOURS = 8.0  # between one user's requests (a Poisson process)
CHANGE_CHANCE = 0.05  # that a request comes with changed answers
TTL_HOURS = 24
PREWARM_AT, SWITCH_AT, END_AT = 47.0, 48.0, 72.0
# The data is aged at most this often (each aging rewrites every entry): the requests in
# between are served at the clock of the last aging, up to 10 simulated minutes early. An
# entry's write and the request that finds it expired are both that early, by amounts that
# differ at random, so the TTL is not biased, only blurred by up to 10 minutes either way.
AGING_STEP_HOURS = 10 / 60
# Every generation is billed as an OpenAI call of a program this size would be: its system
# prompt and schema (1,024 tokens) read from the server's prompt cache.
TOKENS = Billed(prompt_tokens=1_400, completion_tokens=3_000, cached_tokens=1_024, reasoning_tokens=0)
CURRENT = GeneratorIdentity(model="gpt-4o-mini", version="openai-current")
CANDIDATE = GeneratorIdentity(model="gpt-4.1-mini", version="openai-candidate")
# Columns that expiry (and the reason for a miss) is judged by.
AGED_COLUMNS = {
    "ai_coach_cache": ("expires_at", "created_at", "updated_at"),
    "rollout_programs": ("generated_at", "expires_at", "used_at"),
    "cache_entry_fates": ("recorded_at", "entry_expires_at"),
}
# The selective pre-warm leaves out entries valid for less than this many more hours. Of those
# tried (4, 6, 8, 12, 16; README, "A model switch, replayed"), the one with the lowest spend
# in the 24 h after; leaving none out spends less still, since users come back at random.
MIN_HOURS_LEFT = 4.0
# The targets: with the pre-warm, the hit rate after the switch at least 90% of the
# rate before it, and the regeneration at no more than 50% of its live cost.
HIT_RATE_TARGET, COST_TARGET = 0.9, 0.5
Window = Literal["warm-up", "before", "after"]


class BilledCountingGenerator(CountingGenerator):
    """The counting generator under an OpenAI identity, billed TOKENS a call, so that its
    entries record tokens and its generations can be priced as that model's."""

    def __init__(self, identity: GeneratorIdentity) -> None:
        super().__init__()
        self.identity = identity

    def generate(
        self,
        profile: OnboardingResponses,
        has_paid_access: bool,
        on_progress: OnProgress | None = None,
        rejected: Rejected | None = None,
    ) -> Generation:
        return replace(
            super().generate(profile, has_paid_access, rejected=rejected), model=self.identity.model, billed=TOKENS
        )


@dataclass(frozen=True)
class Request:
    hours: float  # simulated time since the start
    user_id: str
    answers: dict[str, Any]
    has_paid_access: bool


def _profile(rng: random.Random) -> dict[str, Any]:
    return {
        "goal": rng.choice(GOALS),
        "experience_level": rng.choice(EXPERIENCE_LEVELS),
        "days_per_week": rng.randint(2, 5),
        "session_minutes": rng.choice((30, 45, 60, 75, 90)),
        "equipment": sorted(rng.sample(EQUIPMENT, rng.randint(1, 3))),
    }


def workload(users: int, seed: int) -> list[Request]:
    """Each user's requests over the three days, in simulated order; now and then a request
    comes with one answer (or paid access) changed, and later ones keep the change."""
    rng = random.Random(seed)
    requests = []
    for n in range(users):
        answers, paid = _profile(rng), rng.random() < 0.3
        hours = rng.expovariate(1 / MEAN_GAP_HOURS)
        while hours < END_AT:
            if rng.random() < CHANGE_CHANCE:
                changed = rng.choice(("session_minutes", "days_per_week", "paid"))
                if changed == "paid":
                    paid = not paid
                else:
                    answers = {**answers, changed: _profile(rng)[changed]}
            requests.append(Request(hours, f"replay-{n}", answers, paid))
            hours += rng.expovariate(1 / MEAN_GAP_HOURS)
    return sorted(requests, key=lambda r: r.hours)


def _aged(engine: Engine, column: str) -> str:
    """`column` moved back by the bound number of seconds, as each database stores times."""
    if is_postgres(engine):
        return f"{column} - make_interval(secs => :seconds)"
    # SQLite keeps naive UTC text (core/store/schema.py UTCDateTime), to the millisecond as database_now writes it.
    return f"strftime('%Y-%m-%d %H:%M:%f', julianday({column}) - :seconds / 86400.0) || '000'"


class SimulatedClock:
    """Where the replay is in simulated hours; `advance_to` ages the data to get there."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.hours = 0.0
        self._aged_at = time.time()
        self._statements = [
            text(f"UPDATE {table} SET " + ", ".join(f"{c} = {_aged(engine, c)}" for c in columns))
            for table, columns in AGED_COLUMNS.items()
        ]

    def advance_to(self, hours: float) -> None:
        now = time.time()
        seconds = (hours - self.hours) * 3600 - (now - self._aged_at)
        with connect_to_write(self.engine) as connection, connection.begin():
            for statement in self._statements:
                connection.execute(statement, {"seconds": seconds})
        self.hours, self._aged_at = hours, now


def window(hours: float) -> Window:
    return "warm-up" if hours < SWITCH_AT - 24 else "before" if hours < SWITCH_AT else "after"


@dataclass
class Tally:
    requests: int = 0
    hits: int = 0
    prewarmed_hits: int = 0
    candidate_generations: int = 0
    misses: Counter[str] = field(default_factory=Counter)  # by miss reason

    def count(self, cache_hit: bool, prewarmed: bool, reason: str | None, by_candidate: bool) -> None:
        self.requests += 1
        self.hits += cache_hit
        self.prewarmed_hits += prewarmed
        if not cache_hit:
            self.misses[reason or "none"] += 1
            self.candidate_generations += by_candidate

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "hits": self.hits,
            "hit_rate": round(self.hit_rate, 4),
            "prewarmed_hits": self.prewarmed_hits,
            "candidate_generations": self.candidate_generations,
            "misses_by_reason": dict(sorted(self.misses.items())),
        }


def replay(
    engine: Engine,
    settings: Settings,
    requests: list[Request],
    *,
    prewarm: rollout_plan.Selection | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One run: the current generator until SWITCH_AT, then the candidate; with `prewarm`,
    a live pre-warm of the keys it selects for the candidate at PREWARM_AT."""
    ttl = timedelta(hours=settings.cache_ttl_hours)
    candidate = BilledCountingGenerator(CANDIDATE)
    service = ProgramService(engine=engine, generator=BilledCountingGenerator(CURRENT), ttl=ttl)
    clock = SimulatedClock(engine)
    tallies = {name: Tally() for name in get_args(Window)}
    out: dict[str, Any] = {}
    started = time.perf_counter()
    for request in requests:
        if prewarm and "rollout" not in out and request.hours >= PREWARM_AT:
            clock.advance_to(PREWARM_AT)
            out["rollout"] = _prewarm(engine, settings, candidate, prewarm)
            log(f"  pre-warm at {PREWARM_AT:g} h: {out['rollout']['requested']} keys in {out['rollout']['seconds']} s")
        if service.generator is not candidate and request.hours >= SWITCH_AT:
            clock.advance_to(SWITCH_AT)
            service = ProgramService(engine=engine, generator=candidate, ttl=ttl)
        if request.hours - clock.hours >= AGING_STEP_HOURS:
            clock.advance_to(request.hours)
        result = service.generate(
            user_id=request.user_id, onboarding_responses=request.answers, has_paid_access=request.has_paid_access
        )
        tallies[window(request.hours)].count(
            result.cache_hit,
            result.prewarmed_by is not None,
            result.miss_reason,
            result.generator_version == CANDIDATE.version,
        )
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["windows"] = {name: tally.as_dict() for name, tally in tallies.items()}
    if prewarm:
        summary = reports.summaries(engine, settings, limit=1)[0]
        out["rollout"].update(
            used=summary.used, states=summary.states, summary_cost=summary.cost, summary_saved=summary.saved
        )
    return out


def _prewarm(
    engine: Engine, settings: Settings, candidate: BilledCountingGenerator, selection: rollout_plan.Selection
) -> dict[str, Any]:
    started = time.perf_counter()
    begun = rollout_start.start(engine, settings, candidate, actor="bench", selection=selection, live=True)
    return {
        "id": begun.rollout_id,
        "min_hours_left": selection.min_hours_left,
        "requested": begun.requested,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _one_generation(price: ModelPrice, tier: PriceTier) -> float:
    return price.cost(TOKENS, tier)


def costs(settings: Settings, without: dict[str, Any], prewarmed: dict[str, Any]) -> dict[str, Any]:
    """What a pre-warmed run cost the candidate, read two ways. The day's spend, the 24 h
    after the switch: all live without the pre-warm; with it, the pre-warm at the batch price
    (a batch pre-warm bills the tokens the live one here did) plus the generations still needed
    after the switch, live. And the issue's "regeneration live against batch": the programs
    the pre-warm regenerated that a request after the switch took, at the batch price against
    generating each of them live, which is what those requests would have cost without it;
    apart from them the waste, programs pre-warmed and never used."""
    price = settings.price_of(CANDIDATE.model)
    assert price is not None, f"{CANDIDATE.model} has a listed price"
    live, batch = _one_generation(price, "live"), _one_generation(price, "batch")
    generated_without = without["windows"]["after"]["candidate_generations"]
    generated_with = prewarmed["windows"]["after"]["candidate_generations"]
    prewarmed_keys, used = prewarmed["rollout"]["requested"], prewarmed["rollout"]["used"]
    spend_without = generated_without * live
    spend_with = prewarmed_keys * batch + generated_with * live
    return {
        "per_generation_live": round(live, 6),
        "per_generation_batch": round(batch, 6),
        "without_prewarm_live": round(spend_without, 4),
        "with_prewarm_batch": round(prewarmed_keys * batch, 4),
        "with_prewarm_after_switch_live": round(generated_with * live, 4),
        "with_prewarm_total": round(spend_with, 4),
        "with_over_without": round(spend_with / spend_without, 4),
        "used_batch": round(used * batch, 4),
        "used_live": round(used * live, 4),
        "used_batch_over_live": round(batch / live, 4),
        "waste_batch": round((prewarmed_keys - used) * batch, 4),
        # The whole pre-warm, waste included, against the live cost of the programs it served.
        "prewarm_batch_over_used_live": round(prewarmed_keys * batch / (used * live), 4) if used else None,
        # The keys it regenerated, at the live price: what the same pre-warm costs without a Batch API.
        "prewarm_at_live_price": round(prewarmed_keys * live, 4),
        # Of the generations without the pre-warm, those the switch itself caused.
        "generator_changed_misses_live": round(
            without["windows"]["after"]["misses_by_reason"].get("generator_changed", 0) * live, 4
        ),
    }


def targets(without: dict[str, Any], prewarmed: dict[str, Any], cost: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for one pre-warmed run; the cost one in both readings of `costs`."""
    before = prewarmed["windows"]["before"]["hit_rate"]
    with_, without_ = (run["windows"]["after"]["hit_rate"] / before for run in (prewarmed, without))
    return {
        "hit_rate_after_over_before": {
            "with_prewarm": round(with_, 4),
            "without_prewarm": round(without_, 4),
            "at_least": HIT_RATE_TARGET,
            "met": with_ >= HIT_RATE_TARGET,
        },
        "spend_with_over_without_prewarm": {
            "value": cost["with_over_without"],
            "at_most": COST_TARGET,
            "met": cost["with_over_without"] <= COST_TARGET,
        },
        # Rounded as stored: batch is half the live price to the last bit only by luck of floats.
        "used_batch_over_live": {
            "value": cost["used_batch_over_live"],
            "at_most": COST_TARGET,
            "met": cost["used_batch_over_live"] <= COST_TARGET,
        },
    }


def scenarios(min_hours_left: float) -> dict[str, rollout_plan.Selection | None]:
    """Each run's pre-warm by the run's name: none, every valid entry, and the selective one."""
    return {
        "without_prewarm": None,
        "with_prewarm": rollout_plan.Selection(),
        "with_selective_prewarm": rollout_plan.Selection(min_hours_left=min_hours_left),
    }


def run_database(
    label: str,
    url: str,
    requests: list[Request],
    runs: dict[str, rollout_plan.Selection | None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Each of `runs` on a fresh database of its name (`url` formatted with `run`); every
    pre-warmed one priced and held to the targets against "without_prewarm"."""
    settings = Settings(cache_ttl_hours=TTL_HOURS)
    out: dict[str, Any] = {}
    for name, prewarm in runs.items():
        log(f"{label}, {name.replace('_', ' ')}:")
        engine = make_engine(url.format(run=name))
        migrate(engine)
        out[name] = replay(engine, settings, requests, prewarm=prewarm, log=log)
        engine.dispose()
        log(f"  {out[name]['seconds']} s")
    for name, prewarm in runs.items():
        if prewarm:
            out[name]["costs"] = costs(settings, out["without_prewarm"], out[name])
            out[name]["targets"] = targets(out["without_prewarm"], out[name], out[name]["costs"])
    return out


def measure(
    users: int, log: Callable[[str], None], *, postgres: bool = True, min_hours_left: float = MIN_HOURS_LEFT
) -> dict[str, Any]:
    requests = workload(users, SEED)
    runs = scenarios(min_hours_left)
    log(f"{users:,} users, {len(requests):,} requests over {END_AT:g} simulated hours")
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": SEED,
        "users": users,
        "requests": len(requests),
        "mean_gap_hours": MEAN_GAP_HOURS,
        "change_chance": CHANGE_CHANCE,
        "ttl_hours": TTL_HOURS,
        "tokens_per_generation": TOKENS.as_columns(),
        "current": f"{CURRENT.model} ({CURRENT.version})",
        "candidate": f"{CANDIDATE.model} ({CANDIDATE.version})",
        "databases": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        results["databases"]["sqlite"] = run_database("sqlite", f"sqlite:///{folder}/{{run}}.db", requests, runs, log)
    if postgres:
        from testkit.pg_server import PostgresServer

        server = PostgresServer().start()
        try:
            server.wait_ready()
            for name in runs:
                server.admin(f"CREATE DATABASE {name}")
            results["databases"]["postgresql"] = run_database("postgresql", server.url("{run}"), requests, runs, log)
        finally:
            server.stop()
    return results


def _met(met: bool) -> str:
    return "met" if met else "not met"


def _scenario_lines(name: str, run: dict[str, Any]) -> list[str]:
    """A pre-warmed run's pre-warm, hit rate and cost, both cost readings held to the target."""
    c, warm, t = run["costs"], run["rollout"], run["targets"]
    hit_rate, spend, used = (
        t["hit_rate_after_over_before"],
        t["spend_with_over_without_prewarm"],
        t["used_batch_over_live"],
    )
    return [
        f"{name} (entries valid for at least {warm['min_hours_left']:g} more hours):",
        f"  pre-warm: {warm['requested']:,} keys in {warm['seconds']} s, {warm['used']:,} used "
        f"({warm['used'] / warm['requested']:.0%}); summary cost ${warm['summary_cost']:.2f} (live tier), "
        f"saved ${warm['summary_saved']:.2f}",
        f"  hit rate after / before: {hit_rate['with_prewarm']:.1%} "
        f"(target >= {HIT_RATE_TARGET:.0%}: {_met(hit_rate['met'])})",
        f"  the day's spend: ${c['with_prewarm_total']:.2f} (pre-warm ${c['with_prewarm_batch']:.2f} at the batch "
        f"price + ${c['with_prewarm_after_switch_live']:.2f} live) against ${c['without_prewarm_live']:.2f} "
        f"live without: {spend['value']:.1%} (target <= {COST_TARGET:.0%}: {_met(spend['met'])})",
        f"  regeneration live against batch, the {warm['used']:,} used programs: ${c['used_batch']:.2f} batch "
        f"against ${c['used_live']:.2f} live: {used['value']:.1%} (target <= {COST_TARGET:.0%}: {_met(used['met'])})",
        f"  waste, {warm['requested'] - warm['used']:,} pre-warmed and never used: ${c['waste_batch']:.2f} batch; "
        f"the whole pre-warm against the used programs live: {c['prewarm_batch_over_used_live']:.1%}",
    ]


def table(results: dict[str, Any]) -> str:
    lines = [
        f"\nRollout replay: {results['users']:,} users, {results['requests']:,} requests, seed {results['seed']}, "
        f"switch {results['current']} -> {results['candidate']} at {SWITCH_AT:g} h"
    ]
    for label, r in results["databases"].items():
        before, after = (r["without_prewarm"]["windows"][w] for w in ("before", "after"))
        prewarmed = {name: run for name, run in r.items() if "rollout" in run}
        lines.append(f"\n{label}")
        lines.append(f"{'window':<44} {'requests':>9} {'hits':>7} {'hit rate':>9} {'pre-warmed':>11}")
        for name, w in (
            ("24 h before the switch", before),
            ("24 h after, without pre-warm", after),
            *((f"24 h after, {name.replace('_', ' ')}", run["windows"]["after"]) for name, run in prewarmed.items()),
        ):
            lines.append(
                f"{name:<44} {w['requests']:>9,} {w['hits']:>7,} {w['hit_rate']:>9.1%} {w['prewarmed_hits']:>11,}"
            )
        changed = next(iter(prewarmed.values()))["costs"]["generator_changed_misses_live"]
        lines.append(
            f"without pre-warm: hit rate after / before {after['hit_rate'] / before['hit_rate']:.1%}; "
            f"the switch's own misses (generator_changed): "
            f"{after['misses_by_reason'].get('generator_changed', 0):,}, ${changed:.2f} live"
        )
        for name, run in prewarmed.items():
            lines.extend(_scenario_lines(name, run))
        lines.append(
            "wall time: " + ", ".join(f"{run['seconds']} s {name.replace('_', ' ')}" for name, run in r.items())
        )
    return "\n".join(lines)
