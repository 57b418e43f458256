"""Which generator's programs did not fit their clients, as a table: on the monitoring page,
and for a trial on the admin page."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.operations.fit_report import FitReport


def fit_failures(reports: list[FitReport], *, key: str) -> None:
    """Which generator's programs did not fit their clients, by rule: a model or prompt that
    fails clients shows here (monitoring) or in its trial before coaches reject its programs."""
    if not reports:
        return
    rules = sorted({rule for report in reports for rule in report.by_rule})
    st.dataframe(
        pd.DataFrame(
            {
                "Generator": [r.generator_version or "unknown" for r in reports],
                "Refused": [r.refused for r in reports],
                "Repaired": [r.repaired for r in reports],
                **{rule: [r.by_rule.get(rule, 0) for r in reports] for rule in rules},
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={
            "Refused": st.column_config.NumberColumn(help="Programs no attempt made fit: nothing cached or saved"),
            "Repaired": st.column_config.NumberColumn(help="Programs that fit only once sent back with what failed"),
        },
        key=key,
    )
    st.caption(
        "Programs that broke a rule for their client (or the contract), by generator: each rule's column counts "
        "the generations any attempt of which broke it."
    )
