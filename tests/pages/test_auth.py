"""Optional sign-in (Streamlit OIDC): tested with AppTest's user simulation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from core.store.schema import admin_actions
from tests.helpers import as_read, expire_entries
from tests.pages.test_pages import fill, submit

AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "test-cookie-secret",
    "client_id": "coach-cache",
    "client_secret": "test-client-secret",
    "server_metadata_url": "https://login.example.invalid/.well-known/openid-configuration",
}
PAGES = ["pages/generate.py", "pages/history.py", "pages/monitoring.py", "pages/admin.py"]


@pytest.fixture
def signed_app(tmp_path: Path, app_test: Callable[..., AppTest]) -> AppTest:
    app = app_test(f"sqlite:///{tmp_path}/coach.db", ADMIN_EMAILS="Ops.Lead@example.com, second@example.com")
    app.secrets["auth"] = AUTH
    return app


@pytest.mark.parametrize("page", PAGES)
def test_no_page_is_reachable_without_signing_in(signed_app: AppTest, page: str) -> None:
    signed_app.user = {"is_logged_in": False}
    signed_app.run()
    with pytest.raises(ValueError, match=r"Known pages: \['[^,]*sign_in.py'\]"):
        signed_app.switch_page(page)  # the page is not registered for a signed-out session
    assert [t.value for t in signed_app.title] == ["Coach Cache"]
    assert [b.label for b in signed_app.button] == ["Sign in"]
    assert not signed_app.sidebar.markdown  # not even which database or generator


def test_a_signed_in_coach_uses_the_app_but_cannot_run_admin_actions(signed_app: AppTest) -> None:
    signed_app.user = {"is_logged_in": True, "email": "coach@example.com", "name": "Coach"}
    signed_app.run()
    submit(fill(signed_app))
    assert "Cache miss" in signed_app.info[0].value
    signed_app.switch_page("pages/admin.py").run()
    assert "limited to the admin e-mails" in signed_app.warning[0].value
    assert next(b for b in signed_app.button if b.label == "Delete expired entries").disabled
    assert next(b for b in signed_app.button if b.label == "Invalidate").disabled


def test_an_admin_cleanup_is_recorded_with_their_email(signed_app: AppTest, app_engine: Engine) -> None:
    signed_app.user = {"is_logged_in": True, "email": "ops.lead@example.com"}
    signed_app.run()
    assert "ops.lead@example.com" in as_read(" ".join(m.value for m in signed_app.sidebar.markdown))
    submit(fill(signed_app))
    engine = app_engine
    expire_entries(engine)
    signed_app.switch_page("pages/admin.py").run()
    next(b for b in signed_app.button if b.label == "Delete expired entries").click().run()
    signed_app.button(key="cleanup_yes").click().run()
    with engine.connect() as connection:
        action = connection.execute(select(admin_actions)).one()
    assert (action.actor, action.action, action.rows_affected) == ("ops.lead@example.com", "cleanup", 1)
