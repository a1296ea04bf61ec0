"""The live dashboard in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium) opens each page of the real Streamlit server (``python -m dashboard``) against the native ClickHouse
endpoint loaded with a known synthetic chain (``ops.bench_bi.load_chain``, through the real tables).

The headline numbers the pages show are compared with an independent pandas computation over the generated
rows (not with the dashboard's own queries); a store filter changes them; screenshots go to
``reports/screenshots/`` (ignored by git). ``bi_reader``, the dashboard's user, cannot write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, TcpGate, free_port

pytestmark = pytest.mark.integration

END = dt.date(2026, 11, 30)
SHOTS = REPO / "reports" / "screenshots"


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the dashboard; one still running ``timeout`` s later is killed (no process left) and the test fails:
    Streamlit must stop on SIGTERM (the supervisor's stop signal)."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the dashboard did not stop within {timeout:g} s of SIGTERM (killed)")


@pytest.fixture(scope="module")
def chain(native_stack):
    """The known data set, loaded once into this module's fresh database; returns load_chain's dict."""
    from core.clickhouse import get_client, migrate
    from ops.bench_bi import ChainSize, load_chain
    from tests.test_bi_views import KEEP_BATCHES

    # the chain's micro-batches are dated the day before END: kept from stream_batches' 14-day TTL (083) later on
    migrate(native_stack.model_copy(update=KEEP_BATCHES))
    size = ChainSize(stores=5, skus=12, days=21, window_rows=2880, forecast_series=15, horizons=14, seed=11)
    return load_chain(get_client(native_stack), native_stack.clickhouse_database, size, END, collect=True)


@pytest.fixture(scope="module")
def dashboard(native_stack, chain):
    """The real Streamlit server on a free port (same command as the supervisor's ``dashboard`` program); yields
    its base URL; stopped at the end, with its port free again (:func:`running_dashboard`)."""
    with running_dashboard({}, Path(native_stack.retail_state_dir) / "logs" / "dashboard-test.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Selenium (chromedriver from Debian)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from ops.install import browser as find_browser

    chromium, driver = find_browser()
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield d
    finally:
        d.quit()


def open_page(browser, url: str, wait_for: list[str], shot: str, timeout: float = 60) -> dict[str, str]:
    """Open ``url``; wait until every metric label in ``wait_for`` shows a value; screenshot; return
    {metric label: value text}. Fails with the page text when a label does not appear."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    deadline = time.time() + timeout
    metrics: dict[str, str] = {}
    while time.time() < deadline:
        metrics = {}
        for m in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
            try:
                label = m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text.strip()
                value = m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text.strip()
            except Exception:  # noqa: BLE001 - the element re-rendered between the two lookups
                continue
            metrics[label] = value
        if all(metrics.get(w) for w in wait_for):
            break
        time.sleep(0.5)
    body = browser.find_element(By.TAG_NAME, "body").text
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{shot}.png"))
    assert all(metrics.get(w) for w in wait_for), f"{url}: metrics {metrics}; page text: {body[:1500]}"
    assert "Traceback" not in body, body[:2000]
    return metrics


def value(text: str) -> float:
    """A card's number: '1,234.50' -> 1234.5."""
    return float(text.replace(",", ""))


def frames(chain) -> dict[str, pd.DataFrame]:
    return chain["frames"]


# ---------------------------------------------------------------------------- independent oracle --
def expected_sales(chain, store: str, start: dt.date, end: dt.date) -> tuple[float, int]:
    """Revenue and units sold (quantity > 0) of fact_sales in [start, end] for one store ('' = all)."""
    f = frames(chain)
    fs = f["fact_sales"].merge(f["dim_store"][["store_key", "store_id"]], on="store_key")
    dk = lambda d: d.year * 10000 + d.month * 100 + d.day  # noqa: E731
    sel = fs[(fs["date_key"].astype(int) >= dk(start)) & (fs["date_key"].astype(int) <= dk(end))]
    if store:
        sel = sel[sel["store_id"] == store]
    return float(sel["revenue"].sum()), int(sel.loc[sel["quantity"] > 0, "quantity"].sum())


def expected_high_risk(chain, store: str) -> int:
    """SKUs whose newest window says HIGH (series without a window are UNKNOWN), for one store ('' = all)."""
    w = frames(chain)["sales_metrics_5m"]
    latest = w.sort_values("window_start").groupby(["store_id", "product_id"]).tail(1)
    inv = frames(chain)["inventory_levels"].merge(latest[["store_id", "product_id", "stockout_risk"]],
                                                  on=["store_id", "product_id"], how="left")
    if store:
        inv = inv[inv["store_id"] == store]
    return int((inv["stockout_risk"] == "HIGH").sum())


def recent_alerts(chain) -> pd.DataFrame:
    """Alerts of the 7 days up to the newest alert."""
    a = frames(chain)["restock_alerts"]
    return a[a["alert_time"] > a["alert_time"].max() - pd.Timedelta(days=7)]


# ------------------------------------------------------------------------------------------ tests --
def test_executive_page_shows_the_star_schema_totals_and_the_store_filter_changes_them(dashboard, browser, chain):
    start = END - dt.timedelta(days=6)
    q = f"?start={start}&end={END}"
    all_m = open_page(browser, f"{dashboard}/{q}", ["Revenue", "Units sold", "Live revenue (24 h)"], "executive")
    rev, units = expected_sales(chain, "", start, END)
    assert value(all_m["Revenue"]) == pytest.approx(rev, abs=0.006)
    assert value(all_m["Units sold"]) == units
    live = frames(chain)["sales_metrics_5m"]
    assert value(all_m["Live revenue (24 h)"]) == pytest.approx(live["revenue"].sum(), abs=0.006)

    store = chain["stores"][2]
    one = open_page(browser, f"{dashboard}/{q}&store={store}", ["Revenue", "Units sold"], "executive-store")
    rev_s, units_s = expected_sales(chain, store, start, END)
    assert value(one["Revenue"]) == pytest.approx(rev_s, abs=0.006)
    assert value(one["Units sold"]) == units_s
    assert units_s < units and value(one["Units sold"]) != value(all_m["Units sold"])


def test_store_manager_page_shows_live_risk_alerts_and_anomalies(dashboard, browser, chain, native_stack):
    labels = ["SKUs at high risk", "SKUs out of stock", "Restock alerts (7 days)", "Anomalies (24 h)"]
    first = chain["stores"][0]   # no store chosen: the page shows the first store and says so
    all_m = open_page(browser, f"{dashboard}/store", labels, "store-manager")
    assert value(all_m["SKUs at high risk"]) == expected_high_risk(chain, first)
    inv = frames(chain)["inventory_levels"]
    assert value(all_m["SKUs out of stock"]) == int(((inv["stock_level"] <= 0) & (inv["store_id"] == first)).sum())
    alerts = recent_alerts(chain)
    assert value(all_m["Restock alerts (7 days)"]) == int((alerts["store_id"] == first).sum())
    w = frames(chain)["sales_metrics_5m"]
    anomalous = (w["anomaly_score"].abs() >= 3) & (w["store_id"] == first)
    assert value(all_m["Anomalies (24 h)"]) == int(anomalous.sum())

    counts = {s: expected_high_risk(chain, s) for s in chain["stores"]}
    store = max((s for s in counts if s != chain["stores"][0]), key=counts.get)
    one = open_page(browser, f"{dashboard}/store?store={store}", labels, "store-manager-store")
    assert value(one["SKUs at high risk"]) == counts[store]
    assert value(one["Restock alerts (7 days)"]) == int((alerts["store_id"] == store).sum())
    assert [one[k] for k in labels] != [all_m[k] for k in labels]   # the store filter changed what is shown

    # the alerts table shows why an alert orders N units (since 2026-12-07: the rate the quantity used was not on
    # the page): its rows' order rate, sales rate, stock, reorder point and quantity equal the generated alerts
    # and v_restock_alerts as bi_reader reads it, and the caption names the rule and LEAD_TIME_DAYS
    from selenium.webdriver.common.by import By

    from core.clickhouse import new_client
    from core.settings import get_settings
    from streaming.transforms import recommended_quantity

    deadline, shown, grids = time.time() + 60, [], []
    while time.time() < deadline and not shown:
        grids = browser.execute_script(_GRIDS_JS)
        shown = [g for g in grids if g and "order units/h" in g[0]]
        time.sleep(0.5)
    assert shown, [g[0] for g in grids if g]
    head, rows = shown[0][0], [dict(zip(shown[0][0], r)) for r in shown[0][1:] if len(r) == len(shown[0][0])]
    assert {"product_id", "current_stock", "reorder_point", "recommended_quantity", "sales units/h"} <= set(head)
    assert rows, shown
    mine = alerts[alerts["store_id"] == store].set_index("product_id")
    bi = new_client(native_stack, readonly=True)
    view = bi.query_df(f"SELECT product_id, order_velocity, recommended_quantity FROM "
                       f"{native_stack.clickhouse_database}.v_restock_alerts WHERE store_id = {{s:String}}",
                       parameters={"s": store}).set_index("product_id")
    bi.close()
    lead = get_settings().lead_time_days
    for r in rows:
        a = mine.loc[r["product_id"]]
        assert value(r["order units/h"]) == pytest.approx(a["order_velocity"], abs=0.0051)
        assert value(r["order units/h"]) == pytest.approx(view.loc[r["product_id"], "order_velocity"], abs=0.0051)
        assert value(r["sales units/h"]) == pytest.approx(a["sales_velocity"], abs=0.0051)
        assert value(r["current_stock"]) == a["current_stock"] and value(r["reorder_point"]) == a["reorder_point"]
        assert value(r["recommended_quantity"]) == a["recommended_quantity"] == recommended_quantity(
            int(a["current_stock"]), int(a["reorder_point"]), float(a["order_velocity"]), lead)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert f"LEAD_TIME_DAYS = {lead} days" in text and "order units/h × 24 × lead time" in text


def test_inventory_analyst_page_shows_forecasts_and_the_reorder_plan(dashboard, browser, chain):
    labels = ["Forecast series", "SKUs needing reorder", "Recommended reorder units"]
    m = open_page(browser, f"{dashboard}/analyst", labels, "inventory-analyst")
    fc = frames(chain)["forecast_predictions"]
    latest = fc[fc["forecast_origin"] == fc["forecast_origin"].max()]
    assert value(m["Forecast series"]) == len(latest.groupby(["store_id", "product_id"]))
    ro = frames(chain)["reorder_recommendations"]
    need = ro[ro["reorder_needed"] == 1]
    assert value(m["SKUs needing reorder"]) == len(need)
    assert value(m["Recommended reorder units"]) == pytest.approx(round(need["reorder_qty"].sum()), abs=0.5)
    from selenium.webdriver.common.by import By

    # the reorder table shows what each quantity counted as on order and the rule that set it (since 2026-12-07)
    deadline, shown, grids = time.time() + 60, [], []
    while time.time() < deadline and not shown:
        grids = browser.execute_script(_GRIDS_JS)
        shown = [g for g in grids if g and "order_bound" in g[0]]
        time.sleep(0.5)
    assert shown, [g[0] for g in grids if g]
    head = shown[0][0]
    assert {"stock", "on_order", "reorder_point", "reorder_qty", "order_bound"} <= set(head)
    bounds = {r[head.index("order_bound")] for r in shown[0][1:] if len(r) == len(head)}
    assert bounds and bounds <= {"eoq", "none"}, bounds   # the chain's rows (ops.bench_bi.load_chain)

    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), "the forecast fan chart is missing"


def test_quality_page_shows_quarantine_stream_etl_and_backtest(dashboard, browser, chain):
    labels = ["Quarantined events", "Micro-batches committed", "ETL runs (last 30)", "Kafka records expired unread"]
    m = open_page(browser, f"{dashboard}/quality", labels, "quality-ml")
    assert value(m["Quarantined events"]) == len(frames(chain)["quarantine_events"])
    assert value(m["Micro-batches committed"]) == len(frames(chain)["stream_batches"])
    assert value(m["ETL runs (last 30)"]) == min(30, len(frames(chain)["etl_runs"]))
    sb = frames(chain)["stream_batches"]
    want = int(sb.groupby("query")["records_expired"].sum().max())
    assert want > 0   # the chain's stream lost records in one batch: the page must say so
    assert value(m["Kafka records expired unread"]) == want
    from selenium.webdriver.common.by import By

    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Backtest" in text and "seasonal_naive" in text
    assert "expired before the stream read them" in text


def test_a_page_without_data_explains_what_to_run(native_stack, browser, tmp_path):
    """An empty database: every page says what to run, none shows a traceback."""
    from core.clickhouse import migrate
    from selenium.webdriver.common.by import By

    db = f"empty_{os.getpid()}"
    migrate(native_stack, database=db)
    with running_dashboard({"CLICKHOUSE_DATABASE": db}, tmp_path / "dashboard.log") as base:
        for page, hint in (("", "make local-up"), ("store", "make demo"), ("analyst", "make nightly"),
                           ("quality", "make nightly"), ("health", "No micro-batch committed yet")):
            browser.get(f"{base}/{page}")
            deadline, text = time.time() + 40, ""
            while time.time() < deadline and hint not in text:
                time.sleep(0.5)
                text = browser.find_element(By.TAG_NAME, "body").text
            assert hint in text and "Traceback" not in text, f"/{page}: {text[:1500]}"


def test_bi_reader_cannot_write(native_stack, chain):
    from clickhouse_connect.driver.exceptions import DatabaseError

    from core.clickhouse import new_client

    bi = new_client(native_stack, readonly=True)
    db = native_stack.clickhouse_database
    assert bi.query(f"SELECT count() FROM {db}.v_dim_store").result_rows[0][0] == len(chain["stores"])
    for stmt in (f"INSERT INTO {db}.dim_store (store_key, store_id) VALUES (1, 'X')",
                 f"CREATE TABLE {db}.evil (x Int8) ENGINE = Memory", f"DROP TABLE {db}.dim_store",
                 f"ALTER TABLE {db}.dim_store DELETE WHERE 1"):
        with pytest.raises(DatabaseError):
            bi.command(stmt)
    assert bi.query(f"SELECT count() FROM {db}.v_dim_store").result_rows[0][0] == len(chain["stores"])
    bi.close()


def test_bench_loader_rows_match_what_clickhouse_holds(native_stack, chain):
    """The loader's bookkeeping (used by the benchmark report) equals the tables' row counts."""
    from core.clickhouse import get_client

    c = get_client(native_stack)
    db = native_stack.clickhouse_database
    for table in ("fact_sales", "sales_metrics_5m", "inventory_levels", "forecast_predictions"):
        assert c.query(f"SELECT count() FROM {db}.{table}").result_rows[0][0] == chain["rows"][table], table
    daily = frames(chain)["fact_sales"].groupby(["date_key", "store_key", "product_key"]).size()
    assert chain["rows"]["fact_sales_daily"] == len(daily)
    assert np.isclose(c.query(f"SELECT sum(revenue) FROM {db}.v_sales_daily").result_rows[0][0],
                      frames(chain)["fact_sales"]["revenue"].sum())


def test_url_range_is_clipped_to_the_data_and_ordered():
    """A bookmarked range from before a re-replay (or a hand-edited URL) preselects a range within the data."""
    from dashboard.pages import url_range

    lo, hi = dt.date(2026, 10, 1), dt.date(2026, 11, 30)
    assert url_range(None, None, lo, hi) == (dt.date(2026, 11, 24), hi)            # the last 7 days
    assert url_range(dt.date(2000, 1, 1), None, lo, hi) == (lo, hi)
    assert url_range(None, dt.date(2030, 6, 1), lo, hi) == (dt.date(2026, 11, 24), hi)
    assert url_range(dt.date(2026, 11, 10), dt.date(2026, 11, 2), lo, hi) == (dt.date(2026, 11, 2), dt.date(2026, 11, 10))
    assert url_range(dt.date(2031, 1, 1), dt.date(2032, 1, 1), lo, hi) == (hi, hi)
    assert url_range(None, None, hi, hi) == (hi, hi)                                # one day of data


# ------------------------------------------------------------------- hostile ids, outage recovery --
def test_ids_are_shown_literally_never_as_markdown_or_html():
    """md_literal makes a code span no Markdown or Streamlit extension reads, whatever backticks the text holds;
    html_literal / plot_literal make Plotly show tags as text."""
    from dashboard.pages import html_literal, md_literal, plot_literal

    assert md_literal("S0001") == "`S0001`"
    assert md_literal("[x](https://e.example) **b** $x$ :red[r]") == "`[x](https://e.example) **b** $x$ :red[r]`"
    assert md_literal("a`b") == "``a`b``" and md_literal("``x") == "``` ``x ```" and md_literal("x`") == "`` x` ``"
    assert md_literal("two\nlines") == "`two lines`" and md_literal("") == ""
    assert html_literal('<a href="u">L</a> & <b>') == '&lt;a href="u"&gt;L&lt;/a&gt; &amp; &lt;b&gt;'
    df = pd.DataFrame({"store_id": ["<b>S</b>", None], "revenue": [1.0, 2.0]})
    out = plot_literal(df, "store_id")
    assert out["store_id"].tolist()[0] == "&lt;b&gt;S&lt;/b&gt;" and out["store_id"].isna().tolist()[1]
    assert df["store_id"][0] == "<b>S</b>"                     # the caller's frame is not changed


@contextlib.contextmanager
def running_dashboard(env_extra: dict[str, str], log_path: Path):
    """The real Streamlit server (``python -m dashboard``) on a free port with ``env_extra``; yields its base URL;
    stopped (port free again) at the end."""
    import httpx

    from ops.services import port_open

    port = free_port()
    env = {**os.environ, "DASHBOARD_PORT": str(port), "DASHBOARD_REFRESH_S": "2", **env_extra}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dashboard"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if httpx.get(f"http://localhost:{port}/_stcore/health", timeout=1).text.strip() == "ok":
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, f"dashboard exited: {log_path.read_text()[-2000:]}"
                time.sleep(0.5)
            else:
                pytest.fail("dashboard did not become healthy in 60 s")
            yield f"http://localhost:{port}"
        finally:
            stop(proc)
    assert not port_open("localhost", port)


HOSTILE_STORES = ["[Click](https://evil.example/x) **B** $x^2$", ":red[RED] :material/warning: S1",
                  '<b>S2</b><a href="https://evil.example">L</a>']
HOSTILE_SKUS = ['<a href="https://evil.example">PWN</a>', "*x* _y_", "`tick` S", "SKU3"]
HOSTILE_CATEGORY = '<b>BOLD</b><br>c<a href="https://evil.example">L</a>'

_EVIDENCE_JS = """
  const q = s => Array.from(document.querySelectorAll(s));
  const links = q('a').map(a => a.getAttribute('href') || a.getAttributeNS('http://www.w3.org/1999/xlink', 'href')
                        || '').filter(h => h.includes('evil') && !h.startsWith('#'));  // '#...': a heading's anchor
  return {links: links, katex: q('.katex').length,
          icons: q('[data-testid="stIconMaterial"]').map(e => e.textContent).filter(t => t.includes('warning')),
          bold: q('[data-testid="stMarkdownContainer"] strong, [data-testid="stHeadingWithActionElements"] strong')
                  .map(e => e.textContent),
          svg: q('svg text').map(e => e.textContent).join('\\n'),
          text: document.body.innerText};"""


def test_hostile_ids_render_as_text_on_every_page(native_stack, browser, tmp_path):
    """Store ids, SKUs and a category holding Markdown, Streamlit directives, LaTeX and HTML (the POS contract
    accepts any printable id) are shown as the text they are: no link, bold, icon or formula from data in
    headings, captions or Plotly charts (a first version rendered a store id as a link to evil.example, a
    category's <a> as a clickable link in a chart, ':red[...]' as red text)."""
    from core.clickhouse import get_client, migrate
    from ops.bench_bi import ChainSize, load_chain

    db = f"hostile_{os.getpid()}"
    migrate(native_stack, database=db)
    size = ChainSize(stores=3, skus=4, days=8, window_rows=400, forecast_series=12, horizons=7, seed=3)
    load_chain(get_client(native_stack, db), db, size, END, store_ids=HOSTILE_STORES, skus=HOSTILE_SKUS,
               categories=[HOSTILE_CATEGORY])
    from urllib.parse import quote

    pages = [(f"?store={quote(HOSTILE_STORES[0])}", "Revenue", [HOSTILE_STORES[0]], HOSTILE_CATEGORY),
             (f"store?store={quote(HOSTILE_STORES[1])}", "SKUs at high risk", [HOSTILE_STORES[1]], HOSTILE_CATEGORY),
             ("analyst", "Forecast series", [], "Demand forecast, ")]
    with running_dashboard({"CLICKHOUSE_DATABASE": db}, tmp_path / "dashboard.log") as base:
        for i, (path, card, shown, in_chart) in enumerate(pages):
            open_page(browser, f"{base}/{path}", [card], f"hostile-{i}")
            deadline, ev = time.time() + 30, {}
            while time.time() < deadline:
                ev = browser.execute_script(_EVIDENCE_JS)
                if in_chart in ev["svg"] and all(s in ev["text"] for s in shown):
                    break
                time.sleep(0.5)
            assert in_chart in ev["svg"], (path, ev["svg"][:1500])
            assert all(s in ev["text"] for s in shown), (path, ev["text"][:1500])
            assert (ev["links"], ev["katex"], ev["icons"]) == ([], 0, []), (path, ev["links"], ev["icons"])
            assert not [b for b in ev["bold"] if b in ("B", "S2", "x", "BOLD")], (path, ev["bold"])


def test_a_page_opened_during_an_outage_recovers_without_a_reload(native_stack, chain, browser, tmp_path):
    """The dashboard starts while ClickHouse cannot be reached: the page says so and that it retries; once the
    endpoint answers, the same page (no reload) shows the star schema's numbers (a first version stayed on the
    error until the user reloaded)."""
    from urllib.parse import urlparse

    from selenium.webdriver.common.by import By

    gate = TcpGate(urlparse(native_stack.clickhouse_url).port)
    moved = gate.url(native_stack.clickhouse_url)
    try:
        with running_dashboard({"CLICKHOUSE_URL": moved}, tmp_path / "dashboard.log") as base:
            browser.get(f"{base}/")
            deadline, text = time.time() + 40, ""
            while time.time() < deadline and "not reachable" not in text:
                time.sleep(0.5)
                text = browser.find_element(By.TAG_NAME, "body").text
            assert "not reachable" in text and "retries" in text, text[:1500]
            gate.open()
            deadline, cards = time.time() + 60, []
            while time.time() < deadline and "Revenue" not in cards:
                time.sleep(0.5)
                cards = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]')]
            assert "Revenue" in cards, browser.find_element(By.TAG_NAME, "body").text[:1500]
    finally:
        gate.close()


def test_a_frozen_clickhouse_endpoint_is_reported_on_the_page_and_the_page_recovers(native_stack, chain, browser,
                                                                                     tmp_path):
    """The page is drawn, then ClickHouse freezes (connections accepted, nothing answered: a SIGSTOPped or hung
    endpoint, :meth:`TcpGate.freeze`) and the page is reloaded: after DASHBOARD_CLICKHOUSE_TIMEOUT_SECONDS (3 here)
    it says ClickHouse is not reachable, with the timeout; once the endpoint answers again the same page shows the
    cards without a reload. Before 2026-12-07 the dashboard's client had clickhouse-connect's 300 s socket timeout,
    no setting: the reloaded page stayed blank (Streamlit's running indicator) for 5 minutes."""
    from urllib.parse import urlparse

    from selenium.webdriver.common.by import By

    def wait_for(check, seconds: float):
        deadline, text = time.time() + seconds, ""
        while time.time() < deadline and not check(text):
            time.sleep(0.5)
            text = browser.find_element(By.TAG_NAME, "body").text
        return text

    def cards(_text) -> list[str]:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]')]

    gate = TcpGate(urlparse(native_stack.clickhouse_url).port)
    gate.open()
    moved = gate.url(native_stack.clickhouse_url)
    try:
        with running_dashboard({"CLICKHOUSE_URL": moved, "DASHBOARD_CLICKHOUSE_TIMEOUT_SECONDS": "3"},
                               tmp_path / "dashboard.log") as base:
            browser.get(f"{base}/")
            text = wait_for(lambda t: "Revenue" in cards(t), 60)
            assert "Revenue" in cards(text), text[:1500]
            gate.freeze()
            browser.get(f"{base}/")
            # a liveness bound, not a speed check: 30 x the timeout; the old client waited 300 s
            text = wait_for(lambda t: "not reachable" in t, 90)
            assert "not reachable" in text and "timed out" in text, text[:1500]
            gate.freeze(False)
            text = wait_for(lambda t: "Revenue" in cards(t), 60)
            assert "Revenue" in cards(text), text[:1500]
    finally:
        gate.close()


def test_the_live_strip_shows_a_stopped_stores_last_day_and_flags_it(native_stack, browser, tmp_path):
    """LIVE-A streams up to 12:00 on 5 March, LIVE-B's feed stopped 50 h before. The executive live strip of LIVE-B
    shows LIVE-B's own last 24 hours (revenue 3,000 = sum of its 24 newest hourly windows, 10 x 1..24), and the
    chain's strip says a store is 3,000 minutes behind: before, LIVE-B's strip said "No live data yet" (the 24 h
    were anchored on LIVE-A's newest window) and the chain's strip gave no hint of the stopped feed."""
    import datetime as dt

    from core.clickhouse import get_client, migrate

    db = f"stale_{os.getpid()}"
    migrate(native_stack, database=db)
    c = get_client(native_stack, db)
    t, now = dt.datetime(2026, 3, 5, 12, 0, tzinfo=dt.timezone.utc), dt.datetime.now(dt.timezone.utc)
    store_rows, sku_rows = [], []
    for store, last in (("LIVE-A", t), ("LIVE-B", t - dt.timedelta(hours=50))):
        for h in range(30):
            ws = last - dt.timedelta(hours=h)
            store_rows.append([ws, ws + dt.timedelta(minutes=5), store, h + 1, 0, 10.0 * (h + 1), h + 1, 1, 0, 1.0,
                               0.0, 1, 1, now])
            sku_rows.append([ws, ws + dt.timedelta(minutes=5), store, "P1", h + 1, 0, 10.0 * (h + 1), h + 1, 0, 1.0,
                             "LOW", 0.0, ws, 1, 1, now])
    c.insert("store_metrics_5m", store_rows, column_names=[
        "window_start", "window_end", "store_id", "units_sold", "units_returned", "revenue", "transaction_count",
        "sku_count", "skus_high_risk", "sales_velocity", "anomaly_score", "batch_id", "version", "updated_at"])
    c.insert("sales_metrics_5m", sku_rows, column_names=[
        "window_start", "window_end", "store_id", "product_id", "units_sold", "units_returned", "revenue",
        "transaction_count", "inventory_update_count", "sales_velocity", "stockout_risk", "anomaly_score",
        "last_event_time", "batch_id", "version", "updated_at"])
    with running_dashboard({"CLICKHOUSE_DATABASE": db}, tmp_path / "dashboard.log") as base:
        got = open_page(browser, f"{base}/?store=LIVE-B", ["Live revenue (24 h)"], "live-stopped-store")
        assert got["Live revenue (24 h)"] == f"{sum(10.0 * (h + 1) for h in range(24)):,.2f}"   # 3,000.00
        got = open_page(browser, f"{base}/", ["Live revenue (24 h)"], "live-stale-chain")
        assert got["Live revenue (24 h)"] == "6,000.00"   # each store's own last 24 hours
        from selenium.webdriver.common.by import By

        deadline, text = time.time() + 30, ""
        while time.time() < deadline and "its feed is behind" not in text:
            time.sleep(0.5)
            text = browser.find_element(By.TAG_NAME, "body").text
        assert "3,000 minutes before the newest: its feed is behind" in text, text[:1500]
    c.command(f"DROP DATABASE IF EXISTS {db}")


#: Streamlit's st.dataframe (glide-data-grid) draws on a canvas; its accessibility table holds the header and the
#: rows in view, each cell's shown text
_GRIDS_JS = """
  return Array.from(document.querySelectorAll('table[role="grid"]')).map(t =>
    Array.from(t.querySelectorAll('tr')).map(r => Array.from(r.querySelectorAll('th, td')).map(c => c.textContent.trim())));"""

_TABLES_JS = """
  return Array.from(document.querySelectorAll('[data-testid="stTable"] table')).map(t =>
    Array.from(t.querySelectorAll('tr')).map(r => Array.from(r.querySelectorAll('th, td')).map(c => c.innerText.trim())));"""


def test_stream_health_page_shows_the_views_figures(native_stack, browser, tmp_path):
    """The Stream health page (/health) against stream_batches as the sink writes it (batches inserted again by
    their progress and by re-runs, merges stopped so the table keeps every copy) and quarantined records: its cards
    and per-query / per-topic tables equal the views' figures read as bi_reader, and an independent pandas count of
    each (query, batch) once; it says records expired and rows were dropped as late, and that the stream is behind."""
    from core.clickhouse import get_client, migrate, new_client
    from dashboard import queries as Q
    from dashboard.pages import STALE_BATCH_MINUTES
    from tests.test_bi_views import KEEP_BATCHES, SB_COLS, _stream_batch_inserts

    db = f"health_{os.getpid()}"
    migrate(native_stack.model_copy(update=KEEP_BATCHES), database=db)
    c = get_client(native_stack, db)
    c.command(f"SYSTEM STOP MERGES {db}.stream_batches")
    inserts = _stream_batch_inserts(np.random.default_rng(6))
    for rows in inserts:
        c.insert("stream_batches", rows, column_names=SB_COLS)
    qt = dt.datetime(2026, 5, 4, 12, 0, tzinfo=dt.timezone.utc)
    qrows = [["sales_transaction", "retail-sales", 0, i, qt, f"reason {i % 3}", "{}", 1, qt + dt.timedelta(minutes=i)]
             for i in range(17)]
    # rows ClickHouse refused and the stream set aside: each reason carries the row's values, one group per row,
    # so the 24 hours hold 253 (event_type, topic, reason) groups, more than the 200 health_quarantine lists
    refused = [["sales_transaction", "refused:store_metrics_5m", 0, 1000 + i, qt,
                f"Code: 469. VIOLATED_CONSTRAINT: row (S{i:03d}, units_sold={-i - 1})", "{}", 2,
                qt + dt.timedelta(minutes=30)] for i in range(250)]
    c.insert("quarantine_events", qrows + qrows[:4] + refused, column_names=[   # 4 quarantined again by a re-run
        "event_type", "topic", "partition", "offset", "kafka_timestamp", "reason", "raw_payload", "batch_id",
        "ingested_at"])
    # each Kafka offset once; the refused rows apart (not Kafka records: until 2026-12-06 the cards showed 267)
    quarantined = len({(r[1], r[2], r[3]) for r in qrows})
    refused_rows = len({(r[1], r[2], r[3]) for r in refused})
    raw = pd.DataFrame([r for rows in inserts for r in rows], columns=SB_COLS).assign(seq=lambda d: range(len(d)))
    once = raw.sort_values(["committed_at", "seq"]).groupby(["query", "batch_id"]).tail(1)
    assert len(raw) > len(once) == 80 and len(raw) == 126   # docs/dashboards.md states 126 rows
    per = once.groupby("query")

    bi = new_client(native_stack, db, readonly=True)
    view = lambda sql: bi.query_df(sql.replace("{db}", db))  # noqa: E731
    latest = view("SELECT * FROM {db}.v_stream_health_latest ORDER BY query")
    offsets = view("SELECT * FROM {db}.v_stream_offsets_latest ORDER BY query, topic")
    before = latest["minutes_since_last_batch"].max()
    assert latest["late_rows_dropped"].tolist() == per["late_rows_dropped"].sum().tolist()   # the oracle
    assert latest["records_expired"].tolist() == per["records_expired"].sum().tolist()
    assert latest["micro_batches"].tolist() == [40, 40]
    listed = Q.run(bi, db, "health_quarantine")
    assert len(listed) == 200 and listed["events"].sum() < quarantined + refused_rows == 267   # the list is cut
    with running_dashboard({"CLICKHOUSE_DATABASE": db}, tmp_path / "dashboard.log") as base:
        labels = ["Last committed batch (stalest query)", "Minutes since last batch", "Late rows dropped",
                  "Kafka records expired unread", "Quarantined records (24 h)", "Rows ClickHouse refused (24 h)"]
        m = open_page(browser, f"{base}/health", labels, "stream-health")
        after = view("SELECT max(minutes_since_last_batch) AS m FROM {db}.v_stream_health_latest")["m"][0]
        tables = browser.execute_script(_TABLES_JS)
        from selenium.webdriver.common.by import By

        text = browser.find_element(By.TAG_NAME, "body").text
        dq = open_page(browser, f"{base}/quality", ["Quarantined events", "Dead-lettered events",
                                                     "Rows ClickHouse refused"], "quality-253-reasons")
    bi.close()
    assert value(dq["Quarantined events"]) == quarantined == 17 and value(dq["Dead-lettered events"]) == 0
    assert value(dq["Rows ClickHouse refused"]) == refused_rows == 250
    stalest = min(latest["last_committed_at"])
    assert m["Last committed batch (stalest query)"] == f"{pd.Timestamp(stalest):%Y-%m-%d %H:%M:%S}"
    assert m["Last committed batch (stalest query)"] == f"{min(per['committed_at'].max()):%Y-%m-%d %H:%M:%S}"
    assert round(before) <= value(m["Minutes since last batch"]) <= round(after)
    assert value(m["Late rows dropped"]) == latest["late_rows_dropped"].sum() == once["late_rows_dropped"].sum() > 0
    assert value(m["Kafka records expired unread"]) == latest["records_expired"].max() > 0
    assert value(m["Quarantined records (24 h)"]) == quarantined   # every group, each quarantined offset once
    assert value(m["Rows ClickHouse refused (24 h)"]) == refused_rows
    # the per-query table: one row per query with the view's counts
    by_query = next(t for t in tables if any(r and r[0] == "raw" for r in t))
    header = by_query[0]
    rows = {r[0]: dict(zip(header[1:], r[1:])) for r in by_query[1:] if r and r[0] in ("raw", "windows")}
    for r in latest.itertuples():
        for col in ("micro_batches", "input_rows", "duplicates_dropped", "records_expired", "late_rows_dropped",
                    "last_batch_id"):
            assert value(rows[r.query][col]) == getattr(r, col), (r.query, col)
        assert rows[r.query]["last_committed_at"] == f"{pd.Timestamp(r.last_committed_at):%Y-%m-%d %H:%M:%S}"
    # the offsets table: one row per query x topic, the summed end offsets of the query's latest recorded batch
    by_topic = next(t for t in tables if any("retail-sales" in r for r in t))
    shown = {(r[0], r[1]): r for r in by_topic[1:] if len(r) > 2 and r[0] in ("raw", "windows")}
    head = by_topic[0]
    assert len(shown) == len(offsets) == 6
    for r in offsets.itertuples():
        got = dict(zip(head, shown[(r.query, r.topic)]))
        assert value(got["offsets_reached"]) == r.offsets_reached and value(got["partitions"]) == r.partitions
        assert value(got["batch_id"]) == r.batch_id
    assert "expired or were skipped before they were read" in text and "dropped from the live windows" in text
    assert f"no micro-batch for" in text and before > STALE_BATCH_MINUTES
    c.command(f"DROP DATABASE IF EXISTS {db}")


def test_health_verdicts_name_each_loss_and_each_stale_query():
    """The Stream health page's verdicts: an error per query with expired records, a warning per query with late
    rows, per query with rows ClickHouse refused (set aside) and per query without a batch for longer than
    STALE_BATCH_MINUTES; else one 'complete and current'."""
    from dashboard.pages import health_verdicts

    latest = pd.DataFrame({"query": ["raw", "windows"], "minutes_since_last_batch": [3.0, 16.0],
                           "last_committed_at": [pd.Timestamp("2026-05-04 13:15:01")] * 2})
    hourly = pd.DataFrame({"query": ["raw", "raw", "windows"], "hour_start": pd.to_datetime(["2026-05-04 12:00"] * 3),
                           "records_expired": [0, 5, 0], "late_rows_dropped": [0, 0, 7], "rows_set_aside": [0, 0, 2]})
    got = health_verdicts(latest, hourly, stale_minutes=15)
    assert [(lvl, t.split(":")[0]) for lvl, t in got] == [("error", "query raw"), ("warning", "query windows"),
                                                          ("warning", "query windows"), ("warning", "query windows")]
    assert "5 Kafka record(s)" in got[0][1] and "7 row(s)" in got[1][1] and "no micro-batch for 16 minutes" in got[3][1]
    assert "2 row(s)" in got[2][1] and "refused by ClickHouse" in got[2][1] and "quarantine" in got[2][1]
    ok = health_verdicts(latest.assign(minutes_since_last_batch=1.0),
                         hourly.assign(records_expired=0, late_rows_dropped=0, rows_set_aside=0))
    assert [lvl for lvl, _ in ok] == ["success"] and ok[0][1].startswith("Complete and current")
