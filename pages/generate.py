"""Generate program: the onboarding questionnaire, then the program, through the cache.

Every answer, the User ID included, lives in one form, so nothing reruns the page until
the coach clicks: a text field that commits on blur would rerun it and drop the click
that caused the blur (streamlit/streamlit#8725, #9363). Enter does not submit; only the
two buttons do. The form and its result are a fragment: a click reruns only them.

What the panel shows is one value (pages.submissions.CoachPanel) kept under PANEL and replaced
whole by the callbacks; the widgets keep their own values. While a request is in flight the
panel runs again every quarter second rather than waiting in one run, because a click in a
fragment waits for the run in progress: so each click is taken, or refused in words, at once.
Each of those runs also shows what of the program the LLM has written so far, if anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st
from sqlalchemy.exc import DBAPIError
from streamlit.errors import StreamlitInvalidLayoutContextError

from core.contract.models import (
    EQUIPMENT,
    EXPERIENCE_LEVELS,
    GOALS,
    STARTING_ANSWERS,
    ContractError,
    OnboardingResponses,
    answer_limits,
    parse_onboarding,
)
from core.contract.partial_program import ProgramSoFar
from core.formatting import format_duration, markdown_code
from core.operations import monitoring
from core.serving.miss_reasons import MISS_REASON_TEXT
from core.serving.results import GenerationResult
from core.serving.service import ProgramService
from core.store import history, waits
from core.store.db import describe_db_error
from core.store.schema import ProgramId, utcnow
from pages.common import (
    database_problem,
    escape_markdown,
    get_database,
    get_engine,
    get_service,
    get_settings,
    reject_section,
    render_program,
    render_program_so_far,
    unavailable_text,
)
from pages.submissions import CoachPanel, Failure, FieldErrors, Form, Loaded, Refused, Rejected, Request, Submission

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
# A new client's form: the contract's starting answers, the optional ones empty, free access.
DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(OnboardingResponses.model_fields),
    "injuries": "",
    "notes": "",
    **STARTING_ANSWERS.normalized(),
    "has_paid_access": False,
}
ANSWERS = list(OnboardingResponses.model_fields)


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


PANEL = "coach_panel"  # the session's one value of what the panel shows
# A request's first tenth of a second is its own, so that a hit is shown before any
# progress line; then the panel looks again every quarter second.
FIRST_LOOK_SECONDS = 0.1
LOOK_AGAIN_SECONDS = 0.25
# What saying how long the generator has taken lately may wait on the database.
LATELY_WAIT_SECONDS = 1.0


def panel() -> CoachPanel:
    state: CoachPanel = st.session_state.get(PANEL, CoachPanel())
    return state


def become(state: CoachPanel) -> None:
    st.session_state[PANEL] = state


def load_latest() -> None:
    """The coach asked for the user's latest answers: they replace what the form holds."""
    user_id = st.session_state.user_id.strip()
    try:
        latest = None
        if user_id:
            checked = get_database().check_user_id(user_id)
            with get_engine().connect() as connection:
                latest = history.latest_answers(connection, checked)
        loaded = Loaded(user_id, latest)
    except ContractError as exc:
        loaded = Loaded(user_id, problem=escape_markdown(str(exc)))
    except DBAPIError as exc:
        loaded = Loaded(user_id, problem=unavailable_text(describe_db_error(exc)))
    if loaded.latest is not None:
        for field in ANSWERS:
            st.session_state[f"form_{field}"] = loaded.latest.onboarding_responses.get(field, DEFAULTS[field])
        st.session_state.form_has_paid_access = loaded.latest.has_paid_access
    become(panel().loaded_answers(loaded).sent(sent_form()))


def sent_form() -> Form:
    """The questionnaire as its fields hold it, in a callback of one of its buttons."""
    answers = {field: st.session_state[f"form_{field}"] for field in ANSWERS}
    return Form(st.session_state.user_id, answers, st.session_state.form_has_paid_access)


def field_error(field: str) -> None:
    """The error of `field` right under it (errors of fields the form does not show go
    under the User ID)."""
    outcome = panel().outcome
    errors = outcome.errors if isinstance(outcome, FieldErrors) else {}
    shown = [field] if field != "user_id" else ["user_id", *(f for f in errors if f not in FIELD_LABELS)]
    for name in shown:
        if name in errors:
            text = f"**{FIELD_LABELS.get(name, name)}**: {escape_markdown(errors[name])}. Nothing was saved."
            st.error(text, icon=":material/error:")


def _between(field: str) -> tuple[int, int]:
    """A number field's bounds, the contract's."""
    limits = answer_limits(field)
    return limits["ge"], limits["le"]


def questionnaire() -> None:
    # A field Streamlit has forgotten (a run of another page did not draw it) is drawn again
    # with what was last sent, so that the answers stay beside the program they asked for.
    shown = {"user_id": "", **{f"form_{field}": default for field, default in DEFAULTS.items()}}
    if kept := panel().form:
        shown |= {f"form_{field}": value for field, value in kept.answers.items()}
        shown |= {"user_id": kept.user_id, "form_has_paid_access": kept.has_paid_access}
    for key, value in shown.items():
        st.session_state.setdefault(key, value)
    # A number field's value is given as its default too: one the browser drew anew (seen
    # after a miss's runs) showed its default, the minimum, not the value the server held,
    # and the next click sent the fewest days a week and the shortest session.
    held = st.session_state
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
            st.selectbox(FIELD_LABELS["goal"], GOALS, format_func=label, key="form_goal")
            field_error("goal")
            days = held.form_days_per_week
            st.number_input(
                FIELD_LABELS["days_per_week"], *_between("days_per_week"), days, 1, key="form_days_per_week"
            )
            field_error("days_per_week")
            st.number_input(
                FIELD_LABELS["age"],
                *_between("age"),
                held.form_age,
                1,
                key="form_age",
                placeholder="Optional",
            )
            field_error("age")
        with right:
            st.selectbox(
                FIELD_LABELS["experience_level"], EXPERIENCE_LEVELS, format_func=label, key="form_experience_level"
            )
            field_error("experience_level")
            st.number_input(
                FIELD_LABELS["session_minutes"],
                *_between("session_minutes"),
                held.form_session_minutes,
                5,
                key="form_session_minutes",
            )
            field_error("session_minutes")
            st.toggle(FIELD_LABELS["has_paid_access"], key="form_has_paid_access")
        most = answer_limits("equipment")["max_length"]
        st.multiselect(
            FIELD_LABELS["equipment"], EQUIPMENT, format_func=label, key="form_equipment", max_selections=most
        )
        field_error("equipment")
        for field in ("injuries", "notes"):
            st.text_area(
                FIELD_LABELS[field],
                max_chars=answer_limits(field)["max_length"],
                key=f"form_{field}",
                placeholder="Optional",
            )
            field_error(field)
        st.checkbox("Force refresh", help="Ignore the cache and generate a new program", key="force_refresh")
        st.form_submit_button("Generate program", type="primary", on_click=generate_clicked)


def generate_clicked() -> None:
    """Runs before the page does, so the outcome can be written before the form is."""
    form = sent_form()
    request = form.request(force_refresh=st.session_state.force_refresh)
    state = panel().sent(form).clicked(request, start, window_seconds=get_settings().double_click_seconds)
    become(state)
    # A forced refresh is for the request it was taken for: left ticked, every later click
    # would pay for a generation. Here, in the callback, is the last moment before the box
    # is drawn again.
    st.session_state.force_refresh = state.owes_refresh


def start(request: Request) -> Submission[GenerationResult]:
    # In a code span: the generator's URL is copied from the page as it is.
    service, generator, database = get_service(), markdown_code(get_settings().describe_generator()), get_database()

    def work(say: Callable[[str], None], show: Callable[[ProgramSoFar], None]) -> GenerationResult:
        # A database back since the page was drawn gets its pending migrations first.
        usable = database.unavailable() is None
        return service.generate(
            user_id=request.user_id,
            onboarding_responses=request.responses,
            has_paid_access=request.has_paid_access,
            force_refresh=request.force_refresh,
            on_generating=lambda reason: say(
                f"**Cache miss** ({MISS_REASON_TEXT[reason]}): {generator} is writing the "
                f"program{how_long_lately(service, usable)}"
            ),
            on_waiting=lambda reason: say(
                f"**Cache miss** ({MISS_REASON_TEXT[reason]}): an identical request (another tab or coach) is "
                f"having {generator} write this program; waiting for it rather than paying twice"
            ),
            on_progress=show,
        )

    return Submission(request.fingerprints()[0], work, phase="Checking the cache")


def how_long_lately(service: ProgramService, usable: bool) -> str:
    """ ", which has taken it about 48 s lately": its recent median, said only when there is one."""
    if not usable:
        return ""
    try:
        # Its own second at most, not the request's: a stalled database costs this line only.
        with waits.request_budget(LATELY_WAIT_SECONDS):
            seconds = monitoring.recent_generation_seconds(service.engine, service.generator.identity.version)
    except DBAPIError:  # gone or stalled since it was checked: the program is what matters
        return ""
    return "" if seconds is None else f", which has taken it about {seconds:.0f} s lately"


def collect() -> CoachPanel:
    """The panel with the outcome of the request it waits for, once that has been served."""
    state = panel()
    if state.waiting and state.submission is not None:
        state.submission.wait(max(0.0, FIRST_LOOK_SECONDS - state.submission.elapsed_seconds()))
        collected = state.collected()
        if collected is not state:
            if collected.owes_refresh:
                st.session_state.force_refresh = True
            become(collected)
        return collected
    return state


def look_again(submission: Submission[GenerationResult]) -> None:
    """End this run and start another in a moment. A click in a fragment waits for the run
    in progress to end: a run that waited for the whole request would take its clicks only
    then, several of them merged into the last one (issue 20)."""
    submission.wait(LOOK_AGAIN_SECONDS)
    try:
        st.rerun(scope="fragment")
    except StreamlitInvalidLayoutContextError:  # the page was opened while waiting: a full run
        st.rerun()


def waiting_line(submission: Submission[GenerationResult]) -> None:
    st.info(f"{submission.phase}… {submission.elapsed_seconds():.0f} s so far.", icon=":material/hourglass_top:")


def stop_waiting_button() -> None:
    st.button(
        "Stop waiting",
        icon=":material/cancel:",
        on_click=stop_waiting,
        help="Stop waiting on this page; the program may still be generated, cached and saved to history",
    )


def stop_waiting() -> None:
    become(panel().stopped_waiting())


def who(user_id: str) -> str:
    """A user id as typed, in a code span: copied from the page, it is the id itself."""
    return markdown_code(user_id) if user_id else "an empty User ID"


def refused_note(refused: Refused, *, waiting: bool) -> None:
    clicks = f" ({refused.clicks} clicks)" if refused.clicks > 1 else ""
    asked, running = who(refused.request.user_id), who(refused.in_flight.user_id)
    if waiting:
        why = (
            f"the one for {running} is being generated (for {refused.in_flight_seconds:.0f} s when you clicked). "
            "Wait for it, or stop waiting, then click Generate program again: the answers you typed are kept."
        )
    else:
        why = (
            f"the one for {running} was being generated. The answers you typed are kept: click Generate "
            "program to ask for it."
        )
    st.warning(f"**Not requested**: the program for {asked}{clicks}, because {why}", icon=":material/block:")


def abandoned_note(request: Request) -> None:
    st.info(
        f"Stopped waiting for the program for {who(request.user_id)}. It may still be generated and saved: "
        "it will then be in Program history, and the same answers are served from the cache.",
        icon=":material/cancel:",
    )


def show_outcome(result: GenerationResult) -> None:
    saved = f"#{result.training_program_id}" if result.training_program_id else "not saved"
    if result.cache_hit and result.prewarmed_by is not None:
        model = escape_markdown(result.model or "the new generator")
        st.success(
            f"**Cache hit, pre-warmed**: written by {model} ahead of the switch (rollout #{result.prewarmed_by}), "
            f"no LLM call. Program {saved}.",
            icon=":material/bolt:",
        )
    elif result.cache_hit:
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
    if result.budget_reached is not None:
        st.warning(
            f"**Made by the offline coach, not the LLM**: {escape_markdown(result.budget_reached)}. "
            "An LLM program replaces it at the next request once the budget allows.",
            icon=":material/savings:",
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
        st.button("Retry saving to history", icon=":material/refresh:", on_click=save_again)
        if panel().save_failed_again:
            st.error("Saving failed again; try once more in a moment.")
    st.caption(f"Cache key `{result.cache_key}`")


def save_again() -> None:
    database_problem()
    state = panel()
    if isinstance(state.outcome, GenerationResult):
        become(state.save_retried(get_service().save_again(state.outcome)))


def varies_after_rejection(request: Request, result: GenerationResult) -> bool:
    """Whether generating again after the coach rejects this program can give another one."""
    version = get_service().generator.identity.version
    return _varies(version, result.training_program_id, request.has_paid_access, request.responses, result.program)


# Once per program and generator, not on every run that shows the program: the offline coach
# builds the program again to know (milliseconds, on a path where the coach waits). The
# program is not hashed: its id stands for it.
@st.cache_data(max_entries=1_000, show_spinner=False)
def _varies(
    version: str, program_id: ProgramId | None, has_paid_access: bool, responses: dict[str, Any], _program: Any
) -> bool:
    generator = get_service().generator
    return generator.varies_after_rejection(parse_onboarding(responses), has_paid_access, dict(_program))


def rejected(rejection: Rejected) -> None:
    become(panel().rejected(rejection))


def since_previous(request: Request, result: GenerationResult) -> None:
    """For a returning user: the answers that differ from their previous program, as the
    service compared them, and a link to it. Asked for after the badge is shown, so that
    a hit's path has no query more."""
    since = result.since_previous
    if since is None:
        since = get_service().since_previous(result, user_id=request.user_id, has_paid_access=request.has_paid_access)
        if since is None:
            return  # the outcome above already says the database is unavailable
        become(panel().compared(since))
    previous = since.previous
    if previous is None:
        return
    lines = [
        f"- {FIELD_LABELS.get(c.field, c.field)}: {escape_markdown(show_value(c.field, c.before))} → "
        f"{escape_markdown(show_value(c.field, c.after))}"
        for c in since.changes
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


def loaded_note(loaded: Loaded) -> None:
    if loaded.problem is not None:
        st.error(loaded.problem, icon=":material/cloud_off:")
    elif loaded.latest is None:
        st.info(f"No earlier program for {who(loaded.user_id)}: the form is unchanged.")
    else:
        st.info(
            f"Loaded the answers of {who(loaded.user_id)}'s latest program, "
            f"#{loaded.latest.program_id} of {loaded.latest.created_at:%Y-%m-%d %H:%M} UTC.",
            icon=":material/download_done:",
        )


def outcome(state: CoachPanel) -> None:
    """What the panel shows beside the form: notes, the request in flight, its outcome."""
    if state.loaded is not None:
        loaded_note(state.loaded)
    if state.refused is not None:
        refused_note(state.refused, waiting=state.waiting)
    if state.abandoned is not None:
        abandoned_note(state.abandoned)
    if state.waiting and state.submission is not None:
        stop_waiting_button()
        if state.submission.progress is not None:
            render_program_so_far(state.submission.progress)
    elif isinstance(state.outcome, Failure):
        # The message says what failed ("generation failed: …", "the generated program is invalid: …").
        st.error(f"**No program**: {escape_markdown(state.outcome.message)}", icon=":material/error:")
    elif isinstance(state.outcome, GenerationResult) and state.request is not None:
        result = state.outcome
        show_outcome(result)
        since_previous(state.request, result)
        if result.training_program_id is not None:
            key = f"generated-{result.training_program_id}"
            handed_back = not varies_after_rejection(state.request, result)
            reject_section(
                result.training_program_id, key=key, rejected=state.rejection, done=rejected, handed_back=handed_back
            )
        render_program(
            dict(result.program), user_id=state.request.user_id, created_at=result.requested_at, key="generated"
        )
    elif state.outcome is None:
        st.info("The program appears here, with whether it came from the cache.", icon=":material/info:")


@st.fragment
def coach_panel() -> None:
    form_column, result_column = st.columns([5, 7], gap="large")
    # The outcome is written first, so that its badge reaches the browser before the form.
    with result_column:
        state = collect()
        # A run that ends in st.rerun (each look while a request is in flight) leaves on screen
        # what the run before drew that it does not draw again: Streamlit clears that only when
        # a run completes, and a container drawn where one was keeps the old one's content. So
        # the outcome is one container, and a look draws its first line, an element, in that
        # container's place: the earlier program goes, rather than stay under the next one's
        # "is writing" line.
        if state.waiting and state.submission is not None:
            waiting_line(state.submission)
        with st.container():
            outcome(state)
    with form_column:
        questionnaire()
    if state.waiting and state.submission is not None:
        look_again(state.submission)


st.title("Generate program")
st.caption("Fill in the client's onboarding answers. Unchanged answers are served from the cache in milliseconds.")
coach_panel()
