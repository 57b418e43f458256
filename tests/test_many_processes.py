"""Single-flight across processes: separate app instances (real `python -m core` processes)
sharing one PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from core.db import make_engine
from core.schema import generation_events
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import PROFILE, start_cli


def test_four_processes_generating_the_same_profile_make_one_llm_call(
    pg_url: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # Long enough a generation that all four processes, started together, ask during it.
    fake_openai.reset(Behaviour(delay_seconds=4.0))
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE))
    openai = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MODEL": "gpt-test"}
    processes = [
        start_cli(pg_url, "generate", "--user-id", "shared-user", "--profile", str(profile), "--paid", **openai)
        for _ in range(4)
    ]
    finished = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err.decode() for _, err in finished]
    assert sorted(json.loads(out)["cache_hit"] for out, _ in finished) == [False, True, True, True]
    assert fake_openai.calls == 1
    engine = make_engine(pg_url)
    with engine.connect() as connection:
        outcomes = sorted(connection.execute(select(generation_events.c.outcome)).scalars())
    engine.dispose()
    assert outcomes == ["hit", "hit", "hit", "miss"]
