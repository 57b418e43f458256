"""ADR-049 step 1: the cache key, `program:u{user_id}:paid{true|false}:d{digest}`.

The ADR base64-encodes the signature, which would put the user's answers, readable, into
the key; this digests it instead (unpadded base64url, 43 characters). Without a secret the
digest is SHA-256: it hides the answers from a glance, but they are mostly enumerable
(a few goals, levels, day and minute counts, equipment sets), so the digest can be reversed
by trying them all. With a secret (CACHE_KEY_SECRET) it is HMAC-SHA-256, which cannot be
reversed without the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from typing import Any

from core.contract.models import ContractError, FieldError, OnboardingResponses
from core.store.schema import CACHE_KEY_PREFIX

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,128}")
DIGEST_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def check_user_id(user_id: Any, *, uuid_only: bool = False) -> str:
    """The user id as keyed and stored. With `uuid_only` (the database stores user ids as
    uuid) it must be a UUID, and is written in its canonical lower-case form."""
    # ':' separates the key's parts, so it (and anything else odd) is refused, not escaped.
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise ContractError(
            "user id",
            [FieldError("user_id", "must be 1-128 characters of letters, digits, '.', '_', '@' or '-'")],
        )
    if not uuid_only:
        return user_id
    try:
        return str(uuid.UUID(user_id))
    except ValueError:
        raise ContractError(
            "user id", [FieldError("user_id", "must be a UUID: this database stores user ids as uuid")]
        ) from None


def signature(profile: OnboardingResponses, has_paid_access: bool) -> bytes:
    """Sorted keys at every depth, compact, UTF-8, over the normalized answers."""
    document = {"hasPaidAccess": has_paid_access, "onboarding_responses": profile.normalized()}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(message: bytes, secret: bytes | None) -> str:
    raw = hmac.digest(secret, message, "sha256") if secret else hashlib.sha256(message).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def digest(profile: OnboardingResponses, has_paid_access: bool, secret: bytes | None = None) -> str:
    return _digest(signature(profile, has_paid_access), secret)


def onboarding_hash(profile: OnboardingResponses, secret: bytes | None = None) -> str:
    """The ADR's "hashed onboarding data": the normalized answers alone, so the same answers
    with and without paid access share it (the key's digest covers the flag too)."""
    answers = json.dumps(profile.normalized(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _digest(answers.encode(), secret)


def cache_key(user_id: str, profile: OnboardingResponses, has_paid_access: bool, secret: bytes | None = None) -> str:
    check_user_id(user_id)
    paid = "true" if has_paid_access else "false"
    return f"{CACHE_KEY_PREFIX}u{user_id}:paid{paid}:d{digest(profile, has_paid_access, secret)}"


def key_sample(key: str) -> int:
    """0-63, uniform over keys: the last digest character's place in the alphabet."""
    return max(DIGEST_ALPHABET.find(key[-1:]), 0)
