"""Program history: every program handed out, newest first, filtered and paginated in SQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import partial

import pandas as pd
import streamlit as st

from core.formatting import escape_markdown, format_duration, markdown_code
from core.store import history, rejections
from core.store.history import HistoryFilter, ProgramRow
from core.store.schema import ProgramId
from pages.common import get_engine, reject_section, rejected_note, render_program, user_filter
from pages.submissions import Rejected

PAGE_SIZE = 50
# The coach's last click on "Reject" on this page: which program, and what it came to.
REJECTION = "history_rejection"
# A source shown in words where its value alone would not say it.
SOURCE_LABELS = {"budget": "budget (offline: LLM budget spent)"}


def source_label(source: str | None) -> str:
    return SOURCE_LABELS.get(source, source) if source else "–"


def read_filter() -> HistoryFilter:
    """The filters as last applied. They are one form, so the rows shown, and the Export CSV
    bound to them, change only when "Apply filters" (or Enter in the user field) sends them
    all at once: a filter typed just before a click on Export is not half applied, shown but
    left out of the file (a download button cannot be part of a form)."""
    with st.form("history_filters", border=False):
        cols = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
        # The user field is made last, though shown first: a refused user id stops the page,
        # and the form must still have its other filters and its button, to be applied with
        # the corrected id.
        cols[3].form_submit_button("Apply filters", icon=":material/filter_alt:", width="stretch")
        today = datetime.now(UTC).date()
        span = cols[1].date_input("Date range (UTC)", value=(today - timedelta(days=30), today), key="history_dates")
        source = cols[2].selectbox(
            "Source",
            (None, *history.SOURCES),
            format_func=lambda s: source_label(s) if s else "All",
            key="history_source",
        )
        with cols[0]:
            user_id = user_filter("User", key="history_user", placeholder="All users, or an ID's beginning")
    days: tuple[date, ...] = span if isinstance(span, tuple) else (span,) if span else ()
    return HistoryFilter.from_form(user_id=user_id or "", days=days, source=source)


def table(
    rows: list[ProgramRow],
    rejected: dict[ProgramId, rejections.Rejection],
    recalled: dict[ProgramId, history.RecallNote],
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ID": [r.id for r in rows],
            "Created (UTC)": [r.created_at.strftime("%Y-%m-%d %H:%M:%S") for r in rows],
            "User": [r.user_id for r in rows],
            "Source": [source_label(r.source) for r in rows],
            "Paid": [r.has_paid_access for r in rows],
            "Latency": ["–" if r.latency_ms is None else format_duration(r.latency_ms) for r in rows],
            "Model": [r.model or "–" for r in rows],
            "Rejected": [rejected[r.id].reason if r.id in rejected else "" for r in rows],
            "Recalled": [recalled[r.id].reason if r.id in recalled else "" for r in rows],
        }
    )


def show_program(requested: str) -> None:
    """The program `?program=ID` names, or a plain word that there is none."""
    st.divider()
    row = history.get_program(get_engine(), requested)
    if row is None or row.program is None:
        st.warning(f"There is no program #{markdown_code(requested)}.", icon=":material/search_off:")
        return
    source = markdown_code(row.source) if row.source else "not from Coach Cache"
    st.caption(f"Program #{row.id} for {markdown_code(row.user_id)}, {source}, {row.created_at:%Y-%m-%d %H:%M} UTC")
    if row.source == "budget":
        st.info(
            "Made by the offline coach because the LLM budget was spent (LLM_DAILY_BUDGET_USD or "
            "LLM_MONTHLY_BUDGET_USD); an LLM program replaces it once the budget allows.",
            icon=":material/savings:",
        )
    if not history.in_coach_cache_format(row):
        st.info("This program was not written by Coach Cache; it is shown as stored.", icon=":material/info:")
        st.json(row.program)
        return
    if (recalled := history.recalls_of(get_engine(), [row.id]).get(row.id)) is not None:
        st.error(
            f"**Recalled** by {markdown_code(recalled.recalled_by)} on {recalled.recalled_at:%Y-%m-%d %H:%M} UTC: "
            f"{escape_markdown(recalled.reason)}. Do not use this program.",
            icon=":material/report:",
        )
    rejection = rejections.rejections_of(get_engine(), [row.id]).get(row.id)
    if rejection is not None:
        rejected_note(rejection)
    last: tuple[str, Rejected] | None = st.session_state.get(REJECTION)
    just = last[1] if last and last[0] == str(row.id) else None
    if rejection is None or just is not None:  # once rejected, what that click did, no form

        def remember(rejected: Rejected) -> None:
            st.session_state[REJECTION] = (str(row.id), rejected)

        reject_section(row.id, key=f"history-{row.id}", rejected=just, done=remember)
    render_program(row.program, user_id=row.user_id, created_at=row.created_at, key=f"history-{row.id}")


st.title("Program history")
st.caption("Every program handed out to a coach, from the LLM or the cache, newest first.")
flt = read_filter()
if st.session_state.get("history_filter") != flt:
    st.session_state.history_filter = flt
    st.session_state.history_cursors = [None]  # cursor of each page visited, for "Previous"

cursors = st.session_state.history_cursors
page = history.list_programs(get_engine(), flt, after=cursors[-1], page_size=PAGE_SIZE)

if not page.rows:
    st.info("No programs match these filters yet. Generate one on the **Generate program** page.")
else:
    selection = st.dataframe(
        table(
            page.rows,
            rejections.rejections_of(get_engine(), [r.id for r in page.rows]),
            history.recalls_of(get_engine(), [r.id for r in page.rows]),
        ),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key=f"history_table_{len(cursors)}",
    )
    nav = st.columns([1, 1, 4, 2])
    if nav[0].button("Previous", disabled=len(cursors) == 1, icon=":material/chevron_left:"):
        cursors.pop()
        st.rerun()
    if nav[1].button("Next", disabled=page.next_cursor is None, icon=":material/chevron_right:"):
        cursors.append(page.next_cursor)
        st.rerun()
    nav[2].caption(f"Page {len(cursors)} · {PAGE_SIZE} per page")
    nav[3].download_button(
        "Export CSV",
        # Run on click, outside this script run: the engine and the filters shown are bound now.
        partial(history.export_csv, get_engine(), flt),
        file_name="training_programs.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
    )
    if selection.selection.rows:
        # The URL names the program shown, so a coach can send it to a colleague.
        st.query_params["program"] = str(page.rows[selection.selection.rows[0]].id)
    elif "program" not in st.query_params:
        st.caption("Select a row to see the full program.")
if "program" in st.query_params:
    show_program(st.query_params["program"])
