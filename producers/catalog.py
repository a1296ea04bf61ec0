"""Master data (reference data) of the platform: the product catalogue (SKUs) and the stores.

* :func:`build_products` / :func:`build_stores` make a seeded Faker catalogue for the synthetic POS
  simulator (same seed -> same frames, row for row).
* :func:`write_reference` writes both frames to the lake at the agreed paths
  ``raw-data/reference/products/products.parquet`` and ``raw-data/reference/stores/stores.parquet``
  (one file each, overwritten on re-run: idempotent).

Column contract (also used by the replay of the UCI Online Retail log, :mod:`producers.replay`):

products: product_id (str, SKU), product_name, category, sub_category, brand, supplier (str),
unit_cost, unit_price (float64, currency units per unit), shelf_life_days, reorder_point,
storage_capacity (int32, days / units / units).

stores: store_id, store_name, city, country, country_code (ISO 3166-1 alpha-2), region (str).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
from faker import Faker

PRODUCTS_SCHEMA = pa.schema([
    ("product_id", pa.string()), ("product_name", pa.string()), ("category", pa.string()),
    ("sub_category", pa.string()), ("brand", pa.string()), ("supplier", pa.string()),
    ("unit_cost", pa.float64()), ("unit_price", pa.float64()), ("shelf_life_days", pa.int32()),
    ("reorder_point", pa.int32()), ("storage_capacity", pa.int32()),
])
STORES_SCHEMA = pa.schema([
    ("store_id", pa.string()), ("store_name", pa.string()), ("city", pa.string()),
    ("country", pa.string()), ("country_code", pa.string()), ("region", pa.string()),
])

#: category -> sub_category -> (shelf life days (lo, hi), unit price (lo, hi))
CATEGORIES: dict[str, dict[str, tuple[tuple[int, int], tuple[float, float]]]] = {
    "Fresh Food": {"Bakery": ((2, 5), (0.8, 4.5)), "Dairy": ((7, 21), (0.6, 5.0)),
                   "Fruit & Vegetables": ((3, 14), (0.4, 4.0)), "Meat & Fish": ((3, 10), (2.5, 15.0))},
    "Grocery": {"Pasta & Rice": ((365, 730), (0.7, 3.5)), "Canned Goods": ((540, 1095), (0.5, 3.0)),
                "Breakfast": ((180, 365), (1.5, 6.0)), "Snacks": ((90, 270), (0.8, 4.0))},
    "Beverages": {"Soft Drinks": ((180, 365), (0.6, 3.0)), "Coffee & Tea": ((270, 540), (2.0, 9.0)),
                  "Water": ((365, 730), (0.3, 1.5))},
    "Household": {"Cleaning": ((730, 1460), (1.0, 8.0)), "Paper Goods": ((1095, 1825), (1.5, 9.0))},
    "Personal Care": {"Hair Care": ((730, 1095), (2.0, 12.0)), "Oral Care": ((730, 1095), (1.0, 6.0))},
    "Home & Gifts": {"Home Decor": ((3650, 3650), (3.0, 30.0)), "Kitchenware": ((3650, 3650), (2.0, 25.0)),
                     "Stationery": ((1825, 3650), (0.5, 8.0))},
}
_SIZES = ["250g", "500g", "1kg", "330ml", "1L", "6-pack", "Family Size", "Multipack", "Large", "Mini"]

#: (country, ISO alpha-2, Faker locale, region) the synthetic stores are drawn from, in order
STORE_COUNTRIES: list[tuple[str, str, str, str]] = [
    ("United Kingdom", "GB", "en_GB", "Northern Europe"), ("Germany", "DE", "de_DE", "Western Europe"),
    ("France", "FR", "fr_FR", "Western Europe"), ("Netherlands", "NL", "nl_NL", "Western Europe"),
    ("Spain", "ES", "es_ES", "Southern Europe"), ("Ireland", "IE", "en_IE", "Northern Europe"),
    ("Italy", "IT", "it_IT", "Southern Europe"), ("Poland", "PL", "pl_PL", "Eastern Europe"),
]


def _faker(seed: int, locale: str = "en_GB") -> Faker:
    fk = Faker(locale)
    fk.seed_instance(seed)
    return fk


def company_pool(seed: int, n: int, salt: int = 0) -> list[str]:
    """``n`` distinct, deterministic Faker company names (seed, salt) -> same list."""
    fk = _faker(seed * 7919 + salt)
    out: list[str] = []
    while len(out) < n:
        name = fk.company().replace(",", "")
        if name not in out:
            out.append(name)
    return out


def build_products(n_skus: int, seed: int = 42) -> pd.DataFrame:
    """A seeded Faker catalogue of ``n_skus`` SKUs (product_id ``SKU00001``...).

    Reorder point and storage capacity are in units per store; unit_cost is 45-75 % of unit_price
    (gross margin 25-55 %). Raises ValueError when ``n_skus < 1``.
    """
    if n_skus < 1:
        raise ValueError("n_skus must be >= 1")
    rng = np.random.default_rng(seed)
    fk = _faker(seed)
    brands = company_pool(seed, max(5, n_skus // 8), salt=1)
    suppliers = company_pool(seed, max(3, n_skus // 20), salt=2)
    subs = [(c, s) for c, d in CATEGORIES.items() for s in d]
    rows = []
    for i in range(n_skus):
        cat, sub = subs[int(rng.integers(len(subs)))]
        (sl_lo, sl_hi), (p_lo, p_hi) = CATEGORIES[cat][sub]
        price = round(float(rng.uniform(p_lo, p_hi)), 2)
        cost = round(price * float(rng.uniform(0.45, 0.75)), 2)
        capacity = int(rng.integers(15, 61)) * 10                       # 150..600 units per store
        rop = int(math.ceil(capacity * float(rng.uniform(0.2, 0.35))))  # 20-35 % of capacity
        brand = brands[int(rng.integers(len(brands)))]
        rows.append({
            "product_id": f"SKU{i + 1:05d}",
            "product_name": f"{brand.split()[0]} {fk.word().capitalize()} {sub} {_SIZES[int(rng.integers(len(_SIZES)))]}",
            "category": cat, "sub_category": sub, "brand": brand,
            "supplier": suppliers[int(rng.integers(len(suppliers)))],
            "unit_cost": cost, "unit_price": price,
            "shelf_life_days": int(rng.integers(sl_lo, sl_hi + 1)),
            "reorder_point": rop, "storage_capacity": capacity,
        })
    return pd.DataFrame(rows, columns=PRODUCTS_SCHEMA.names)


def build_stores(n_stores: int, seed: int = 42) -> pd.DataFrame:
    """``n_stores`` seeded stores (store_id ``S001``...), spread round-robin over :data:`STORE_COUNTRIES`
    with a city from the country's Faker locale. Raises ValueError when ``n_stores < 1``."""
    if n_stores < 1:
        raise ValueError("n_stores must be >= 1")
    rows = []
    for i in range(n_stores):
        country, code, locale, region = STORE_COUNTRIES[i % len(STORE_COUNTRIES)]
        fk = _faker(seed * 1009 + i, locale)
        city = fk.city()
        rows.append({"store_id": f"S{i + 1:03d}", "store_name": f"{city} {fk.street_name()} #{i + 1}",
                     "city": city, "country": country, "country_code": code, "region": region})
    return pd.DataFrame(rows, columns=STORES_SCHEMA.names)


def products_table(df: pd.DataFrame) -> pa.Table:
    """Products frame -> Arrow table with :data:`PRODUCTS_SCHEMA` (raises on missing columns)."""
    return pa.Table.from_pandas(df[PRODUCTS_SCHEMA.names], schema=PRODUCTS_SCHEMA, preserve_index=False)


def stores_table(df: pd.DataFrame) -> pa.Table:
    """Stores frame -> Arrow table with :data:`STORES_SCHEMA` (raises on missing columns)."""
    return pa.Table.from_pandas(df[STORES_SCHEMA.names], schema=STORES_SCHEMA, preserve_index=False)


PRODUCTS_KEY = "reference/products/products.parquet"
STORES_KEY = "reference/stores/stores.parquet"


def _upsert(lake, key: str, df: pd.DataFrame, id_col: str, to_table) -> str:
    import pyarrow.parquet as pq

    bucket = lake.settings.lake_raw_bucket
    if lake.exists(bucket, key):
        old = pq.read_table(lake.path(bucket, key), filesystem=lake.fs).to_pandas()
        df = pd.concat([old[~old[id_col].isin(df[id_col])], df], ignore_index=True)
    df = df.sort_values(id_col, kind="stable").reset_index(drop=True)
    return lake.write_table(to_table(df), bucket, key)


def write_reference(lake, products_df: pd.DataFrame, stores_df: pd.DataFrame, merge: bool = True) -> dict[str, str]:
    """Write the reference Parquet files ``raw-data/reference/{products,stores}/*.parquet``.

    Idempotent: one file per entity, rewritten each time. With ``merge`` (default) rows already in
    the lake whose id is not in the new frame are kept (upsert by product_id / store_id), so the
    synthetic catalogue and the UCI replay catalogue can coexist; ``merge=False`` replaces the file.

    Args:
        lake: a :class:`core.lake.Lake`.
    Returns:
        {"products": path, "stores": path} filesystem paths written.
    """
    if merge:
        return {"products": _upsert(lake, PRODUCTS_KEY, products_df, "product_id", products_table),
                "stores": _upsert(lake, STORES_KEY, stores_df, "store_id", stores_table)}
    bucket = lake.settings.lake_raw_bucket
    return {"products": lake.write_table(products_table(products_df), bucket, PRODUCTS_KEY),
            "stores": lake.write_table(stores_table(stores_df), bucket, STORES_KEY)}
