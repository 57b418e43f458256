"""Cache admin: what the cache holds, cleanup of expired entries, per-user invalidation and
retiring a generator's entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from core import admin, cache_store
from core.formatting import format_bytes
from core.models import ContractError
from pages.common import current_actor, get_database, get_engine, get_service, may_administer, user_filter


def counts() -> None:
    summary = cache_store.count_entries(get_engine())
    cols = st.columns(4)
    cols[0].metric("Valid entries", f"{summary['valid_entries']:,}", border=True)
    cols[1].metric("Valid storage", format_bytes(summary["valid_bytes"]), border=True)
    cols[2].metric("Expired entries", f"{summary['expired_entries']:,}", border=True)
    cols[3].metric("Expired storage", format_bytes(summary["expired_bytes"]), border=True)


def short_key(key: str) -> str:
    return key if len(key) <= 48 else f"{key[:38]}…{key[-8:]}"


def entries() -> None:
    st.subheader("Entries", anchor=False)
    user = user_filter("Filter by user", key="admin_user")
    rows = cache_store.list_entries(get_engine(), user_id=user)
    if not rows:
        st.info("The cache holds no program entries" + (f" for {user}." if user else "."))
        return
    st.dataframe(
        pd.DataFrame(
            {
                "Key": [short_key(r.cache_key) for r in rows],
                "User": [r.user_id for r in rows],
                "Created (UTC)": [r.created_at.strftime("%Y-%m-%d %H:%M") for r in rows],
                "Expires (UTC)": [r.expires_at.strftime("%Y-%m-%d %H:%M") for r in rows],
                "Size": [format_bytes(r.size_bytes) for r in rows],
                "Hits": [r.hit_count for r in rows],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(f"Newest {len(rows)} entries.")


def confirm(name: str, question: str, yes_label: str, act: Callable[[Any], str]) -> None:
    """The confirmation of a destructive action asked for under `confirm_<name>`: Yes runs
    `act(what was asked for)` and shows the notice it returns; Cancel forgets the request."""
    pending = st.session_state.get(f"confirm_{name}")
    if not pending:
        return
    st.warning(question)
    yes, no = st.columns([1, 5])
    if yes.button(yes_label, type="primary", key=f"{name}_yes"):
        try:
            st.session_state.admin_notice = act(pending)
        except ContractError as exc:
            st.session_state.admin_notice = str(exc)
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
        expired = cache_store.count_entries(get_engine())["expired_entries"]

        def delete(_: object) -> str:
            removal = admin.delete_expired_entries(get_engine(), actor=current_actor())
            return f"Deleted {removal.deleted:,} expired entries, reclaimed {format_bytes(removal.bytes_reclaimed)}."

        confirm("cleanup", f"Delete {expired:,} expired entries? Valid entries are kept.", "Yes, delete", delete)


def invalidate(allowed: bool) -> None:
    st.subheader("Invalidate a user's entries", anchor=False)
    user = st.text_input("User ID to invalidate", key="invalidate_user").strip()
    if st.button("Invalidate", disabled=not (user and allowed), icon=":material/person_remove:"):
        st.session_state.confirm_invalidate = user
    pending = st.session_state.get("confirm_invalidate") if allowed else None
    if pending:

        def invalidate_user(user: str) -> str:
            user_id = get_database().check_user_id(user)
            removal = admin.invalidate_user(get_engine(), actor=current_actor(), user_id=user_id)
            return f"Invalidated {removal.deleted:,} entries of {user}."

        question = f"Delete every cached program of {pending}? Their next request will call the LLM."
        confirm("invalidate", question, "Yes, invalidate", invalidate_user)


def generators(allowed: bool) -> None:
    """Entries grouped by the generator identity that made them; retiring one invalidates
    all of its entries (after a model or prompt change, with CACHE_ON_GENERATOR_CHANGE=serve)."""
    st.subheader("Entries by generator", anchor=False)
    groups = cache_store.entries_by_generator(get_engine())
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
            return f"Retired {removal.deleted:,} entries made by {version}."

        question = f"Delete every cached program made by {pending}? Their next requests will generate again."
        confirm("retire", question, "Yes, retire", retire)


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
if notice := st.session_state.pop("admin_notice", None):
    st.success(notice, icon=":material/check_circle:")
counts()
left, right = st.columns(2)
with left:
    cleanup(allowed)
with right:
    invalidate(allowed)
entries()
generators(allowed)
recent()
