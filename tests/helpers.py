from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select, update

from core.contract.models import EQUIPMENT, EXPERIENCE_LEVELS, GOALS
from core.store.schema import ai_coach_cache, cache_entry_fates, generation_events, training_programs, utcnow

ROOT = Path(__file__).resolve().parents[1]
# Settings read a `.env` from the working directory: the checkout's (a developer's own)
# must never reach a test, so processes under test run from elsewhere.
NEUTRAL_CWD = tempfile.gettempdir()


def app_environment(database_url: str, **env: str) -> dict[str, str]:
    """The environment of a process under test: this one's, less any configuration of the app."""
    ours = ("OPENAI_", "DATABASE_URL", "MIGRATIONS_DATABASE_URL", "CACHE_", "LLM_", "STREAMLIT_")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    environment.update(DATABASE_URL=database_url, PYTHONPATH=str(ROOT), **env)
    return environment


def start_cli(database_url: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`python -m core ARGS` as its own process, as cron or an operator runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "core", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=app_environment(database_url, **env),
        cwd=NEUTRAL_CWD,
    )


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


def insert_entries(engine: Engine, keys: list[str], *, expired: bool) -> None:
    """Cache entries under `keys` (any namespace), written a day ago, expired an hour ago or
    valid for another hour: what cleanup and stats are tested on."""
    now = utcnow()
    rows = [
        {
            "cache_key": key,
            "user_id": f"u{i}",
            "data": {"title": "old"},
            "onboarding_hash": "h",
            "created_at": now - timedelta(days=1),
            "updated_at": now - timedelta(days=1),
            "expires_at": now + (timedelta(hours=-1) if expired else timedelta(hours=1)),
            "size_bytes": 100,
        }
        for i, key in enumerate(keys)
    ]
    with engine.begin() as connection:
        connection.execute(insert(ai_coach_cache), rows)


def expire_entries(engine: Engine, *where: Any, ago: timedelta = timedelta(hours=1)) -> None:
    """Make the cache entries matching `where` (all when none) expired `ago`, as time would:
    the entry and the record of its key's fate alike."""
    expired_at = utcnow() - ago
    with engine.begin() as connection:
        keys = connection.execute(select(ai_coach_cache.c.cache_key).where(*where)).scalars().all()
        connection.execute(update(ai_coach_cache).where(*where).values(expires_at=expired_at))
        connection.execute(
            update(cache_entry_fates)
            .where(cache_entry_fates.c.cache_key.in_(keys), cache_entry_fates.c.entry_expires_at.is_not(None))
            .values(entry_expires_at=expired_at)
        )


def count_rows(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def table_counts(engine: Engine) -> tuple[int, int, int]:
    return tuple(count_rows(engine, t) for t in (ai_coach_cache, training_programs, generation_events))  # type: ignore[return-value]


def as_read(markdown: str) -> str:
    """Markdown as a reader sees it: without the escapes and the invisible word joiners that
    keep text from users, the database or the LLM from being read as markup or links."""
    return markdown.replace("\\", "").replace("\u2060", "")
