from __future__ import annotations

import threading
import time
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from core.generators import Generation, OfflineGenerator
from core.models import EQUIPMENT, EXPERIENCE_LEVELS, GOALS, OnboardingResponses
from core.schema import ai_coach_cache, generation_events, training_programs

PROFILE: dict[str, Any] = {
    "goal": "strength",
    "experience_level": "beginner",
    "days_per_week": 3,
    "session_minutes": 45,
    "equipment": ["dumbbells", "bodyweight"],
}


# Strategies for answers the contract accepts, required fields first.
REQUIRED_ANSWERS = {
    "goal": st.sampled_from(GOALS),
    "experience_level": st.sampled_from(EXPERIENCE_LEVELS),
    "days_per_week": st.integers(1, 7),
    "session_minutes": st.integers(15, 180),
    "equipment": st.lists(st.sampled_from(EQUIPMENT), max_size=8),
}


class CountingGenerator:
    """The offline coach, counting its calls, optionally taking a fixed time per call."""

    name = "counting-offline"

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.calls = 0
        self._lock = threading.Lock()
        self._offline = OfflineGenerator()

    def generate(self, profile: OnboardingResponses, has_paid_access: bool) -> Generation:
        with self._lock:
            self.calls += 1
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return self._offline.generate(profile, has_paid_access)


def count_rows(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def table_counts(engine: Engine) -> tuple[int, int, int]:
    return tuple(count_rows(engine, t) for t in (ai_coach_cache, training_programs, generation_events))  # type: ignore[return-value]
