"""Generate program: the onboarding questionnaire, then the program, through the cache."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import streamlit as st
from sqlalchemy.exc import DBAPIError

from core import history
from core.models import EQUIPMENT, EXPERIENCE_LEVELS, GOALS, ContractError
from core.schema import utcnow
from core.service import GenerationFailed, GenerationResult
from core.single_flight import SingleFlightTimeout
from pages.common import escape_markdown, format_duration, get_engine, get_service, get_settings, render_program

MISS_REASONS = {
    "first_generation": "first program for this user",
    "expired": "the cached program had expired",
    "profile_changed": "the profile changed",
    "access_changed": "paid access changed",
    "forced_refresh": "a refresh was forced",
    "cache_unavailable": "the cache could not be read",
    "invalid_entry": "the cached program no longer passed validation",
}
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


def label(value: str) -> str:
    return value.replace("_", " ").capitalize()


def prefill_from_history() -> None:
    """Choosing a user who already has programs fills in their latest answers."""
    user_id = st.session_state.user_id.strip()
    latest = history.latest_profile(get_engine(), user_id) if user_id else None
    answers, paid = latest if latest else ({}, DEFAULTS["has_paid_access"])
    for field, default in DEFAULTS.items():
        st.session_state[f"form_{field}"] = answers.get(field, default)
    st.session_state.form_has_paid_access = paid
    st.session_state.prefilled = bool(latest)


def questionnaire() -> dict[str, Any] | None:
    for field, default in DEFAULTS.items():
        st.session_state.setdefault(f"form_{field}", default)
    with st.form("questionnaire", border=True):
        left, right = st.columns(2)
        left.selectbox("Goal", GOALS, format_func=label, key="form_goal")
        right.selectbox("Experience level", EXPERIENCE_LEVELS, format_func=label, key="form_experience_level")
        left.number_input("Days per week", min_value=1, max_value=7, step=1, key="form_days_per_week")
        right.number_input("Session length (minutes)", min_value=15, max_value=180, step=5, key="form_session_minutes")
        st.multiselect("Equipment", EQUIPMENT, format_func=label, key="form_equipment", max_selections=8)
        left.number_input("Age", min_value=13, max_value=100, step=1, key="form_age", placeholder="Optional")
        right.toggle("Paid access", key="form_has_paid_access")
        st.text_area("Injuries or limitations", max_chars=500, key="form_injuries", placeholder="Optional")
        st.text_area("Notes", max_chars=1000, key="form_notes", placeholder="Optional")
        force = st.checkbox("Force refresh", help="Ignore the cache and generate a new program", key="force_refresh")
        if not st.form_submit_button("Generate program", type="primary"):
            return None
    answers = {f: st.session_state[f"form_{f}"] for f in DEFAULTS if f != "has_paid_access"}
    return {
        "responses": {k: v for k, v in answers.items() if v is not None and v != ""},
        "has_paid_access": st.session_state.form_has_paid_access,
        "force_refresh": force,
    }


def run_generation(user_id: str, request: dict[str, Any]) -> None:
    st.session_state.pop("result", None)
    generator = get_settings().describe_generator()
    try:
        with st.spinner(f"Checking the cache, then generating with {generator} if needed (a generation takes 5-15 s)…"):
            result = get_service().generate(
                user_id=user_id,
                onboarding_responses=request["responses"],
                has_paid_access=request["has_paid_access"],
                force_refresh=request["force_refresh"],
            )
    except ContractError as exc:
        st.session_state.errors = [(FIELD_LABELS.get(e.field.split(".")[0], e.field), e.message) for e in exc.errors]
        return
    except (GenerationFailed, SingleFlightTimeout) as exc:
        st.session_state.failure = str(exc)
        return
    st.session_state.result = result


def show_outcome(result: GenerationResult) -> None:
    if result.cache_hit:
        st.success("**Cache hit**: served from the cache, no LLM call.", icon=":material/bolt:")
    else:
        reason = MISS_REASONS.get(result.miss_reason or "", result.miss_reason or "")
        changed = [FIELD_LABELS.get(f, f) for f in result.changed_fields]
        detail = f" ({', '.join(changed)})" if changed else ""
        model = escape_markdown(result.model or "the generator")
        st.info(f"**Cache miss**: {reason}{detail}. Generated by {model}.", icon=":material/auto_awesome:")
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
    saved = f"#{result.training_program_id}" if result.training_program_id else "not saved"
    cols[2].metric("Saved as program", saved)
    for warning in result.warnings:
        st.warning(escape_markdown(warning))
    if result.history_error and result.unsaved is not None:
        kept = "The program is shown below; nothing is lost until you leave this page."
        st.error(f"{escape_markdown(result.history_error)} {kept}")
        if st.button("Retry saving to history", icon=":material/refresh:"):
            retry_save(result)
    st.caption(f"Cache key `{result.cache_key}`")


def retry_save(result: GenerationResult) -> None:
    try:
        program_id = history.save_program(get_engine(), result.unsaved)  # type: ignore[arg-type]
    except DBAPIError:
        st.error("Saving failed again; try once more in a moment.")
        return
    st.session_state.result = replace(result, training_program_id=program_id, history_error=None, unsaved=None)
    st.rerun()


st.title("Generate program")
st.caption("Fill in the client's onboarding answers. Unchanged answers are served from the cache in milliseconds.")
form_column, result_column = st.columns([5, 7], gap="large")
with form_column:
    st.text_input(
        "User ID",
        key="user_id",
        on_change=prefill_from_history,
        max_chars=128,
        placeholder="e.g. client-1042 (letters, digits, . _ @ -)",
        help="A user with earlier programs gets their latest answers filled in.",
    )
    if st.session_state.get("prefilled"):
        st.caption("Filled in from this user's latest program.")
    request = questionnaire()

with result_column:
    if request is not None:
        st.session_state.pop("errors", None)
        st.session_state.pop("failure", None)
        run_generation(st.session_state.user_id.strip(), request)
    for field, message in st.session_state.get("errors", []):
        st.error(f"**{field}**: {escape_markdown(message)}. Nothing was saved.", icon=":material/error:")
    if st.session_state.get("failure"):
        st.error(f"**Generation failed**: {escape_markdown(st.session_state.failure)}", icon=":material/error:")
    if (result := st.session_state.get("result")) is not None:
        show_outcome(result)
        render_program(result.program, key="generated")
    elif not st.session_state.get("errors") and not st.session_state.get("failure"):
        st.info("The program appears here, with whether it came from the cache.", icon=":material/info:")
