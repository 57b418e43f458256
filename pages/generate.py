"""Generate program: the onboarding questionnaire, then the program, through the cache.

Every answer, the User ID included, lives in one form, so nothing reruns the page until
the coach clicks: a text field that commits on blur would rerun it and drop the click
that caused the blur (streamlit/streamlit#8725, #9363). Enter does not submit; only the
two buttons do. The form and its result are a fragment: a click reruns only them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import streamlit as st
from sqlalchemy.exc import DBAPIError

from core import history
from core.db import describe_db_error
from core.formatting import format_duration
from core.models import EQUIPMENT, EXPERIENCE_LEVELS, GOALS, ContractError
from core.schema import utcnow
from core.service import MISS_REASON_TEXT, GenerationFailed, GenerationResult
from core.single_flight import SingleFlightTimeout
from core.submissions import Submission
from pages.common import (
    database_problem,
    escape_markdown,
    get_database,
    get_engine,
    get_service,
    get_settings,
    render_program,
    unavailable_text,
)

FIELD_LABELS = {
    "user_id": "User ID",
    "goal": "Goal",
    "experience_level": "Experience level",
    "days_per_week": "Days per week",
    "session_minutes": "Session length (minutes)",
    "equipment": "Equipment",
    "age": "Age",
    "injuries": "Injuries or limitations",
    "notes": "Notes",
    "has_paid_access": "Paid access",
}
DEFAULTS: dict[str, Any] = {
    "goal": "general_fitness",
    "experience_level": "beginner",
    "days_per_week": 3,
    "session_minutes": 45,
    "equipment": ["bodyweight"],
    "age": None,
    "injuries": "",
    "notes": "",
    "has_paid_access": False,
}
ANSWERS = [field for field in DEFAULTS if field != "has_paid_access"]


def label(value: str) -> str:
    return value.replace("_", " ").capitalize()


def show_value(field: str, value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(label(v) for v in value) or "–"
    return label(value) if field in ("goal", "experience_level") else str(value)


def load_latest() -> None:
    """The coach asked for the user's latest answers: they replace what the form holds."""
    st.session_state.pop("errors", None)
    user_id = st.session_state.user_id.strip()
    latest = None
    try:
        if user_id:
            checked = get_database().check_user_id(user_id)
            with get_engine().connect() as connection:
                latest = history.latest_answers(connection, checked)
    except ContractError as exc:
        st.session_state.loaded = (user_id, escape_markdown(str(exc)))
        return
    except DBAPIError as exc:
        st.session_state.loaded = (user_id, unavailable_text(describe_db_error(exc)))
        return
    st.session_state.loaded = (user_id, latest)
    if latest is None:
        return
    for field in ANSWERS:
        st.session_state[f"form_{field}"] = latest.onboarding_responses.get(field, DEFAULTS[field])
    st.session_state.form_has_paid_access = latest.has_paid_access


def field_error(field: str) -> None:
    """The error of `field` right under it (errors of fields the form does not show go
    under the User ID)."""
    errors = st.session_state.get("errors", {})
    shown = [field] if field != "user_id" else ["user_id", *(f for f in errors if f not in FIELD_LABELS)]
    for name in shown:
        if name in errors:
            text = f"**{FIELD_LABELS.get(name, name)}**: {escape_markdown(errors[name])}. Nothing was saved."
            st.error(text, icon=":material/error:")


def questionnaire() -> None:
    for field, default in DEFAULTS.items():
        st.session_state.setdefault(f"form_{field}", default)
    with st.form("questionnaire", border=True, enter_to_submit=False):
        id_column, load_column = st.columns([5, 3], vertical_alignment="bottom")
        id_column.text_input(
            "User ID", key="user_id", max_chars=128, placeholder="e.g. client-1042 (letters, digits, . _ @ -)"
        )
        load_column.form_submit_button(
            "Load latest",
            on_click=load_latest,
            help="Replace the answers below with this user's latest ones",
            width="stretch",
        )
        field_error("user_id")
        left, right = st.columns(2)
        with left:
            st.selectbox("Goal", GOALS, format_func=label, key="form_goal")
            field_error("goal")
            st.number_input("Days per week", min_value=1, max_value=7, step=1, key="form_days_per_week")
            field_error("days_per_week")
            st.number_input("Age", min_value=13, max_value=100, step=1, key="form_age", placeholder="Optional")
            field_error("age")
        with right:
            st.selectbox("Experience level", EXPERIENCE_LEVELS, format_func=label, key="form_experience_level")
            field_error("experience_level")
            st.number_input("Session length (minutes)", min_value=15, max_value=180, step=5, key="form_session_minutes")
            field_error("session_minutes")
            st.toggle("Paid access", key="form_has_paid_access")
        st.multiselect("Equipment", EQUIPMENT, format_func=label, key="form_equipment", max_selections=8)
        field_error("equipment")
        st.text_area("Injuries or limitations", max_chars=500, key="form_injuries", placeholder="Optional")
        field_error("injuries")
        st.text_area("Notes", max_chars=1000, key="form_notes", placeholder="Optional")
        field_error("notes")
        st.checkbox("Force refresh", help="Ignore the cache and generate a new program", key="force_refresh")
        st.form_submit_button("Generate program", type="primary", on_click=generate_clicked)


def generate_clicked() -> None:
    """Runs before the page does, so the outcome can be written before the form is."""
    answers = {field: st.session_state[f"form_{field}"] for field in ANSWERS}
    request = {
        "responses": {k: v for k, v in answers.items() if v is not None and v != ""},
        "has_paid_access": st.session_state.form_has_paid_access,
        "force_refresh": st.session_state.force_refresh,
    }
    # A forced refresh is for this click only: left ticked, every later click would pay for
    # a generation. Here, in the callback, is the last moment before the box is drawn again.
    st.session_state.force_refresh = False
    submit(st.session_state.user_id.strip(), request)


def fingerprints(user_id: str, request: dict[str, Any]) -> list[str]:
    """What a click asked for, as the second click of a double click would ask for it. The
    box is unticked by the first click, so the second one may come unticked: an unforced
    click is also the rest of a forced one."""
    alike = [request] if request["force_refresh"] else [request, {**request, "force_refresh": True}]
    return [json.dumps([user_id, r], sort_keys=True, default=str) for r in alike]


def submit(user_id: str, request: dict[str, Any]) -> None:
    """Serve the request the click asked for, unless it is the second click of a double click."""
    current: Submission[GenerationResult] | None = st.session_state.get("submission")
    window = get_settings().double_click_seconds
    if current is not None and any(current.is_repeated_by(f, window) for f in fingerprints(user_id, request)):
        return
    for stale in ("result", "errors", "failure", "loaded"):
        st.session_state.pop(stale, None)
    st.session_state.sent = {**request, "user_id": user_id}
    service, generator, database = get_service(), get_settings().describe_generator(), get_database()

    def work(say: Callable[[str], None]) -> GenerationResult:
        # A database back since the page was drawn gets its pending migrations first.
        database.unavailable()
        return service.generate(
            user_id=user_id,
            onboarding_responses=request["responses"],
            has_paid_access=request["has_paid_access"],
            force_refresh=request["force_refresh"],
            on_generating=lambda reason: say(
                f"**Cache miss** ({MISS_REASON_TEXT[reason]}): {escape_markdown(generator)} is writing the "
                "program, which takes 5-15 s"
            ),
        )

    st.session_state.submission = Submission(fingerprints(user_id, request)[0], work, phase="Checking the cache")


def await_submission() -> None:
    """Wait for the session's request, saying what happens and for how long, then keep its
    outcome for the page. A hit is served before the first progress line would show."""
    submission: Submission[GenerationResult] | None = st.session_state.get("submission")
    if submission is None or st.session_state.get("collected") is submission:
        return
    if not submission.wait(0.1):
        progress = st.empty()
        while not submission.wait(0.25):
            progress.info(
                f"{submission.phase}… {submission.elapsed_seconds():.0f} s so far.", icon=":material/hourglass_top:"
            )
        progress.empty()
    st.session_state.collected = submission
    if submission.error is not None and st.session_state.sent["force_refresh"]:
        # Nothing was served: the refresh the coach asked for is still to be had.
        st.session_state.force_refresh = True
    if isinstance(submission.error, ContractError):
        st.session_state.errors = {e.field.split(".")[0]: e.message for e in reversed(submission.error.errors)}
    elif isinstance(submission.error, (GenerationFailed, SingleFlightTimeout)):
        st.session_state.failure = str(submission.error)
    elif submission.error is not None:
        raise submission.error
    else:
        st.session_state.result = submission.outcome


def show_outcome(result: GenerationResult) -> None:
    saved = f"#{result.training_program_id}" if result.training_program_id else "not saved"
    if result.cache_hit:
        st.success(f"**Cache hit**: served from the cache, no LLM call. Program {saved}.", icon=":material/bolt:")
    else:
        reason = MISS_REASON_TEXT[result.miss_reason] if result.miss_reason else ""
        changed = [FIELD_LABELS.get(f, f) for f in result.changed_fields]
        # "paid access changed" already names its one field.
        detail = f" ({', '.join(changed)})" if changed and result.miss_reason != "access_changed" else ""
        model = escape_markdown(result.model or "the generator")
        st.info(
            f"**Cache miss**: {reason}{detail}. Generated by {model}. Program {saved}.",
            icon=":material/auto_awesome:",
        )
    cols = st.columns(3)
    cols[0].metric("Latency", format_duration(result.latency_ms))
    if result.expires_at:
        left = result.expires_at - utcnow()
        cols[1].metric(
            "Cache entry expires in",
            f"{left.total_seconds() / 3600:.1f} h",
            help=f"At {result.expires_at:%Y-%m-%d %H:%M} UTC",
        )
    else:
        cols[1].metric("Cache entry", "not cached")
    cols[2].metric("Saved as program", saved)
    for warning in result.warnings:
        st.warning(escape_markdown(warning))
    if result.history_error and result.unsaved is not None:
        kept = "The program is shown below; nothing is lost until you leave this page."
        st.error(f"{escape_markdown(result.history_error)} {kept}")
        st.button("Retry saving to history", icon=":material/refresh:", on_click=save_again, args=(result,))
        if st.session_state.pop("save_failed_again", False):
            st.error("Saving failed again; try once more in a moment.")
    st.caption(f"Cache key `{result.cache_key}`")


def save_again(result: GenerationResult) -> None:
    database_problem()
    again = get_service().save_again(result)
    st.session_state.result = again
    st.session_state.save_failed_again = again.history_error is not None


def since_previous(sent: dict[str, Any], result: GenerationResult) -> None:
    """For a returning user: the answers that differ from their previous program, and a link to it."""
    try:
        with get_engine().connect() as connection:
            previous = history.latest_answers(connection, sent["user_id"], except_program=result.training_program_id)
    except DBAPIError:
        return  # the outcome above already says the database is unavailable
    if previous is None:
        return
    changes = history.changed_answers(previous, result.onboarding_responses, sent["has_paid_access"])
    lines = [
        f"- {FIELD_LABELS.get(c.field, c.field)}: {escape_markdown(show_value(c.field, c.before))} → "
        f"{escape_markdown(show_value(c.field, c.after))}"
        for c in changes
    ]
    with st.container(border=True):
        st.markdown("**Since the previous program**" + ("" if lines else ": the same answers"))
        if lines:
            st.markdown("\n".join(lines))
        st.page_link(
            "pages/history.py",
            label=f"Previous program #{previous.program_id} ({previous.created_at:%Y-%m-%d %H:%M} UTC)",
            query_params={"program": str(previous.program_id)},
            icon=":material/history:",
        )


def loaded_note() -> None:
    user_id, latest = st.session_state.loaded
    if isinstance(latest, str):
        st.error(latest, icon=":material/cloud_off:")
    elif latest is None:
        st.info(f"No earlier program for {escape_markdown(user_id) or 'an empty User ID'}: the form is unchanged.")
    else:
        st.info(
            f"Loaded the answers of {escape_markdown(user_id)}'s latest program, "
            f"#{latest.program_id} of {latest.created_at:%Y-%m-%d %H:%M} UTC.",
            icon=":material/download_done:",
        )


@st.fragment
def coach_panel() -> None:
    form_column, result_column = st.columns([5, 7], gap="large")
    # The outcome is written first, so that its badge reaches the browser before the form.
    with result_column:
        await_submission()
        if st.session_state.get("loaded"):
            loaded_note()
        if st.session_state.get("failure"):
            st.error(f"**Generation failed**: {escape_markdown(st.session_state.failure)}", icon=":material/error:")
        if (result := st.session_state.get("result")) is not None:
            sent = st.session_state.sent
            show_outcome(result)
            since_previous(sent, result)
            render_program(result.program, user_id=sent["user_id"], created_at=result.requested_at, key="generated")
        elif not st.session_state.get("errors") and not st.session_state.get("failure"):
            st.info("The program appears here, with whether it came from the cache.", icon=":material/info:")
    with form_column:
        questionnaire()


st.title("Generate program")
st.caption("Fill in the client's onboarding answers. Unchanged answers are served from the cache in milliseconds.")
coach_panel()
