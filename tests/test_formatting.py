"""How amounts read: the rule the headline applies and the tables' printf format shows."""

from __future__ import annotations

import pytest

from core.formatting import DOLLAR_PRINTF, counted, format_dollars

DOLLARS_SHOWN = [
    (0.0, "$0"),
    (0.001143, "$0.001143"),  # one gpt-4o-mini program: cents would say $0.00
    (0.0023, "$0.0023"),
    (0.00012345, "$0.0001234"),
    (0.5, "$0.5"),
    (12.3456, "$12.35"),
    (123.456, "$123.5"),
    (1234.567, "$1,235"),
    (999.96, "$1,000"),
    (12_345.6, "$12,350"),
]


@pytest.mark.parametrize(("amount", "shown"), DOLLARS_SHOWN)
def test_dollars_keep_four_significant_digits_as_the_tables_printf_does(amount: float, shown: str) -> None:
    # sprintf-js's %,.4g: toPrecision(4), trailing zeros dropped, thousands separated (the
    # browser test checks these against Streamlit's own sprintf).
    assert DOLLAR_PRINTF == "$%,.4g"
    assert format_dollars(amount) == shown


@pytest.mark.parametrize(
    ("count", "noun", "plural", "shown"),
    [
        (1, "day", None, "1 day"),
        (0, "day", None, "0 days"),
        (7, "session", None, "7 sessions"),
        (1, "expired entry", "expired entries", "1 expired entry"),
        (1024, "entry", "entries", "1,024 entries"),
    ],
)
def test_a_count_takes_the_singular_for_one_only(count: int, noun: str, plural: str | None, shown: str) -> None:
    assert counted(count, noun, plural) == shown
