"""How durations, sizes and dollars read, on the pages and in core's own labels (latency bins)."""

from __future__ import annotations

import math
from datetime import timedelta

# Costs are fractions of a cent a program: four significant digits keep them readable at
# any size. The tables show the same rule as a printf format (sprintf-js's `%g`: rounded
# to four digits, trailing zeros dropped), so a table cell and a headline figure agree,
# and the columns stay numbers that sort.
DOLLAR_DIGITS = 4
DOLLAR_PRINTF = f"$%,.{DOLLAR_DIGITS}g"


def format_bytes(size: float | None) -> str:
    if size is None:
        return "–"
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


def format_duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:,.1f} ms"
    return str(timedelta(seconds=round(ms / 1000))) if ms >= 60_000 else f"{ms / 1000:.1f} s"


def format_dollars(amount: float) -> str:
    """`$0.001875`, `$0.5`, `$12.35`, `$1,235`: what DOLLAR_PRINTF shows in a table."""
    rounded = float(f"{amount:.{DOLLAR_DIGITS}g}")
    if rounded == 0:
        return "$0"
    decimals = max(0, DOLLAR_DIGITS - 1 - math.floor(math.log10(abs(rounded))))
    text = f"{rounded:,.{decimals}f}"
    return f"${text.rstrip('0').rstrip('.') if '.' in text else text}"
