"""How durations, sizes, dollars and counts read, on the pages and in core's own labels (latency
bins), and text from users, the database or the LLM as Markdown shows it: as text."""

from __future__ import annotations

import math
import re
from datetime import timedelta

# Costs are fractions of a cent a program: four significant digits keep them readable at
# any size. The tables show the same rule as a printf format (sprintf-js's `%g`: rounded
# to four digits, trailing zeros dropped), so a table cell and a headline figure agree,
# and the columns stay numbers that sort.
DOLLAR_DIGITS = 4
DOLLAR_PRINTF = f"$%,.{DOLLAR_DIGITS}g"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 day`, `3 days`, `1,024 entries`: a count and its noun, singular for one only.
    Every count written in words goes through here, so none reads "1 days"."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def column_heading(name: str) -> str:
    """A column's name as a table heading: `cache_read_errors` is "Cache read errors"."""
    return name.replace("_", " ").capitalize()


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


def markdown_code(value: object) -> str:
    """`value` as a Markdown code span, on one line: an id, model, version, source, key or
    name from the database or a user, shown exactly as text wherever Markdown is rendered.
    Escaping with backslashes is not enough for these: GitHub-flavoured Markdown turns a
    bare `http://…`, `www.…` or e-mail address into a link even when escaped, and decodes
    `&amp;`; nothing inside a code span is read, and a longer fence than any run of
    backticks in the value keeps it inside."""
    text = " ".join(str(value).split()) or " "  # `` would be shown as two backticks
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    # A value starting or ending with a backtick would merge with the fence; CommonMark
    # drops one space on each side, so the padding is not shown.
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|$~!:&])")
# What GitHub-flavoured Markdown makes a link of even when escaped (it finds them in the text
# after escapes are read): a scheme before `:`, `www.`, and an e-mail's `@` (between the
# characters an address is made of). A word joiner (U+2060, invisible) inside each keeps them
# text; it is copied with them, so ids and URLs a coach may copy go in code spans instead
# (markdown_code), and an `@` no address is made around (the rule "'.', '_', '@' or '-'") has none.
AUTOLINK_START = re.compile(r"(?i)\b(https?|ftp|mailto|www)(?=\\?[:.])|(?<=[\w.+-])(?=@[\w\\-])")
WORD_JOINER = "\u2060"
LIST_MARKER = re.compile(r"^(\s*)([-+])", re.MULTILINE)
ORDERED_MARKER = re.compile(r"^(\s*\d+)\.", re.MULTILINE)


def escape_markdown(text: str) -> str:
    """Text from users, the database or the LLM is shown as text, never as markup (links,
    bare URLs and e-mail addresses, images, HTML, entities, Streamlit directives such as
    :red[...]): on the pages and in the Markdown a coach hands a client alike."""
    text = MARKDOWN_SPECIAL.sub(r"\\\1", text)
    text = AUTOLINK_START.sub(lambda m: m.group(0) + WORD_JOINER, text)
    text = LIST_MARKER.sub(r"\1\\\2", text)
    return ORDERED_MARKER.sub(r"\1\\.", text)


def one_line(value: object) -> str:
    """A value as the text of one line (a heading, a list item, a table cell), shown as text.
    A table cell's `|` is escaped with the rest."""
    return escape_markdown(" ".join(str(value).split()))
