"""Coach Cache: the frame every page shares (navigation and sidebar)."""

import streamlit as st

from pages.common import escape_markdown, get_engine, get_settings

st.set_page_config(page_title="Coach Cache", page_icon=":material/fitness_center:", layout="wide")

settings = get_settings()
get_engine()  # created once per process; applies migrations on start

pages = st.navigation(
    [
        st.Page("pages/generate.py", title="Generate program", icon=":material/fitness_center:", default=True),
        st.Page("pages/history.py", title="Program history", icon=":material/history:"),
        st.Page("pages/monitoring.py", title="Cache monitoring", icon=":material/monitoring:"),
        st.Page("pages/admin.py", title="Cache admin", icon=":material/database:"),
    ]
)

with st.sidebar:
    st.markdown("### Coach Cache")
    st.caption("ADR-049 training program cache")
    st.markdown(f":material/storage: **Database**  \n{escape_markdown(settings.describe_database())}")
    st.markdown(f":material/smart_toy: **Generator**  \n{escape_markdown(settings.describe_generator())}")
    st.markdown(f":material/schedule: **Cache TTL**  \n{settings.cache_ttl_hours:g} h")

pages.run()
