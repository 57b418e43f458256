"""The history's CSV export opened in a spreadsheet: every cell is data, never a formula
(OWASP, "CSV Injection")."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from core.store.history import CSV_COLUMNS, HistoryFilter, HistoryRecord, export_csv, insert_program, spreadsheet_cell

HOSTILE = [
    ('=HYPERLINK("http://x","click")', '\'=HYPERLINK("http://x","click")'),
    ("@SUM(1)", "'@SUM(1)"),
    ("-1+2", "'-1+2"),
    ("+1", "'+1"),
    ("-1", "'-1"),  # a negative number typed as text is still text
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
]


@pytest.mark.parametrize(("typed", "exported"), HOSTILE)
def test_text_a_spreadsheet_would_run_gets_a_leading_quote(typed: str, exported: str) -> None:
    assert spreadsheet_cell(typed) == exported


@pytest.mark.parametrize(
    ("value", "exported"),
    [
        ("client-7", "client-7"),
        ("a=b", "a=b"),  # only the first character starts a formula
        ("", ""),
        (None, ""),
        (True, "True"),
        (42, 42),  # real numbers stay numbers, negative ones included
        (-3.5, -3.5),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02 03:04:05+00:00"),
    ],
)
def test_data_is_exported_as_it_is(value: object, exported: object) -> None:
    assert spreadsheet_cell(value) == exported


def test_every_text_cell_of_the_export_is_neutralized_and_quoted(engine: Engine) -> None:
    # An adopted table holds the product's earlier rows, whose user ids and models Coach
    # Cache never checked.
    typed = [t for t, _ in HOSTILE]
    with engine.begin() as connection:
        for second, user_id in enumerate(typed):
            record = HistoryRecord(
                user_id=user_id,
                program_json="{}",
                onboarding_responses={},
                has_paid_access=True,
                source="llm",
                cache_key=user_id,
                latency_ms=1.5,
                model="-model",
                created_at=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC),
            )
            insert_program(connection, record)
    text = export_csv(engine, HistoryFilter()).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == CSV_COLUMNS
    exported = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in reversed(rows[1:])]
    assert [r["user_id"] for r in exported] == [e for _, e in HOSTILE]
    assert [r["cache_key"] for r in exported] == [e for _, e in HOSTILE]
    assert {(r["model"], r["latency_ms"], r["has_paid_access"]) for r in exported} == {("'-model", "1.5", "True")}
    # Every cell quoted, as OWASP advises, the header included.
    assert text.startswith('"id","created_at","user_id"') and '"1.5"' in text
