"""One value for what a generation was billed (core.prices.Billed): a kind of token is named
where it is priced (core/prices.py), where a generator reads it from its server's answer
(core/generators/) and in the migrations that made its columns; everything else takes the
kinds from Billed's fields, so that a new kind needs no change anywhere else."""

from __future__ import annotations

import re
from pathlib import Path

from core.prices import TOKEN_FIELDS, WHOLE_FIELDS, Billed

ROOT = Path(__file__).resolve().parent.parent
# Where a kind may be named: where it is priced, where it is reported, and the landed migrations.
NAMED_IN = (ROOT / "core" / "prices.py", ROOT / "core" / "generators", ROOT / "core" / "store" / "migrations")
# Each kind's name, wherever it stands (`saved_cached_tokens`, `"reasoning_tokens"`, `.prompt_tokens`),
# but the cap on a completion's length, a setting that bills nothing.
KIND = re.compile(rf"(?<!max_)(?:{'|'.join(TOKEN_FIELDS)})")


def _named() -> list[str]:
    found = []
    for path in sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py")]):
        if any(path == place or place in path.parents for place in NAMED_IN):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if KIND.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_a_kind_of_billed_token_is_named_only_where_it_is_priced_reported_or_migrated() -> None:
    assert _named() == []


def test_every_billed_token_is_priced_once_each_part_at_its_own_price_or_as_its_whole() -> None:
    billed = Billed(**{name: 10_000 if name in WHOLE_FIELDS else 1_000 for name in TOKEN_FIELDS})
    counts = billed.by_price()
    # The parts are inside the whole kinds: the prices share out the wholes, no more, no less.
    assert sum(counts.values()) == billed.total == sum(getattr(billed, name) for name in WHOLE_FIELDS)
    assert all(count >= 0 for count in counts.values())
