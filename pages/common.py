"""What the pages share: the resources created once per app process, and the program view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from core import logs
from core.contract import handover
from core.contract.models import ContractError
from core.contract.partial_program import ProgramSoFar
from core.formatting import counted, escape_markdown, markdown_code
from core.generators import make_generator, startup_warning
from core.serving.service import ProgramService
from core.settings import Settings
from core.store import rejections
from core.store.db import Database, describe_db_error, make_engine
from core.store.schema import ProgramId
from pages.submissions import Failure, FieldErrors, Rejected


@st.cache_resource
def get_settings() -> Settings:
    return Settings()


@st.cache_resource
def configure_logging() -> None:
    """Once per process: the requests' log lines at LOG_LEVEL, as LOG_FORMAT."""
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)


@st.cache_resource(on_release=Database.dispose)
def get_database() -> Database:
    """Created once per process, whether or not the database answers: its schema is
    brought up to date the first time it does (see `database_problem`)."""
    settings = get_settings()
    return Database(make_engine(settings.database_url), settings.migrations_database_url)


def get_engine() -> Engine:
    return get_database().engine


def database_problem() -> str | None:
    """None when the database can be used (migrating it first if this process has not),
    else what a coach reads: that it is unavailable, where, and what still works."""
    problem = get_database().unavailable()
    return None if problem is None else unavailable_text(problem)


def unavailable_text(problem: str) -> str:
    where = escape_markdown(get_settings().describe_database())
    return (
        f"**The database is unavailable** ({where}): {escape_markdown(problem)}. Programs can still be "
        "generated, but they are not cached or saved to history until it is back."
    )


@st.cache_resource
def get_service() -> ProgramService:
    settings = get_settings()
    return ProgramService.from_settings(settings, database=get_database(), generator=make_generator(settings))


@st.cache_resource
def get_generator_warning() -> str | None:
    return startup_warning(get_service().generator)


def user_filter(label: str, key: str, *, placeholder: str = "All users") -> str | None:
    """A "filter by user" field: None for all users, else the id as the database stores it.
    An id the database could not hold is refused under the field, and the page stops."""
    typed = st.text_input(label, placeholder=placeholder, key=key).strip()
    if not typed:
        return None
    try:
        return get_database().check_user_id(typed)
    except ContractError as exc:
        st.error(escape_markdown(str(exc)), icon=":material/person_off:")
        st.stop()


def auth_enabled() -> bool:
    """Sign-in is on when `.streamlit/secrets.toml` has an [auth] section (Streamlit's OIDC)."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets file at all
        return False


def current_actor() -> str:
    """Who an admin action is recorded as: the signed-in e-mail, or the dashboard itself
    when sign-in is off (the app is then reachable from localhost only)."""
    if auth_enabled() and st.user.is_logged_in:
        return str(st.user.get("email") or "unknown")
    return "dashboard"


def reject_section(
    program_id: ProgramId,
    *,
    key: str,
    rejected: Rejected | None,
    done: Callable[[Rejected], None],
    handed_back: bool = False,
) -> None:
    """The coach's rejection of this program once it is recorded, else the form to reject it
    (`handed_back`: the generator would give this very program again)."""
    if isinstance(rejected, rejections.RejectionOutcome):
        st.success(f"Program #{markdown_code(rejected.training_program_id)} {rejected.text}.", icon=":material/block:")
    else:
        reject_form(program_id, key=key, done=done, refused=rejected, handed_back=handed_back)


# What the reject form says when the generator cannot give another program for these answers.
HANDED_BACK_TEXT = (
    "The generator in use cannot give another program for these answers: after this rejection, "
    "generating again gives this very program, which is then refused, not handed out. "
    "Change an answer (equipment, injuries, goal) for another one."
)


def reject_form(
    program_id: ProgramId,
    *,
    key: str,
    done: Callable[[Rejected], None],
    refused: FieldErrors | Failure | None,
    handed_back: bool = False,
) -> None:
    """ "Reject this program": a reason and an optional note, one form, so that picking them
    reruns nothing and the first click on the button is the one that counts; `done` keeps
    what it came to. A rejection `refused` is said in the form, each problem under its field,
    and the form stays open: a note drawn above it would move it, and the browser would draw
    it anew, folded, hiding the field to correct."""
    errors = refused.errors if isinstance(refused, FieldErrors) else {}
    with (
        st.expander("Reject this program", icon=":material/thumb_down:", expanded=refused is not None),
        st.form(f"reject-{key}", border=False, enter_to_submit=False),
    ):
        # Radio buttons, not a select box: a select box's list, opened while the expander
        # still unfolds, closes by itself when the unfolding scrolls it (5 of 40 quick
        # clicks here); and four reasons are one click each.
        st.radio(
            "Reason",
            rejections.CATEGORIES,
            index=None,
            format_func=lambda category: rejections.CATEGORY_TEXT[category].capitalize(),
            horizontal=True,
            help="Why is it wrong for the client?",
            key=f"reject-{key}-category",
        )
        rejection_errors(errors, ["category"])
        st.text_area("Note", max_chars=rejections.NOTE_MAX_CHARS, placeholder="Optional", key=f"reject-{key}-note")
        rejection_errors(errors, [field for field in errors if field != "category"])
        if isinstance(refused, Failure):
            st.error(f"**Not rejected**: {refused.message}", icon=":material/cloud_off:")
        if handed_back:
            st.warning(HANDED_BACK_TEXT, icon=":material/repeat:")
        st.form_submit_button("Reject", type="primary", on_click=lambda: done(_rejected(program_id, key)))


REJECTION_FIELDS = {"category": "Reason", "note": "Note", "program_id": "Program"}


def _rejected(program_id: ProgramId, key: str) -> Rejected:
    try:
        return rejections.reject(
            get_engine(),
            program_id=program_id,
            category=st.session_state[f"reject-{key}-category"],
            note=st.session_state[f"reject-{key}-note"],
            actor=current_actor(),
        )
    except ContractError as exc:
        return FieldErrors({e.field: e.message for e in exc.errors})
    except DBAPIError as exc:
        return Failure(unavailable_text(describe_db_error(exc)))


def rejection_errors(errors: dict[str, str], fields: list[str]) -> None:
    """What is wrong with `fields`, under the last of them (the note's place also takes the
    errors of fields the form does not show)."""
    for field in fields:
        if field in errors:
            text = f"**{REJECTION_FIELDS.get(field, field)}**: {escape_markdown(errors[field])}. Nothing was recorded."
            st.error(text, icon=":material/error:")


def rejected_note(rejection: rejections.Rejection) -> None:
    """A program a coach rejected, as history shows it."""
    st.warning(
        f"**Rejected** by {markdown_code(rejection.rejected_by)} on {rejection.rejected_at:%Y-%m-%d %H:%M} UTC: "
        f"{escape_markdown(rejection.reason)}",
        icon=":material/block:",
    )


def may_administer() -> bool:
    if not auth_enabled():
        return True
    email = str(st.user.get("email") or "").lower()
    return bool(st.user.is_logged_in and email and email in get_settings().admin_emails)


def render_program(program: dict[str, Any], *, user_id: str, created_at: datetime, key: str) -> None:
    """A program as a coach reads it (what it is, each week's sessions, the safety notes),
    and the files to hand it over."""
    program_heading(program)
    markdown = handover.program_markdown(program, user_id=user_id, created_at=created_at)
    files = [
        ("Download Markdown", markdown, "md", "text/markdown", ":material/description:"),
        ("Download JSON", handover.program_json(program), "json", "application/json", ":material/data_object:"),
    ]
    for column, (label, data, extension, mime, icon) in zip(st.columns(len(files)), files, strict=True):
        column.download_button(
            label,
            data,
            file_name=handover.file_name(user_id, created_at, extension),
            mime=mime,
            key=f"download-{extension}-{key}",
            icon=icon,
            on_click="ignore",
            width="stretch",
        )
    with st.expander("Markdown to copy", icon=":material/content_copy:"):
        st.code(markdown, language="markdown")
    program_weeks(program["weeks"], key=key)
    if program["safety_notes"]:
        st.markdown("**Safety notes**")
        for note in program["safety_notes"]:
            st.markdown(f"- {escape_markdown(note)}")


WRITING_BADGE = ":orange-badge[:material/edit_note: Still being written — not saved yet]"


def render_program_so_far(so_far: ProgramSoFar) -> None:
    """What of a program is complete while the LLM writes it, laid out as the finished one,
    and marked as not the program yet: the finished program replaces it once it is valid
    and saved; if it fails, the error does."""
    st.markdown(WRITING_BADGE)
    program_heading(asdict(so_far))
    if so_far.weeks:
        program_weeks(list(so_far.weeks), key="so-far")


def program_heading(program: dict[str, Any]) -> None:
    """The title, the summary and the line of what the program is, each once it is known
    (a program being written has None for what is still to come)."""
    if program["title"] is not None:
        st.subheader(escape_markdown(program["title"]), anchor=False)
    if program["summary"] is not None:
        st.markdown(escape_markdown(program["summary"]))
    if all(program[name] is not None for name in ("goal", "experience_level", "duration_weeks", "days_per_week")):
        goal = program["goal"].replace("_", " ").capitalize()
        st.markdown(
            f":material/flag: {goal} · :material/signal_cellular_alt: {program['experience_level'].capitalize()} · "
            f":material/calendar_month: {counted(program['duration_weeks'], 'week')} · "
            f":material/event_repeat: {counted(program['days_per_week'], 'day')} a week"
        )


def program_weeks(weeks: list[Any], *, key: str) -> None:
    """One week at a time: a click sends the browser one week's tables, not all of them
    (the Markdown download has every week, to print). Placed directly in a column, the
    weeks would stay on one row and scroll, hiding week 8 without a visible scrollbar."""
    by_number = {week["week"]: week for week in weeks}
    shown = st.segmented_control(
        "Week",
        list(by_number),
        format_func=lambda number: f"Week {number}",
        default=min(by_number),
        required=True,
        key=f"week-{key}-{len(by_number)}",
        label_visibility="collapsed",
        wrap=True,
    )
    week = by_number[shown if shown in by_number else min(by_number)]
    if week["theme"]:
        st.caption(escape_markdown(week["theme"]))
    for session in week["sessions"]:
        focus = escape_markdown(session["focus"])
        st.markdown(
            f"**Day {session['day']} · {focus}** · {session['duration_minutes']} min\n\n"
            + handover.session_table(session)
        )
    guide = handover.exercise_guide([week])
    if guide:
        with st.expander("How to do this week's exercises"):
            st.markdown(guide)
