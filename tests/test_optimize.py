"""Stock optimisation against a hand-computed example (numbers and arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ml import optimize as opt

# Hand-computed example
#   mean demand d = 20 units/day, forecast-error sigma_d = 5 units/day, lead time L = 4 days,
#   cycle service level 95 %  -> z = Phi^-1(0.95) = 1.644854
#   SS  = z * sigma_d * sqrt(L) = 1.644854 * 5 * 2 = 16.44854 units
#   ROP = d * L + SS = 20 * 4 + 16.44854 = 96.44854 units
#   with lead-time sigma 1 day: SS = z * sqrt(L sigma_d^2 + d^2 sigma_L^2) = 1.644854 * sqrt(4*25 + 400*1)
#                                  = 1.644854 * sqrt(500) = 1.644854 * 22.36068 = 36.78010
#   EOQ: D = 20 * 365 = 7300 units/year, S = 50 per order, H = 25 % * 8.00 = 2.00 per unit-year
#        EOQ = sqrt(2 * 7300 * 50 / 2) = sqrt(365000) = 604.1523 units
#   stock 60, nothing on order: IP = 60 <= ROP -> order max(EOQ, ROP - IP) = 604.15 -> 605,
#        bounded by storage capacity 500 - IP = 440 and shelf life 14 days: 20 * 14 - IP = 220 -> 220
#   days until stock-out = 60 / 20 = 3.0 <= L = 4 -> stock 60 <= d * L = 80 -> HIGH
D, SIGMA, L, SL = 20.0, 5.0, 4.0, 0.95


def test_z_value():
    assert opt.z_value(0.95) == pytest.approx(1.644854, abs=1e-6)
    assert opt.z_value(0.5) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        opt.z_value(1.0)


def test_safety_stock_and_reorder_point_hand_computed():
    ss = opt.safety_stock(SIGMA, L, SL)
    assert ss == pytest.approx(16.44854, abs=1e-4)
    assert opt.reorder_point(D, L, ss) == pytest.approx(96.44854, abs=1e-4)


def test_safety_stock_with_lead_time_variability():
    ss = opt.safety_stock(SIGMA, L, SL, mean_demand=D, sigma_lead_time=1.0)
    assert ss == pytest.approx(36.78010, abs=1e-4)
    with pytest.raises(ValueError):
        opt.safety_stock(-1.0, L, SL)


def test_eoq_hand_computed():
    assert opt.eoq(7300, 50, 0.25 * 8.0) == pytest.approx(604.1523, abs=1e-3)
    assert opt.eoq(0, 50, 2.0) == 0.0
    with pytest.raises(ValueError):
        opt.eoq(100, 50, 0.0)


def test_order_quantity_bounds():
    rop = 96.44854
    # shelf life binds: 220
    assert opt.order_quantity(60, 0, rop, 604.1523, D, storage_capacity=500, shelf_life_days=14) == 220
    # storage binds when shelf life is long: 500 - 60 = 440
    assert opt.order_quantity(60, 0, rop, 604.1523, D, storage_capacity=500, shelf_life_days=365) == 440
    # no bounds: EOQ rounded up: 605
    assert opt.order_quantity(60, 0, rop, 604.1523, D) == 605
    # inventory position above ROP (60 on hand + 40 on order = 100 > 96.4): nothing to order
    assert opt.order_quantity(60, 40, rop, 604.1523, D) == 0
    # stock above what can sell before expiry: never negative
    assert opt.order_quantity(90, 0, rop, 604.1523, 1.0, shelf_life_days=14) == 0


def test_order_quantity_bounds_count_stock_on_order():
    rop = 96.44854
    # stock 0 + 50 on order, capacity 100: free space 100 - 50 = 50 (not 100 - 0), so stock + on order + Q <= 100
    assert opt.order_quantity(0, 50, rop, 604.1523, D, storage_capacity=100) == 50
    # shelf life 14 days: 20 * 14 - (30 + 40) = 210 can still sell before expiry (not 280 - 30 = 250)
    assert opt.order_quantity(30, 40, rop, 604.1523, D, shelf_life_days=14) == 210
    # the unbounded quantity is rounded up (EOQ 17.2 -> 18), a fractional bound down (2.5 * 7 - 0 = 17.5 -> 17)
    assert opt.order_quantity(0, 0, 2.0, 17.2, 2.5) == 18
    assert opt.order_quantity(0, 0, 2.0, 17.2, 2.5, shelf_life_days=7) == 17
    # a bound leaving no room gives 0.0, not -0.0
    q = opt.order_quantity(60, 0, rop, 604.1523, D, storage_capacity=50)
    assert q == 0 and math.copysign(1.0, q) == 1.0


def test_order_quantity_caps_the_cover_of_a_cheap_slow_mover():
    # UCI-BE 21703 on 2010-12-23 (measured): 0.043 units/day, order 145 units = 145 / 0.043 = 3,372 days (9.2 years)
    d, e = 0.043, 145.0
    assert opt.order_quantity(0, 0, 1.2, e, d) == 145
    # capped at 180 days of demand: floor(0.043 * 180 - 0) = floor(7.74) = 7
    assert opt.order_quantity(0, 0, 1.2, e, d, max_cover_days=180) == 7
    # the cover counts what is on hand and on order: floor(7.74 - (1 + 0.5)) = 6
    assert opt.order_quantity(1, 0.5, 2.0, e, d, max_cover_days=180) == 6
    # ROP - IP above the cap is still ordered (rounded up): ROP 12.3, IP 0, cap floor(0.043 * 30) = 1 -> 13
    assert opt.order_quantity(0, 0, 12.3, e, d, max_cover_days=30) == 13
    # None or NaN = no cap; a cap above the EOQ's cover leaves the EOQ: floor(0.043 * 3650) = 156 >= 145
    assert opt.order_quantity(0, 0, 1.2, e, d, max_cover_days=None) == 145
    assert opt.order_quantity(0, 0, 1.2, e, d, max_cover_days=float("nan")) == 145
    assert opt.order_quantity(0, 0, 1.2, e, d, max_cover_days=3650) == 145
    # the physical bounds still apply after the cap: shelf life 0.043 * 100 = 4.3 -> 4
    assert opt.order_quantity(0, 0, 1.2, e, d, shelf_life_days=100, max_cover_days=180) == 4
    # arrays, per row: capped, ROP wins, fast mover (EOQ 605 = 30 days of 20/day) untouched, IP > ROP -> 0
    got = opt.order_quantity(np.array([0.0, 0.0, 60.0, 5.0]), 0.0, np.array([1.2, 12.3, 96.44854, 1.2]),
                             np.array([e, e, 604.1523, e]), np.array([d, d, D, d]), max_cover_days=np.array([180, 30, 180, 180]))
    assert got.tolist() == [7.0, 13.0, 605.0, 0.0]
    with pytest.raises(ValueError, match="max_cover_days"):
        opt.order_quantity(0, 0, 1.2, e, d, max_cover_days=0)


def test_recommend_passes_the_cover_cap():
    inp = pd.DataFrame([{"store_id": "BE", "product_id": "21703", "stock": 0.0, "mean_demand": 0.043,
                         "sigma_d": 0.2, "unit_cost": 0.25}])
    kw = dict(lead_time_days=L, service_level=SL, order_cost=50.0, holding_cost_rate=0.25)
    r0, r1 = opt.recommend(inp, **kw).iloc[0], opt.recommend(inp, max_cover_days=180, **kw).iloc[0]
    # EOQ sqrt(2 * 0.043 * 365 * 50 / (0.25 * 0.25)) = 158.47 -> 159 uncapped; ROP 0.043 * 4 + 1.6449 * 0.2 * 2
    # = 0.83 >= IP 0; capped: floor(0.043 * 180 - 0) = 7
    assert r0["eoq"] == pytest.approx(158.47, abs=0.01) and r0["reorder_qty"] == 159
    assert r1["reorder_qty"] == 7 and r1["reorder_needed"] == 1


def test_reorder_needed_only_when_something_is_ordered():
    # all three have IP <= ROP (83.06 for d 10, sigma 3, L 7) but order nothing: capacity already exceeded,
    # shelf-life bound 10 * 5 - 80 < 0, dead SKU (ROP 0, d_bar 0); the fourth's order fills the free space
    inp = pd.DataFrame({
        "store_id": ["S1", "S2", "S3", "S4"], "product_id": ["cap", "shelf", "dead", "on_order"],
        "stock": [60.0, 80.0, 0.0, 0.0], "mean_demand": [10.0, 10.0, 0.0, 10.0], "sigma_d": [3.0, 3.0, 0.0, 3.0],
        "unit_cost": 5.0, "on_order": [0.0, 0.0, 0.0, 50.0], "storage_capacity": [50.0, np.nan, np.nan, 100.0],
        "shelf_life_days": [np.nan, 5.0, np.nan, np.nan]})
    out = opt.recommend(inp, lead_time_days=7, service_level=SL, order_cost=50.0, holding_cost_rate=0.25)
    assert (out["stock"] + out["on_order"] <= out["reorder_point"]).all()
    assert out["reorder_qty"].tolist() == [0.0, 0.0, 0.0, 50.0]
    assert out["reorder_needed"].tolist() == [0, 0, 0, 1]
    assert (np.copysign(1.0, out["reorder_qty"]) == 1.0).all()   # no -0.0

def test_days_until_stockout_and_risk():
    assert opt.days_until_stockout(60, 20) == pytest.approx(3.0)
    assert opt.days_until_stockout(60, 0) == opt.MAX_DAYS
    assert opt.stockout_risk(60, D, L, 96.44854) == "HIGH"      # 60 <= 80
    assert opt.stockout_risk(90, D, L, 96.44854) == "MEDIUM"  # 80 < 90 <= 96.4
    assert opt.stockout_risk(120, D, L, 96.44854) == "LOW"


def test_a_stocked_sku_without_demand_is_never_high_risk_an_empty_shelf_always_is():
    # d_bar = 0 with stock on hand: nothing is expected to sell before a replenishment arrives (days until
    # stock-out 999) -> not HIGH (stock 3 <= ROP 5 -> MEDIUM, else LOW). Out of stock (stock <= 0) is HIGH with
    # 0 days whatever the forecast: a zero forecast may be the empty shelf's own censored sales (the stream's rule)
    assert opt.stockout_risk(3.0, 0.0, L, 5.0) == "MEDIUM"
    assert opt.stockout_risk(5.0, 0.0, L, 0.0) == "LOW"
    assert opt.stockout_risk(0.0, 0.0, L, 0.0) == "HIGH" and opt.stockout_risk(-2.0, 0.0, L, 0.0) == "HIGH"
    assert opt.stockout_risk(0.0, 0.1, L, 1.0) == "HIGH"   # any expected sale with nothing on hand
    got = opt.stockout_risk(np.array([0.0, 3.0, 60.0]), np.array([0.0, 0.0, D]), L, np.array([0.0, 5.0, 96.4]))
    assert got.tolist() == ["HIGH", "MEDIUM", "HIGH"]
    assert opt.days_until_stockout(0.0, 0.0) == 0.0 and opt.days_until_stockout(5.0, 0.0) == opt.MAX_DAYS
    inp = pd.DataFrame([{"store_id": "S", "product_id": p, "stock": s, "mean_demand": 0.0, "sigma_d": 0.0,
                         "unit_cost": 5.0} for p, s in (("empty", 0.0), ("idle", 4.0))])
    r = opt.recommend(inp, lead_time_days=7, service_level=SL, order_cost=50.0, holding_cost_rate=0.25)
    assert r["days_until_stockout"].tolist() == [0.0, opt.MAX_DAYS]
    assert r["stockout_risk"].tolist() == ["HIGH", "LOW"]

def test_recommend_frame_matches_hand_computed():
    inp = pd.DataFrame([
        {"store_id": "S1", "product_id": "P1", "stock": 60.0, "mean_demand": D, "sigma_d": SIGMA, "unit_cost": 8.0,
         "storage_capacity": 500.0, "shelf_life_days": 14.0},
        {"store_id": "S1", "product_id": "P2", "stock": 120.0, "mean_demand": D, "sigma_d": SIGMA, "unit_cost": 8.0,
         "storage_capacity": np.nan, "shelf_life_days": np.nan},
    ])
    out = opt.recommend(inp, lead_time_days=L, service_level=SL, order_cost=50.0, holding_cost_rate=0.25)
    r = out.iloc[0]
    assert r["safety_stock"] == pytest.approx(16.44854, abs=1e-4)
    assert r["reorder_point"] == pytest.approx(96.44854, abs=1e-4)
    assert r["eoq"] == pytest.approx(604.1523, abs=1e-3)
    assert r["reorder_qty"] == 220 and r["reorder_needed"] == 1
    assert r["days_until_stockout"] == pytest.approx(3.0) and r["stockout_risk"] == "HIGH"
    r2 = out.iloc[1]
    assert r2["reorder_qty"] == 0 and r2["reorder_needed"] == 0 and r2["stockout_risk"] == "LOW"
    assert r2["days_until_stockout"] == pytest.approx(6.0)


def test_recommend_rejects_bad_input():
    with pytest.raises(ValueError, match="lacks column"):
        opt.recommend(pd.DataFrame({"store_id": ["a"]}), lead_time_days=3, service_level=0.95,
                      order_cost=1, holding_cost_rate=0.2)
    bad = pd.DataFrame([{"store_id": "a", "product_id": "b", "stock": 1.0, "mean_demand": 1.0, "sigma_d": 1.0,
                         "unit_cost": 0.0}])
    with pytest.raises(ValueError, match="unit_cost"):
        opt.recommend(bad, lead_time_days=3, service_level=0.95, order_cost=1, holding_cost_rate=0.2)


def test_sigma_from_interval_inverts_normal_interval():
    # a normal N(10, 2^2) has 80 % interval 10 -/+ 1.2816 * 2
    lo, hi = 10 - 1.2815516 * 2, 10 + 1.2815516 * 2
    assert float(opt.sigma_from_interval(lo, hi)) == pytest.approx(2.0, abs=1e-6)
    pred = pd.DataFrame({"store_id": ["s"] * 2, "product_id": ["p"] * 2, "yhat": [4.0, 6.0],
                         "lower80": [lo, lo], "upper80": [hi, hi]})
    agg = opt.inputs_from_forecast(pred)
    assert agg.loc[0, "mean_demand"] == 5.0 and math.isclose(agg.loc[0, "sigma_d"], 2.0, abs_tol=1e-6)


def test_inputs_from_forecast_take_the_lead_time_totals_sigma():
    """With lead_sigma on the forecasts (the error spread of the demand total over days 1..h), sigma_d is
    lead_sigma(L) / sqrt(L), so the safety stock z * sigma_d * sqrt(L) is z * lead_sigma(L); an L beyond the
    horizon grows it by sqrt(L / H); without lead_sigma, or without L, the interval's sigma as before."""
    rows = [{"store_id": "s", "product_id": p, "horizon": h, "yhat": 2.0, "lower80": 0.0, "upper80": 2.5631,
             "lead_sigma": 1.5 * h} for p in ("a", "b") for h in range(1, 8)]
    pred = pd.DataFrame(rows)
    pred.loc[pred["product_id"] == "b", "lead_sigma"] *= 2
    got = opt.inputs_from_forecast(pred, lead_time_days=4).set_index("product_id")
    assert got.loc["a", "sigma_d"] == pytest.approx(6.0 / 2) and got.loc["b", "sigma_d"] == pytest.approx(12.0 / 2)
    assert got.loc["a", "mean_demand"] == 2.0
    rec = opt.recommend(got.reset_index().assign(stock=0.0, unit_cost=1.0), lead_time_days=4, service_level=0.95,
                        order_cost=1, holding_cost_rate=0.2).set_index("product_id")
    assert rec.loc["a", "safety_stock"] == pytest.approx(opt.z_value(0.95) * 6.0)
    beyond = opt.inputs_from_forecast(pred, lead_time_days=14).set_index("product_id")
    assert beyond.loc["a", "sigma_d"] * math.sqrt(14) == pytest.approx(1.5 * 7 * math.sqrt(14 / 7))
    for lt, h in ((2.4, 2), (2.6, 3)):   # a lead time between whole days: its nearest h, scaled by sqrt(L / h)
        got_lt = opt.inputs_from_forecast(pred, lead_time_days=lt).set_index("product_id")
        assert got_lt.loc["a", "sigma_d"] * math.sqrt(lt) == pytest.approx(1.5 * h * math.sqrt(lt / h))
    interval = opt.inputs_from_forecast(pred.drop(columns="lead_sigma"), lead_time_days=4)
    assert interval["sigma_d"].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert opt.inputs_from_forecast(pred)["sigma_d"].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)


def test_inputs_from_forecast_take_the_empirical_lead_time_quantile_at_the_service_level():
    """With lead_q500 .. lead_q999 on the forecasts and a service level a in their range, the safety stock is
    the lead-time total's error quantile at a (linear between two stored levels, scaled by sqrt(L / h) off whole
    days, never negative), expressed as sigma_d = SS / (z sqrt(L)) so that recommend() gives it back; off the
    range, without a level, or where a quantile is missing: lead_sigma as before."""
    from ml.forecast import LEAD_LEVELS, LEAD_QUANTILE_COLUMNS

    base = {c: 10.0 * a for a, c in zip(LEAD_LEVELS, LEAD_QUANTILE_COLUMNS)}
    rows = []
    for p in ("a", "b", "c"):
        for h in range(1, 8):
            r = {"store_id": "s", "product_id": p, "horizon": h, "yhat": 2.0, "lower80": 0.0, "upper80": 2.5631,
                 "lead_sigma": 1.5 * h}
            r.update({c: v * h for c, v in base.items()})   # q_a(E_h) = 10 a h units
            rows.append(r)
    pred = pd.DataFrame(rows)
    pred.loc[pred["product_id"] == "b", LEAD_QUANTILE_COLUMNS] = -3.0          # over-forecast: no safety stock
    pred.loc[pred["product_id"] == "c", "lead_q950"] = np.nan                  # missing: lead_sigma
    L = 4
    got = opt.inputs_from_forecast(pred, lead_time_days=L, service_level=0.95).set_index("product_id")
    z = opt.z_value(0.95)
    assert got.loc["a", "sigma_d"] * z * math.sqrt(L) == pytest.approx(10 * 0.95 * 4)
    assert got.loc["b", "sigma_d"] == 0.0
    assert got.loc["c", "sigma_d"] == pytest.approx(1.5 * 4 / 2)
    rec = opt.recommend(got.reset_index().assign(stock=0.0, unit_cost=1.0), lead_time_days=L, service_level=0.95,
                        order_cost=1, holding_cost_rate=0.2).set_index("product_id")
    assert rec.loc["a", "safety_stock"] == pytest.approx(38.0) and rec.loc["b", "safety_stock"] == 0.0
    # between two stored levels (0.95 and 0.975): linear, 0.96 -> 10 * 0.96 * 4
    mid = opt.inputs_from_forecast(pred, lead_time_days=L, service_level=0.96).set_index("product_id")
    assert mid.loc["a", "sigma_d"] * opt.z_value(0.96) * math.sqrt(L) == pytest.approx(10 * 0.96 * 4)
    # the edges of the range, and a lead time between whole days (h = 2, scaled by sqrt(2.4 / 2))
    for a in (0.5 + 1e-9, 0.999):
        e = opt.inputs_from_forecast(pred, lead_time_days=L, service_level=a).set_index("product_id")
        assert e.loc["a", "sigma_d"] * opt.z_value(a) * math.sqrt(L) == pytest.approx(10 * a * 4, rel=1e-6)
    lt = opt.inputs_from_forecast(pred, lead_time_days=2.4, service_level=0.95).set_index("product_id")
    assert lt.loc["a", "sigma_d"] * z * math.sqrt(2.4) == pytest.approx(10 * 0.95 * 2 * math.sqrt(2.4 / 2))
    # off the stored range, or no level given: lead_sigma(L) / sqrt(L)
    for a in (0.9995, None):
        off = opt.inputs_from_forecast(pred, lead_time_days=L, service_level=a).set_index("product_id")
        assert off.loc["a", "sigma_d"] == pytest.approx(1.5 * 4 / 2)


def test_an_unknown_demand_sets_no_cover_cap():
    """Review of 2026-12-07: a NaN mean demand turned the capped order into NaN (np.minimum); it sets no cap."""
    q = opt.order_quantity(np.array([0.0, 0.0]), 0, np.array([5.0, 5.0]), np.array([10.0, 10.0]),
                           np.array([np.nan, 0.1]), max_cover_days=180)
    assert q.tolist() == [10.0, 10.0]


def test_order_bound_names_the_rule_that_set_the_quantity():
    # the hand-computed example (ROP 96.44854, EOQ 604.1523, d 20/day), one row per rule:
    rop, e = 96.44854, 604.1523
    cases = [
        # IP = 60 + 40 = 100 > ROP -> nothing ordered
        ((60, 40, rop, e, D), {}, 0.0, "none"),
        # IP 60 <= ROP, EOQ 604.15 >= ROP - IP = 36.45 -> ceil(604.15) = 605, no bound given
        ((60, 0, rop, e, D), {}, 605.0, "eoq"),
        # EOQ 10 < ROP - IP = 96.45 -> ceil(96.45) = 97
        ((0, 0, rop, 10.0, D), {}, 97.0, "rop_gap"),
        # 30 days of cover: max(ceil(96.45 - 60), floor(20 * 30 - 60)) = max(37, 540) = 540 < 605
        ((60, 0, rop, e, D), {"max_cover_days": 30}, 540.0, "cover_cap"),
        # capacity 500 - 60 = 440 < 540 (cover cap applied first)
        ((60, 0, rop, e, D), {"max_cover_days": 30, "storage_capacity": 500}, 440.0, "capacity"),
        # shelf life 14 days: 20 * 14 - 60 = 220 < 440
        ((60, 0, rop, e, D), {"max_cover_days": 30, "storage_capacity": 500, "shelf_life_days": 14}, 220.0,
         "shelf_life"),
        # capacity already full (50 - 60 < 0): the bound leaves no room, quantity 0, the bound named
        ((60, 0, rop, e, D), {"storage_capacity": 50}, 0.0, "capacity"),
        # a bound equal to the quantity does not take over: capacity 60 + 605 = 665 -> 605 stays 'eoq'
        ((60, 0, rop, e, D), {"storage_capacity": 665}, 605.0, "eoq"),
        # dead SKU: ROP 0, EOQ 0, IP 0 -> nothing needed
        ((0, 0, 0.0, 0.0, 0.0), {}, 0.0, "none"),
    ]
    for args, kw, qty, bound in cases:
        assert opt.order_quantity(*args, **kw) == qty, (args, kw)
        assert opt.order_bound(*args, **kw) == bound, (args, kw)
    # vectorized: the same rows at once give the same answers
    a = [np.array([c[0][i] for c in cases[:4]], dtype=float) for i in range(5)]
    q, b = opt.order_terms(*a, max_cover_days=np.array([np.nan, np.nan, np.nan, 30.0]))
    assert q.tolist() == [0.0, 605.0, 97.0, 540.0] and b.tolist() == ["none", "eoq", "rop_gap", "cover_cap"]
    assert set(b) <= set(opt.ORDER_BOUNDS)


def test_recommend_reports_the_order_bound():
    # test_recommend_passes_the_cover_cap's row: uncapped 159 = EOQ; capped at 180 days: 7 = cover cap
    inp = pd.DataFrame([{"store_id": "BE", "product_id": "21703", "stock": 0.0, "mean_demand": 0.043,
                         "sigma_d": 0.2, "unit_cost": 0.25}])
    kw = dict(lead_time_days=L, service_level=SL, order_cost=50.0, holding_cost_rate=0.25)
    assert opt.recommend(inp, **kw)["order_bound"].tolist() == ["eoq"]
    assert opt.recommend(inp, max_cover_days=180, **kw)["order_bound"].tolist() == ["cover_cap"]
    # 159 on order: IP 159 > ROP 0.83 -> none
    assert opt.recommend(inp.assign(on_order=159.0), **kw)["order_bound"].tolist() == ["none"]


def test_an_inactive_series_orders_nothing_and_says_why():
    """A series the forecasts flag inactive (ml.forecast.inactive_series: no sale for more than max(56 days, 3 x its
    mean inter-demand interval)) forecasts 0, but the safety stock of its level bucket alone still made an order
    (sigma_d 0.2: ROP 0.66 above 0.5 units on hand, 1 unit, rop_gap). Now nothing is ordered while stock is on
    hand and order_bound says 'inactive' (out of stock: the next test); the risk stays as computed (MEDIUM: stock
    <= ROP). A series not flagged (False or missing) is planned as before."""
    inp = pd.DataFrame([{"store_id": "S", "product_id": p, "stock": 0.5, "mean_demand": 0.0, "sigma_d": 0.2,
                         "unit_cost": 1.0, "inactive": flag} for p, flag in (("gone", True), ("kept", False),
                                                                            ("unknown", None))])
    kw = dict(lead_time_days=L, service_level=SL, order_cost=50.0, holding_cost_rate=0.25, max_cover_days=180)
    rec = opt.recommend(inp, **kw).set_index("product_id")
    assert rec.loc["gone", ["reorder_qty", "reorder_needed", "order_bound"]].tolist() == [0.0, 0, "inactive"]
    assert rec.loc["gone", "stockout_risk"] == "MEDIUM" and rec.loc["gone", "reorder_point"] > 0
    for p in ("kept", "unknown"):   # without the flag: the safety stock's order
        assert rec.loc[p, ["reorder_qty", "order_bound"]].tolist() == [1.0, "rop_gap"], p
    assert "inactive" in opt.ORDER_BOUNDS
    # the flag of any of a series' forecast rows reaches the plan's input
    pred = pd.DataFrame({"store_id": "S", "product_id": ["a", "a", "b"], "yhat": 0.0, "lower80": 0.0,
                         "upper80": 0.5, "inactive": [True, True, False]})
    assert opt.inputs_from_forecast(pred).set_index("product_id")["inactive"].to_dict() == {"a": True, "b": False}


def test_an_inactive_series_out_of_stock_is_restocked_on_its_selling_rate():
    """The inactive rule reads only sales, and an empty shelf has none: a SKU selling ~3/day for 300 days whose stock
    then stays 0 for 57 days (a supplier shortage) is flagged inactive; until 2026-12-07 the plan ordered it 0
    units ('inactive', stock 0, forecast 0, sigma_d 0.5) night after night, so it never sold again (the same row
    without the flag: 3 units, rop_gap). Now an inactive series with stock <= 0 is restocked to the reorder point
    of its selling rate (3/day): L 7, sigma max(0.5, sqrt(3)) = 1.732 (the Poisson floor; the bucket's 0.5 gave
    SS 2.18, 24 units), SS = 1.6449 x 1.732 x sqrt(7) = 7.538, ROP 21 + 7.54 = 28.54 -> 29 units,
    order_bound 'inactive_out_of_stock'; without a selling rate it is planned on its forecast as an active series
    (3 units); with stock on hand it still orders nothing ('inactive'); an order on the way counts."""
    rows = [("empty", 0.0, 0.0, True, 3.0), ("stocked", 5.0, 0.0, True, 3.0), ("active", 0.0, 0.0, False, 3.0),
            ("no_rate", 0.0, 0.0, True, float("nan")), ("on_way", 0.0, 30.0, True, 3.0),
            ("negative", -2.0, 0.0, True, 3.0)]
    inp = pd.DataFrame([{"store_id": "S", "product_id": p, "stock": st, "on_order": oo, "mean_demand": 0.0,
                         "sigma_d": 0.5, "unit_cost": 1.0, "inactive": f, "selling_rate": r}
                        for p, st, oo, f, r in rows])
    kw = dict(lead_time_days=7, service_level=0.95, order_cost=50.0, holding_cost_rate=0.25, max_cover_days=180)
    rec = opt.recommend(inp, **kw).set_index("product_id")
    cols = ["reorder_qty", "reorder_needed", "order_bound"]
    assert rec.loc["empty", cols].tolist() == [29.0, 1, "inactive_out_of_stock"]   # old code: 0, 'inactive'
    assert rec.loc["empty", "reorder_point"] == pytest.approx(28.538, abs=1e-3)
    assert rec.loc["empty", "sigma_d"] == pytest.approx(3 ** 0.5)                  # the Poisson floor
    assert rec.loc["empty", "stockout_risk"] == "HIGH" and rec.loc["empty", "mean_demand"] == 0.0
    assert rec.loc["stocked", cols].tolist() == [0.0, 0, "inactive"]
    assert rec.loc["active", cols].tolist() == [3.0, 1, "rop_gap"]
    assert rec.loc["no_rate", cols].tolist() == [3.0, 1, "inactive_out_of_stock"]
    assert rec.loc["on_way", cols].tolist() == [0.0, 0, "inactive_out_of_stock"]   # 30 on order > ROP 28.54
    assert rec.loc["negative", cols].tolist() == [31.0, 1, "inactive_out_of_stock"]
    # a NaN sigma_d (no backtest error for its bucket) takes the Poisson floor; old code: NaN ROP, 0 units
    nan_sigma = opt.recommend(inp.iloc[:1].assign(sigma_d=float("nan")), **kw).iloc[0]
    assert (nan_sigma["reorder_qty"], nan_sigma["order_bound"]) == (29.0, "inactive_out_of_stock")
    assert nan_sigma["reorder_point"] == pytest.approx(28.538, abs=1e-3)
    assert "inactive_out_of_stock" in opt.ORDER_BOUNDS
    # the forecasts' selling rate reaches the plan's input
    pred = pd.DataFrame({"store_id": "S", "product_id": ["a", "a", "b"], "yhat": 0.0, "lower80": 0.0,
                         "upper80": 0.5, "inactive": [True, True, False], "selling_rate": [3.0, 3.0, float("nan")]})
    got = opt.inputs_from_forecast(pred).set_index("product_id")
    assert got.loc["a", "selling_rate"] == 3.0 and np.isnan(got.loc["b", "selling_rate"])
    # the selling rate of a SKU with few sale days is floored at the rule's 56-day span (ml.forecast.inactive_series):
    # one 200-unit sale 60 days ago, three 40-unit days then 297 silent days, 3/day for 300 days then 57 silent days
    from ml.forecast import inactive_series

    o = pd.Timestamp("2024-12-31")
    day = lambda ago: o - pd.Timedelta(days=ago)   # noqa: E731
    summ = pd.DataFrame({"store_id": "S", "product_id": ["one_sale", "three_days", "steady"],
                         "first_sale": [day(60), day(299), day(356)], "last_sale": [day(60), day(297), day(57)],
                         "demand_days": [1, 3, 300], "units_sold": [200.0, 120.0, 900.0]})
    flags = inactive_series(summ, o)
    assert flags["inactive"].all()
    few = flags.assign(stock=0.0, on_order=0.0, mean_demand=0.0, sigma_d=0.5, unit_cost=1.0)
    rec = opt.recommend(few, **kw).set_index("product_id")
    # old code: 200/day -> ROP 1,402.2, 1,403 units (7 x its lifetime sales); 40/day -> 283 units (120 sold)
    # (sigma: the Poisson floor sqrt(rate)) 200/56 = 3.57/day: ROP 25 + 8.22 = 33.22 -> 34; 120/56: 15 + 6.37 -> 22
    assert rec.loc["one_sale", "reorder_qty"] == 34.0 and rec.loc["three_days", "reorder_qty"] == 22.0
    assert rec.loc["one_sale", "reorder_point"] == pytest.approx(33.224, abs=1e-3)
    assert rec.loc["steady", "reorder_qty"] == 29.0          # 900 units over 300 days: 3/day, as "empty"


def test_open_orders_fifo_by_hand():
    day = pd.Timestamp
    orders = pd.DataFrame({"store_id": ["S", "S", "S", "T"], "product_id": ["A", "A", "A", "B"],
                           "as_of_date": [day("2024-07-01"), day("2024-07-02"), day("2024-07-03"), day("2024-07-02")],
                           "reorder_qty": [100.0, 50.0, 30.0, 20.0]})
    receipts = pd.DataFrame({"store_id": ["S", "S", "S", "S", "T"], "product_id": ["A", "A", "A", "A", "B"],
                             "date": [day("2024-07-01"), day("2024-07-02"), day("2024-07-03"), day("2024-07-04"),
                                      day("2024-07-02")],
                             "units_received": [500.0, 120.0, 10.0, 5.0, 20.0]})
    got = opt.open_orders(orders, receipts).set_index(["store_id", "product_id"])["on_order"]
    # S|A: the 07-01 receipt (500) is in the stock of the night of order 1: fills nothing.
    #      07-02: 120 fills order 1 (100 -> 0); the other 20 cannot belong to order 2 (placed 07-02): discarded.
    #      07-03: 10 fills order 2 (50 -> 40); order 3 placed 07-03. 07-04: 5 fills order 2 (40 -> 35).
    #      on order 0 + 35 + 30 = 65 (netting the total received after 07-01 instead: 180 - 135 = 45)
    # T|B: its 07-02 receipt is on the order's own night: 20 still on order
    assert got.to_dict() == {("S", "A"): 65.0, ("T", "B"): 20.0}
    assert opt.open_orders(orders.iloc[:0], receipts).empty


def test_open_orders_a_receipt_fills_only_orders_still_open():
    # L = 3: order 1 (07-01, 100) is open on 07-02 .. 07-04, order 2 (07-03, 50) on 07-04 .. 07-06.
    day = pd.Timestamp
    orders = pd.DataFrame({"store_id": "S", "product_id": "A", "as_of_date": [day("2024-07-01"), day("2024-07-03")],
                           "reorder_qty": [100.0, 50.0]})
    on_day4 = pd.DataFrame({"store_id": ["S"], "product_id": ["A"], "date": [day("2024-07-04")],
                            "units_received": [100.0]})
    # night 07-05: the 07-04 receipt delivered order 1 (due 07-04); order 1 is past its lead time, order 2 open: 50
    # (summing the orders of [t - L, t) only and netting the receipt against them gives 0: order 2 ordered again)
    got = opt.open_orders(orders, on_day4, lead_time_days=3, as_of=day("2024-07-05"))
    assert got["on_order"].tolist() == [50.0]
    # a receipt after order 1 is due (07-05) cannot be its delivery: it fills order 2; nothing summed from order 1
    on_day5 = on_day4.assign(date=[day("2024-07-05")], units_received=[30.0])
    assert opt.open_orders(orders, on_day5, lead_time_days=3, as_of=day("2024-07-05"))["on_order"].tolist() == [20.0]
    # a day whose RESTOCK total is negative (a reversal) fills nothing
    neg = on_day4.assign(units_received=[-40.0])
    assert opt.open_orders(orders, neg, lead_time_days=3, as_of=day("2024-07-05"))["on_order"].tolist() == [50.0]
