"""One clock: expiry, cleanup and leases are judged by the database's clock, so app hosts whose
clocks are off (here: real processes run under libfaketime) agree on them; and a lease renewal
held up by a lock still extends the lease from when it is written, or says it was lost."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from core.serving import single_flight
from core.store.db import make_engine, migrate
from core.store.schema import ai_coach_cache, generation_leases, utcnow
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import NEUTRAL_CWD, app_environment, count_rows, expire_entries, insert_entries

FAKETIME = "/usr/bin/faketime"


def cli_with_clock(offset: str, url: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """`python -m core ARGS` on a host whose clock is `offset` off (e.g. "+25h", "-3h")."""
    return subprocess.Popen(
        [FAKETIME, "-f", offset, sys.executable, "-m", "core", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # (libfaketime shifts the monotonic clock too; leaving it alone breaks Python's sleep.)
        env=app_environment(url, **env),
        cwd=NEUTRAL_CWD,
    )


def finished(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


@pytest.mark.process
def test_the_offset_clock_is_real() -> None:
    shown = subprocess.run([FAKETIME, "-f", "+25h", "date", "+%s"], capture_output=True, text=True, check=True)
    assert int(shown.stdout) - time.time() > 24 * 3600


@pytest.mark.process
def test_a_host_a_day_ahead_deletes_no_valid_entry(pg_url: str) -> None:
    engine = make_engine(pg_url)
    insert_entries(engine, [f"program:u{i}:paidfalse:dvalid{i}" for i in range(5)], expired=False)
    insert_entries(engine, ["program:ux:paidfalse:dexpired"], expired=True)
    assert finished(cli_with_clock("+25h", pg_url, "cleanup"))["deleted"] == 1
    assert count_rows(engine, ai_coach_cache) == 5
    engine.dispose()


@pytest.mark.process
def test_a_host_hours_behind_does_not_serve_an_expired_entry(pg_url: str, profile_file: Path) -> None:
    first = finished(cli_with_clock("+0", pg_url, "generate", "--user-id", "u1", "--profile", str(profile_file)))
    engine = make_engine(pg_url)
    expire_entries(engine, ago=timedelta(hours=2))
    engine.dispose()
    again = finished(cli_with_clock("-3h", pg_url, "generate", "--user-id", "u1", "--profile", str(profile_file)))
    assert (again["cache_hit"], again["miss_reason"]) == (False, "expired")
    assert again["training_program_id"] != first["training_program_id"]


@pytest.mark.process
def test_hosts_whose_clocks_differ_by_30_seconds_make_one_llm_call(
    pg_url: str, profile_file: Path, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(delay_seconds=3.0))
    llm = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "GENERATION_LEASE_SECONDS": "15"}
    args = ("generate", "--user-id", "u1", "--profile", str(profile_file))
    # The host behind takes the lease; the one ahead finds it, by its own clock, 15 s past due.
    behind = cli_with_clock("-30s", pg_url, *args, **llm)
    while fake_openai.calls == 0:
        assert behind.poll() is None, behind.communicate()[1].decode()
        time.sleep(0.05)
    ahead = cli_with_clock("+0", pg_url, *args, **llm)
    outcomes = sorted(finished(p)["cache_hit"] for p in (behind, ahead))
    assert outcomes == [False, True]
    assert fake_openai.calls == 1


# A renewal held up by SQLite's write lock, held by another process's connection.

LEASE = 1.5


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path}/coach.db")
    migrate(engine)
    yield engine, tmp_path / "coach.db"
    engine.dispose()


def lease_expiry(engine: Engine) -> Any:
    with engine.connect() as connection:
        return connection.execute(select(generation_leases.c.expires_at)).scalar_one_or_none()


def generating(engine: Engine, seconds: float) -> threading.Thread:
    """A generation of `seconds` under the lease on key "k", in the background."""
    thread = threading.Thread(
        target=single_flight.once,
        args=(engine, "k"),
        kwargs={
            "wait_seconds": 30,
            "from_cache": lambda: None,
            "produce": lambda: time.sleep(seconds),
            "lease_seconds": LEASE,
        },
    )
    thread.start()
    while lease_expiry(engine) is None:
        time.sleep(0.01)
    return thread


def test_a_renewal_held_up_by_a_lock_extends_the_lease_from_when_it_is_written(sqlite_engine: Any) -> None:
    engine, path = sqlite_engine
    worker = generating(engine, 5.0)
    claimed = lease_expiry(engine)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    time.sleep(2 * LEASE)  # the first renewal is due meanwhile, and waits for the lock
    released_at = utcnow()
    lock.execute("COMMIT")
    deadline = time.monotonic() + 2
    while (renewed := lease_expiry(engine)) == claimed and time.monotonic() < deadline:
        time.sleep(0.005)
    # The renewal that waited: valid from when it was written, not from when it was due.
    assert renewed is not None and renewed >= released_at + timedelta(seconds=LEASE * 0.9)
    worker.join()
    lock.close()


def test_a_renewal_that_finds_its_lease_taken_over_says_so(
    sqlite_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine, _path = sqlite_engine
    with caplog.at_level(logging.WARNING, logger="core.serving.single_flight"):
        worker = generating(engine, 2.5)
        # Another instance took the key over (its lease expired while a renewal was held up).
        with engine.begin() as connection:
            connection.execute(update(generation_leases).values(owner="another-instance"))
        worker.join()
    assert any("taken over" in r.getMessage() for r in caplog.records)
