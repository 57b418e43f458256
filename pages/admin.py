"""Cache admin: what the cache holds, cleanup of expired entries, per-user invalidation,
retiring a generator's entries, recalls of programs that got out wrong, and rollouts of a
new model (tried, then pre-warmed)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pandas as pd
import streamlit as st

from core.contract.models import ContractError
from core.formatting import column_heading, counted, format_bytes, format_dollars, format_duration, markdown_code
from core.generators import startup_warning
from core.operations import admin, recall
from core.operations.rollout import batches, reports
from core.operations.rollout import live as rollout_live
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import records as rollout_records
from core.operations.rollout import start as rollout_start
from core.prices import WHOLE_FIELDS
from core.store import entries
from core.store.history import HistoryFilter
from core.store.schema import utcnow
from pages.common import (
    current_actor,
    escape_markdown,
    get_database,
    get_engine,
    get_service,
    get_settings,
    may_administer,
    render_program,
    user_filter,
)
from pages.fit_table import fit_failures


def counts() -> None:
    summary = entries.count_entries(get_engine())
    cols = st.columns(4)
    cols[0].metric("Valid entries", f"{summary['valid_entries']:,}", border=True)
    cols[1].metric("Valid storage", format_bytes(summary["valid_bytes"]), border=True)
    cols[2].metric("Expired entries", f"{summary['expired_entries']:,}", border=True)
    cols[3].metric("Expired storage", format_bytes(summary["expired_bytes"]), border=True)


def entries_text(count: int, kind: str = "") -> str:
    """`1 entry`, `2 entries`, `1 expired entry`."""
    return counted(count, " ".join(filter(None, (kind, "entry"))), " ".join(filter(None, (kind, "entries"))))


def regenerated() -> str:
    """What follows an invalidation: a new program, from the generator this app runs."""
    generator = markdown_code(get_settings().describe_generator())  # its URL copied as it is
    return f"Their next request will generate a new program with the current generator, {generator}."


def short_key(key: str) -> str:
    return key if len(key) <= 48 else f"{key[:38]}…{key[-8:]}"


def held_entries() -> None:
    st.subheader("Entries", anchor=False)
    user = user_filter("Filter by user", key="admin_user")
    rows = entries.list_entries(get_engine(), user_id=user)
    if not rows:
        st.info("The cache holds no program entries" + (f" for {markdown_code(user)}." if user else "."))
        return
    st.dataframe(
        pd.DataFrame(
            {
                "Key": [short_key(r.cache_key) for r in rows],
                "User": [r.user_id for r in rows],
                "Created (UTC)": [r.created_at.strftime("%Y-%m-%d %H:%M") for r in rows],
                "Expires (UTC)": [r.expires_at.strftime("%Y-%m-%d %H:%M") for r in rows],
                "Status": ["valid" if r.valid else "expired" for r in rows],
                "Size": [format_bytes(r.size_bytes) for r in rows],
                "Hits": [r.hit_count for r in rows],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(f"Newest {entries_text(len(rows))}.")


def confirm(name: str, question: str, yes_label: str, act: Callable[[Any], str]) -> None:
    """The confirmation of a destructive action asked for under `confirm_<name>`: Yes runs
    `act(what was asked for)` and shows the notice it returns; Cancel forgets the request."""
    pending = st.session_state.get(f"confirm_{name}")
    if not pending:
        return
    st.warning(question)
    yes, no = st.columns([1, 5])
    if yes.button(yes_label, type="primary", key=f"{name}_yes"):
        st.session_state.admin_notice = act(pending)
        st.session_state[f"confirm_{name}"] = None
        st.rerun()
    if no.button("Cancel", key=f"{name}_no"):
        st.session_state[f"confirm_{name}"] = None
        st.rerun()


def cleanup(allowed: bool) -> None:
    st.subheader("Delete expired entries", anchor=False)
    st.caption("Deletes only expired program entries, in short batches, exactly as `python -m core cleanup` does.")
    if st.button("Delete expired entries", type="primary", icon=":material/delete_sweep:", disabled=not allowed):
        st.session_state.confirm_cleanup = True
    if allowed and st.session_state.get("confirm_cleanup"):
        expired = entries.count_entries(get_engine())["expired_entries"]
        if not expired:  # said, not asked: there is nothing to confirm
            st.session_state.confirm_cleanup = None
            st.info("There are no expired entries: nothing to delete.", icon=":material/check_circle:")
            return

        def delete(_: object) -> str:
            removal = admin.delete_expired_entries(get_engine(), actor=current_actor())
            deleted = entries_text(removal.deleted, "expired")
            return f"Deleted {deleted}, reclaimed {format_bytes(removal.bytes_reclaimed)}."

        question = f"Delete {entries_text(expired, 'expired')}? Valid entries are kept."
        confirm("cleanup", question, "Yes, delete", delete)


def invalidate(allowed: bool) -> None:
    st.subheader("Invalidate a user's entries", anchor=False)
    # The field and its button are one form, as on the generate page: a click right after
    # typing carries what was typed, where a button enabled only once the field commits
    # would drop that first click (streamlit#8725).
    with st.form("invalidate", border=False, enter_to_submit=False):
        typed = st.text_input("User ID to invalidate", key="invalidate_user").strip()
        asked = st.form_submit_button("Invalidate", disabled=not allowed, icon=":material/person_remove:")
    if asked:
        st.session_state.confirm_invalidate = checked_user_id(typed)
    pending = st.session_state.get("confirm_invalidate") if allowed else None
    if pending:

        def invalidate_user(user_id: str) -> str:
            removal = admin.invalidate_user(
                get_engine(), actor=current_actor(), user_id=user_id, user_id_check=get_database().check_user_id
            )
            return f"Invalidated {entries_text(removal.deleted)} of {markdown_code(user_id)}.{voided_text(removal)}"

        held = entries.count_entries(get_engine(), user_id=pending)
        programs = held["valid_entries"] + held["expired_entries"]
        if not programs:  # said, not asked: there is nothing to confirm
            st.session_state.confirm_invalidate = None
            st.info(f"The cache holds no programs of {markdown_code(pending)}: nothing to invalidate.")
            return
        question = f"Delete {counted(programs, 'cached program')} of {markdown_code(pending)}? {regenerated()}"
        confirm("invalidate", question, "Yes, invalidate", invalidate_user)


def checked_user_id(typed: str) -> str | None:
    """The user id to ask about, as the database stores it; None, saying why, if there is none."""
    if not typed:
        st.warning("Type a user id first.", icon=":material/person_search:")
        return None
    try:
        return get_database().check_user_id(typed)
    except ContractError as exc:
        st.error(escape_markdown(str(exc)), icon=":material/person_off:")
        return None


def generators(allowed: bool) -> None:
    """Entries grouped by the generator identity that made them; retiring one invalidates
    all of its entries (after a model or prompt change, with CACHE_ON_GENERATOR_CHANGE=serve)."""
    st.subheader("Entries by generator", anchor=False)
    groups = entries.entries_by_generator(get_engine())
    if not groups:
        st.caption("The cache holds no program entries.")
        return
    current = get_service().generator.identity.version
    names = [g.generator_version or admin.UNKNOWN_GENERATOR for g in groups]
    st.dataframe(
        pd.DataFrame(
            {
                "Generator version": [n + (" (current)" if n == current else "") for n in names],
                "Model": [g.model or "–" for g in groups],
                "Entries": [g.entries for g in groups],
                "Storage": [format_bytes(g.size_bytes) for g in groups],
                "Oldest (UTC)": [g.oldest.strftime("%Y-%m-%d %H:%M") for g in groups],
                "Newest (UTC)": [g.newest.strftime("%Y-%m-%d %H:%M") for g in groups],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    chosen = st.selectbox("Generator to retire", names, key="retire_choice", disabled=not allowed)
    if st.button("Retire its entries", disabled=not allowed, icon=":material/history_toggle_off:"):
        st.session_state.confirm_retire = chosen
    pending = st.session_state.get("confirm_retire") if allowed else None
    if pending:

        def retire(version: str) -> str:
            removal = admin.retire_generator(get_engine(), actor=current_actor(), generator_version=version)
            return f"Retired {entries_text(removal.deleted)} made by {markdown_code(version)}.{voided_text(removal)}"

        question = f"Delete every cached program made by {markdown_code(pending)}? {regenerated()}"
        confirm("retire", question, "Yes, retire", retire)


# How a recall selects, as the page names it: the recall.Selection field each fills.
RECALL_BY = {"Generator version": "generator_version", "Cache key": "cache_key", "Program id": "program_id"}
RECALL_PREVIEW_ROWS = 200


def recall_section(allowed: bool) -> None:
    """Every client handed programs that got out wrong (of a generator, a key or a program),
    previewed, then recalled on confirmation: the entries holding them deleted, the history
    rows marked, and the keys optionally pre-warmed with the current generator."""
    st.subheader("Recall programs", anchor=False)
    st.caption("For programs that got out wrong: who was handed one (cache hits included), then recall them.")
    with st.form("recall", border=False, enter_to_submit=False):
        by = st.radio("Select by", list(RECALL_BY), horizontal=True, key="recall_by")
        value = st.text_input("Generator version, cache key or program id", key="recall_value").strip()
        span = st.date_input("Handed out (UTC, optional)", value=[], key="recall_dates")
        reason = st.text_input("Reason", max_chars=recall.REASON_MAX_CHARS, key="recall_reason")
        prewarm = st.checkbox("Pre-warm the recalled keys with the current generator", key="recall_prewarm")
        live = st.checkbox("Pre-warm with live calls (servers without a Batch API)", key="recall_live")
        cols = st.columns(2)
        previewed = cols[0].form_submit_button("Preview hand-outs", icon=":material/preview:")
        asked = cols[1].form_submit_button("Recall", disabled=not allowed, icon=":material/report:")
    if not (previewed or asked or st.session_state.get("confirm_recall")):
        return
    try:
        days: tuple[date, ...] = tuple(span) if isinstance(span, tuple | list) else ()
        dates = HistoryFilter.from_form(user_id="", days=days, source=None)
        selection = recall.Selection(
            **{RECALL_BY[by]: value},
            since=dates.since,
            until=dates.until,
        )
        preview_handouts(selection)
        if allowed and asked:
            st.session_state.confirm_recall = (selection, recall.check_reason(reason), prewarm, live)
    except ContractError as exc:
        st.session_state.confirm_recall = None
        st.error(escape_markdown(str(exc)), icon=":material/error:")
        return
    if allowed and (pending := st.session_state.get("confirm_recall")):
        question = f"Recall the programs of {markdown_code(pending[0].target)}? {regenerated()}"
        confirm("recall", question, "Yes, recall", recall_programs)


def preview_handouts(selection: recall.Selection) -> None:
    shown = list(recall.handouts(get_engine(), selection, limit=RECALL_PREVIEW_ROWS + 1))
    if not shown:
        st.info(f"No program was handed out for {markdown_code(selection.target)}: nothing to recall.")
        return
    more = " (the first ones; the command line lists all)" if len(shown) > RECALL_PREVIEW_ROWS else ""
    shown = shown[:RECALL_PREVIEW_ROWS]
    st.dataframe(
        pd.DataFrame(
            {
                "User": [h.user_id for h in shown],
                "Program": [str(h.training_program_id) for h in shown],
                "Handed out (UTC)": [h.handed_out_at.strftime("%Y-%m-%d %H:%M:%S") for h in shown],
                "How": [h.how.replace("_", " ") for h in shown],
                "Recalled": ["yes" if h.recalled_at else "" for h in shown],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    clients = counted(len({h.user_id for h in shown}), "client")
    st.caption(f"{counted(len(shown), 'hand-out')} to {clients}{more}.")


def recall_programs(asked: tuple[recall.Selection, str, bool, bool]) -> str:
    selection, reason, prewarm, live = asked
    engine, settings = get_engine(), get_settings()
    try:
        generator = recall.regenerator(engine, settings, selection, live=live) if prewarm else None
        done = recall.recall(engine, selection, reason=reason, actor=current_actor())
        started = None
        if generator is not None:
            started = recall.prewarm(engine, settings, selection, generator, actor=current_actor(), live=live)
    except ContractError as exc:
        return f"Not recalled: {escape_markdown(str(exc))}"
    except rollout_records.RolloutFailed as exc:
        return f"Recalled, but not pre-warmed: {escape_markdown(str(exc))}"
    text = (
        f"Recalled {counted(done.history_rows_marked, 'hand-out')}; deleted {entries_text(done.entries_deleted)} "
        f"still holding them."
    )
    if started is not None and started.rollout_id is not None:
        text += f" Rollout #{started.rollout_id} pre-warms {counted(started.requested, 'key')}."
    return text


def dollars(amount: float | None) -> str:
    return "–" if amount is None else format_dollars(amount)


def rollouts(allowed: bool) -> None:
    """A model switch prepared ahead: try the candidate on recent profiles, plan and start a
    pre-warm through the Batch API (or live), collect the batches, follow each runs."""
    st.subheader("Generator rollout", anchor=False)
    settings = get_settings()
    if not settings.uses_openai:
        st.caption("A rollout tries or pre-warms an OpenAI-compatible model: set OPENAI_API_KEY to run one.")
    st.caption(
        "Try a candidate model on recently requested profiles (nothing is cached), then pre-warm: "
        "the valid entries another generator made are regenerated by the candidate, at the Batch API's "
        "half price, and served as hits once the app runs with OPENAI_MODEL set to it."
    )
    usable = allowed and settings.uses_openai
    with st.form("rollout", border=False, enter_to_submit=False):
        model = st.text_input("Candidate model", key="rollout_model").strip()
        options = st.columns(3)
        sample = options[0].number_input(
            "Profiles to try", min_value=1, max_value=rollout_live.MAX_SAMPLE, value=rollout_live.DEFAULT_SAMPLE
        )
        bounds = rollout_plan.SELECTION_BOUNDS
        hours_left = options[1].number_input(
            "Pre-warm entries valid for at least (hours)",
            min_value=0.0,
            max_value=float(bounds["min_hours_left"][1]),
            value=0.0,
            step=1.0,
            help="Leaves out entries about to expire: worth it only where their users seldom come back "
            "(with users returning at random, the replay benchmark found it saved nothing)",
        )
        requested_days = options[2].number_input(
            "Also keys requested in the last (days)",
            min_value=0.0,
            max_value=float(bounds["requested_days"][1]),
            value=0.0,
            step=1.0,
            help="Keys without a valid entry that were asked for lately; 0 leaves them out",
        )
        live = st.checkbox("Live calls instead of a batch (servers without a Batch API)", key="rollout_live")
        cols = st.columns(3)
        tried = cols[0].form_submit_button("Try it", disabled=not usable, icon=":material/science:")
        planned = cols[1].form_submit_button("Plan pre-warm", disabled=not usable, icon=":material/list_alt:")
        started = cols[2].form_submit_button("Start pre-warm", disabled=not usable, icon=":material/rocket_launch:")
    selection = rollout_plan.Selection(requested_within_days=requested_days or None, min_hours_left=hours_left)
    if usable and (tried or planned or started):
        try:
            candidate = rollout_plan.candidate(settings, model)
        except ContractError as exc:
            st.error(escape_markdown(str(exc)), icon=":material/error:")
            return
        if warning := startup_warning(candidate):
            st.warning(escape_markdown(warning), icon=":material/warning:")
        if tried:
            with st.spinner(f"Trying {escape_markdown(model)} on up to {int(sample)} profiles…"):
                try_candidate(candidate, int(sample))
        elif planned:
            show_plan(rollout_plan.plan(get_engine(), settings, candidate, selection))
        else:
            st.session_state.confirm_rollout = (model, live, selection)
    if usable and st.session_state.get("confirm_rollout"):
        chosen, live_chosen, chosen_selection = st.session_state.confirm_rollout
        plan = rollout_plan.plan(get_engine(), settings, rollout_plan.candidate(settings, chosen), chosen_selection)
        cost = plan.live_cost if live_chosen else plan.batch_cost
        how = "live" if live_chosen else "as a batch"
        question = f"Regenerate {plan.count:,} programs with {markdown_code(chosen)} {how}, for about {dollars(cost)}?"
        confirm("rollout", question, "Yes, start", start_rollout)
    trial_id = st.session_state.get("rollout_trial")
    if trial_id is not None:
        show_trial(reports.trial_report(get_engine(), settings, trial_id, current_version=current_version()))
    check, _ = st.columns([1, 3])
    if check.button("Check batches now", disabled=not usable, icon=":material/sync:"):
        stopped = rollout_live.give_up_stale(get_engine())
        checks = batches.check_batches(get_engine(), settings)
        collected = sum(c.collected for c in checks)
        checked = "1 batch" if len(checks) == 1 else f"{len(checks)} batches"
        problems = " ".join(
            f"{c.batch_id}: {escape_markdown(c.problem or f'given up: {c.given_up}')}."
            for c in checks
            if c.problem or c.given_up
        )
        runs = " ".join(f"Rollout #{n}: {count} requests {rollout_live.GIVEN_UP}." for n, count in stopped.items())
        st.session_state.admin_notice = f"Checked {checked}; {collected} collected. {problems} {runs}".strip()
        st.rerun()
    rollout_table()


def voided_text(removal: entries.Removal) -> str:
    """What an invalidation did to programs rollouts staged, when it did anything."""
    n = removal.staged_voided
    return f" Voided {n} pre-warmed program{'s' if n != 1 else ''} not yet served." if n else ""


def current_version() -> str:
    return get_service().generator.identity.version


def try_candidate(candidate: Any, sample: int) -> None:
    try:
        trial = rollout_live.trial(
            get_engine(),
            get_settings(),
            candidate,
            actor=current_actor(),
            sample=sample,
        )
    except (ContractError, rollout_records.RolloutFailed) as exc:
        st.error(escape_markdown(str(exc)), icon=":material/error:")
        return
    st.session_state.rollout_trial = trial


def show_plan(plan: rollout_plan.Plan) -> None:
    cols = st.columns(3)
    cols[0].metric("Programs to regenerate", f"{plan.count:,}", border=True)
    cols[1].metric("Estimated, live", dollars(plan.live_cost), border=True)
    cols[2].metric("Estimated, batch", dollars(plan.batch_cost), border=True)
    made_by = ", ".join(f"{markdown_code(v)}: {n:,}" for v, n in plan.by_generator.items()) or "none"
    st.caption(
        f"For {markdown_code(plan.model)} ({markdown_code(plan.generator_version)}); now made by {made_by}. "
        f"Estimated from the tokens {plan.with_recorded_tokens:,} current entries recorded."
    )


def start_rollout(asked: tuple[str, bool, rollout_plan.Selection]) -> str:
    model, live, selection = asked
    settings = get_settings()
    try:
        started = rollout_start.start(
            get_engine(),
            settings,
            rollout_plan.candidate(settings, model),
            actor=current_actor(),
            selection=selection,
            live=live,
        )
    except rollout_records.RolloutFailed as exc:
        return f"Not started: {escape_markdown(str(exc))}"
    if started.rollout_id is None:
        return f"Nothing to pre-warm for {markdown_code(model)}: every valid entry is its own or staged already."
    failed = f" {escape_markdown(started.error)}" if started.error else ""
    if live:
        return f"Rollout #{started.rollout_id}: {started.requested:,} programs generated live.{failed}"
    batches = "1 batch" if len(started.batch_ids) == 1 else f"{len(started.batch_ids)} batches"
    return f"Rollout #{started.rollout_id}: {started.requested:,} requests submitted in {batches}.{failed}"


def show_trial(trial: reports.Trial) -> None:
    st.markdown(f"**Trial #{trial.rollout_id}** of {markdown_code(trial.model)} against the current generator")
    sides = {"Candidate": trial.candidate, "Current": trial.current}
    st.dataframe(
        pd.DataFrame(
            {
                "": list(sides),
                "Programs": [s.programs for s in sides.values()],
                "Valid first try": [
                    "–" if s.valid_first_try is None else f"{s.valid_first_try:.0%}" for s in sides.values()
                ],
                # Every token billed is in one of the whole kinds (input, output): the parts are in them.
                **{column_heading(name): [getattr(s.billed, name) for s in sides.values()] for name in WHOLE_FIELDS},
                "Cost": [dollars(s.cost) for s in sides.values()],
                "Latency p50": [
                    "–" if s.latency_p50_ms is None else format_duration(s.latency_p50_ms) for s in sides.values()
                ],
                "Latency p95": [
                    "–" if s.latency_p95_ms is None else format_duration(s.latency_p95_ms) for s in sides.values()
                ],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    fit_failures(trial.fit, key="trial_fit_failures")
    keys = [p.cache_key for p in trial.profiles]
    chosen = st.selectbox("Profile", keys, format_func=short_key, key="trial_profile")
    profile = next(p for p in trial.profiles if p.cache_key == chosen)
    user = chosen.split(":", 2)[1].removeprefix("u")
    for column, (name, program, error) in zip(
        st.columns(2),
        (
            ("Current", profile.current_program, "The current generator has not made a program for it."),
            ("Candidate", profile.candidate_program, profile.candidate_error or "No program."),
        ),
        strict=True,
    ):
        with column:
            st.markdown(f"**{name}**")
            if program:
                render_program(program, user_id=user, created_at=utcnow(), key=f"trial-{name}")
            else:
                st.warning(escape_markdown(error), icon=":material/error:")


def rollout_table() -> None:
    listed = reports.summaries(get_engine(), get_settings())
    if not listed:
        st.caption("No rollout has run yet.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "#": [r.id for r in listed],
                "Kind": [r.kind for r in listed],
                "Model": [r.model for r in listed],
                "Started (UTC)": [r.created_at.strftime("%Y-%m-%d %H:%M") for r in listed],
                "By": [r.created_by for r in listed],
                "Phase": [r.phase for r in listed],
                "Requested": [r.requested for r in listed],
                "Staged": [r.states.get("staged", 0) for r in listed],
                "Tried": [r.states.get("tried", 0) for r in listed],
                "Failed": [r.states.get("failed", 0) for r in listed],
                "Invalid": [r.states.get("invalid", 0) for r in listed],
                "Voided": [r.states.get("voided", 0) for r in listed],
                "Used": [r.used for r in listed],
                "Cost": [dollars(r.cost) for r in listed],
                "Saved": [dollars(r.saved) for r in listed],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    for summary in listed:
        if set(reports.PROBLEMS) & set(summary.states):
            with st.expander(f"Rollout #{summary.id}: failed, invalid and voided programs", icon=":material/report:"):
                for problem in reports.problems(get_engine(), summary.id):
                    st.markdown(
                        f"- {markdown_code(short_key(problem.cache_key))} {problem.state}: "
                        f"{escape_markdown(problem.error or 'no reason given')}"
                    )


def recent() -> None:
    st.subheader("Recent admin actions", anchor=False)
    actions = admin.recent_actions(get_engine())
    if not actions:
        st.caption("No cleanup or invalidation has run yet.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "When (UTC)": [a.created_at.strftime("%Y-%m-%d %H:%M:%S") for a in actions],
                "Who": [a.actor for a in actions],
                "Action": [a.action.replace("_", " ") for a in actions],
                "Target": [a.target or "" for a in actions],
                "Rows": [a.rows_affected for a in actions],
                "Reclaimed": [format_bytes(a.bytes_reclaimed) for a in actions],
            }
        ),
        hide_index=True,
        width="stretch",
    )


st.title("Cache admin")
allowed = may_administer()
if not allowed:
    st.warning(
        "You can look but not change: cleanup and invalidation are limited to the admin e-mails (ADMIN_EMAILS).",
        icon=":material/lock:",
    )
# One slot for the notice, shown or not: a notice appearing above the widgets would move
# each to a new place in the page, and the browser would show it twice until the run ends.
notice = st.empty()
if text := st.session_state.pop("admin_notice", None):
    notice.success(text, icon=":material/check_circle:")
counts()
left, right = st.columns(2)
with left:
    cleanup(allowed)
with right:
    invalidate(allowed)
held_entries()
generators(allowed)
recall_section(allowed)
rollouts(allowed)
recent()
