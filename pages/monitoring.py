"""Cache monitoring: hit rate, LLM calls avoided, latency, storage, errors and a TTL what-if,
all aggregated in SQL by `core.monitoring`."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core import monitoring
from core.formatting import format_bytes, format_duration
from pages.common import get_engine, get_settings

OUTCOME_COLORS = {"hit": "#2e9e6b", "miss": "#4063d8", "bypass": "#c28a1e", "error": "#c8423b"}
WHAT_IF_TTLS = [1.0, 6.0, 24.0, 72.0, 168.0]
ROLLUP_HOURS_PER_VIEW = 72
LABEL_FORMAT = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}


def frame(rows: list[dict], granularity: monitoring.Granularity) -> pd.DataFrame:
    """Rows with their time bucket as a sortable label: buckets are categories on the
    charts, so a single bucket is a bar, not a sliver on a time axis."""
    df = pd.DataFrame(rows)
    if not df.empty:
        df["bucket"] = pd.to_datetime(df["bucket"], utc=True).dt.strftime(LABEL_FORMAT[granularity])
    return df


def chart(figure: go.Figure, *, key: str) -> None:
    figure.update_layout(margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title_text="", height=330)
    figure.update_xaxes(type="category")
    st.plotly_chart(figure, key=key)


def dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:.4f}"


def headline(summary: monitoring.Summary, storage: monitoring.Storage) -> None:
    settings = get_settings()
    cols = st.columns(6)
    rate = summary.hit_rate
    cols[0].metric("Hit rate", f"{rate:.1%}" if rate is not None else "–", border=True)
    cols[1].metric("LLM calls avoided", f"{summary.hits:,}", help=f"{summary.llm_calls:,} calls made", border=True)
    cols[2].metric(
        "Cost saved",
        dollars(summary.cost_saved(settings)),
        border=True,
        help="Hits × the average cost of a generation that produced a program",
    )
    cols[3].metric(
        "Time saved",
        format_duration(summary.time_saved_seconds() * 1000),
        border=True,
        help="Hits × (average LLM request latency − average hit latency)",
    )
    cols[4].metric(
        "LLM spend",
        dollars(summary.cost_spent(settings)),
        border=True,
        help="Every billed token at the configured prices, failed generations included",
    )
    cols[5].metric(
        "Cache storage",
        format_bytes(storage.table_bytes),
        border=True,
        help=f"{storage.valid_entries:,} valid and {storage.expired_entries:,} expired entries",
    )


def traffic(requests: pd.DataFrame, since: datetime | None, granularity: monitoring.Granularity) -> None:
    buckets = frame([vars(t) for t in monitoring.traffic_over_time(get_engine(), since, granularity)], granularity)
    rates = buckets[["bucket", "hit_rate"]]
    left, right = st.columns(2)
    with left:
        chart(
            px.line(
                rates,
                x="bucket",
                y="hit_rate",
                markers=True,
                title="Hit rate",
                labels={"bucket": "", "hit_rate": "hit rate"},
            ).update_yaxes(tickformat=".0%", range=[0, 1.05]),
            key="hit_rate",
        )
    with right:
        chart(
            px.bar(
                requests,
                x="bucket",
                y="requests",
                color="outcome",
                title="Requests by outcome",
                color_discrete_map=OUTCOME_COLORS,
                labels={"bucket": ""},
            ),
            key="outcomes",
        )
    calls = buckets.rename(columns={"llm_calls": "LLM calls made", "hits": "LLM calls avoided"}).melt(
        id_vars="bucket", value_vars=["LLM calls made", "LLM calls avoided"], var_name="kind", value_name="calls"
    )
    left, right = st.columns(2)
    with left:
        chart(
            px.bar(
                calls,
                x="bucket",
                y="calls",
                color="kind",
                barmode="group",
                title="LLM calls made and avoided",
                color_discrete_sequence=["#4063d8", "#2e9e6b"],
                labels={"bucket": ""},
            ),
            key="calls",
        )
    with right:
        latency = pd.DataFrame(monitoring.latency_histogram(get_engine(), since))
        chart(
            px.bar(
                latency,
                x="label",
                y="requests",
                color="outcome",
                barmode="group",
                title="Latency: hits and misses",
                color_discrete_map=OUTCOME_COLORS,
                labels={"label": ""},
            ),
            key="latency",
        )


def storage_and_errors(
    storage: monitoring.Storage, since: datetime | None, granularity: monitoring.Granularity
) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown("**Storage**")
        cols = st.columns(3)
        cols[0].metric("Valid entries", f"{storage.valid_entries:,}")
        cols[1].metric("Expired entries", f"{storage.expired_entries:,}")
        cols[2].metric("Average entry", format_bytes(storage.average_entry_bytes))
        written = frame(monitoring.entries_written_over_time(get_engine(), since, granularity), granularity)
        if written.empty:
            st.caption("No entries in the cache.")
        else:
            chart(
                px.bar(
                    written,
                    x="bucket",
                    y="bytes",
                    title="Bytes of the entries in the cache, by when written",
                    labels={"bucket": ""},
                ),
                key="storage",
            )
    with right:
        errors = frame(monitoring.errors_over_time(get_engine(), since, granularity), granularity)
        if errors.empty:
            st.markdown("**Cache errors**")
            st.success("No cache read or write errors in this window.")
        else:
            long = errors.melt(id_vars="bucket", var_name="error", value_name="count")
            long["error"] = long["error"].str.replace("_", " ")
            chart(
                px.bar(long, x="bucket", y="count", color="error", title="Errors", labels={"bucket": ""}),
                key="errors",
            )


def ttl_what_if(summary: monitoring.Summary, since: datetime | None) -> None:
    st.subheader("TTL what-if", anchor=False)
    st.caption(
        "The recorded requests of the window replayed against other expiries: what hit rate and LLM cost each TTL "
        "would have given. The window starts with a cold cache."
    )
    settings = get_settings()
    custom = st.number_input("Custom TTL (hours)", min_value=0.1, max_value=24.0 * 90, value=12.0, step=1.0)
    ttls = sorted({*WHAT_IF_TTLS, settings.cache_ttl_hours, float(custom)})
    outcomes = monitoring.replay_ttls(get_engine(), ttls, since)
    if outcomes and outcomes[0].sampled_share < 1:
        st.caption(f"Estimated from a uniform sample of {outcomes[0].sampled_share:.0%} of the cache keys.")
    cost_per_call = summary.cost_per_llm_call(settings)
    table = pd.DataFrame(
        {
            "TTL": [
                f"{o.ttl_hours:g} h" + (" (configured)" if o.ttl_hours == settings.cache_ttl_hours else "")
                for o in outcomes
            ],
            "Hit rate": [o.hit_rate or 0.0 for o in outcomes],
            "LLM calls": [o.llm_calls for o in outcomes],
            "LLM cost": [o.llm_calls * cost_per_call for o in outcomes],
        }
    )
    left, right = st.columns([3, 2])
    with left:
        chart(
            px.bar(table, x="TTL", y="Hit rate", title="Hit rate by TTL", text_auto=".0%").update_yaxes(
                tickformat=".0%", range=[0, 1.05]
            ),
            key="ttl",
        )
    with right:
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={
                "Hit rate": st.column_config.NumberColumn(format="percent"),
                "LLM cost": st.column_config.NumberColumn(format="dollar"),
            },
        )


st.title("Cache monitoring")
controls = st.columns([3, 2, 5])
window = controls[0].segmented_control(
    "Window",
    ["24h", "7d", "30d", "all"],
    default="7d",
    key="window",
    required=True,
    format_func=lambda w: {"24h": "24 h", "7d": "7 days", "30d": "30 days", "all": "All"}[w],
)
default_granularity: monitoring.Granularity = "day" if window in ("30d", "all") else "hour"
granularity = controls[1].segmented_control(
    "Granularity",
    monitoring.GRANULARITIES,
    default=default_granularity,
    key="granularity",
    required=True,
    format_func=str.capitalize,
)
since = monitoring.window_start(window)
engine = get_engine()
# Settled hours into the hourly rollup, a bounded amount per view (cron runs `python -m core
# rollup` for the rest); a no-op most of the time.
monitoring.refresh_rollup(engine, max_hours=ROLLUP_HOURS_PER_VIEW)
summary = monitoring.summary(engine, since)
storage = monitoring.storage(engine)
headline(summary, storage)

requests = frame(monitoring.requests_over_time(engine, since, granularity), granularity)
if requests.empty:
    st.info(
        "No requests in this window yet. Generate a program on the **Generate program** page and the charts "
        "fill in here.",
        icon=":material/insights:",
    )
else:
    traffic(requests, since, granularity)
storage_and_errors(storage, since, granularity)
if not requests.empty:
    ttl_what_if(summary, since)
