"""Single-flight across processes: separate app instances (real `python -m core` processes)
sharing one database: a SQLite file, PostgreSQL, or PostgreSQL behind PgBouncer in
transaction pooling mode."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from core.db import make_engine
from core.schema import generation_events, generation_leases
from tests.conftest import Shared
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import PROFILE, start_cli

# Short, so that a killed holder's key is free again soon; renewed every 0.67 s meanwhile.
LEASE_SECONDS = 2.0


def _generate(shared: Shared, profile: Path, fake_openai: FakeOpenAI, user_id: str = "shared-user") -> Any:
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_MODEL": "gpt-test",
        "GENERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        **shared.env(),
    }
    return start_cli(shared.url, "generate", "--user-id", user_id, "--profile", str(profile), "--paid", **env)


def _profile(tmp_path: Path) -> Path:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE))
    return profile


def _scalars(url: str, query: Any) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(query).scalars())
    finally:
        engine.dispose()


def _count_leases(url: str) -> int:
    return int(_scalars(url, select(func.count()).select_from(generation_leases))[0])


def test_four_processes_generating_the_same_profile_make_one_llm_call(
    shared_database: Shared, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # Long enough a generation that all four processes, started together, ask during it.
    fake_openai.reset(Behaviour(delay_seconds=4.0))
    profile = _profile(tmp_path)
    processes = [_generate(shared_database, profile, fake_openai) for _ in range(4)]
    finished = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err.decode() for _, err in finished]
    assert sorted(json.loads(out)["cache_hit"] for out, _ in finished) == [False, True, True, True]
    assert fake_openai.calls == 1
    outcomes = _scalars(shared_database.url, select(generation_events.c.outcome))
    assert sorted(outcomes) == ["hit", "hit", "hit", "miss"]
    # The lease went with the generation.
    assert _count_leases(shared_database.url) == 0


def test_a_holder_killed_mid_generation_blocks_its_key_no_longer_than_its_lease(
    shared_database: Shared, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reset(Behaviour(delay_seconds=120.0))
    profile = _profile(tmp_path)
    holder = _generate(shared_database, profile, fake_openai)
    deadline = time.monotonic() + 30
    while _count_leases(shared_database.url) == 0 or fake_openai.calls == 0:
        assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()[1].decode()
        time.sleep(0.1)
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    fake_openai.reset(Behaviour())
    killed_at = time.monotonic()
    successor = _generate(shared_database, profile, fake_openai)
    out, err = successor.communicate(timeout=60)
    waited = time.monotonic() - killed_at
    assert successor.returncode == 0, err.decode()
    assert json.loads(out)["cache_hit"] is False
    assert fake_openai.calls == 1
    # The lease, plus a process's start and its polls: far below the generation's 120 s.
    assert waited < LEASE_SECONDS + 10, f"the key stayed blocked {waited:.1f} s after its holder died"
