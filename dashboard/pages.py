"""The dashboard's five pages (executive, store manager, inventory analyst, data quality & ML, stream health).

Every number comes from :mod:`dashboard.queries` through one read-only ``bi_reader`` client. A page whose data
is missing says what to run instead of showing an error; a failing query shows its message, never a traceback.
Headline numbers are ``st.metric`` cards whose labels the browser tests look up.

Ids, names and categories come from POS data, which may hold any printable text: they are shown literally,
never read as Markdown (:func:`md_literal`) or as Plotly's HTML subset (:func:`plot_literal`, :func:`html_literal`).
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
import threading
from dataclasses import dataclass

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import queries as Q

log = logging.getLogger(__name__)

RISK_COLOURS = {"HIGH": "#d62728", "MEDIUM": "#ff9f0e", "LOW": "#2ca02c", "UNKNOWN": "#9a9a9a",
                "CRITICAL": "#7f0000"}
#: a store whose newest window ends more than this many minutes before the newest of all stores is flagged on the
#: live strip (its figures are its own last 24 hours, older than the others'); a quiet store misses a few windows
STALE_FEED_MINUTES = 60
#: a streaming query without a committed micro-batch for longer than this is flagged on the Stream health page
#: (the stream is stopped, or no events arrive: Spark commits no micro-batch without new records)
STALE_BATCH_MINUTES = 15
NO_STREAM = ("No micro-batch committed yet. Start the platform with `make local-up` (the `streaming` program) and "
             "send events: `make demo` or `make produce`.")
NO_LIVE = ("No live data yet. Start the platform with `make local-up` and send events: `make demo` "
           "(replays real POS data) or `make produce`.")
NO_NIGHTLY = ("No nightly data yet. The star schema fills when `daily_etl` runs: `make demo` loads one day, "
              "`make nightly` loads DATE and BACKFILL days before it.")
NO_ML = ("No forecasts yet. Train and predict with `make nightly` (demand_forecast_training, then "
         "batch_predictions).")


#: how a restock alert's quantity is computed (streaming.transforms.recommended_quantity), shown above the table
ORDER_RULE = ("recommended_quantity = 2 × reorder_point + ⌈order units/h × 24 × lead time⌉ − current_stock "
              "(at least 1); lead time LEAD_TIME_DAYS = {lead} days on this platform.")
#: the alerts table's rate columns: the rate the quantity used and the one of cover and risk (since 2026-12-07)
ALERT_COLUMNS = {
    "order_velocity": st.column_config.NumberColumn(
        "order units/h", format="%.2f",
        help="the rate the recommended quantity was computed from: the trailing rate of the units sold with an "
             "anomalous window (a bulk line) counted at most mean + 3 sigma of its baseline, or, for a SKU without "
             "a baseline, a day of its reorder point's planned rate (with LEAD_TIME_DAYS 0: the store's pooled "
             "3-sigma cap); empty for alerts before 2026-12-07"),
    "sales_velocity": st.column_config.NumberColumn(
        "sales units/h", format="%.2f",
        help="trailing sales rate (net of returns that net at most what the order's cap set aside): the rate of "
             "hours_of_cover and priority; above order units/h when a bulk line was capped"),
    "hours_of_cover": st.column_config.NumberColumn(format="%.1f h"),
}


def _lead_time_days() -> str:
    """LEAD_TIME_DAYS as this process's settings read it (core.settings: the platform's environment, which the
    stream reads too), as text; '?' when the settings cannot be read (the page still shows the alerts)."""
    from core.settings import get_settings

    try:
        return str(get_settings().lead_time_days)
    except Exception:  # noqa: BLE001 - a settings error is reported by the page's context, not here
        return "?"


@dataclass
class Context:
    """What every page needs: the bi_reader client, database, known stores, star-schema date range, refresh."""

    client: object
    db: str
    stores: list[str]
    first_day: dt.date | None
    last_day: dt.date | None
    refresh_s: float


_local = threading.local()


def _client(s):
    """This thread's bi_reader client: Streamlit runs sessions and fragments in threads of their own, and a
    clickhouse-connect client (one HTTP session) must not run two queries at once."""
    key = (s.clickhouse_url, s.clickhouse_database, s.clickhouse_http_port, s.dashboard_clickhouse_timeout_seconds)
    if getattr(_local, "key", None) != key:
        from core.clickhouse import new_client

        # DASHBOARD_CLICKHOUSE_TIMEOUT_SECONDS: a frozen endpoint is reported on the page, not waited on for 300 s
        _local.client = new_client(s, s.clickhouse_database, readonly=True,
                                   timeout=s.dashboard_clickhouse_timeout_seconds)
        _local.key = key
    return _local.client


def md_literal(value) -> str:
    """``value`` as literal text inside Streamlit Markdown (titles, subheaders, captions): an inline code span, in
    which neither Markdown (links, emphasis, HTML) nor Streamlit's extensions (``:red[...]``, ``:material/...:``
    icons, ``$...$`` LaTeX) are read. The fence is one backtick longer than the longest run of backticks in the
    text, padded with a space where the text starts or ends with one (CommonMark 0.31, 6.1 Code spans);
    newlines become spaces."""
    text = " ".join(str(value).splitlines())
    if not text:
        return ""
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html_literal(value) -> str:
    """``value`` as literal text in a Plotly title, label or hover text: Plotly reads a subset of HTML there
    (``<b>``, ``<br>``, ``<a href>``, entities: https://plotly.com/chart-studio-help/adding-HTML-and-links-to-charts/),
    so ``&``, ``<`` and ``>`` become entities, which it shows as the characters."""
    return html.escape(str(value), quote=False)


def plot_literal(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    """A copy of ``df`` whose text columns ``cols`` Plotly shows literally (:func:`html_literal` on each string;
    other values unchanged)."""
    out = df.copy()
    for c in cols:
        out[c] = out[c].map(lambda v: html_literal(v) if isinstance(v, str) else v)
    return out


def _retry_until_readable(db: str, every_s: float) -> None:
    """While ClickHouse cannot be read, check again every ``every_s`` seconds and redraw the whole page once the
    page's context can be read (a page opened during an outage otherwise stayed on its error until reloaded)."""
    st.session_state["retry_checks"] = 0

    @st.fragment(run_every=every_s)
    def retry() -> None:
        from core.settings import get_settings

        checks = st.session_state.get("retry_checks", 0)
        st.session_state["retry_checks"] = checks + 1
        if not checks:            # the first run belongs to the page run that just failed
            return
        try:
            client = _client(get_settings())
            Q.data_range(client, db), Q.stores(client, db)
        except Exception:  # noqa: BLE001 - still unreachable: check again later
            return
        st.rerun()

    retry()


def context() -> Context | None:
    """The page context, or None after showing what to fix (settings missing, ClickHouse unreachable)."""
    from core.settings import ConfigError, get_settings

    try:
        s = get_settings()
        client = _client(s)
        first, last = Q.data_range(client, s.clickhouse_database)
        stores = Q.stores(client, s.clickhouse_database)
    except ConfigError as exc:
        st.error(f"Configuration: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - shown to the user instead of a traceback
        st.error("ClickHouse is not reachable or not migrated yet. Start the platform with `make local-up` "
                 f"(or `make migrate`); this page retries every {s.dashboard_refresh_s:g} s. "
                 f"Details: {md_literal(str(exc)[:300])}")
        log.warning("dashboard context failed: %s", exc)
        _retry_until_readable(s.clickhouse_database, s.dashboard_refresh_s)
        return None
    st.session_state["ctx"] = Context(client, s.clickhouse_database, stores, first, last, s.dashboard_refresh_s)
    return st.session_state["ctx"]


def set_filters(store: str, start: dt.date | None, end: dt.date | None) -> None:
    """Remember the sidebar's filters for the page about to run."""
    st.session_state["filters"] = Q.Filters(store=store or "", start=start, end=end)


def parse_day(text: str | None) -> dt.date | None:
    """YYYY-MM-DD -> date; None for a missing or malformed value (a bad URL parameter is ignored)."""
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


def url_range(start: dt.date | None, end: dt.date | None, lo: dt.date, hi: dt.date,
              default_days: int = 7) -> tuple[dt.date, dt.date]:
    """The date range to preselect from a URL's ``start`` / ``end`` (either may be None: the last
    ``default_days`` days up to ``hi``), clipped to the data's [lo, hi] and put in order: a bookmarked range
    from before a re-replay moved the dates must not stop the page (Streamlit's date input refuses a value
    outside its bounds)."""
    end = min(max(end or hi, lo), hi)
    start = min(max(start or max(lo, hi - dt.timedelta(days=default_days - 1)), lo), hi)
    return (start, end) if start <= end else (end, start)


def _ctx() -> Context | None:
    return st.session_state.get("ctx")


def _filters(**extra) -> Q.Filters:
    f = st.session_state.get("filters") or Q.Filters()
    return Q.Filters(**{**f.__dict__, **extra})


def fetch(name: str, filters: Q.Filters | None = None) -> pd.DataFrame | None:
    """Run dashboard query ``name``; None (after an on-page message) when the query fails."""
    from core.settings import get_settings

    ctx = _ctx()
    try:
        return Q.run(_client(get_settings()), ctx.db, name, filters or _filters())
    except Exception as exc:  # noqa: BLE001 - one failing panel must not take the page down
        st.warning(f"`{name}` could not be read: {md_literal(str(exc)[:300])}")
        log.warning("query %s failed: %s", name, exc)
        return None


def num(x, digits: int = 0) -> str:
    """A number as the cards show it: thousands separators, ``digits`` decimals; '–' for missing."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return "–"
    return f"{float(x):,.{digits}f}"


def _pct_delta(now, before) -> str | None:
    if before is None or pd.isna(before) or not before:
        return None
    return f"{(float(now) - float(before)) / abs(float(before)) * 100:+.1f} % vs same period last week"


def _scope() -> str:
    f = _filters()
    return f"store {md_literal(f.store)}" if f.store else "all stores"


def safe(page):
    """Run a page so that an unexpected error shows as a message with what to do, never as a traceback."""
    import functools

    @functools.wraps(page)
    def run() -> None:
        try:
            page()
        except Exception as exc:  # noqa: BLE001 - the user sees a message; the log keeps the traceback
            if type(exc).__module__.startswith("streamlit"):   # rerun / stop signals are Streamlit's own
                raise
            log.exception("page %s failed", page.__name__)
            st.error(f"This page could not be drawn ({type(exc).__name__}: {md_literal(str(exc)[:200])}). Check that the "
                     "platform runs (`make local-status`); the dashboard log has the details.")
    return run


# ----------------------------------------------------------------------------------------- pages --
@safe
def executive() -> None:
    """Revenue, units and trend against the same period last week; top stores and categories; live strip."""
    st.title("Executive")
    ctx = _ctx()
    if ctx is None:
        return
    _live_strip()
    f = _filters()
    if ctx.last_day is None or f.start is None:
        st.info(NO_NIGHTLY)
        return
    st.subheader(f"{f.start} to {f.end} · {_scope()} (nightly star schema)")
    k = fetch("exec_kpis")
    if k is None or k.empty:
        return
    r = k.iloc[0]
    c = st.columns(4)
    c[0].metric("Revenue", num(r["revenue"], 2), _pct_delta(r["revenue"], r["revenue_prev_week"]))
    c[1].metric("Units sold", num(r["units"]), _pct_delta(r["units"], r["units_prev_week"]))
    margin = r["profit"] / r["revenue_with_cost"] * 100 if r["revenue_with_cost"] else None
    c[2].metric("Gross margin %", num(margin, 1))
    c[3].metric("Stores selling", num(r["stores"]))
    trend = fetch("exec_trend")
    if trend is not None and not trend.empty:
        trend["date"] = pd.to_datetime(trend["date_key"].astype(str), format="%Y%m%d")
        cur = trend[trend["date_key"] >= Q.date_key(f.start)]
        prev = trend[trend["date_key"] <= Q.date_key(f.end - dt.timedelta(days=7))].copy()
        prev["date"] = prev["date"] + pd.Timedelta(days=7)
        fig = go.Figure([go.Scatter(x=cur["date"], y=cur["revenue"], name="revenue", mode="lines+markers"),
                         go.Scatter(x=prev["date"], y=prev["revenue"], name="same day last week",
                                    mode="lines+markers", line=dict(dash="dot"))])
        fig.update_layout(title="Daily revenue vs the same day last week", height=330, margin=dict(t=40, b=10))
        st.plotly_chart(fig, use_container_width=True)
    left, right = st.columns(2)
    top = fetch("exec_top_stores")
    if top is not None and not top.empty:
        left.plotly_chart(px.bar(plot_literal(top, "store_id", "store_name"), x="revenue", y="store_id", orientation="h", title="Top stores by revenue",
                                 hover_data=["store_name", "units"]).update_yaxes(autorange="reversed")
                          .update_layout(height=360), use_container_width=True)
    cats = fetch("exec_top_categories")
    if cats is not None and not cats.empty:
        right.plotly_chart(px.bar(plot_literal(cats, "category"), x="revenue", y="category", orientation="h",
                                  title="Top categories by revenue").update_yaxes(autorange="reversed")
                           .update_layout(height=360), use_container_width=True)


def _live_strip() -> None:
    @st.fragment(run_every=_ctx().refresh_s)
    @safe
    def strip() -> None:
        live = fetch("exec_live")
        if live is None:
            return
        r = live.iloc[0] if not live.empty else None
        if r is None or pd.isna(r["latest_window_end"]) or r["transactions"] in (None, 0):
            st.info(NO_LIVE)
            return
        latest, stalest = pd.Timestamp(r["latest_window_end"]), pd.Timestamp(r["stalest_window_end"])
        st.subheader(f"Live: each store's 24 hours up to its latest window, {latest:%Y-%m-%d %H:%M} UTC · {_scope()}")
        if latest - stalest > pd.Timedelta(minutes=STALE_FEED_MINUTES):   # say how old a stopped store's figures are
            st.warning(f"A store's latest window ended {stalest:%Y-%m-%d %H:%M} UTC, "
                       f"{(latest - stalest).total_seconds() / 60:,.0f} minutes before the newest: its feed is behind.")
        c = st.columns(3)
        c[0].metric("Live revenue (24 h)", num(r["revenue"], 2))
        c[1].metric("Live units sold (24 h)", num(r["units"]))
        c[2].metric("Live transactions (24 h)", num(r["transactions"]))
    strip()


@safe
def store_manager() -> None:
    """Live stock-out risk per SKU, hours of cover, restock alerts by priority, anomalies, risk heatmap."""
    st.title("Store manager")
    ctx = _ctx()
    if ctx is None:
        return
    if not _filters().store and ctx.stores:   # a store manager's page is about one store
        st.session_state["filters"] = _filters(store=ctx.stores[0])
        st.caption(f"No store chosen in the sidebar: showing {md_literal(ctx.stores[0])}.")

    @st.fragment(run_every=_ctx().refresh_s)
    @safe
    def live() -> None:
        counts = fetch("store_risk_counts")
        if counts is None:
            return
        if counts.empty:
            st.info(NO_LIVE)
            return
        st.caption(f"{_scope()} · refreshed {dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC")
        by = counts.set_index("stockout_risk")
        alerts = fetch("store_alert_counts")
        anomalies = fetch("store_anomalies")
        c = st.columns(4)
        c[0].metric("SKUs at high risk", num(by["skus"].get("HIGH", 0)))
        c[1].metric("SKUs out of stock", num(counts["out_of_stock"].sum()))
        c[2].metric("Restock alerts (7 days)", num(0 if alerts is None else alerts["alerts"].sum()))
        n_anom = fetch("store_anomaly_count")
        c[3].metric("Anomalies (24 h)", num(None if n_anom is None else n_anom["anomalies"].iloc[0]))
        left, right = st.columns([3, 2])
        risk = fetch("store_risk")
        if risk is not None and not risk.empty:
            left.markdown("**Stock-out risk per SKU** (lowest hours of cover first)")
            left.dataframe(risk, hide_index=True, use_container_width=True, height=320,
                           column_config={"hours_of_cover": st.column_config.NumberColumn(format="%.1f h"),
                                          "sales_velocity": st.column_config.NumberColumn(
                                              "units/h", format="%.2f",
                                              help="trailing sales rate: units sold less returned (a "
                                                   "return netting at most the units the order's cap set "
                                                   "aside: an anomalous window's excess, or a new SKU's "
                                                   "window above a day of its reorder point's planned rate) "
                                                   "in the last STREAM_VELOCITY_HOURS (24 h) / that span")})
        if alerts is not None and not alerts.empty:
            right.plotly_chart(px.bar(alerts, x="priority", y="alerts", color="priority",
                                      color_discrete_map=RISK_COLOURS, title="Restock alerts by priority (7 days)",
                                      category_orders={"priority": ["CRITICAL", "HIGH", "MEDIUM", "LOW"]})
                               .update_layout(height=320, showlegend=False), use_container_width=True)
        trend = fetch("store_trend")
        if trend is not None and not trend.empty:
            st.plotly_chart(px.line(trend, x="window_start", y=["revenue", "units"],
                                    title="Sales per 5-minute window (last 24 h)").update_layout(height=300),
                            use_container_width=True)
        heat = fetch("risk_heatmap")
        if heat is not None and not heat.empty:
            grid = plot_literal(heat, "store_id", "category").assign(share=heat["high_risk_skus"] / heat["skus"]).pivot_table(
                index="store_id", columns="category", values="share", fill_value=0)
            st.plotly_chart(px.imshow(grid, color_continuous_scale="Reds", zmin=0, zmax=1, aspect="auto",
                                      labels=dict(color="share of SKUs at HIGH risk"),
                                      title="Stock-out risk: share of SKUs at HIGH risk, store × category")
                            .update_layout(height=max(300, 22 * len(grid) + 120)), use_container_width=True)
        al = fetch("store_alerts")
        if al is not None and not al.empty:   # full width: the columns that explain the quantity come first
            st.markdown("**Restock alerts** (highest priority first)")
            st.caption(ORDER_RULE.format(lead=_lead_time_days()))
            st.dataframe(al, hide_index=True, use_container_width=True, height=280, column_config=ALERT_COLUMNS)
        if anomalies is not None and not anomalies.empty:
            st.markdown("**Anomalies** (|z| ≥ 3 against the SKU's previous 24 h)")
            st.dataframe(anomalies, hide_index=True, use_container_width=True, height=280)
    live()


@safe
def inventory_analyst() -> None:
    """Forecast against actual with 80/95 % bands, reorder recommendations, slow movers."""
    st.title("Inventory analyst")
    if _ctx() is None:
        return
    series = fetch("forecast_series_list")
    if series is None:
        return
    reorder = fetch("reorder")
    if series.empty and (reorder is None or reorder.empty):
        st.info(NO_ML)
        return
    tot = fetch("analyst_totals")
    if tot is not None and not tot.empty:
        t = tot.iloc[0]
        c = st.columns(4)
        c[0].metric("Forecast series", num(t["forecast_series"]))
        c[1].metric("SKUs needing reorder", num(t["skus_to_reorder"]))
        c[2].metric("Recommended reorder units", num(t["reorder_units"]))
        c[3].metric("Recommended reorder value", num(t["reorder_value"], 2))
    if not series.empty:
        labels = [f"{r.store_id} · {r.product_id}" for r in series.itertuples()]
        pick = st.selectbox(f"Series (store · SKU), the {len(series)} largest forecasts", range(len(labels)),
                            format_func=lambda i: labels[i], key="series")
        store, product = series.iloc[pick]["store_id"], series.iloc[pick]["product_id"]
        _fan_chart(store, product)
        acc = fetch("forecast_vs_actual")
        if acc is not None and not acc.empty:
            st.markdown("**Forecast against actual by horizon** (every scored forecast; coverage of the 80 / 95 % "
                        "intervals)")
            st.dataframe(acc, hide_index=True, use_container_width=True)
    if reorder is not None and not reorder.empty:
        st.markdown(f"**Reorder recommendations** (reorder point = lead-time demand + safety stock; an order when stock "
                    "+ on order (earlier nights' orders not yet received) is at or below it; order_bound: the rule that "
                    "set the quantity: eoq, rop_gap, cover_cap, capacity, shelf_life, none, inactive (stopped selling, "
                    "nothing ordered), inactive_out_of_stock (stopped selling but out of stock: restocked) or "
                    "inactive_restock_sent (restocked once already since its last sale: nothing more); the "
                    f"{len(reorder)} most "
                    "urgent)")
        st.dataframe(reorder, hide_index=True, use_container_width=True, height=300)
    slow = fetch("slow_movers")
    if slow is not None and not slow.empty:
        left, right = st.columns([3, 2])
        left.markdown(f"**Slow movers** ({len(slow)} shown)")
        left.dataframe(slow, hide_index=True, use_container_width=True, height=300)
        shown = slow[slow["adi"] <= 365]   # no_demand series have an unbounded inter-demand interval
        right.plotly_chart(px.scatter(plot_literal(shown, "product_id"), x="adi", y="cv2", color="demand_class", hover_data=["product_id"],
                                      title="Syntetos-Boylan classes (ADI 1.32, CV² 0.49)")
                           .add_vline(x=1.32, line_dash="dot").add_hline(y=0.49, line_dash="dot")
                           .update_layout(height=300), use_container_width=True)


def _fan_chart(store: str, product: str) -> None:
    f = _filters(store=store, product=product)
    fc, hist = fetch("forecast_fan", f), fetch("demand_history", f)
    if fc is None or fc.empty:
        return
    fig = go.Figure()
    x = list(fc["target_date"]) + list(fc["target_date"])[::-1]
    fig.add_trace(go.Scatter(x=x, y=list(fc["upper95"]) + list(fc["lower95"])[::-1], fill="toself",
                             fillcolor="rgba(31,119,180,0.15)", line=dict(width=0), name="95 % interval"))
    fig.add_trace(go.Scatter(x=x, y=list(fc["upper80"]) + list(fc["lower80"])[::-1], fill="toself",
                             fillcolor="rgba(31,119,180,0.3)", line=dict(width=0), name="80 % interval"))
    fig.add_trace(go.Scatter(x=fc["target_date"], y=fc["yhat"], name="forecast", line=dict(color="#1f77b4")))
    if hist is not None and not hist.empty:
        fig.add_trace(go.Scatter(x=hist["date"], y=hist["units"], name="actual", line=dict(color="#333")))
    fig.update_layout(title=f"Demand forecast, {html_literal(store)} · {html_literal(product)} "
                            f"(origin {fc['forecast_origin'].iloc[0]})",
                      height=360, yaxis_title="units per day")
    st.plotly_chart(fig, use_container_width=True)


@safe
def quality_ml() -> None:
    """Quarantined and dead-lettered events by reason, stream micro-batches, ETL reconciliation, backtest
    metrics against the baselines, interval coverage."""
    st.title("Data quality & ML")
    if _ctx() is None:
        return
    q = fetch("dq_quarantine")
    stream = fetch("dq_stream")
    totals = fetch("dq_quarantine_totals")   # every reason: the chart's dq_quarantine keeps its 200 largest
    c = st.columns(5)
    none = totals is None or totals.empty
    c[0].metric("Quarantined events", num(None if none else totals["quarantined"].iloc[0]),
                help="Kafka records the stream quarantined (not rows ClickHouse refused)")
    c[1].metric("Dead-lettered events", num(None if none else totals["dead_lettered"].iloc[0]))
    c[2].metric("Rows ClickHouse refused", num(None if none else totals["refused_rows"].iloc[0]),
                help="rows of the stream's tables (e.g. a 5-minute window) ClickHouse refused for their values, set "
                     "aside in quarantine (topic refused:<table>): not Kafka records")
    c[3].metric("Micro-batches committed", num(0 if stream is None else stream["micro_batches"].sum()),
                help="over the micro-batches the retention keeps (CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS)")
    etl = fetch("dq_etl")
    c[4].metric("ETL runs (last 30)", num(0 if etl is None else len(etl)))
    if q is not None and not q.empty:
        st.plotly_chart(px.bar(plot_literal(q, "reason", "event_type"), x="events", y="reason", color="event_type",
                               orientation="h",
                               title="Rejected events by reason (stream quarantine and producers' dead-letter "
                                     "topic)").update_layout(height=320), use_container_width=True)
    elif q is not None:
        st.info("Nothing quarantined or dead-lettered yet.")
    expired = 0 if stream is None or stream.empty else int(stream["records_expired"].max())
    st.metric("Kafka records expired unread", num(expired),
              help="records a topic's retention deleted before the stream read them (lost to the platform); "
                   "counted once per query, the larger of the two")
    if expired:
        st.error(f"{num(expired)} Kafka record(s) expired before the stream read them: the topics' retention is "
                 "shorter than the stream's lag. They are missing from the lake (raw query) or the live tables "
                 "(windows query), per the table below.")
    if stream is not None and not stream.empty:
        st.markdown("**Streaming micro-batches** (duplicates dropped, records expired unread)")
        st.dataframe(stream, hide_index=True, use_container_width=True)
    if etl is not None and not etl.empty:
        st.markdown("**Nightly ETL reconciliation** (raw lake rows, duplicates removed, facts loaded)")
        st.dataframe(etl, hide_index=True, use_container_width=True)
    else:
        st.info(NO_NIGHTLY)
    bt = fetch("ml_backtest")
    if bt is None or bt.empty:
        st.info(NO_ML)
        return
    metric = st.selectbox("Backtest metric", sorted(bt["metric"].unique()), key="metric")
    sel = bt[(bt["metric"] == metric) & (bt["horizon"] > 0)]
    st.plotly_chart(px.line(sel, x="horizon", y="value", color="model", markers=True,
                            title=f"Backtest {metric} by horizon: model against the baselines")
                    .update_layout(height=320), use_container_width=True)
    pooled = bt[bt["horizon"] == 0].pivot_table(index="model", columns="metric", values="value")
    st.markdown("**Pooled over horizons** (coverage80 / coverage95 = share of actuals inside the intervals)")
    st.dataframe(pooled, use_container_width=True)
    reg = fetch("ml_registry")
    if reg is not None and not reg.empty:
        st.markdown("**Model registry**")
        st.dataframe(reg, hide_index=True, use_container_width=True)


def _when(t) -> str:
    """A timestamp as the cards show it (UTC, to the second); '–' for missing."""
    return "–" if t is None or pd.isna(t) else f"{pd.Timestamp(t):%Y-%m-%d %H:%M:%S}"


def health_verdicts(latest: pd.DataFrame, hourly: pd.DataFrame, stale_minutes: float = STALE_BATCH_MINUTES
                    ) -> list[tuple[str, str]]:
    """What the Stream health page says about completeness and freshness, as (level, text) pairs, level
    ``error`` / ``warning`` / ``success``.

    Args:
        latest: rows of ``health_latest`` (one per streaming query: ``query``, ``minutes_since_last_batch``).
        hourly: rows of ``health_hourly`` (``query``, ``hour_start``, ``records_expired``, ``late_rows_dropped``,
            ``rows_set_aside``
            per hour of commit, the 48 hours up to the newest).
        stale_minutes: minutes without a committed micro-batch after which a query is called behind.
    Returns:
        an error per query whose Kafka records expired unread, a warning per query with rows dropped as late and one
        per query with rows ClickHouse refused and the stream set aside in quarantine (all over ``hourly``'s hours), a warning per query behind; one success line when there is none of these.
    """
    out: list[tuple[str, str]] = []
    for q, g in hourly.groupby("query", sort=True):
        expired, late = int(g["records_expired"].sum()), int(g["late_rows_dropped"].sum())
        if expired:
            out.append(("error", f"query {q}: {expired:,} Kafka record(s) expired or were skipped before they were "
                                 "read in the last 48 hours of micro-batches: lost to the platform, not in the "
                                 "figures (topics' retention shorter than the stream's lag, or a topic re-created)"))
        if late:
            out.append(("warning", f"query {q}: {late:,} row(s) arrived behind the watermark in the last 48 hours "
                                   "and were dropped from the live windows (they are in the lake and the nightly "
                                   "figures)"))
        aside = int(g["rows_set_aside"].sum()) if "rows_set_aside" in g else 0
        if aside:
            out.append(("warning", f"query {q}: {aside:,} row(s) of its ClickHouse writes were refused by ClickHouse in "
                                   "the last 48 hours and set aside in quarantine (topic refused:<table>, with "
                                   "ClickHouse's error): not in the live tables"))
    for r in latest.itertuples():
        if r.minutes_since_last_batch > stale_minutes:
            out.append(("warning", f"query {r.query}: no micro-batch for {r.minutes_since_last_batch:,.0f} minutes "
                                   f"(last {_when(r.last_committed_at)} UTC): the stream is stopped or no events "
                                   "arrive, so the live figures may be behind"))
    return out or [("success", "Complete and current: every micro-batch of the last 48 hours read all its Kafka "
                               "records, dropped no row as late, had no row refused by ClickHouse, and each query committed within "
                               f"{stale_minutes:g} minutes.")]


@safe
def stream_health() -> None:
    """Is the stream complete and current? Per streaming query: the last committed micro-batch, rows read, rows
    dropped as late, Kafka records expired unread, duplicates; offsets reached per topic; quarantined records by
    reason (views of ``clickhouse/migrations/080_stream_health_views.sql``)."""
    st.title("Stream health")
    if _ctx() is None:
        return

    @st.fragment(run_every=_ctx().refresh_s)
    @safe
    def health() -> None:
        latest = fetch("health_latest")
        if latest is None:
            return
        if latest.empty:
            st.info(NO_STREAM)
            return
        hourly = fetch("health_hourly")
        offsets = fetch("health_offsets")
        quarantine = fetch("health_quarantine")
        quarantined = fetch("health_quarantine_total")
        st.caption(f"refreshed {dt.datetime.now(dt.timezone.utc):%H:%M:%S} UTC · the whole stream (the store "
                   "filter does not apply) · every micro-batch counted once (stream_batches read with FINAL)")
        none = pd.DataFrame(columns=["query", "hour_start", "records_expired", "late_rows_dropped", "rows_set_aside"])
        for level, text in health_verdicts(latest, none if hourly is None else hourly):
            getattr(st, level)(text)
        c = st.columns([2, 1, 1, 1, 1, 1])
        stalest = latest.loc[latest["last_committed_at"].idxmin()]
        c[0].metric("Last committed batch (stalest query)", _when(stalest["last_committed_at"]),
                    help="commit time (UTC) of the latest micro-batch of the query that committed longest ago")
        c[1].metric("Minutes since last batch", num(latest["minutes_since_last_batch"].max()))
        c[2].metric("Late rows dropped", num(latest["late_rows_dropped"].sum()),
                    help="rows behind the watermark the windows query dropped (the micro-batches the retention keeps, CLICKHOUSE_STREAM_BATCHES_RETENTION_DAYS; in the lake)")
        c[3].metric("Kafka records expired unread", num(latest["records_expired"].max()),
                    help="records a topic's retention deleted (or a re-created topic skipped) before the stream read "
                         "them; counted once per query, the larger of the queries")
        qnone = quarantined is None or quarantined.empty
        c[4].metric("Quarantined records (24 h)", num(None if qnone else quarantined["events"].iloc[0]),
                    help="Kafka records quarantined and dead-lettered in the 24 hours up to the newest one (all "
                         "reasons; the table below lists the 200 largest groups); not the rows ClickHouse refused")
        c[5].metric("Rows ClickHouse refused (24 h)", num(None if qnone else quarantined["refused_rows"].iloc[0]),
                    help="rows of the stream's tables (e.g. a 5-minute window) ClickHouse refused for their values "
                         "in the same 24 hours, set aside in quarantine (topic refused:<table>): not Kafka records")
        st.markdown("**Per streaming query** (counts over the micro-batches the retention keeps; the last batch also when "
                    "older)")
        shown = latest.assign(last_committed_at=latest["last_committed_at"].map(_when),
                              latest_event_time=latest["latest_event_time"].map(_when),
                              minutes_since_last_batch=latest["minutes_since_last_batch"].map(num))
        st.table(shown.set_index("query"))
        if offsets is not None and not offsets.empty:
            st.markdown("**Kafka offsets reached** (sum over partitions of the end offsets of each query's latest "
                        "micro-batch)")
            st.table(offsets.assign(committed_at=offsets["committed_at"].map(_when)).set_index(["query", "topic"]))
        if hourly is not None and not hourly.empty:
            long = hourly.melt(id_vars=["hour_start", "query"], value_vars=["late_rows_dropped", "records_expired",
                                                                            "rows_set_aside", "duplicates_dropped"])
            st.plotly_chart(px.bar(long, x="hour_start", y="value", color="variable", facet_row="query",
                                   title="Rows not counted per hour of commit (48 hours up to the newest batch)")
                            .update_layout(height=420), use_container_width=True)
        if quarantine is not None and not quarantine.empty:
            st.markdown("**Quarantined and dead-lettered records by reason** (24 hours up to the newest)")
            st.dataframe(quarantine, hide_index=True, use_container_width=True)
        elif quarantine is not None:
            st.info("Nothing quarantined or dead-lettered.")
    health()
