"""Cache monitoring: hit rate, LLM calls avoided, latency, storage, errors and a TTL what-if,
all aggregated in SQL by `core.monitoring`. A view only reads, and its figures are shared for
a minute; the rollup is cron's (`python -m core rollup`) or the Refresh button's."""

from __future__ import annotations

import html
import re

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.formatting import DOLLAR_PRINTF, column_heading, format_bytes, format_dollars, format_duration
from core.operations import alerts, monitoring, spend
from core.operations.rollout import reports
from core.prices import PARTS_BILLED_AS_WHOLE, PRICE_KINDS
from core.store import alert_states
from pages.common import escape_markdown, get_engine, get_settings
from pages.fit_table import fit_failures

OUTCOME_COLORS = {"hit": "#2e9e6b", "miss": "#4063d8", "bypass": "#c28a1e", "error": "#c8423b"}
# How long the figures of a window are shared by every view before they are read again.
FRESH_SECONDS = 60
# What one click on Refresh rolls up at most: a bounded wait (cron rolls up the rest).
ROLLUP_HOURS_PER_REFRESH = 72
LABEL_FORMAT = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d"}
# A table cell with no value (an unpriced model's cost, a share of no tokens): the dash the
# headline shows, where the grid would otherwise write "None".
MISSING = "–"


def frame(rows: list[dict], granularity: monitoring.Granularity) -> pd.DataFrame:
    """Rows with their time bucket as a sortable label: buckets are categories on the
    charts, so a single bucket is a bar, not a sliver on a time axis."""
    df = pd.DataFrame(rows)
    if not df.empty:
        df["bucket"] = pd.to_datetime(df["bucket"], utc=True).dt.strftime(LABEL_FORMAT[granularity])
    return df


def code_span(text: str) -> str:
    """`text` as a Markdown code span: shown as it is, never as Markdown, HTML or a link. (Escaped
    with backslashes, a bare URL is still made a link by GitHub's autolinks.) The fence is longer
    than any run of backticks in it; the spaces inside it are the syntax's, not shown."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def plotly_text(value: str) -> str:
    """A value from the database as Plotly text: Plotly draws some HTML in legends and hover
    labels (<a href>, <b>, <br>) and reads entities, so a model name is shown as it is."""
    return html.escape(value, quote=False)


@st.cache_data(ttl=FRESH_SECONDS, show_spinner="Reading the figures…")
def read_overview(database_url: str, window: str, granularity: monitoring.Granularity) -> monitoring.Overview:
    # Keyed by the URL's text: the engine (one per process, in pages.common) is not hashable.
    return monitoring.overview(get_engine(), window, granularity)


@st.cache_data(ttl=FRESH_SECONDS, show_spinner=False)
def read_rollout_spend(database_url: str, window: str) -> reports.RolloutSpend:
    return reports.spend(get_engine(), get_settings(), monitoring.window_start(window))


@st.cache_data(ttl=FRESH_SECONDS, show_spinner=False)
def read_alerts(database_url: str) -> tuple[list[alerts.Alert], list[alert_states.State]]:
    """The rules as they evaluate now (the page never sends: cron's `alerts check` does), and
    what the webhook was last told."""
    return alerts.evaluate(get_engine(), get_settings()), alert_states.read(get_engine())


def alert_banner() -> None:
    evaluated, states = read_alerts(get_settings().database_url)
    for alert in evaluated:
        if alert.firing:
            st.error(f"**{alert.title}**: {escape_markdown(alert.seen)}", icon=":material/notifications_active:")
    if undelivered := [state for state in states if state.delivery_error]:
        st.warning(
            f"Alerts could not be sent to {escape_markdown(get_settings().describe_webhook() or 'the webhook')} "
            f"({escape_markdown(undelivered[0].delivery_error or '')}): sent again on the next `alerts check`.",
            icon=":material/notifications_off:",
        )


@st.cache_data(ttl=FRESH_SECONDS, show_spinner=False)
def read_budgets(database_url: str) -> list[spend.BudgetSpend]:
    return spend.against_budgets(get_engine(), get_settings())


def budgets(spends: list[spend.BudgetSpend]) -> None:
    """Spend today and this month against each budget set, whatever the window."""
    if not spends:
        return
    cols = st.columns(len(spends))
    for col, budget in zip(cols, spends, strict=True):
        name = {"day": "today", "month": "this month"}[budget.period]
        col.metric(
            f"LLM spend {name}, of the budget",
            f"{format_dollars(budget.spent)} of {format_dollars(budget.budget)}",
            f"{budget.share:.0%}",
            delta_color="off",
            border=True,
            help=f"{budget.setting}: spend since {budget.since:%Y-%m-%d %H:%M} UTC (by the database's clock), "
            "requests and rollouts, as invoiced",
        )
        col.progress(min(budget.share, 1.0))
    if spent := [b for b in spends if b.reached]:
        what = "the offline coach's programs" if get_settings().budget_exceeded == "offline" else "no programs"
        st.error(
            f"**LLM budget spent**: {escape_markdown(spent[0].describe())}. Misses get {what} until it allows.",
            icon=":material/savings:",
        )


def chart(figure: go.Figure, *, key: str) -> None:
    figure.update_layout(margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title_text="", height=330)
    figure.update_xaxes(type="category")
    st.plotly_chart(figure, key=key)


def headline(
    summary: monitoring.Summary,
    costs: monitoring.Costs,
    rollouts: reports.RolloutSpend,
    storage: monitoring.Storage,
) -> None:
    # Two rows of three: six in one row cut the labels off at common widths.
    top, bottom = st.columns(3), st.columns(3)
    rate = summary.hit_rate
    top[0].metric("Hit rate", f"{rate:.1%}" if rate is not None else "–", border=True)
    top[1].metric(
        "LLM calls avoided",
        f"{costs.llm_calls_avoided:,}",
        help=f"Hits on programs an LLM made. {costs.llm_calls:,} LLM calls made; "
        f"{summary.generations:,} programs generated by any generator.",
        border=True,
    )
    top[2].metric(
        "Cost saved",
        format_dollars(costs.saved),
        border=True,
        help="For each hit, what the generation that made its entry was billed, at its model's price",
    )
    bottom[0].metric(
        "LLM spend",
        format_dollars(costs.spent + rollouts.total),
        border=True,
        help="Every billed token at its model's price (MODEL_PRICES), failed generations and rollouts included",
    )
    bottom[1].metric(
        "Time saved",
        format_duration(summary.time_saved_seconds() * 1000),
        border=True,
        help="Hits × (average generation latency − average hit latency)",
    )
    bottom[2].metric(
        "Cache storage",
        format_bytes(storage.table_bytes),
        border=True,
        help=f"{storage.valid_entries:,} valid and {storage.expired_entries:,} expired entries",
    )
    if costs.spent:
        spend = costs.spend
        st.caption(
            f"Requests' LLM spend: {format_dollars(spend.input)} input, {format_dollars(spend.cached_input)} "
            f"cached input (read from the LLM server's prompt cache, at its lower price), "
            f"{format_dollars(spend.output)} output."
        )
    if rollouts.total:
        st.caption(
            f"Rollouts: {format_dollars(rollouts.batch)} in batches (at the Batch API's price), "
            f"{format_dollars(rollouts.live)} in live pre-warms, {format_dollars(rollouts.trials)} in trials; "
            f"their pre-warmed hits would have cost {format_dollars(rollouts.saved)} live."
        )
    if unpriced_models := sorted({*costs.unpriced_models, *rollouts.unpriced_models}):
        # Model names are the LLM server's: shown as they are, never as Markdown or a link.
        unpriced = ", ".join(code_span(model) for model in unpriced_models)
        st.warning(
            f"No price for {unpriced}: its tokens are left out of LLM spend and cost saved. Add it to `MODEL_PRICES`.",
            icon=":material/price_change:",
        )
    if costs.hits_saving_unknown:
        st.caption(
            f"{costs.hits_saving_unknown:,} hits served entries whose generation's tokens were not recorded "
            "(made before Coach Cache recorded them): their saving is not in cost saved."
        )


def traffic(figures: monitoring.Overview, requests: pd.DataFrame, granularity: monitoring.Granularity) -> None:
    buckets = frame([vars(t) for t in figures.traffic], granularity)
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
    calls = buckets.rename(columns={"generations": "Generated", "hits": "Served from the cache"}).melt(
        id_vars="bucket", value_vars=["Generated", "Served from the cache"], var_name="kind", value_name="programs"
    )
    left, right = st.columns(2)
    with left:
        chart(
            px.bar(
                calls,
                x="bucket",
                y="programs",
                color="kind",
                barmode="group",
                title="Programs generated and served from the cache",
                color_discrete_sequence=["#4063d8", "#2e9e6b"],
                labels={"bucket": ""},
            ),
            key="calls",
        )
    with right:
        latency = pd.DataFrame(figures.latency)
        present = set(latency["label"])
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
                # Plotly orders categories as the first outcome drawn has them: give the bins' order.
                category_orders={"label": [label for label in monitoring.LATENCY_BIN_LABELS if label in present]},
            ),
            key="latency",
        )


def storage_and_errors(figures: monitoring.Overview, granularity: monitoring.Granularity) -> None:
    storage = figures.storage
    left, right = st.columns(2)
    with left:
        st.markdown("**Storage**")
        cols = st.columns(3)
        cols[0].metric("Valid entries", f"{storage.valid_entries:,}")
        cols[1].metric("Expired entries", f"{storage.expired_entries:,}")
        cols[2].metric("Average entry", format_bytes(storage.average_entry_bytes))
        written = frame(figures.entries_written, granularity)
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
        errors = frame(figures.errors, granularity)
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


def rejected_text(usage: monitoring.GeneratorUsage) -> str:
    share = usage.rejected_share
    return "–" if share is None else f"{usage.rejected:,} ({share:.0%})"


def by_generator(figures: monitoring.Overview, granularity: monitoring.Granularity) -> None:
    usage = figures.usage
    st.subheader("By generator", anchor=False)
    st.caption(
        "Each generator identity (model, prompt and rules version) apart, so a model or prompt change shows, "
        "and what it cost. A hit counts for the generator that made the entry it served; an offline "
        "generation calls no LLM. Rejected: the programs it handed out that a coach rejected, counted when they "
        "were handed out."
    )
    settings = get_settings()
    st.dataframe(
        pd.DataFrame(
            {
                "Generator": [u.label for u in usage],
                "Hit rate": [u.hit_rate for u in usage],
                "Hits": [u.hits for u in usage],
                "Generated": [u.generations for u in usage],
                "LLM calls": [u.llm_calls for u in usage],
                "Tokens": [u.billed.total for u in usage],
                "LLM spend": [u.cost_spent(settings) for u in usage],
                "Cost saved": [u.cost_saved(settings) for u in usage],
                # One column, count and share: two made the table scroll sideways at 1280 px.
                "Rejected": [rejected_text(u) for u in usage],
            }
        ),
        hide_index=True,
        width="stretch",
        placeholder=MISSING,
        column_config={
            "Hit rate": st.column_config.NumberColumn(format="percent"),
            "Rejected": st.column_config.TextColumn(
                help="Programs it handed out that a coach rejected, and their share"
            ),
            "LLM spend": st.column_config.NumberColumn(format=DOLLAR_PRINTF, help="–: no price for the model"),
            "Cost saved": st.column_config.NumberColumn(format=DOLLAR_PRINTF, help="–: no price for the model"),
        },
        key="generators",
    )
    spend_by_kind(usage)
    fit_failures(figures.fit, key="fit_failures")
    over_time = frame(
        [
            {
                "bucket": bucket,
                "generator": plotly_text(u.label),
                "hit rate": u.hit_rate,
                "LLM calls": u.llm_calls,
                "tokens": u.billed.total,
                "cost": u.cost_spent(settings),
                "rejected share": u.rejected_share,
            }
            for bucket, u in figures.usage_over_time
        ],
        granularity,
    )
    charts = [("hit rate", "Hit rate by generator", px.line)]
    if any(u.rejected for u in usage):
        charts += [("rejected share", "Programs rejected by coaches, by generator", px.line)]
    if over_time["tokens"].sum() > 0:
        charts += [
            ("LLM calls", "LLM calls by generator", px.bar),
            ("tokens", "Tokens billed by generator", px.bar),
            ("cost", "LLM spend by generator (USD)", px.bar),
        ]
    for row in (charts[start : start + 2] for start in range(0, len(charts), 2)):
        for column, (measure, title, plot) in zip(st.columns(2), row, strict=False):
            with column:
                figure = plot(over_time, x="bucket", y=measure, color="generator", title=title, labels={"bucket": ""})
                # Generator labels are long: the legend goes under the plot, not beside it.
                figure.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.15})
                if measure in ("hit rate", "rejected share"):
                    figure.update_traces(mode="lines+markers").update_yaxes(tickformat=".0%", range=[0, 1.05])
                else:  # counts and dollars start at 0, even when every one is 0 (not -1 to 1)
                    figure.update_yaxes(rangemode="tozero")
                chart(figure, key=f"generator_{measure}")
    if over_time["tokens"].sum() == 0:
        st.caption("No LLM tokens were billed in this window: the offline generator makes no LLM call.")


def spend_by_kind(usage: list[monitoring.GeneratorUsage]) -> None:
    settings = get_settings()
    spends = [u.spend(settings) for u in usage]
    st.caption(
        "LLM spend by kind of token, each at its model's price: input the LLM server read from its prompt cache "
        "(the system prompt and schema every request begins with) is billed at the cached-input price; reasoning "
        "tokens are part of the output."
    )
    st.dataframe(
        pd.DataFrame(
            {
                "Generator": [u.label for u in usage],
                # Input, cached input, output: a column per price.
                **{column_heading(kind): [s.by_price()[kind] if s else None for s in spends] for kind in PRICE_KINDS},
                "Input cached": [u.cached_share for u in usage],
                # Parts billed as their whole is (reasoning tokens: as output), each a column.
                **{column_heading(name): [getattr(u.billed, name) for u in usage] for name in PARTS_BILLED_AS_WHOLE},
            }
        ),
        hide_index=True,
        width="stretch",
        placeholder=MISSING,
        column_config={
            **{
                column_heading(kind): st.column_config.NumberColumn(
                    format=DOLLAR_PRINTF, help="–: no price for the model"
                )
                for kind in PRICE_KINDS
            },
            "Input cached": st.column_config.NumberColumn(
                format="percent", help="Share of its input tokens read from the prompt cache"
            ),
        },
        key="spend",
    )


@st.fragment
def ttl_what_if(served: monitoring.ServedRequests, costs: monitoring.Costs) -> None:
    """A fragment: another custom TTL reruns only this, replaying the requests already read."""
    st.subheader("TTL what-if", anchor=False)
    st.caption(
        "The served requests of the window replayed against other expiries: what hit rate and LLM cost each TTL "
        "would have given. A forced refresh, the first request after an invalidation (admin page or CLI), and "
        "a miss because a coach rejected the cached program generate whatever the TTL; errors served nothing "
        "and are left out, as in the hit rate above; other misses (another generator, an entry that failed "
        "validation or could not be read or written) are replayed as the TTL decides. The window starts with a "
        "cold cache."
    )
    settings = get_settings()
    custom = st.number_input("Custom TTL (hours)", min_value=0.1, max_value=24.0 * 90, value=12.0, step=1.0)
    ttls = sorted({*monitoring.WHAT_IF_TTLS, settings.cache_ttl_hours, float(custom)})
    outcomes = served.replay(ttls)
    if outcomes and outcomes[0].sampled_share < 1:
        st.caption(f"Estimated from a uniform sample of {outcomes[0].sampled_share:.0%} of the cache keys.")
    table = pd.DataFrame(
        {
            "TTL": [f"{o.ttl_hours:g} h" for o in outcomes],
            "Configured": [o.ttl_hours == settings.cache_ttl_hours for o in outcomes],
            "Hit rate": [o.hit_rate or 0.0 for o in outcomes],
            "Generations": [round(o.estimated_generations) for o in outcomes],
            "LLM cost": [o.cost(costs) for o in outcomes],
        }
    )
    chart(
        px.bar(table, x="TTL", y="Hit rate", title="Hit rate by TTL (green: configured)", text_auto=".0%")
        # One trace, coloured bar by bar: a trace per colour would reorder the TTLs.
        .update_traces(marker_color=[OUTCOME_COLORS["hit" if c else "miss"] for c in table["Configured"]])
        .update_yaxes(tickformat=".0%", range=[0, 1.05]),
        key="ttl",
    )
    # Under the chart, not beside it: beside it, its last column was cut off at 1280 px.
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        placeholder=MISSING,
        column_config={
            "Configured": st.column_config.CheckboxColumn(help="CACHE_TTL_HOURS"),
            "Hit rate": st.column_config.NumberColumn(format="percent"),
            "LLM cost": st.column_config.NumberColumn(format=DOLLAR_PRINTF),
        },
        key="ttl_table",
    )


st.title("Cache monitoring")
# Under the title, filled once Refresh (below) has had its say.
alerts_area = st.container()
# Wide enough for the window's four options at 1280 px: narrower, "All" slid under the next column.
controls = st.columns([4, 2, 4], vertical_alignment="bottom")
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
if controls[2].button(
    "Refresh",
    icon=":material/refresh:",
    help="Roll up the hours that have settled and read every figure again",
):
    monitoring.refresh_rollup(get_engine(), max_hours=ROLLUP_HOURS_PER_REFRESH)
    read_overview.clear()
    read_rollout_spend.clear()
    read_alerts.clear()
    read_budgets.clear()
with alerts_area:
    alert_banner()
figures = read_overview(get_settings().database_url, window, granularity)
controls[2].caption(f"As of {figures.as_of:%H:%M:%S} UTC, read again after a minute or on Refresh.")
usage = figures.usage
costs = monitoring.costs(usage, get_settings())
rollouts = read_rollout_spend(get_settings().database_url, window)
headline(figures.summary, costs, rollouts, figures.storage)
budgets(read_budgets(get_settings().database_url))

requests = frame(figures.requests, granularity)
if requests.empty:
    st.info(
        "No requests in this window yet. Generate a program on the **Generate program** page and the charts "
        "fill in here.",
        icon=":material/insights:",
    )
else:
    traffic(figures, requests, granularity)
    by_generator(figures, granularity)
storage_and_errors(figures, granularity)
if not requests.empty:
    ttl_what_if(figures.served, costs)
