"""Issue 19: the rules the history and admin pages used to decide for themselves live in
core, once: which programs are Coach Cache's, and which user ids the database can hold."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core.contract.models import ContractError, OnboardingResponses
from core.generators.offline import build_program
from core.operations import admin
from core.store.db import Database, make_engine
from core.store.history import ProgramRow, in_coach_cache_format
from core.store.schema import utcnow
from testkit.pg_server import PostgresServer
from tests.conftest import CliRun
from tests.helpers import PROFILE, as_read
from tests.store.test_adoption import SUPABASE_TABLES, USER, ProductDatabase


def test_whether_a_program_is_coach_caches_is_decided_in_core() -> None:
    def row(program: dict[str, Any] | None) -> ProgramRow:
        return ProgramRow(1, "u", utcnow(), None, None, None, None, None, program=program)

    ours = build_program(OnboardingResponses.model_validate(PROFILE), has_paid_access=False)
    assert in_coach_cache_format(row(ours))
    # The product's own programs, in an adopted table, are shown as stored.
    assert not in_coach_cache_format(row({"name": "Legacy plan", "days": 3}))
    assert not in_coach_cache_format(row({**ours, "weeks": "four"}))
    assert not in_coach_cache_format(row(None))


NOT_A_UUID = "coach-client-7"
UUID_RULE = "user_id: must be a UUID: this database stores user ids as uuid"


@pytest.fixture
def supabase(pg: PostgresServer) -> Iterator[ProductDatabase]:
    """The product's tables with uuid user ids, adopted, and one program entry of USER."""
    database = ProductDatabase(pg, SUPABASE_TABLES)
    adopted = Database(make_engine(database.url))
    adopted.ensure_schema()
    adopted.dispose()
    database.run(
        "INSERT INTO ai_coach_cache (user_id, cache_key, data, expires_at) VALUES"
        f" ('{USER}', 'program:u{USER}:paidfalse:dx', '{{}}', now() + interval '1 hour')"
    )
    yield database
    pg.admin(f"DROP DATABASE {database.name} WITH (FORCE)")


def program_entries(database: ProductDatabase) -> int:
    [(count,)] = database.run("SELECT count(*) FROM ai_coach_cache WHERE cache_key LIKE 'program:%'")
    return count


def test_invalidation_checks_the_user_id_by_the_databases_rule(supabase: ProductDatabase) -> None:
    database = Database(make_engine(supabase.url))
    database.ensure_schema()
    try:
        with pytest.raises(ContractError, match="must be a UUID"):
            # Not a statement PostgreSQL refuses (a uuid column compared with this text).
            admin.invalidate_user(database.engine, actor="t", user_id=NOT_A_UUID, user_id_check=database.check_user_id)
        assert supabase.run("SELECT count(*) FROM admin_actions") == [(0,)]
        # The same user in capitals is the same user: deleted, and recorded as stored.
        removal = admin.invalidate_user(
            database.engine, actor="t", user_id=USER.upper(), user_id_check=database.check_user_id
        )
    finally:
        database.dispose()
    assert removal.deleted == 1 and program_entries(supabase) == 0
    assert supabase.run("SELECT target FROM admin_actions") == [(USER,)]


def test_the_admin_page_and_the_cli_refuse_a_user_id_the_same_way(
    supabase: ProductDatabase, app_test: Callable[..., AppTest], cli: Callable[..., CliRun]
) -> None:
    app = app_test(supabase.url).run()
    app.switch_page("pages/admin.py").run()
    app.text_input(key="invalidate_user").set_value(NOT_A_UUID)  # in a form: sent with the click
    next(b for b in app.button if b.label == "Invalidate").click().run()
    [shown] = [as_read(e.value) for e in app.error]
    assert not [b for b in app.button if b.label == "Yes, invalidate"]

    done = cli(supabase.url, "invalidate", "--user-id", NOT_A_UUID)
    assert done.code == 2 and done.stdout == ""
    assert shown == f"invalid user id: {UUID_RULE}" and done.stderr.strip().endswith(shown)
    assert program_entries(supabase) == 1
    assert supabase.run("SELECT count(*) FROM admin_actions") == [(0,)]
