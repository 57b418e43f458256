from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.contract.cache_key import cache_key, check_user_id, onboarding_hash, signature
from core.contract.models import ContractError, parse_onboarding
from tests.helpers import PROFILE

KEY = re.compile(r"program:u(?P<user>[A-Za-z0-9._@-]{1,128}):paid(?P<paid>true|false):d(?P<digest>[A-Za-z0-9_-]{43})")


def key(profile: dict[str, Any] = PROFILE, user_id: str = "u1", paid: bool = False) -> str:
    return cache_key(user_id, parse_onboarding(profile), paid)


def test_key_format_and_digest() -> None:
    k = key(paid=True, user_id="coach.client@example-1")
    match = KEY.fullmatch(k)
    assert match and match["user"] == "coach.client@example-1" and match["paid"] == "true"
    expected = base64.urlsafe_b64encode(hashlib.sha256(signature(parse_onboarding(PROFILE), True)).digest())
    assert match["digest"] == expected.rstrip(b"=").decode()


def test_signature_is_sorted_compact_utf8_json() -> None:
    profile = parse_onboarding({**PROFILE, "notes": "café  crème"})
    raw = signature(profile, False)
    assert raw.decode("utf-8") == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert raw.startswith(b'{"hasPaidAccess":false,"onboarding_responses":{"days_per_week":3,')
    assert "café crème".encode() in raw


@pytest.mark.parametrize(
    "equivalent",
    [
        {**PROFILE, "equipment": ["bodyweight", "dumbbells"]},
        {**PROFILE, "equipment": ["dumbbells", "bodyweight", "bodyweight", "dumbbells"]},
        {**PROFILE, "notes": ""},
        {**PROFILE, "injuries": "   "},
        dict(reversed(list(PROFILE.items()))),
        {**PROFILE, "days_per_week": 3.0},
    ],
)
def test_answers_that_mean_the_same_sign_the_same(equivalent: dict[str, Any]) -> None:
    assert key(equivalent) == key()


def test_free_text_is_trimmed_and_collapsed() -> None:
    assert key({**PROFILE, "injuries": "left knee\n\t pain "}) == key({**PROFILE, "injuries": "left knee pain"})
    assert key({**PROFILE, "injuries": "left knee"}) != key({**PROFILE, "injuries": "right knee"})


def test_access_user_and_answers_all_change_the_key() -> None:
    assert len({key(), key(paid=True), key(user_id="u2"), key({**PROFILE, "session_minutes": 60})}) == 4


@settings(max_examples=300, deadline=None)
@given(notes=st.text(min_size=1, max_size=1000).filter(lambda s: len(s.strip()) >= 1))
def test_the_key_is_a_fixed_size_digest_whatever_the_answers(notes: str) -> None:
    k = key({**PROFILE, "notes": notes})
    assert KEY.fullmatch(k) and len(k) == len(key())


def test_the_key_reveals_nothing_of_the_answers() -> None:
    secret = "torn ACL in the left knee, surgery 2024"
    k = key({**PROFILE, "injuries": secret, "equipment": ["kettlebells"]})
    digest = KEY.fullmatch(k)["digest"]  # type: ignore[index]
    for readable in (k, base64.urlsafe_b64decode(digest + "=").decode("latin-1")):
        assert "torn ACL" not in readable and "kettlebells" not in readable
    # What the ADR's base64 encoding of the signature would have leaked:
    adr_encoding = base64.b64decode(
        base64.b64encode(signature(parse_onboarding({**PROFILE, "injuries": secret}), False))
    )
    assert secret.encode() in adr_encoding


@pytest.mark.parametrize("user_id", ["", "a:b", "a b", "x" * 129, "ü", "a/b", "a\nb", None, 5])
def test_bad_user_ids_are_refused(user_id: Any) -> None:
    with pytest.raises(ContractError, match="user_id"):
        check_user_id(user_id)


@pytest.mark.parametrize("user_id", ["a", "A-b_c.d@e", "7" * 128])
def test_good_user_ids_are_accepted(user_id: str) -> None:
    assert check_user_id(user_id) == user_id


def test_free_text_composed_or_decomposed_is_the_same_answer() -> None:
    composed, decomposed = "épaule droite", "e\u0301paule droite"
    assert composed != decomposed
    assert key({**PROFILE, "injuries": decomposed}) == key({**PROFILE, "injuries": composed})
    assert parse_onboarding({**PROFILE, "injuries": decomposed}).injuries == composed


def test_with_a_secret_the_digest_is_an_hmac_of_the_signature() -> None:
    profile = parse_onboarding(PROFILE)
    keyed = cache_key("u1", profile, False, b"s3cret")
    expected = base64.urlsafe_b64encode(hmac.digest(b"s3cret", signature(profile, False), "sha256"))
    assert KEY.fullmatch(keyed)["digest"] == expected.rstrip(b"=").decode()  # type: ignore[index]
    assert len({keyed, cache_key("u1", profile, False, b"other"), cache_key("u1", profile, False)}) == 3


def test_the_onboarding_hash_is_of_the_answers_alone() -> None:
    profile = parse_onboarding(PROFILE)
    assert onboarding_hash(profile) == onboarding_hash(parse_onboarding(dict(reversed(list(PROFILE.items())))))
    assert onboarding_hash(profile) != onboarding_hash(parse_onboarding({**PROFILE, "session_minutes": 60}))
    assert onboarding_hash(profile, b"s3cret") != onboarding_hash(profile)
