"""The live browser dashboard (Streamlit): the dashboards of ``powerbi/dashboards.md`` as pages.

Run it with ``make dashboard`` (or ``python -m dashboard``); under the native supervisor and in compose it is the
service ``dashboard`` on port ``DASHBOARD_PORT`` (8501). It reads ClickHouse only as the read-only user
``bi_reader`` through the queries of :mod:`dashboard.queries`.

Filters (sidebar, shared by every page, mirrored in the URL so a view can be bookmarked):
``?store=<store id>&start=YYYY-MM-DD&end=YYYY-MM-DD``.
"""

from __future__ import annotations

import streamlit as st

from dashboard import pages

st.set_page_config(page_title="Retail inventory", page_icon=":bar_chart:", layout="wide")

nav = st.navigation([
    st.Page(pages.executive, title="Executive", url_path="executive", default=True),
    st.Page(pages.store_manager, title="Store manager", url_path="store"),
    st.Page(pages.inventory_analyst, title="Inventory analyst", url_path="analyst"),
    st.Page(pages.quality_ml, title="Data quality & ML", url_path="quality"),
    st.Page(pages.stream_health, title="Stream health", url_path="health"),
])

ctx = pages.context()
if ctx is not None:
    qp = st.query_params
    with st.sidebar:
        st.header("Filters")
        options = [""] + ctx.stores
        wanted = qp.get("store", "")
        store = st.selectbox("Store", options, index=options.index(wanted) if wanted in options else 0,
                             format_func=lambda v: v or "All stores", key="store")
        lo, hi = ctx.first_day, ctx.last_day
        if hi:
            default = pages.url_range(pages.parse_day(qp.get("start")), pages.parse_day(qp.get("end")), lo, hi)
            picked = st.date_input("Date range (nightly star schema)", default,
                                   min_value=lo, max_value=hi, key="dates")
            start, end = (picked + (picked[0],))[:2] if isinstance(picked, tuple) else (picked, picked)
        else:
            start = end = None
            st.caption("No nightly data yet: the date range appears after the first `make nightly`.")
        st.caption(f"Live sections refresh every {ctx.refresh_s:g} s.")
    qp["store"] = store
    if start and end:
        qp["start"], qp["end"] = start.isoformat(), end.isoformat()
    pages.set_filters(store, start, end)
nav.run()
