"""Why a request was a miss, and what each reason means as a coach reads it beside "Cache miss":
what happened to the key's entry comes first (its fate record), then the user's previous answers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from core.contract.models import PAID_ACCESS
from core.store.entries import CacheEntry
from core.store.fates import KeyRecord, UnwrittenFate

MissReason = Literal[
    UnwrittenFate,  # what happened to the key's entry, as recorded
    "first_generation",
    "profile_changed",
    "access_changed",
    "forced_refresh",
    "cache_unavailable",
    "invalid_entry",
    "generator_changed",
    "removed",
]


@dataclass(frozen=True)
class Lookup:
    """What looking the key up found, when it could not serve: no entry, an expired one, or
    a valid one it could not use (invalid, or another generator's)."""

    entry: CacheEntry | None = None
    invalid: bool = False
    generator_changed: bool = False
    failed: bool = False  # the cache could not be read


def miss_reason(
    *,
    forced: bool,
    lookup: Lookup,
    record: KeyRecord | None,
    changed_since_previous: tuple[str, ...] | None,
    now: datetime,
) -> tuple[MissReason, tuple[str, ...]]:
    """Why this request is a miss, and the answers that changed when that is the reason.

    What happened to this key comes first: the entry found, then the key's record. Only a
    key that never had an entry is compared with the user's previous program
    (`changed_since_previous`: the fields that differ, None when there is none)."""
    if forced:
        return "forced_refresh", ()
    if lookup.failed:
        return "cache_unavailable", ()
    if lookup.invalid:
        return "invalid_entry", ()
    if lookup.generator_changed:
        return "generator_changed", ()
    entry = lookup.entry
    if entry is not None:
        # Still there, so expired; unless a later write of it failed, which is the news.
        if record is not None and record.fate == "not_cached" and record.recorded_at > entry.updated_at:
            return "not_cached", ()
        return "expired", ()
    if record is not None:
        if record.fate != "written":
            return record.fate, ()
        if record.entry_expires_at is not None and record.entry_expires_at <= now:
            return "expired", ()  # expired, and deleted since by something other than cleanup
        return "removed", ()  # deleted before its time, outside Coach Cache
    if changed_since_previous is None:
        return "first_generation", ()
    if changed_since_previous == (PAID_ACCESS,):
        return "access_changed", changed_since_previous
    if changed_since_previous:
        return "profile_changed", changed_since_previous
    # The same answers as the user's previous program, whose key has no record: a program
    # handed out before keys' fates were recorded (revision 0009), or by the product itself.
    return "expired", ()


# What each reason means, as a coach reads it beside "Cache miss".
MISS_REASON_TEXT: dict[MissReason, str] = {
    "first_generation": "first program for this user",
    "expired": "the cached program had expired",
    "profile_changed": "the profile changed",
    "access_changed": "paid access changed",
    "forced_refresh": "a refresh was forced",
    "cache_unavailable": "the cache could not be read",
    "invalid_entry": "the cached program no longer passed validation",
    "generator_changed": "it was made by another generator (model, prompt or rules)",
    "invalidated": "its cached program was invalidated by an admin",
    "rejected": "a coach rejected the cached program",
    "recalled": "the cached program was recalled (it had got out wrong)",
    "removed": "its cached program was deleted outside Coach Cache before it expired",
    "not_cached": "the last program for these answers could not be cached",
}
MISS_REASONS: tuple[MissReason, ...] = get_args(MissReason)
# The misses no TTL could have spared: a refresh the coach forced, a program a coach rejected or a
# recall took back
# (the TTL replay, core/operations/monitoring/replay.py, also counts an admin's invalidation
# from admin_actions, since the request after it may say "expired" under the TTL it ran with).
WHATEVER_THE_TTL: tuple[MissReason, ...] = ("forced_refresh", "rejected", "recalled")
