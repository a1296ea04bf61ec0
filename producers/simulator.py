"""Synthetic POS simulator: a seeded, deterministic stream of retail events in event-time order.

The generator is pure (no Kafka, no clock reads): :meth:`Simulator.events` yields
``(event_type, record)`` tuples whose records satisfy the Avro contracts, ordered by event time
(``timestamp``, epoch ms UTC) starting at ``SimConfig.start``. Same config -> same events, byte for byte.

Model (per store, per simulated minute):

* **Demand**: the number of POS lines is Poisson(lambda) with
  ``lambda = R * hourly[hour] * weekly[weekday]`` where R = ``events_per_min_per_store`` (POS lines
  per store per minute at an average hour; the profiles are normalised to mean 1, so R is the weekly
  average). Each line picks a SKU by a seeded Zipf-like popularity (weight ~ rank^-0.8), a quantity
  1 + Geometric, a payment method and (60 %) a loyalty customer id.
* **Stock** (consistent with sales): every store x SKU opens with stock in (reorder point, capacity]
  (``OPENING``). A sale lowers stock (``SALE``, quantity_change = -q); a sale larger than stock is
  capped to the stock on hand, and skipped as a lost sale when stock is 0, so ``new_quantity`` is never
  negative. Returns (``RETURN``, +q) come with a negative-quantity sales line. When stock falls below the
  reorder point a replenishment order is placed (once per episode) and arrives after a seeded lead time
  of ``restock_lead_minutes`` as a ``RESTOCK`` bringing stock up to the storage capacity (order-up-to
  policy). Occasional ``WASTE`` (spoilage, capped at stock) and ``ADJUSTMENT`` (stock-count
  corrections, +/-) movements.
* **Prices**: occasional ``price_change`` events (promotion, promotion end, markdown, cost change,
  competitor match); later sales at that store use the new price.
* **Customers**: some sales lines are preceded by a ``customer_event`` (store visit, product view,
  loyalty sign-up, abandoned basket, complaint).

Invariant checked by the tests: for every store x SKU the inventory updates chain, i.e.
``new_quantity == previous new_quantity + quantity_change`` and ``new_quantity >= 0``.
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import numpy as np
import pandas as pd

from contracts import require_symbols
from producers.catalog import build_products, build_stores

#: relative demand per hour of day (store opening hours 07-22, lunch and after-work peaks)
HOURLY_PROFILE = np.array([0.10, 0.08, 0.06, 0.06, 0.08, 0.15, 0.35, 0.70, 1.00, 1.20, 1.35, 1.55,
                           1.75, 1.60, 1.40, 1.35, 1.50, 1.80, 1.90, 1.60, 1.20, 0.80, 0.45, 0.20])
HOURLY_PROFILE = HOURLY_PROFILE / HOURLY_PROFILE.mean()
#: relative demand per weekday (Monday=0): Friday/Saturday peak, quieter Sunday
WEEKLY_PROFILE = np.array([0.90, 0.88, 0.92, 0.98, 1.15, 1.30, 0.87])
WEEKLY_PROFILE = WEEKLY_PROFILE / WEEKLY_PROFILE.mean()

# Enum values come from the Avro schemas (contracts/schemas/*.avsc), the one source: the simulator only says how
# often it draws each symbol, and a Simulator checks at construction that every value it can emit is a symbol
# (contracts.require_symbols), so a renamed or removed symbol stops it at start, naming the value, instead of
# dead-lettering its records one by one. A schema symbol without a weight here is not drawn.
#: relative frequency of each payment method at a till (``sales_transaction.payment_method``; ONLINE and UNKNOWN
#: are not drawn: the replay of the online retailer sends ONLINE)
PAYMENT_WEIGHTS: dict[str, float] = {"CARD": 0.55, "CASH": 0.20, "MOBILE": 0.22, "GIFT_CARD": 0.03}
#: relative frequency of each customer event type (``customer_event.event_type``)
CUSTOMER_EVENT_WEIGHTS: dict[str, float] = {"STORE_VISIT": 0.45, "PRODUCT_VIEW": 0.35, "LOYALTY_SIGNUP": 0.06,
                                            "BASKET_ABANDONED": 0.10, "COMPLAINT": 0.04}
#: customer event types that name a product (the others carry product_id null)
PRODUCT_CUSTOMER_EVENTS = ("PRODUCT_VIEW", "BASKET_ABANDONED")
#: fixed enum values the model writes (``inventory_update.reason``, ``price_change.reason``)
INVENTORY_REASONS = ("OPENING", "SALE", "RETURN", "RESTOCK", "WASTE", "ADJUSTMENT")
PRICE_REASONS = ("PROMOTION", "PROMOTION_END", "MARKDOWN", "COST_CHANGE", "COMPETITOR")
_USER = "producers.simulator"


def enum_choices(event_type: str, field: str, weights: dict[str, float]) -> tuple[tuple[str, ...], np.ndarray]:
    """``(symbols, probabilities)`` of an enum field: the schema's symbols in schema order
    (:func:`contracts.enum_symbols`) and each one's weight from ``weights`` (0 for a symbol it does not name),
    normalised to sum 1.

    Raises:
        contracts.ContractError: ``weights`` names a value the schema does not define.
    """
    symbols = require_symbols(event_type, field, weights, user=_USER)
    p = np.array([float(weights.get(sym, 0.0)) for sym in symbols])
    return symbols, p / p.sum()


def seasonality(ts_ms: int) -> float:
    """Demand multiplier ``hourly[hour] * weekly[weekday]`` at event time ``ts_ms`` (UTC)."""
    d = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    return float(HOURLY_PROFILE[d.hour] * WEEKLY_PROFILE[d.weekday()])


def to_ms(dt: datetime) -> int:
    """Datetime -> epoch milliseconds UTC (naive datetimes are taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1000))


@dataclass(frozen=True)
class SimConfig:
    """Simulation parameters (all rates per store; times in simulated event time).

    ``start`` is the first event time (UTC); ``duration_minutes`` the simulated span.
    """

    n_stores: int = 3
    n_skus: int = 50
    events_per_min_per_store: float = 200.0
    duration_minutes: float = 60.0
    seed: int = 42
    start: datetime = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    restock_lead_minutes: tuple[int, int] = (15, 60)
    return_prob: float = 0.02
    customer_event_prob: float = 0.05
    loyalty_share: float = 0.6
    n_customers: int = 5000
    price_changes_per_store_hour: float = 4.0
    waste_per_store_hour: float = 3.0
    adjustments_per_store_hour: float = 2.0
    #: index of one of several parallel generators (``producers.cli synthetic --processes N``): a non-zero
    #: stream draws its demand and its ids from random streams of its own (ids never collide across
    #: processes); the catalogue, popularity and stock sizing still follow ``seed``. 0 = the single stream.
    stream: int = 0

    def __post_init__(self):
        if self.n_stores < 1 or self.n_skus < 1:
            raise ValueError("n_stores and n_skus must be >= 1")
        if not self.events_per_min_per_store > 0:
            raise ValueError("events_per_min_per_store must be > 0 (typical 100-500)")
        if not self.duration_minutes > 0:
            raise ValueError("duration_minutes must be > 0")
        if self.stream < 0:
            raise ValueError("stream must be >= 0")
        lo, hi = self.restock_lead_minutes
        if not 1 <= lo <= hi:
            raise ValueError("restock_lead_minutes must be (lo, hi) with 1 <= lo <= hi")


@dataclass
class SimStats:
    """Counters of one simulation run."""

    events: dict[str, int] = field(default_factory=dict)
    inventory_reasons: dict[str, int] = field(default_factory=dict)
    lost_sales: int = 0
    capped_sales: int = 0
    restock_orders: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict (copies; the CLI prints it as ``generator``).

        Keys: ``events`` (records generated per event type, before any contract check or send),
        ``inventory_reasons`` (inventory updates per reason: OPENING, SALE, RETURN, RESTOCK, WASTE, ADJUSTMENT),
        ``lost_sales`` (sale intents dropped because the store had none of the SKU in stock), ``capped_sales``
        (sales cut to the stock on hand), ``restock_orders`` (replenishment orders placed when stock fell below
        the reorder point; each arrives later as a RESTOCK, if within the run). Filled while the simulator's
        ``events()`` is iterated (reset at its start).
        """
        return {"events": dict(self.events), "inventory_reasons": dict(self.inventory_reasons),
                "lost_sales": self.lost_sales, "capped_sales": self.capped_sales,
                "restock_orders": self.restock_orders}


#: mean units per POS line: quantity = Geometric(0.55) on {1, 2, ...}
MEAN_LINE_UNITS = 1 / 0.55


def size_stock_to_demand(products: pd.DataFrame, popularity: np.ndarray, config: SimConfig) -> pd.DataFrame:
    """Set each SKU's reorder point and storage capacity from its expected demand at one store.

    Expected demand d (units/hour) = R * 60 * popularity * mean line units. Reorder point
    ROP = ceil(d * peak * L + 5) with peak = max(hourly) * max(weekly) seasonality and L the longest
    restock lead time in hours (so stock covers the lead time even at peak demand: few stock-outs);
    capacity = max(2 * ROP, 8 h of average demand), rounded up to 10 units. Returns a new frame.
    """
    d = config.events_per_min_per_store * 60 * popularity * MEAN_LINE_UNITS
    peak = float(HOURLY_PROFILE.max() * WEEKLY_PROFILE.max())
    lead_h = config.restock_lead_minutes[1] / 60
    rop = np.ceil(d * peak * lead_h + 5).astype(np.int64)
    cap = np.ceil(np.maximum(2 * rop, 8 * d) / 10).astype(np.int64) * 10
    out = products.copy()
    out["reorder_point"] = rop.astype("int32")
    out["storage_capacity"] = cap.astype("int32")
    return out


class Simulator:
    """Seeded synthetic POS simulator. ``products``/``stores`` default to the seeded Faker catalogue.

    Usage: ``sim = Simulator(cfg); for event_type, record in sim.events(): ...``; ``sim.stats`` after.
    """

    def __init__(self, config: SimConfig, products: pd.DataFrame | None = None,
                 stores: pd.DataFrame | None = None):
        self.config = config
        self.stores = stores if stores is not None else build_stores(config.n_stores, config.seed)
        n_sk = len(products) if products is not None else config.n_skus
        ranks = np.random.default_rng([config.seed, 1]).permutation(n_sk) + 1
        pop = ranks.astype(float) ** -0.8
        self.popularity = pop / pop.sum()
        if products is None:
            products = size_stock_to_demand(build_products(config.n_skus, config.seed), self.popularity, config)
        self.products = products
        self.stats = SimStats()
        # read from the schemas on every construction (cached there), checked before any event is made
        self.payment_methods, self.payment_p = enum_choices("sales_transaction", "payment_method", PAYMENT_WEIGHTS)
        self.customer_events, self.customer_event_p = enum_choices("customer_event", "event_type",
                                                                   CUSTOMER_EVENT_WEIGHTS)
        require_symbols("customer_event", "event_type", PRODUCT_CUSTOMER_EVENTS, user=_USER)
        require_symbols("inventory_update", "reason", INVENTORY_REASONS, user=_USER)
        require_symbols("price_change", "reason", PRICE_REASONS, user=_USER)

    # ---------------------------------------------------------------- helpers
    def _count(self, event_type: str, rec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        ev = self.stats.events
        ev[event_type] = ev.get(event_type, 0) + 1
        if event_type == "inventory_update":
            r = self.stats.inventory_reasons
            r[rec["reason"]] = r.get(rec["reason"], 0) + 1
        return event_type, rec

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(event_type, record)`` in event-time order (ties keep generation order)."""
        cfg = self.config
        self.stats = SimStats()
        rng = np.random.default_rng(cfg.seed if cfg.stream == 0 else [cfg.seed, 2, cfg.stream])
        start_ms = to_ms(cfg.start)
        end_ms = start_ms + int(round(cfg.duration_minutes * 60_000))
        # ids unique per (seed, start, stream), deterministic
        idrng = random.Random(f"{cfg.seed}:{start_ms}" if cfg.stream == 0 else f"{cfg.seed}:{start_ms}:{cfg.stream}")

        def new_id() -> str:
            return str(uuid.UUID(int=idrng.getrandbits(128), version=4))

        stores = list(self.stores["store_id"])
        skus = list(self.products["product_id"])
        n_st, n_sk = len(stores), len(skus)
        # plain Python lists: scalar access in the event loop is ~10x faster than numpy indexing
        rop = [int(x) for x in self.products["reorder_point"]]
        cap = [int(x) for x in self.products["storage_capacity"]]
        list_price = [[float(x) for x in self.products["unit_price"]] for _ in range(n_st)]
        price = [row[:] for row in list_price]
        pop = self.popularity
        pay_syms, cev_syms = self.payment_methods, self.customer_events
        stock = [[0] * n_sk for _ in range(n_st)]
        pending = [[False] * n_sk for _ in range(n_st)]
        restocks: list[tuple[int, int, int, int]] = []  # heap of (due_ms, seq, store, sku)
        seq = 0

        def inv(s: int, k: int, change: int, reason: str, ts: int) -> tuple[str, dict[str, Any]]:
            stock[s][k] += change
            return self._count("inventory_update", {
                "inventory_id": new_id(), "store_id": stores[s], "product_id": skus[k],
                "quantity_change": int(change), "new_quantity": int(stock[s][k]), "reason": reason,
                "reorder_point": int(rop[k]), "timestamp": ts})

        def maybe_order(s: int, k: int, ts: int) -> None:
            nonlocal seq
            if stock[s][k] < rop[k] and not pending[s][k]:
                pending[s][k] = True
                lead = int(rng.integers(cfg.restock_lead_minutes[0], cfg.restock_lead_minutes[1] + 1))
                seq += 1
                heapq.heappush(restocks, (ts + lead * 60_000, seq, s, k))
                self.stats.restock_orders += 1

        # opening stock, at the start time
        for s in range(n_st):
            for k in range(n_sk):
                yield inv(s, k, int(rng.integers(rop[k] + 1, cap[k] + 1)), "OPENING", start_ms)

        n_minutes = math.ceil((end_ms - start_ms) / 60_000)
        for m in range(n_minutes):
            t0 = start_ms + m * 60_000
            t1 = min(t0 + 60_000, end_ms)
            lam = cfg.events_per_min_per_store * seasonality(t0)
            intents: list[tuple[int, int, str, int, Any]] = []
            for s in range(n_st):
                n = int(rng.poisson(lam))
                if n:
                    ks = rng.choice(n_sk, size=n, p=pop)
                    offs = rng.integers(0, 60_000, size=n)
                    qty = rng.geometric(0.55, size=n)
                    ret = rng.random(n) < cfg.return_prob
                    loyal = rng.random(n) < cfg.loyalty_share
                    cust = rng.integers(1, cfg.n_customers + 1, size=n)
                    pay = rng.choice(len(pay_syms), size=n, p=self.payment_p)
                    cev = rng.random(n) < cfg.customer_event_prob
                    cet = rng.choice(len(cev_syms), size=n, p=self.customer_event_p)
                    for o, k_, q_, r_, l_, c_, p_, e_, t_ in zip(offs.tolist(), ks.tolist(), qty.tolist(),
                                                                 ret.tolist(), loyal.tolist(), cust.tolist(),
                                                                 pay.tolist(), cev.tolist(), cet.tolist()):
                        seq += 1
                        intents.append((t0 + o, seq, "sale", s,
                                        (k_, q_, r_, f"C{c_:06d}" if l_ else None, pay_syms[p_],
                                         cev_syms[t_] if e_ else None)))
                for kind, per_hour in (("price", cfg.price_changes_per_store_hour),
                                       ("waste", cfg.waste_per_store_hour),
                                       ("adjust", cfg.adjustments_per_store_hour)):
                    for _ in range(int(rng.poisson(per_hour / 60.0))):
                        seq += 1
                        intents.append((t0 + int(rng.integers(0, 60_000)), seq, kind, s,
                                        (int(rng.choice(n_sk, p=pop)), float(rng.random()))))
            while restocks and restocks[0][0] < t1:
                due, rseq, s, k = heapq.heappop(restocks)
                intents.append((due, rseq, "restock", s, (k,)))
            intents.sort(key=lambda x: (x[0], x[1]))

            for ts, _, kind, s, p in intents:
                if ts >= end_ms:  # last, partial minute
                    continue
                if kind == "sale":
                    k, q, is_ret, cid, pay, et = p
                    if et is not None and cid is not None:
                        yield self._count("customer_event", {
                            "event_id": new_id(), "customer_id": cid, "store_id": stores[s],
                            "event_type": et,
                            "product_id": skus[k] if et in PRODUCT_CUSTOMER_EVENTS else None,
                            "timestamp": ts})
                    if is_ret:
                        q_signed = -q
                    else:
                        if stock[s][k] <= 0:
                            self.stats.lost_sales += 1
                            continue
                        if q > stock[s][k]:
                            self.stats.capped_sales += 1
                            q = int(stock[s][k])
                        q_signed = q
                    yield self._count("sales_transaction", {
                        "transaction_id": new_id(), "store_id": stores[s], "product_id": skus[k],
                        "quantity": q_signed, "unit_price": round(price[s][k], 2),
                        "timestamp": ts, "customer_id": cid, "payment_method": pay, "invoice_id": None})
                    yield inv(s, k, -q_signed, "RETURN" if is_ret else "SALE", ts)
                    maybe_order(s, k, ts)
                elif kind == "restock":
                    (k,) = p
                    pending[s][k] = False
                    q = int(cap[k] - stock[s][k])
                    if q > 0:
                        yield inv(s, k, q, "RESTOCK", ts)
                elif kind == "waste":
                    k, u = p
                    q = min(int(stock[s][k]), 1 + int(u * 6))
                    if q > 0:
                        yield inv(s, k, -q, "WASTE", ts)
                        maybe_order(s, k, ts)
                elif kind == "adjust":
                    k, u = p
                    delta = int(round((u - 0.6) * 10)) or 1      # -6..+4, shrinkage more likely
                    delta = max(delta, -int(stock[s][k]))
                    if delta != 0:
                        yield inv(s, k, delta, "ADJUSTMENT", ts)
                        maybe_order(s, k, ts)
                elif kind == "price":
                    k, u = p
                    old = float(round(price[s][k], 2))
                    if old < list_price[s][k] - 0.005:
                        reason, new = "PROMOTION_END", list_price[s][k]
                    elif u < 0.45:
                        reason, new = "PROMOTION", list_price[s][k] * (0.7 + 0.2 * u / 0.45)
                    elif u < 0.65:
                        reason, new = "MARKDOWN", old * 0.9
                        list_price[s][k] = new
                    elif u < 0.85:
                        reason, new = "COST_CHANGE", old * (1.02 + 0.3 * (u - 0.65))
                        list_price[s][k] = new
                    else:
                        reason, new = "COMPETITOR", old * 0.97
                        list_price[s][k] = new
                    new = max(0.01, round(float(new), 2))
                    if new == old:
                        continue
                    price[s][k] = new
                    if reason in ("MARKDOWN", "COST_CHANGE", "COMPETITOR"):
                        list_price[s][k] = new
                    yield self._count("price_change", {
                        "price_change_id": new_id(), "store_id": stores[s], "product_id": skus[k],
                        "old_price": old, "new_price": new, "reason": reason, "timestamp": ts})


def generate(config: SimConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """Shorthand: the events of ``Simulator(config)``."""
    return Simulator(config).events()
