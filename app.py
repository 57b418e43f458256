"""Coach Cache: the frame every page shares (navigation and sidebar)."""

import streamlit as st
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from core.formatting import markdown_code
from core.settings import describe_configuration_error
from core.store import waits
from core.store.db import describe_db_error
from pages.common import (
    auth_enabled,
    configure_logging,
    current_actor,
    database_problem,
    escape_markdown,
    get_generator_warning,
    get_service,
    get_settings,
    unavailable_text,
)

st.set_page_config(page_title="Coach Cache", page_icon=":material/fitness_center:", layout="wide")


def sidebar() -> None:
    settings = get_settings()
    with st.sidebar:
        st.markdown("### Coach Cache")
        st.caption("ADR-049 training program cache")
        st.markdown(f":material/storage: **Database**  \n{escape_markdown(settings.describe_database())}")
        identity = get_service().generator.identity
        st.markdown(
            # In a code span: the server's URL is copied as it is, and never made a link.
            f":material/smart_toy: **Generator**  \n{markdown_code(settings.describe_generator())}  \n"
            f"model {markdown_code(identity.model)} · version {markdown_code(identity.version)}"
        )
        if warning := get_generator_warning():
            st.warning(escape_markdown(warning), icon=":material/warning:")
        st.markdown(f":material/schedule: **Cache TTL**  \n{settings.cache_ttl_hours:g} h")
        if auth_enabled():
            st.markdown(f":material/person: **Signed in**  \n{markdown_code(current_actor())}")
            st.button("Sign out", on_click=st.logout, icon=":material/logout:")


try:
    get_settings()
except ValidationError as exc:
    st.error(escape_markdown(describe_configuration_error(exc)), icon=":material/settings:")
    st.stop()
configure_logging()

signed_out = auth_enabled() and not st.user.is_logged_in
if signed_out:
    # The only page there is until sign-in: every URL lands here.
    pages = st.navigation([st.Page("pages/sign_in.py", title="Sign in", icon=":material/login:")], position="hidden")
else:
    pages = st.navigation(
        [
            st.Page("pages/generate.py", title="Generate program", icon=":material/fitness_center:", default=True),
            st.Page("pages/history.py", title="Program history", icon=":material/history:"),
            st.Page("pages/monitoring.py", title="Cache monitoring", icon=":material/monitoring:"),
            st.Page("pages/admin.py", title="Cache admin", icon=":material/database:"),
        ]
    )

if not signed_out:
    sidebar()
    # Checked on every page view: the first one after the database is back migrates it.
    # It waits no longer than a request may: a held lock or a stalled server costs a page
    # view DATABASE_WAIT_SECONDS, and the page says the database is unavailable meanwhile.
    with waits.request_budget(get_settings().database_wait_seconds):
        problem = database_problem()
    if problem:
        st.error(problem, icon=":material/cloud_off:")
try:
    pages.run()
except DBAPIError as exc:  # the database went away under a page
    st.error(unavailable_text(describe_db_error(exc)), icon=":material/cloud_off:")
