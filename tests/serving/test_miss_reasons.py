"""Why a miss is a miss: what happened to this key's entry first, recorded when it happened;
a comparison with the user's previous program only for a key that never had an entry."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from sqlalchemy import delete, update

from core.operations import admin
from core.serving.miss_reasons import MISS_REASON_TEXT, MISS_REASONS, Lookup, MissReason, miss_reason
from core.serving.service import ProgramService
from core.store.db import make_engine
from core.store.entries import CacheEntry
from core.store.fates import Fate, KeyRecord
from core.store.schema import ai_coach_cache, generation_events, generation_stats_hourly, utcnow
from testkit.counting import CountingGenerator
from tests.conftest import CliRun, Faults
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import PROFILE, expire_entries

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
EXPIRED_ENTRY = CacheEntry(None, None, expires_at=NOW - HOUR, created_at=NOW - 25 * HOUR, updated_at=NOW - 25 * HOUR)
VALID_ENTRY = CacheEntry(None, None, NOW + HOUR, NOW - HOUR, NOW - HOUR, valid=True)
WRITTEN_EXPIRED = KeyRecord("written", NOW - 25 * HOUR, entry_expires_at=NOW - HOUR)
WRITTEN_VALID = KeyRecord("written", NOW - HOUR, entry_expires_at=NOW + 23 * HOUR)
DAYS = ("days_per_week",)
PAID = ("has_paid_access",)

# (what the lookup found, the key's record, the fields changed since the user's previous
# program or None when there is none) -> the reason and the fields it names.
CASES: dict[str, tuple[Lookup, KeyRecord | None, tuple[str, ...] | None, MissReason, tuple[str, ...]]] = {
    "read failed": (Lookup(failed=True), WRITTEN_VALID, DAYS, "cache_unavailable", ()),
    "invalid entry": (Lookup(VALID_ENTRY, invalid=True), WRITTEN_VALID, None, "invalid_entry", ()),
    "another generator's entry": (Lookup(VALID_ENTRY, generator_changed=True), None, None, "generator_changed", ()),
    "expired entry": (Lookup(EXPIRED_ENTRY), WRITTEN_EXPIRED, None, "expired", ()),
    "expired entry, answers changed since": (Lookup(EXPIRED_ENTRY), WRITTEN_EXPIRED, DAYS, "expired", ()),
    "expired entry, access changed since": (Lookup(EXPIRED_ENTRY), WRITTEN_EXPIRED, PAID, "expired", ()),
    "expired entry with no record": (Lookup(EXPIRED_ENTRY), None, DAYS, "expired", ()),
    "expired entry, its rewrite failed": (
        Lookup(EXPIRED_ENTRY),
        KeyRecord("not_cached", NOW - HOUR),
        None,
        "not_cached",
        (),
    ),
    "expired entry, a failed write older than it": (
        Lookup(EXPIRED_ENTRY),
        KeyRecord("not_cached", NOW - 30 * HOUR),
        None,
        "expired",
        (),
    ),
    "invalidated, answers changed since": (
        Lookup(),
        KeyRecord("invalidated", NOW - HOUR, NOW + HOUR, "admin@example.com"),
        DAYS,
        "invalidated",
        (),
    ),
    "rejected by a coach, answers changed since": (
        Lookup(),
        KeyRecord("rejected", NOW - HOUR, NOW + HOUR, "coach@example.com"),
        DAYS,
        "rejected",
        (),
    ),
    "removed by cleanup, answers changed since": (
        Lookup(),
        KeyRecord("expired", NOW - HOUR, NOW - 2 * HOUR, "cli"),
        DAYS,
        "expired",
        (),
    ),
    "written, expired, gone": (Lookup(), WRITTEN_EXPIRED, PAID, "expired", ()),
    "written, gone before its time": (Lookup(), WRITTEN_VALID, None, "removed", ()),
    "its write failed": (Lookup(), KeyRecord("not_cached", NOW - HOUR), DAYS, "not_cached", ()),
    "never had an entry, no previous program": (Lookup(), None, None, "first_generation", ()),
    "never had an entry, access changed": (Lookup(), None, PAID, "access_changed", PAID),
    "never had an entry, answers changed": (Lookup(), None, ("age", *DAYS), "profile_changed", ("age", *DAYS)),
    "never had an entry, both changed": (
        Lookup(),
        None,
        (*DAYS, *PAID),
        "profile_changed",
        (*DAYS, *PAID),
    ),
    "no record, the same answers as before": (Lookup(), None, (), "expired", ()),
}


@pytest.mark.parametrize("case", CASES)
def test_the_reason_for_a_key_comes_from_its_records_first(case: str) -> None:
    lookup, record, changed, reason, fields = CASES[case]
    got = miss_reason(forced=False, lookup=lookup, record=record, changed_since_previous=changed, now=NOW)
    assert got == (reason, fields)


@pytest.mark.parametrize("case", CASES)
def test_a_forced_refresh_is_a_forced_refresh_whatever_happened(case: str) -> None:
    lookup, record, changed, *_ = CASES[case]
    got = miss_reason(forced=True, lookup=lookup, record=record, changed_since_previous=changed, now=NOW)
    assert got == ("forced_refresh", ())


# The same sequences for real, through `python -m core` (in process), on both databases.

A, B = PROFILE, {**PROFILE, "days_per_week": PROFILE["days_per_week"] + 1}
USER = "coach-client-7"


class Operator:
    """A coach's requests and an operator's commands, through the CLI, on one database."""

    def __init__(self, cli: Callable[..., CliRun], database_url: str, tmp_path: Path, between: str) -> None:
        self.cli, self.url, self.between = cli, database_url, between
        self.files: dict[str, Path] = {}
        for name, profile in (("a", A), ("b", B)):
            self.files[name] = tmp_path / f"{name}.json"
            self.files[name].write_text(json.dumps(profile))

    def generate(self, profile: str, *, paid: bool = False, **env: str) -> dict[str, Any]:
        args = ["generate", "--user-id", USER, "--profile", str(self.files[profile])]
        return self.cli(self.url, *args, *(["--paid"] if paid else []), **env).json()

    def run(self, *args: str) -> dict[str, Any]:
        return self.cli(self.url, *args).json()

    def expire(self, key: str, *, record_too: bool = True) -> None:
        """The entry under `key` expires, as time would (and with it its key's record, unless
        only the row was changed, by hand)."""
        engine = make_engine(self.url)
        where = ai_coach_cache.c.cache_key == key
        if record_too:
            expire_entries(engine, where)
        else:
            with engine.begin() as connection:
                connection.execute(update(ai_coach_cache).where(where).values(expires_at=utcnow() - HOUR))
        engine.dispose()

    def meanwhile(self) -> None:
        """What may happen before the next request without changing its reason: cleanup, and
        the request log rolled up and pruned."""
        if self.between == "nothing":
            return
        self.run("cleanup")
        if self.between == "cleanup, log pruned":
            self.run("rollup")
            engine = make_engine(self.url)
            with engine.begin() as connection:
                connection.execute(delete(generation_events))
                connection.execute(delete(generation_stats_hourly))
            engine.dispose()


@pytest.fixture(params=["nothing", "cleanup", "cleanup, log pruned"])
def operator(request: pytest.FixtureRequest, cli: Callable[..., CliRun], database_url: str, tmp_path: Path) -> Operator:
    return Operator(cli, database_url, tmp_path, request.param)


def reason(result: dict[str, Any]) -> tuple[bool, str | None, list[str]]:
    return result["cache_hit"], result["miss_reason"], result["changed_fields"]


def test_an_invalidated_entry_says_invalidated_though_the_answers_changed_since(operator: Operator) -> None:
    assert reason(operator.generate("a")) == (False, "first_generation", [])
    assert reason(operator.generate("b")) == (False, "profile_changed", ["days_per_week"])
    assert operator.run("invalidate", "--user-id", USER)["deleted"] == 2
    operator.meanwhile()
    assert reason(operator.generate("a")) == (False, "invalidated", [])
    assert reason(operator.generate("b")) == (False, "invalidated", [])
    assert reason(operator.generate("a")) == (True, None, [])


def test_an_expired_entry_says_expired_though_the_answers_changed_since(operator: Operator) -> None:
    first = operator.generate("a")
    operator.generate("b")
    operator.expire(first["cache_key"])
    operator.meanwhile()
    assert reason(operator.generate("a")) == (False, "expired", [])


def test_an_expired_entry_says_expired_though_the_access_changed_since(operator: Operator) -> None:
    unpaid = operator.generate("a")
    assert reason(operator.generate("a", paid=True)) == (False, "access_changed", ["has_paid_access"])
    operator.expire(unpaid["cache_key"])
    operator.meanwhile()
    assert reason(operator.generate("a")) == (False, "expired", [])


def test_a_failed_generation_does_not_change_why_there_is_no_entry(operator: Operator, fake_openai: FakeOpenAI) -> None:
    llm = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "LLM_MAX_RETRIES": "0"}
    first = operator.generate("a", **llm)
    operator.expire(first["cache_key"])
    fake_openai.reset(Behaviour(mode="status"))
    failed = operator.cli(operator.url, "generate", "--user-id", USER, "--profile", str(operator.files["a"]), **llm)
    assert failed.code == 1 and "Nothing was cached or saved" in failed.stderr
    fake_openai.reset()
    operator.meanwhile()
    assert reason(operator.generate("a", **llm)) == (False, "expired", [])


def test_what_cleanup_removed_had_expired_whatever_its_expiry_was_when_written(operator: Operator) -> None:
    first = operator.generate("a")
    operator.expire(first["cache_key"], record_too=False)  # the row's expiry changed by hand
    operator.meanwhile()
    assert reason(operator.generate("a")) == (False, "expired", [])


def test_a_key_whose_write_failed_says_so_after_cleanup_and_other_answers(faults: Faults) -> None:
    service = ProgramService(engine=faults.engine, generator=CountingGenerator())
    faults.deny("ai_coach_cache", "INSERT", "UPDATE")
    assert service.generate(user_id=USER, onboarding_responses=A, has_paid_access=False).expires_at is None
    faults.allow("ai_coach_cache", "INSERT", "UPDATE")
    admin.delete_expired_entries(faults.engine, actor="test")
    assert service.generate(user_id=USER, onboarding_responses=B, has_paid_access=False).miss_reason == (
        "profile_changed"
    )
    again = service.generate(user_id=USER, onboarding_responses=A, has_paid_access=False)
    assert (again.cache_hit, again.miss_reason) == (False, "not_cached")


def _entry_changes() -> list[tuple[str, str]]:
    """Where core/ builds an INSERT, UPDATE or DELETE of `ai_coach_cache` (module, verb)."""
    root = Path(__file__).parents[2]
    found = []
    for path in sorted((root / "core").rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args and ast.unparse(node.args[0]) == "ai_coach_cache"):
                continue
            verb = ast.unparse(node.func).rsplit(".", 1)[-1]
            if verb in ("insert", "update", "delete"):
                found.append((path.relative_to(root).as_posix(), verb))
    return found


def test_every_change_of_an_entry_goes_through_the_two_functions_that_record_its_fate() -> None:
    # entries.write_entry (an upsert: the INSERT, per dialect) and entries._remove (every
    # deletion) record the key's fate in the same transaction; no other code changes an entry.
    assert _entry_changes() == [("core/store/entries.py", "insert"), ("core/store/entries.py", "delete")]


def test_every_miss_reason_has_the_text_a_coach_reads_and_every_fate_but_written_is_a_reason() -> None:
    assert set(MISS_REASON_TEXT) == set(MISS_REASONS)
    assert all(text and text[0].islower() for text in MISS_REASON_TEXT.values())
    # miss_reason hands a key's recorded fate on as the reason: the page must have its text.
    assert set(get_args(Fate)) - {"written"} <= set(MISS_REASONS)
