"""Replay of the UCI Online Retail transaction log as POS events (real sales, simulated stock).

Input: the CSV(.gz) described in ``../shared/data/uci_online_retail/README.md`` (columns invoice,
line_no, stock_code, description, quantity, unit_price, invoice_ts (UK local time), customer_id,
country, source), sorted by invoice_ts. The repo ships an attributed sample, ``producers/data/``.

Mapping (per CSV row, in event-time order: a file that is not sorted by invoice_ts is replayed in time order, a
stable sort that keeps the file order within one instant; ``out_of_order_rows`` in the stats counts its rows that
were earlier than a row before them):

* **store**: the customer's country is the store/market: ``store_id = "UCI-" + ISO-3166 alpha-2``
  (``United Kingdom`` -> ``UCI-GB``, ``EIRE`` -> ``UCI-IE``, ``RSA`` -> ``UCI-ZA``; the non-countries use
  user-assigned codes: ``European Community`` -> ``EU``, ``Channel Islands`` -> ``XC``, ``West Indies``
  -> ``XW``, ``Unspecified`` -> ``ZZ``; an unknown country -> ``UCI-X-<SLUG>`` with code ``ZZ``).
* **product**: ``product_id = stock_code`` upper-cased: the development log writes 157 product codes in both
  cases, one product each (``85123A`` and ``85123a`` are both "WHITE HANGING HEART T-LIGHT HOLDER"; 144 of the 156
  pairs with descriptions share the most frequent one, the other 12 name the same item differently, e.g. "CUBIC
  MUG PINK POLKA DOT" / "POLKADOT"), so its 2,660 lines of lower-case codes would otherwise be SKUs of their own,
  splitting a product's demand, stock and forecasts in two (:func:`classify_code` reads the code as written).
  **transaction_id** ``<invoice>-<line_no>``, ``invoice_id`` the invoice; ``customer_id`` as string or null;
  ``payment_method = ONLINE`` (an online retailer).
* **event time**: invoice_ts read as Europe/London local time -> epoch ms UTC; shifted by one constant, which
  keeps the original spacing. By default (``align="day"``) the constant is a whole number of days, the most that
  lands the last row at or before ``end_at`` (default: now; so within the 24 h before it): every row keeps its
  UTC time of day, so a trading day (the UK shop trades 07:00-20:00) stays one calendar date. ``align="week"``
  shifts by whole weeks (the weekday kept too; the last row within the 7 days before ``end_at``),
  ``align="none"`` lands the last row exactly at ``end_at`` (the days then split wherever the shift puts them).
  Why it matters: a shift of 12 h splits each trading day over two dates. On November 2010 (the UCI log per
  country x SKU, the platform's backtest at the demo's training settings, one origin, 14 days ahead, GBT seeds
  42 / 1 / 2; ``python -m ops.replay_alignment``, 2026-12-05) the GBT's WAPE was 1.263-1.449 on whole days shifted
  by 0, 1 or 3 days (total forecast +42-66 % over the demand; below the trailing mean in 7 of 9 runs) and
  1.484-1.551 with the 12 h split (+72-81 %), against the trailing 28-day mean's 1.391 and 1.396: on split days the
  GBT lost to it with every seed.
  ``keep_dates=True`` keeps the original instants.

Row decisions (counted in :attr:`ReplayStats.skipped` / ``rows_by_kind``; nothing vanishes silently):

=====================================================  ======================================================
row                                                    decision
=====================================================  ======================================================
invoice starting with ``A`` (bad-debt adjustment)      skipped, counted as ``A_INVOICE``
non-product stock code (POST, DOT, M, m, D, C2, S, B,  skipped, counted per stock code
BANK CHARGES, AMAZONFEE, CRUK, PADS, ADJUST*, TEST*,
gift_0001_*, DCGS*, or any code that is not 5 digits
plus an optional letter suffix, e.g. SP1002, GIFT)
quantity 0 / unit_price < 0 / unparseable              skipped: ``ZERO_QUANTITY`` / ``NEGATIVE_PRICE`` / ``UNPARSEABLE``
quantity or price beyond the contracts' bounds         skipped: ``QUANTITY_OUT_OF_RANGE`` / ``PRICE_OUT_OF_RANGE``
invoice not digits with an optional C / A prefix       skipped, ``UNKNOWN_INVOICE`` (the prefix in any case); a
                                                       product line skipped for one of the six keys above is
                                                       quarantined too, naming the value (``ZERO_QUANTITY``
                                                       since 2026-12-06)
(invoice, line_no) seen before in the file             skipped, ``DUPLICATE_LINE`` (the first copy is replayed)
the header line again (joined exports)                 skipped, ``REPEATED_HEADER``, quarantined
a required field empty or absent (a truncated line)    skipped, ``MISSING_<FIELD>``, and quarantined (dead-lettered)
the file's last line, without a line end, ending in a  skipped, ``TRUNCATED_LINE``, quarantined (cut off: "United
country that is none of :data:`COUNTRIES`              Kin")
product line, invoice_ts not in the file's format      skipped, ``BAD_INVOICE_TS``, quarantined with its line
product line dated > max(10 x MAD, 90 d) from the      skipped, ``INVOICE_TS_OUTLIER``, quarantined (a typo such
median of the file's dates (:func:`date_outliers`)     as 2101: it moved the clock of every other line)
``C`` invoice, quantity < 0                            return: sales line with the negative quantity, and an
                                                       inventory ``RETURN`` of +|q|
``C`` invoice, quantity > 0 (1 row in the source)      skipped, ``C_POSITIVE_QUANTITY``
other invoice, quantity < 0 (all have price 0)         stock write-off, not a sale: inventory ``WASTE`` when the
                                                       note says damaged/broken/wet/thrown away/..., else
                                                       ``ADJUSTMENT`` (missing, ?, sold elsewhere); capped at
                                                       the stock on hand
other invoice, quantity > 0, price 0, and the          stock found: inventory ``ADJUSTMENT`` +q, not a sale
description names no product (:func:`names_product`:  ("POLYESTER FILLER PAD 45x45cm" at price 0 names a
empty, a note such as "found", "Found", "damaged?",    product: a sale, below; so does any description of the
"MISSING", or no word of 4 letters: "FBA", "22719")    SKU's lines sold at a price, "Next Day Carriage")
other invoice, quantity > 0                            sale (price 0 allowed: free samples)
=====================================================  ======================================================

Simulated stock, consistent with the replayed sales (per store x SKU):
average daily demand ``d`` = net units sold in the replayed slice (sales less returns, at least 0) / its span in
days (>= 1); reorder point ``ROP = ceil(d * (lead + safety days)) + 1`` (lead = ``restock_lead_hours``, safety 2
days), capacity ``max(3 * ROP, ceil(14 * d), min(largest sale line of the pair in the slice, net units sold), 10)``
(until 2026-12-06 gross units sold and the largest line even when it was cancelled: on the whole log 24,897 store x
SKU opened with 1,755,064 units, UCI-GB 23166 with 74,215, 100 years of its net demand). At the first row of a store x SKU an ``OPENING`` stock of
capacity units is emitted. A sale lowers stock (``SALE``); when stock falls below ROP one replenishment
order is placed and arrives ``restock_lead_hours`` later (event time) as a ``RESTOCK`` up to capacity.
A sale larger than the stock on hand is real and is kept: an expedited ``RESTOCK`` just before it raises
stock to ``max(capacity, q)`` (counted as ``expedited_restocks``), so stock is never negative; a return or found
stock that would lift it above ``contracts.STOCK_MAX`` is preceded by an ``ADJUSTMENT`` down to the room it needs
(``stock_max_adjustments``), so stock never leaves the contract's range.

Simulated extra events: a ``customer_event`` STORE_VISIT per sale invoice with a customer id, and a
``price_change`` (reason ``OBSERVED``) whenever a store x SKU sells at a list price (the price of
lines of fewer than 12 units) different from its previous one.

Products reference: product_name = most frequent description; category / sub_category by keyword
rules on the description (:data:`CATEGORY_RULES`); brand and supplier synthetic but deterministic (CRC32 of
the stock code into seeded Faker company pools); unit_price = median price of its sale lines with
price > 0; ``unit_cost = UNIT_COST_FRACTION (0.6) * unit_price`` (assumed 40 % gross margin; the data
has no costs); shelf_life_days by sub-category; reorder_point / storage_capacity = the maximum over stores.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import heapq
import io
import logging
import lzma
import math
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from contracts import PRICE_MAX, QUANTITY_MAX, STOCK_MAX, require_symbols
from producers.catalog import PRODUCTS_SCHEMA, STORES_SCHEMA, company_pool

log = logging.getLogger(__name__)

UNIT_COST_FRACTION = 0.6
SAFETY_DAYS = 2.0
LIST_PRICE_MAX_QTY = 12

NON_PRODUCT_CODES = {"POST", "DOT", "M", "m", "D", "C2", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS", "B", "S"}
NON_PRODUCT_PREFIXES = ("ADJUST", "TEST", "gift_0001_", "DCGS")
PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]{0,3}$")
WASTE_NOTE = re.compile(r"damag|broken|smash|crush|wet|rust|thrown|mould|mold|crack|faulty|dirty|rotten|"
                        r"smudg|unsaleable|destroyed|water", re.I)
#: the clerks' stock vocabulary (:func:`is_note`): a description with one of these words, in any case, is a note when
#: no line of its stock code sold at a price under it. The waste words of :data:`WASTE_NOTE` at a word's start
#: (not "HOT WATER BOTTLE", "RUSTIC", "BAKING MOULD", "CRACKED GLAZE": product names), and the adjustment ones
NOTE_WORDS = re.compile(r"\b(?:damag|broken|smash|crush|wet\b|rust(?:y|ed)\b|thrown|throw away|mouldy|faulty|dirty|"
                        r"rott|smudg|unsaleable|unsellable|destroyed|missing|found\b|lost\b|adjust|amend|credit|"
                        r"error|dotcom\b|amazon\b|ebay\b|mailout|sold as|wrong|mix(?:ed)? up|given away|donated|"
                        r"stock ?take)", re.I)

#: country as written in the UCI data -> (ISO-3166 alpha-2 or user-assigned code, region)
COUNTRIES: dict[str, tuple[str, str]] = {
    "United Kingdom": ("GB", "Northern Europe"), "EIRE": ("IE", "Northern Europe"),
    "Channel Islands": ("XC", "Northern Europe"), "Iceland": ("IS", "Northern Europe"),
    "Norway": ("NO", "Northern Europe"), "Sweden": ("SE", "Northern Europe"),
    "Finland": ("FI", "Northern Europe"), "Denmark": ("DK", "Northern Europe"),
    "Lithuania": ("LT", "Northern Europe"),
    "France": ("FR", "Western Europe"), "Germany": ("DE", "Western Europe"),
    "Netherlands": ("NL", "Western Europe"), "Belgium": ("BE", "Western Europe"),
    "Switzerland": ("CH", "Western Europe"), "Austria": ("AT", "Western Europe"),
    "Spain": ("ES", "Southern Europe"), "Portugal": ("PT", "Southern Europe"),
    "Italy": ("IT", "Southern Europe"), "Greece": ("GR", "Southern Europe"),
    "Malta": ("MT", "Southern Europe"), "Cyprus": ("CY", "Southern Europe"),
    "Poland": ("PL", "Eastern Europe"), "Czech Republic": ("CZ", "Eastern Europe"),
    "European Community": ("EU", "Europe (unspecified)"),
    "USA": ("US", "North America"), "Canada": ("CA", "North America"), "Bermuda": ("BM", "North America"),
    "West Indies": ("XW", "Caribbean"), "Brazil": ("BR", "South America"),
    "Australia": ("AU", "Oceania"), "Japan": ("JP", "Asia"), "Korea": ("KR", "Asia"),
    "Singapore": ("SG", "Asia"), "Hong Kong": ("HK", "Asia"), "Thailand": ("TH", "Asia"),
    "Israel": ("IL", "Middle East"), "Lebanon": ("LB", "Middle East"), "Bahrain": ("BH", "Middle East"),
    "Saudi Arabia": ("SA", "Middle East"), "United Arab Emirates": ("AE", "Middle East"),
    "RSA": ("ZA", "Africa"), "Nigeria": ("NG", "Africa"),
    "Unspecified": ("ZZ", "Unknown"),
}
#: ordered keyword rules on the upper-cased description -> (category, sub_category, shelf_life_days)
CATEGORY_RULES: list[tuple[str, str, str, int]] = [
    (r"CHRISTMAS|XMAS|ADVENT|SANTA|REINDEER|SNOWFLAKE", "Seasonal", "Christmas", 3650),
    (r"EASTER|HALLOWEEN|VALENTINE", "Seasonal", "Other Seasonal", 3650),
    (r"CANDLE|T-LIGHT|TEA LIGHT|INCENSE", "Home Decor", "Candles", 1825),
    (r"LIGHT|LANTERN|LAMP", "Home Decor", "Lighting", 3650),
    (r"FRAME|CLOCK|MIRROR|CUSHION|DOORMAT|SIGN|WALL ART|PLAQUE|VASE|ORNAMENT|HEART", "Home Decor", "Decorations", 3650),
    (r"MUG|CUP|PLATE|BOWL|TEAPOT|TEA SET|JUG|GLASS|CAKE STAND|CUTLERY|NAPKIN|TRAY|JAR|TIN|LUNCH BOX|BOTTLE|"
     r"BAKING|CAKE CASES|COASTER|APRON|TEA TOWEL|KITCHEN", "Kitchen & Dining", "Kitchenware", 3650),
    (r"SWEET|CHOCOLATE|BISCUIT|CANDY|JAM", "Food", "Confectionery", 365),
    (r"BAG|PURSE|WALLET|TOTE", "Bags & Accessories", "Bags", 3650),
    (r"NECKLACE|EARRING|BRACELET|RING|BROOCH|HAIR|JEWEL|CHARM", "Bags & Accessories", "Jewellery", 3650),
    (r"CARD|WRAP|PAPER|NOTEBOOK|PEN|PENCIL|STICKER|ENVELOPE|TAPE|RIBBON|GIFT TAG|DIARY|CALENDAR",
     "Stationery & Gift Wrap", "Stationery", 1825),
    (r"TOY|GAME|DOLL|PLAYHOUSE|SPACEBOY|JIGSAW|PUZZLE|TEDDY|BALLOON|KIT|SKITTLES|CHILDS|CHILDRENS",
     "Toys & Games", "Toys", 3650),
    (r"GARDEN|PLANT|FLOWER|BIRD|WATERING|SEED|HERB", "Garden", "Garden", 3650),
    (r"BOX|BASKET|STORAGE|HOOK|HANGER|PEG", "Home Storage", "Storage", 3650),
]


def classify_code(stock_code: str) -> str | None:
    """None for a product code, else the skip key (the code itself) for a non-product code."""
    code = (stock_code or "").strip()
    if code in NON_PRODUCT_CODES or code.startswith(NON_PRODUCT_PREFIXES) or not PRODUCT_CODE.match(code):
        return code or "EMPTY_CODE"
    return None


def product_ids(stock_codes: pd.Series) -> pd.Series:
    """The platform's product_id of each UCI stock code: stripped and upper-cased (see the module docstring)."""
    return stock_codes.str.strip().str.upper()


def store_for_country(country: str) -> tuple[str, str, str]:
    """UCI country -> (store_id, country_code, region); deterministic, see module docstring."""
    name = (country or "").strip()
    if name in COUNTRIES:
        code, region = COUNTRIES[name]
        return f"UCI-{code}", code, region
    slug = re.sub(r"[^A-Z0-9]+", "", name.upper())[:12] or "UNKNOWN"
    return f"UCI-X-{slug}", "ZZ", "Unknown"


def categorize(description: str) -> tuple[str, str, int]:
    """(category, sub_category, shelf_life_days) by the first matching :data:`CATEGORY_RULES` rule."""
    d = (description or "").upper()
    for pattern, cat, sub, shelf in CATEGORY_RULES:
        if re.search(rf"\b(?:{pattern})(?:S|ES)?\b", d):
            return cat, sub, shelf
    return "Gifts & Misc", "General Gifts", 3650


#: a valid UTF-8 sequence of two to four bytes: text that holds one was written as UTF-8
_UTF8_MULTIBYTE = re.compile(rb"[\xC2-\xDF][\x80-\xBF]|[\xE0-\xEF][\x80-\xBF]{2}|[\xF0-\xF4][\x80-\xBF]{3}")


def _decode(raw: bytes, encoding: str | None, path: Path, bad_lines: list[dict[str, Any]] | None = None) -> str:
    """The file's text: in ``encoding`` when given; in UTF-16 / UTF-32 when its byte-order mark says so; otherwise
    UTF-8 (a byte-order mark dropped) or, for bytes
    that are not UTF-8 and hold no UTF-8 sequence at all, Windows-1252 (what spreadsheet programs write for
    "CSV"; its "£" is 0xA3) with a warning. Raises ValueError naming the byte offset when the text is not in
    ``encoding``, mixes UTF-8 with other bytes (decoding all of it as Windows-1252 would garble the UTF-8
    part), or is not Windows-1252 either.

    ``bad_lines``: with a list, UTF-8 text holding lines that are not UTF-8 (a Latin-1 line pasted into a UTF-8
    file) is not refused: each such line (not the header) is appended as ``{"line": physical line number, "code":
    "BAD_ENCODING", "reason", "text"}`` (its bytes not UTF-8 shown as ``\\xNN``) and read as an empty line, so
    every other line keeps its number and is read (until 2026-12-06 the whole file was refused)."""
    if not encoding:   # a byte-order mark names UTF-32 / UTF-16 (Excel's "Unicode Text"), decoded as such
        encoding = next((enc for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                                              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
                         if raw.startswith(bom)), None)
    if encoding:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not {encoding} text: {exc.reason} at byte {exc.start}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        first = exc
    if _UTF8_MULTIBYTE.search(raw) and bad_lines is not None:
        parts, found = [], []
        for n, line in enumerate(raw.splitlines(keepends=True), start=1):
            try:
                parts.append(line.decode("utf-8-sig" if n == 1 else "utf-8"))
            except UnicodeDecodeError as exc:
                if n == 1:
                    break
                body = line.rstrip(b"\r\n")
                found.append({"line": n, "code": "BAD_ENCODING",
                              "reason": f"not UTF-8 ({exc.reason}, byte 0x{line[exc.start]:02X} at column "
                                        f"{exc.start + 1}) in a UTF-8 file",
                              "text": body.decode("utf-8", "backslashreplace")})
                parts.append(line[len(body):].decode("ascii") or "\n")
        else:
            log.warning("%s: %d line(s) not UTF-8 in a UTF-8 file quarantined (lines %s)", path, len(found),
                        ", ".join(str(b["line"]) for b in found[:10]))
            bad_lines.extend(found)
            return "".join(parts)
    if _UTF8_MULTIBYTE.search(raw):
        raise ValueError(f"{path}: mixed encodings: UTF-8 text with a byte that is not UTF-8 at byte {first.start} "
                         f"({first.reason}); re-save the file in one encoding or pass it (--encoding)")
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: neither UTF-8 (byte {first.start}) nor Windows-1252 (byte {exc.start}) text; "
                         "pass its encoding (--encoding)") from None
    log.warning("%s is not UTF-8 (%s at byte %d) and holds no UTF-8 sequence: read as Windows-1252",
                path, first.reason, first.start)
    return text


def read_source(path: str | Path, received: bytearray | None = None, wake_fd: int | None = None,
                defer: Callable[[], Any] | None = None) -> bytes:
    """All bytes of ``path``. A regular file is read at once. A FIFO, pipe or device (a writer that may keep it
    open and write nothing for hours) is read in chunks of up to 1 MiB as they arrive, waiting with
    :mod:`selectors` on the file and on ``wake_fd`` (the read end of :func:`signal.set_wakeup_fd`'s pipe, see
    ``producers.cli.StopSignals.wakeup_fd``): a signal wakes the wait whichever thread the kernel delivered it to,
    and its Python handler runs in the main thread before the next read (until 2026-12-06 a plain read: a signal the
    kernel gave to another thread, e.g. with the main thread's mask blocking it, ran its handler only once the
    writer closed the FIFO). ``received``: a bytearray the bytes are appended to as they arrive, so a caller whose
    read a handler interrupts (raises) keeps what was read (the CLI saves it). ``defer``: a context manager factory
    held around each read and its append (``producers.cli.StopSignals.deferred``: a stop signal inside it only
    records itself and raises on leaving), so no handler raises between a chunk leaving the FIFO and its append
    (Python runs a pending handler right after a call returns: up to 1 MiB was read and lost before).

    Raises:
        FileNotFoundError: no such file; whatever a signal handler raises while the read waits.
    """
    import os
    import selectors
    import stat

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"UCI transaction log not found: {path}")
    buf = received if received is not None else bytearray()
    if stat.S_ISREG(path.stat().st_mode):
        buf += path.read_bytes()
        return bytes(buf)
    # opened without blocking: a FIFO's plain open() waits in the kernel until a writer connects, and a signal the
    # kernel gives another thread ran its handler only then (until 2026-12-06: never, with no writer). Until a
    # writer comes the FIFO is not readable (Linux reports no hang-up before a first writer), so the wait below
    # waits for it and for the signal wake-up pipe alike
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb", buffering=0, closefd=True) as fh, selectors.DefaultSelector() as sel:
        sel.register(fh, selectors.EVENT_READ)
        if wake_fd is not None:
            sel.register(wake_fd, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj is not fh:   # a signal: drain the wake-up bytes; its handler runs before the next read
                    try:
                        os.read(wake_fd, 512)
                    except BlockingIOError:
                        pass
                    continue
                with defer() if defer is not None else contextlib.nullcontext():
                    try:
                        chunk = os.read(fh.fileno(), 1 << 20)
                    except BlockingIOError:   # readable said, nothing there (a writer came and went): wait again
                        continue
                    buf += chunk
                if not chunk:
                    return bytes(buf)


def read_text(path: str | Path, encoding: str | None = None, received: bytearray | None = None,
              wake_fd: int | None = None, bad_lines: list[dict[str, Any]] | None = None,
              defer: Callable[[], Any] | None = None, empty_ok: bool = False) -> str:
    """The whole text of a transaction log: its bytes (:func:`read_source`; ``received`` / ``wake_fd`` / ``defer`` as there;
    ``bad_lines`` as in :func:`_decode`: lines not UTF-8 in a UTF-8 file quarantined there instead of a ValueError)
    decompressed as their leading bytes say (gzip, zstd, bzip2,
    xz, a zip of one CSV: :func:`_unpack`, whatever the name), decoded by :func:`_decode` (so the encoding is judged
    on the whole text). Line endings are kept as they are. ``empty_ok``: an empty file (0 bytes, also once
    decompressed, or only blank lines) gives "" with a warning instead of a ValueError.

    Raises:
        FileNotFoundError: no such file; ValueError (naming the path): the file is empty (unless ``empty_ok``), an
            Excel workbook, a zip
            without exactly one data file, or its text is not in ``encoding``, mixes UTF-8 with other bytes, or is
            in neither UTF-8 nor Windows-1252 (naming the byte offset in the decompressed text).
    """
    path = Path(path)
    raw = read_source(path, received, wake_fd, defer)
    data = _unpack(raw, path) if raw or not empty_ok else b""
    text = _decode(data, encoding, path, bad_lines) if data else ""
    if not text.strip():
        if empty_ok:
            log.warning("%s: the file is empty (%d bytes, no header row): 0 rows", path, len(raw))
            return ""
        raise ValueError(f"{path}: the file is empty (no header row); expected the format of the UCI README")
    return text


def _unpack(raw: bytes, path: Path, depth: int = 0) -> bytes:
    """The bytes of the CSV inside ``raw``, told by its leading bytes, not its name (a gzip named ``.gzip``):
    gzip, zstd, bzip2, xz, or a zip holding one file (``__MACOSX/`` and dot-file entries ignored, as macOS Finder
    adds them). Raises ValueError naming ``path`` for an empty file, an Excel workbook (export it as CSV), or a
    zip without exactly one data file."""
    if not raw:
        if depth:   # a compressed empty file is an empty file: read_text says so (or reads it as 0 rows)
            return raw
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    if depth > 2:
        return raw
    if raw.startswith(b"\x1f\x8b"):
        return _unpack(gzip.decompress(raw), path, depth + 1)
    if raw.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as z:
            return _unpack(z.read(), path, depth + 1)
    if raw.startswith(b"BZh"):
        return _unpack(bz2.decompress(raw), path, depth + 1)
    if raw.startswith(b"\xfd7zXZ\x00"):
        return _unpack(lzma.decompress(raw), path, depth + 1)
    excel = f"{path}: is an Excel workbook, not a CSV file: open it in a spreadsheet program and save the sheet " \
            "as CSV (UTF-8), or convert it with pandas.read_excel(...).to_csv(...)"
    if raw.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):   # OLE2: an Excel 97-2003 .xls
        raise ValueError(excel)
    if raw.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = z.namelist()
            if "[Content_Types].xml" in names and any(n.startswith("xl/") for n in names):
                raise ValueError(excel)
            data = [n for n in names if not n.endswith("/") and not n.startswith("__MACOSX/")
                    and not n.rsplit("/", 1)[-1].startswith(".")]
            if len(data) != 1:
                raise ValueError(f"{path}: a zip archive must hold one data file, found {len(data)}: {data[:10]}")
            return _unpack(z.read(data[0]), path, depth + 1)
    return raw


def load_transactions(path: str | Path, limit: int | None = None, encoding: str | None = None,
                      received: bytearray | None = None, wake_fd: int | None = None,
                      defer: Callable[[], Any] | None = None) -> pd.DataFrame:
    """Read the UCI CSV(.gz) (text columns as str, missing description / customer as "").

    Args:
        path: the log (``.csv``, or compressed as its name says, e.g. ``.csv.gz``; columns of the UCI README in
            ``../shared/data``).
        limit: read only the first ``limit`` rows.
        encoding: the file's text encoding; None: UTF-8, else Windows-1252 when the bytes hold no UTF-8 sequence
            (a warning says so; :func:`_decode`).
        received, wake_fd, defer: see :func:`read_source` (a FIFO's bytes kept when a signal interrupts the read).

    An empty file (0 bytes or blank lines) is 0 rows of the README's columns; a file where no invoice_ts parses in
    any of :data:`TS_FORMATS` has ``attrs["invoice_ts_format"]`` None (:class:`Replay` quarantines its lines).

    Raises:
        FileNotFoundError: no such file; ValueError: a required column is missing, or the text is not in
            ``encoding``, mixes UTF-8 with other bytes, or is in neither UTF-8 nor Windows-1252 (naming the byte
            offset in the decompressed text).
    """
    bad_lines: list[dict[str, Any]] = []   # lines not UTF-8 in a UTF-8 file, quarantined with the others
    text = read_text(path, encoding, received, wake_fd, bad_lines, defer, empty_ok=True)
    if not text.strip():   # 0 bytes or blank lines: 0 rows (until 2026-12-06 refused, "the file is empty")
        text = ",".join(REQUIRED_FIELDS + OPTIONAL_FIELDS) + "\n"
    sep = _separator(text)
    rows_lines = None
    try:   # the fast C parser; on a malformed line, a line-by-line read that keeps every good line
        df, quarantine = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, nrows=limit, sep=sep), []
        if not isinstance(df.index, pd.RangeIndex):   # the first data line had more fields than the header:
            raise pd.errors.ParserError("more fields than the header on the first data line")  # pandas took the
            # extra ones as the index of every row and shifted every column
    except pd.errors.ParserError as exc:
        df, quarantine = read_lenient(text, limit, sep)
        rows_lines = df.attrs.pop("row_lines", None)
        log.warning("%s: %s; read line by line: %d malformed line(s) quarantined (%s), every other line kept",
                    path, str(exc).strip(), len(quarantine), "; ".join(f"line {q['line']}: {q['reason']}"
                                                                     for q in quarantine[:5]))
    # header names in another case, with spaces or padding ("Invoice TS", " Unit Price"): the README's names
    # (until 2026-12-06 the file was refused whole, "missing column(s)")
    names = {c: column_name(c) for c in df.columns}
    taken = set(df.columns)
    renames = {c: n for c, n in names.items() if n != c and n in REQUIRED_FIELDS + OPTIONAL_FIELDS and n not in taken
               and list(names.values()).count(n) == 1}
    if renames:
        log.warning("%s: column(s) %s read as %s", path, list(renames), list(renames.values()))
        df = df.rename(columns=renames)
    if sep == ";" and "unit_price" in df.columns:   # a decimal comma ("2,55"; "1.234,50"), as a ";" export writes
        # (a ";" only: an English-locale tab export's "1,234" is a thousands separator, not 1.234)
        df["unit_price"] = df["unit_price"].str.replace(r"^\s*(-?)(\d{1,3}(?:\.\d{3})+|\d+),(\d+)\s*$",
                                                        lambda m: m[1] + m[2].replace(".", "") + "." + m[3], regex=True)
    missing = [c for c in REQUIRED_FIELDS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected the format of the UCI README")
    last_column = df.columns[-1]   # the file's own last column (before the absent optional ones are added)
    absent = [c for c in OPTIONAL_FIELDS if c not in df.columns]
    if absent:   # until 2026-12-06 the whole file was refused (a POS export without descriptions: 0 rows replayed)
        log.warning("%s: no column(s) %s: read as empty (no descriptions: products are named by their code; no "
                    "customers: anonymous sales)", path, absent)
        for c in absent:
            df[c] = ""
    whole = df["invoice_ts"]
    if limit is not None:   # the date format is the whole file's, whatever part of it is read
        try:
            ts_col = next((c for c, n in renames.items() if n == "invoice_ts"), "invoice_ts")   # the file's name
            whole = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep,
                                usecols=[ts_col])[ts_col]
        except (pd.errors.ParserError, ValueError):
            pass
    # a file where no invoice_ts parses: format None, every product line quarantined by Replay (BAD_INVOICE_TS;
    # until 2026-12-06 the whole file was refused)
    df.attrs["invoice_ts_format"], parsed = _detect(whole, path, strict=False)
    if whole is df["invoice_ts"] or limit is None:   # the frame's own column: Replay takes it parsed
        df.attrs["invoice_ts_parsed"] = ParsedTs(df["invoice_ts"].to_numpy(), parsed)
    df.attrs["quarantine"] = sorted(bad_lines + quarantine, key=lambda q: q["line"])
    # a text without a final line end may have lost the end of its last line (a copy or a writer cut off): the
    # column its last field belongs to, for Replay to check (None: the file ends with a line end, or is read in part)
    df.attrs["unended_last_field"] = (last_column if limit is None and len(df) and not text.endswith(("\n", "\r"))
                                      else None)
    # the physical line of each row, for quarantined rows (computed on first use: a CSV pass over the text);
    # a function, since pandas deep-copies attrs into every frame and series derived from df
    df.attrs["source_line"] = _line_finder(text, sep, rows_lines)
    return df


@contextlib.contextmanager
def _csv_fields_up_to(n: int) -> Iterator[None]:
    """The csv module's field size limit raised to at least ``n`` characters inside (its default, 131,072, made a
    line with a longer field, a description of 1.2 MB, a csv.Error: until 2026-12-06 the replay stopped when such a
    file had a line to dead-letter, and the line-by-line read quarantined such a good line as malformed)."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, n))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _line_finder(text: str, sep: str, rows_lines: list[int] | None):
    """``f(row)`` -> physical line number (the header is line 1) of 0-based data row ``row`` of the frame read from
    ``text``: ``rows_lines`` when the line-by-line read recorded them, else one pass of the csv module over the
    text (quoted line breaks and blank lines counted as pandas reads them), made on the first call."""
    cache: list[int] = list(rows_lines) if rows_lines is not None else []

    def source_line(row: int) -> int:
        if not cache:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
            prev = 0
            with _csv_fields_up_to(len(text) + 1):
                for fields in reader:
                    start, prev = prev + 1, reader.line_num
                    if fields and any(f.strip() for f in fields) or (fields and len(fields) > 1):
                        cache.append(start)
            del cache[0]   # the header
        return cache[row]

    return source_line


def _separator(text: str) -> str:
    """The field separator of a transaction log: the one of comma, semicolon (a spreadsheet's CSV in a locale with
    a decimal comma; until 2026-12-06 read as one column and refused), tab (its "Unicode Text" export) and ``|`` its
    header line (the first line that is not blank) holds most of; a comma when it holds none."""
    head = next((line for line in text.split("\n") if line.strip()), "")   # the header: the first line not blank
    counts = {c: head.count(c) for c in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def column_name(name: str) -> str:
    """A header name as the README writes it: stripped, lower case, runs of spaces / hyphens / dots as one ``_``
    (``" Invoice TS"`` -> ``invoice_ts``, ``"Unit-Price"`` -> ``unit_price``)."""
    return re.sub(r"[\s\-.]+", "_", str(name).strip().lower().lstrip("\ufeff")).strip("_")


def read_lenient(text: str, limit: int | None = None, sep: str = ",") -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """CSV text -> (rows as str columns of the header, quarantined lines), with the csv module, line by line: a
    quoted field may span lines (RFC 4180) when that gives a record of at most the header's field count; a line
    with more fields than the header (an unquoted comma) or a quote that does not close is quarantined alone as
    ``{"line": physical line number (the header is line 1), "code": "MALFORMED_LINE", "reason", "text"}`` and the
    read goes on at the next line. A line that parses alone is taken alone (a literal '"' inside an unquoted
    field, ``WHITE 12" RULER``, is no opening quote). A short line is padded with "" as pandas does
    (:func:`classify_rows` skips a row missing a required field). Blank lines are left out; ``limit`` counts the
    rows kept; ``sep``: the field separator.

    Raises:
        ValueError: the header itself does not parse.
    """
    with _csv_fields_up_to(len(text) + 1):
        return _read_lenient(text, limit, sep)


def _read_lenient(text: str, limit: int | None, sep: str) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    lines = io.StringIO(text, newline="").readlines()
    header: list[str] | None = None
    rows: list[list[str]] = []
    row_lines: list[int] = []
    bad: list[dict[str, Any]] = []
    i = 0
    while i < len(lines) and (limit is None or len(rows) < limit):
        start, buf = i, lines[i]
        i += 1
        if not buf.strip():
            continue
        try:   # the line alone first: a stray quote in an unquoted field parses
            fields, err = next(csv.reader([buf], strict=True, delimiter=sep)), None
        except csv.Error as exc:
            fields, err = None, f"CSV error: {exc}"
        if fields is None or (header is not None and len(fields) > len(header)):
            while buf.count('"') % 2 and i < len(lines) and i - start < 100:   # a quoted field spanning lines
                buf += lines[i]
                i += 1
            if i - start > 1:
                try:
                    fields, err = next(csv.reader([buf], strict=True, delimiter=sep)), None
                except csv.Error as exc:
                    fields, err = None, f"CSV error: {exc}"
        if header is None:
            if fields is None:
                raise ValueError(f"the header line does not parse: {err}")
            header = fields
            continue
        if fields is not None and len(fields) <= len(header):
            rows.append(fields + [""] * (len(header) - len(fields)))
            row_lines.append(start + 1)
            continue
        if i - start > 1:   # the lines joined to close a quote make no record: the first line alone is bad
            i, buf = start + 1, lines[start]
            err = 'a quote (") opened and not closed on the line'
        reason = err or f"{len(fields)} fields where the header has {len(header)} (an unquoted comma?)"
        bad.append({"line": start + 1, "code": "MALFORMED_LINE", "reason": reason, "text": buf.rstrip("\r\n")})
    out = pd.DataFrame(rows, columns=header, dtype=str)
    out.attrs["row_lines"] = row_lines   # the physical line of each row (load_transactions takes it out)
    return out, bad


#: invoice_ts formats read (:func:`parse_invoice_ts`): the README's first, then what spreadsheets re-save; on a tie
#: the earlier wins, so month-first (the original UCI export, ``12/1/2010 8:26``) before day-first
TS_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M",
              "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S.%f",
              "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S",
              "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S")


def parse_invoice_ts(ts: pd.Series, source: str | Path | None = None, fmt: str | None = None) -> pd.Series:
    """Local times as text -> naive datetime64 (NaT where a value does not parse), in one format for the whole
    column: ``fmt`` when given (a file's :func:`invoice_ts_format`, kept in ``attrs["invoice_ts_format"]`` of
    :func:`load_transactions`' frame, so a part of the file, e.g. one country or the first rows, reads its dates
    as the whole file does), else :func:`invoice_ts_format` of ``ts`` itself.

    Raises:
        ValueError: values are present but none parses in any format, naming ``source``, the column and the
            formats tried.
    """
    if fmt:
        return pd.to_datetime(ts, format=fmt, errors="coerce")
    return _detect(ts, source)[1]   # the detection's own parse (before 2026-12-06 parsed a second time)


class ParsedTs:
    """``invoice_ts`` as :func:`load_transactions` parsed it while detecting its format, kept in the frame's
    ``attrs["invoice_ts_parsed"]`` so :class:`Replay` does not parse the column again (before 2026-12-06 it did:
    0.018 s of the 0.028 s spent parsing 129,997 lines). pandas deep-copies ``attrs`` into every derived frame:
    this object copies by reference, and :meth:`get` serves only a column holding the very same values.

    It keeps a copy of the values parsed (8 bytes a row: the strings are shared), so an in-place edit of the frame
    (``df.loc[0, "invoice_ts"] = ...``) is seen; until 2026-12-06 it kept a view of the column, compared it with
    itself and served the stale parse (``2010-12-01 08:26`` for a row edited to ``2011-06-01 10:00``)."""

    def __init__(self, raw: np.ndarray, parsed: pd.Series):
        self.raw, self.parsed = pd.Series(np.array(raw, dtype=object, copy=True)), parsed.to_numpy()

    def __deepcopy__(self, memo) -> "ParsedTs":
        return self

    def get(self, ts: pd.Series) -> pd.Series | None:
        """The parsed datetimes (naive, NaT where a value does not parse) with ``ts``' index when ``ts`` holds the
        values parsed, in the same order (missing values, NaN / None, equal to each other: ``pd.Series.equals``;
        ``np.array_equal`` called two object arrays holding NaN different); else None (a subset, a reordered or
        edited column). A copy: editing it leaves this parse as it was."""
        if len(ts) != len(self.raw) or not self.raw.equals(pd.Series(ts.to_numpy(dtype=object))):
            return None
        return pd.Series(self.parsed, index=ts.index, copy=True)


def invoice_ts_format(ts: pd.Series, source: str | Path | None = None) -> str:
    """The one of :data:`TS_FORMATS` that parses the most values of ``ts`` (``2010-12-01 08:26:00`` as in the
    README; ``2010-12-01 08:26``, ``2010-12-01T08:26:00``, ``2010-12-01 08:26:00.000``, ``12/1/2010 8:26``,
    ``01/12/2010 08:26`` as spreadsheets re-save it, ``01.12.2010 08:26`` (day-first, as European locales write
    it; until 2026-12-06 such a file was refused whole), ``2010/12/01 08:26``). Day and month order: a value > 12 in a position settles it
    (``13/12/2010`` does not parse month-first); when no value settles it, month-first as the original UCI export,
    with a warning.

    Raises:
        ValueError: values are present but none parses in any format, naming ``source``, the column and the
            formats tried.
    """
    return _detect(ts, source)[0]


def _detect(ts: pd.Series, source: str | Path | None = None, strict: bool = True) -> tuple[str | None, pd.Series]:
    """:func:`invoice_ts_format` and the column parsed in that format (NaT where a value does not parse).
    ``strict=False``: when values are present and none parses, (None, all NaT) with a warning instead of the
    ValueError."""
    given = ts.fillna("").astype(str).str.strip().ne("")
    present = int(given.sum())
    counts: dict[str, int] = {}
    parsed: dict[str, pd.Series] = {}

    def count(fmt: str) -> int:
        if fmt not in counts:
            parsed[fmt] = pd.to_datetime(ts, format=fmt, errors="coerce")
            counts[fmt] = int(parsed[fmt].notna().sum())
        return counts[fmt]

    if count(TS_FORMATS[0]) == present:
        return TS_FORMATS[0], parsed[TS_FORMATS[0]]
    for fmt in TS_FORMATS[1:]:   # a format that parses every value ends the search (before: all 10 were tried)
        if count(fmt) == present:
            break
    best_n = max(counts.values())
    where = f"{source}: " if source else ""
    if best_n == 0:
        msg = (f"{where}no value of column invoice_ts parses as a date and time "
               f"(e.g. {ts[given].iloc[0]!r}); formats tried: {', '.join(TS_FORMATS)}")
        if strict:
            raise ValueError(msg)
        log.warning("%s: every line with a date is quarantined", msg)
        return None, pd.Series(pd.NaT, index=ts.index, dtype="datetime64[ns]")
    fmt = next(f for f in TS_FORMATS if counts.get(f) == best_n)
    ambiguous = "/" in fmt and count(fmt.replace("%m/%d", "%d/%m")) == count(fmt.replace("%d/%m", "%m/%d"))
    # one warning (before 2026-12-06 an ambiguous file logged two, the format twice)
    log.warning("%sinvoice_ts read as %s: %d of %d values parse%s", where, fmt, best_n, present,
                "; day and month order ambiguous (no day > 12): read month-first as the original UCI export"
                if ambiguous else "")
    return fmt, parsed[fmt]


def london_to_utc_ms(ts: pd.Series, fmt: str | None = None, parsed: pd.Series | None = None) -> np.ndarray:
    """UK local times (:func:`parse_invoice_ts`: ``YYYY-MM-DD HH:MM:SS`` or a spreadsheet's format; ``fmt``: the
    file's, when known; ``parsed``: ``ts`` already parsed, :meth:`ParsedTs.get`) -> epoch ms UTC (int64).
    DST-ambiguous times as GMT; unparseable -> -1 (a column where nothing parses: all -1)."""
    try:
        t = parsed if parsed is not None else parse_invoice_ts(ts, fmt=fmt)
    except ValueError:
        t = pd.Series(pd.NaT, index=ts.index, dtype="datetime64[ns]")
    loc = t.dt.tz_localize("Europe/London", ambiguous=np.zeros(len(t), dtype=bool), nonexistent="shift_forward")
    utc = loc.dt.tz_convert("UTC").dt.tz_localize(None)
    out = utc.to_numpy(dtype="datetime64[ms]").astype(np.int64)
    out[t.isna().to_numpy()] = -1
    return out


@dataclass(frozen=True)
class ReplayConfig:
    """Replay options. ``end_at`` (UTC, default now): the last row lands at it (``align="none"``) or at the latest
    instant before it that is a whole number of days (``"day"``, the default) or weeks (``"week"``) from its own
    time; ignored with ``keep_dates``. See the module docstring.

    Raises:
        ValueError: ``align`` is not one of :data:`ALIGN_MS`.
    """

    keep_dates: bool = False
    end_at: datetime | None = None
    align: str = "day"
    restock_lead_hours: float = 24.0
    customer_events: bool = True
    price_observations: bool = True
    seed: int = 2012

    def __post_init__(self):
        if self.align not in ALIGN_MS:
            raise ValueError(f"align must be one of {sorted(ALIGN_MS)}, got {self.align!r}")


#: replay shift granularity (ms): a whole number of these between an event's original and replayed instant
ALIGN_MS = {"week": 7 * 86_400_000, "day": 86_400_000, "none": 1}


@dataclass
class ReplayStats:
    """Counters of one replay: rows read, rows by decision, skipped rows per code/reason, events."""

    rows: int = 0
    rows_by_kind: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    inventory_reasons: Counter = field(default_factory=Counter)
    expedited_restocks: int = 0
    capped_writeoffs: int = 0
    stock_max_adjustments: int = 0
    time_shift_ms: int = 0
    out_of_order_rows: int = 0
    quarantine_codes: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain JSON-ready types (Counters become dicts; the CLI prints it as ``generator``).

        Keys: ``rows`` (rows of the source slice), ``rows_by_kind`` (rows per decision: sale, return, writeoff,
        found, skip), ``skipped`` (skipped rows per skip code, e.g. ``A_INVOICE``, ``ZERO_QUANTITY`` or the stock
        code), ``skipped_total`` (their sum), ``events`` (records generated per event type, before any contract
        check or send), ``inventory_reasons`` (inventory updates per reason: OPENING, SALE, RETURN, RESTOCK,
        WASTE, ADJUSTMENT), ``expedited_restocks`` (sales larger than the stock on hand, preceded by an
        immediate RESTOCK), ``capped_writeoffs`` (write-offs cut to the stock on hand), ``stock_max_adjustments``
        (returns or found stock that would lift stock above ``contracts.STOCK_MAX``, preceded by an ``ADJUSTMENT``
        down to the room they need), ``time_shift_ms`` (ms
        added to every source time, 0 with ``keep_dates``), ``out_of_order_rows`` (replayed rows earlier than a row
        before them in the file: the replay sorts them into time order), ``quarantined`` / ``quarantine_codes``
        (malformed lines and truncated rows of :attr:`Replay.quarantine`, per code: ``MALFORMED_LINE``,
        ``BAD_ENCODING``, ``MISSING_<FIELD>``, ``BAD_INVOICE_TS``, ``INVOICE_TS_OUTLIER``, ``TRUNCATED_LINE``, the
        bad values of :data:`BAD_VALUE_REASONS` such as ``ZERO_QUANTITY``; all but the first two are in ``skipped``
        too: those two are lines that make no row). Filled while :meth:`Replay.events` is
        iterated.
        """
        return {"rows": self.rows, "rows_by_kind": dict(self.rows_by_kind), "skipped": dict(self.skipped),
                "skipped_total": int(sum(self.skipped.values())), "events": dict(self.events),
                "inventory_reasons": dict(self.inventory_reasons),
                "expedited_restocks": self.expedited_restocks, "capped_writeoffs": self.capped_writeoffs,
                "stock_max_adjustments": self.stock_max_adjustments,
                "time_shift_ms": self.time_shift_ms, "out_of_order_rows": self.out_of_order_rows,
                "quarantined": int(sum(self.quarantine_codes.values())),
                "quarantine_codes": dict(self.quarantine_codes)}


def invoice_ids(invoices: pd.Series) -> pd.Series:
    """The replay's invoice id of each row: stripped and upper-cased (a ``c`` prefix is a cancellation too)."""
    return invoices.fillna("").str.strip().str.upper()


def customer_ids(customers: pd.Series) -> pd.Series:
    """The replay's customer id of each row: stripped, a number with a zero fraction in its integer form
    (``17850.0``, as pandas writes the Online Retail II file, -> ``17850``); "" when anonymous."""
    return customers.fillna("").astype(str).str.strip().str.replace(r"^([0-9]+)\.0*$", r"\1", regex=True)


def transaction_ids(df: pd.DataFrame) -> pd.Series:
    """The ``transaction_id`` of each row, ``<invoice>-<line_no>`` (:func:`invoice_ids`, the line number stripped
    as :func:`classify_rows` reads it): the replay's sales events and the fact lines of :mod:`ops.uci_demand`."""
    return invoice_ids(df["invoice"]) + "-" + df["line_no"].fillna("").str.strip()


def is_note(descriptions: pd.Series) -> pd.Series:
    """Per description (str, stripped): True for a clerk's note ("found", "Found", "Adjustment", "damaged?",
    "Dotcom sales", "MISSING", "DAMAGED", "DOTCOM SETS"): it has a "?", more lower- than upper-case letters, or a
    word of the clerks' stock vocabulary in any case (:data:`NOTE_WORDS`: damage, broken, wet, missing, found,
    lost, adjust, credit, error, dotcom, amazon, sold as, ...; until 2026-12-07 only "found" was recognised in upper
    case, so "MISSING", "DAMAGED", "DOTCOM SETS" and "MERCHANT CHANDLER CREDIT ERROR, STO" counted as product
    names). A product name is mostly upper case, units aside ("POLYESTER FILLER PAD 45x45cm", "BAG 250g SWIRLY
    MARBLES"), so it is no note; a product named in mixed case ("Dad's Cab Electronic Meter") is, by this rule
    alone: :func:`names_product` takes the descriptions of lines sold at a price first.
    An empty description is not a note here (callers decide). Used through :func:`names_product` for the row
    decisions (:func:`classify_rows`: a price-0 line with a note is stock found) and the product names
    (:class:`Replay`).

    Args: descriptions: str Series (no NaN). Returns: a bool Series on the same index."""
    lower, upper = descriptions.str.count(r"[a-z]"), descriptions.str.count(r"[A-Z]")
    return (descriptions.str.contains("?", regex=False) | (lower > upper)
            | descriptions.str.contains(NOTE_WORDS, regex=True))


def names_product(descriptions: pd.Series, stock_codes: pd.Series | None = None,
                  priced: pd.Series | np.ndarray | None = None) -> pd.Series:
    """Per description (str, stripped): True when it names a product. A description that the data gives a line of
    the same stock code sold at a price (``priced``: quantity > 0, price > 0, not a ``C`` / ``A`` invoice) names
    it, whatever its case ("Dad's Cab Electronic Meter", "Next Day Carriage": 10 of the development log's 4,985
    descriptions of priced sales, 67 lines, were taken for notes until 2026-12-07). Any other description names a
    product when it is not empty, no note (:func:`is_note`, upper-case notes included: "MISSING", "DAMAGED") and
    has a word of at least 4 letters (the shortest product names: "CAT BOWL", "SOMBRERO"). A stock code written as
    the description ("22719" on a line of 22467: the log's code corrections) or a channel's abbreviation ("FBA",
    Fulfilled by Amazon, 160 units of 82583 on 2011-07-19; its other channel lines say "amazon", a note) names
    none. Used for the row decisions (:func:`classify_rows`: a price-0 line that names no product is stock found,
    one that does a free sale) and the product names (:class:`Replay`: a description that names none never
    becomes a product's name).

    Args: descriptions: str Series (no NaN). stock_codes: the rows' product ids (:func:`product_ids`), same
    index, and priced: bool per row (Series on that index or array of its length), True for a line sold at a
    price; both or neither (without them only the word rule applies). Returns: a bool Series on the same index.
    Raises: ValueError when only one of stock_codes / priced is given or their length differs."""
    words = (descriptions != "") & ~is_note(descriptions) & descriptions.str.contains(r"[A-Za-z]{4}", regex=True)
    if stock_codes is None and priced is None:
        return words
    if stock_codes is None or priced is None or len(stock_codes) != len(descriptions) or len(priced) != len(
            descriptions):
        raise ValueError("names_product: stock_codes and priced go together, one per description")
    key = stock_codes.to_numpy().astype(str).astype(object) + "\x00" + descriptions.to_numpy().astype(object)
    sold = np.asarray(priced, dtype=bool)
    seen = pd.Series(key).isin(set(key[sold & (descriptions != "").to_numpy()])).to_numpy()
    return words | pd.Series(seen, index=descriptions.index)


def classify_rows(df: pd.DataFrame, missing: pd.Series | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (kind, skip_key). kind in sale / return / writeoff / found / skip (see module table).

    Beyond the table, rows the contracts could not carry are skipped with their own key rather than sent half
    (a sale dead-lettered while its stock update goes out): |quantity| > ``contracts.QUANTITY_MAX``
    (``QUANTITY_OUT_OF_RANGE``), a price that is not finite or above ``contracts.PRICE_MAX``
    (``PRICE_OUT_OF_RANGE``), an invoice that is not digits with an optional ``C`` / ``A`` prefix
    (``UNKNOWN_INVOICE``), a line number that is not a whole number (``UNPARSEABLE``), and a repeated
    (invoice, line_no), the log's key (``DUPLICATE_LINE``: the first is kept; its event ids would repeat). A row
    with an empty :data:`REQUIRED_FIELDS` field (a truncated line) is ``MISSING_<FIELD>``, the first such field,
    whatever else it holds (the replay quarantines it, :attr:`Replay.quarantine`). ``missing``: the frame's
    :func:`missing_fields` when the caller has them (computed here otherwise).
    """
    inv = invoice_ids(df["invoice"])
    code = df["stock_code"]
    qty = pd.to_numeric(df["quantity"], errors="coerce")
    price = pd.to_numeric(df["unit_price"], errors="coerce")
    line = df["line_no"].fillna("").str.strip()
    bad_line = ~line.str.fullmatch(r"[0-9]+").to_numpy()
    dup = (inv + "-" + line).duplicated(keep="first").to_numpy() & ~bad_line
    desc = df["description"].fillna("").str.strip()
    code_skip = code.map(classify_code)
    kind = np.full(len(df), "sale", dtype=object)
    key = np.full(len(df), None, dtype=object)
    is_c = inv.str.startswith("C").to_numpy()
    # names no product (:func:`names_product`: empty, a note, or no word of 4 letters; until 2026-12-07 any
    # lower-case letter: 29 price-0 lines of the development log named as products, e.g. 380 units of "POLYESTER
    # FILLER PAD 45x45cm" on 2011-08-11, were stock found; until the review of 2026-12-07 a code or abbreviation
    # such as "FBA" (160 units) or "22719" was a free sale; until 2026-12-07 a product named in mixed case, "Dad's
    # Cab Electronic Meter", was a note though lines of its code sold at a price under it)
    q, p = qty.to_numpy(), price.to_numpy()
    with np.errstate(invalid="ignore"):
        priced = (q > 0) & (p > 0) & (p <= PRICE_MAX) & ~inv.str.match(r"[CA]").to_numpy() & code_skip.isna().to_numpy()
    note = (~names_product(desc, product_ids(code.fillna("")), priced)).to_numpy()
    kind[(q < 0) & ~is_c] = "writeoff"
    kind[(q > 0) & ~is_c & (p == 0) & note] = "found"
    kind[(q < 0) & is_c] = "return"
    with np.errstate(invalid="ignore"):
        rules = [  # each later rule overrides the earlier ones: the last matching rule names the skip
            ((q > 0) & is_c, "C_POSITIVE_QUANTITY"),
            (p < 0, "NEGATIVE_PRICE"),
            (q == 0, "ZERO_QUANTITY"),
            (np.abs(q) > QUANTITY_MAX, "QUANTITY_OUT_OF_RANGE"),
            (np.isinf(p) | (p > PRICE_MAX), "PRICE_OUT_OF_RANGE"),
            (np.isnan(q) | np.isnan(p) | (np.isfinite(q) & (q != np.round(q))) | bad_line, "UNPARSEABLE"),
            (code_skip.notna().to_numpy(), None),
            (~inv.str.fullmatch(r"[CA]?[0-9]+").to_numpy(), "UNKNOWN_INVOICE"),
            (inv.str.startswith("A").to_numpy(), "A_INVOICE"),
            (dup, "DUPLICATE_LINE"),
            (repeated_header(df), "REPEATED_HEADER"),
        ]
    for mask, reason in rules:
        kind[mask] = "skip"
        key[mask] = code_skip.to_numpy()[mask] if reason is None else reason
    if missing is None:
        missing = missing_fields(df)   # overrides every other key: a truncated line is not a sale of store ''
    short = (missing != "").to_numpy()
    kind[short] = "skip"
    key[short] = ("MISSING_" + missing[short].str.split(",").str[0].str.upper()).to_numpy()
    return kind, key


def unparseable_reason(row: pd.Series) -> str:
    """Why :func:`classify_rows` found a row ``UNPARSEABLE``: its quantity or line number not a whole number, its
    price not a number, naming each value (e.g. ``"unit_price '£2.55' is not a number"``)."""
    out = []
    for col, whole in (("quantity", True), ("unit_price", False), ("line_no", True)):
        raw = str(row.get(col, ""))
        v = pd.to_numeric(pd.Series([raw]), errors="coerce").iloc[0]
        if col == "line_no":
            ok = bool(re.fullmatch(r"[0-9]+", raw.strip()))
        else:
            ok = not (pd.isna(v) or (whole and math.isfinite(v) and v != round(v)))
        if not ok:
            out.append(f"{col} {raw!r} is not {'a whole number' if whole else 'a number'}")
    return "; ".join(out) or "a number does not parse"


#: skip keys of :func:`classify_rows` whose product lines :class:`Replay` quarantines: key -> reason of a row
BAD_VALUE_REASONS = {
    "UNPARSEABLE": unparseable_reason,
    "NEGATIVE_PRICE": lambda r: f"unit_price {r['unit_price']!r} is negative",
    "QUANTITY_OUT_OF_RANGE": lambda r: f"quantity {r['quantity']!r} is beyond +-{QUANTITY_MAX:,} (contracts.QUANTITY_MAX)",
    "PRICE_OUT_OF_RANGE": lambda r: f"unit_price {r['unit_price']!r} is not finite or above {PRICE_MAX:,.0f} "
                                    "(contracts.PRICE_MAX)",
    "UNKNOWN_INVOICE": lambda r: f"invoice {r['invoice']!r} is not digits with an optional C / A prefix",
    "REPEATED_HEADER": lambda r: "the header line again (files joined?): not a transaction",
    # until 2026-12-06 only counted: the line was in neither a topic nor the dead letters
    "ZERO_QUANTITY": lambda r: f"quantity {r['quantity']!r} is zero: neither a sale, a return nor a stock movement",
}

#: the columns a replayed row cannot do without (description and customer_id may be empty)
REQUIRED_FIELDS = ("invoice", "line_no", "stock_code", "quantity", "unit_price", "invoice_ts", "country")
#: the columns a file may lack altogether (:func:`load_transactions` reads them as empty)
OPTIONAL_FIELDS = ("description", "customer_id")


def repeated_header(df: pd.DataFrame) -> np.ndarray:
    """Per row, True when each of its :data:`REQUIRED_FIELDS` holds that column's own name (:func:`column_name`): the
    header line again, as joined exports hold (until 2026-12-06 dead-lettered as ``UNKNOWN_INVOICE`` and counted
    ``UNPARSEABLE``)."""
    out = np.ones(len(df), dtype=bool)
    for c in REQUIRED_FIELDS:
        if c not in df.columns:
            return np.zeros(len(df), dtype=bool)
        out &= df[c].fillna("").map(column_name).eq(c).to_numpy()
    return out


def missing_fields(df: pd.DataFrame) -> pd.Series:
    """Per row, the :data:`REQUIRED_FIELDS` that are empty (blank or absent: a truncated line), comma-separated
    in column order; "" for a complete row."""
    out = pd.Series("", index=df.index, dtype=object)
    for col in reversed([c for c in REQUIRED_FIELDS if c in df.columns]):
        empty = df[col].fillna("").astype(str).str.strip().eq("")
        if empty.any():
            out = out.where(~empty, col + ("," + out).where(out != "", ""))
    return out


#: a replayable line is a date outlier when further than max(10 x MAD, this) from the median of their dates
OUTLIER_MIN_MS = 90 * 86_400_000


def date_outliers(ts: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The lines of ``ts`` (epoch ms; considered where ``use``) whose date is a typo by its distance from the
    others: more than ``max(10 x MAD, 90 days)`` from their median (MAD: median absolute deviation; a log of one
    month: 90 days, the UCI log of two years: 5.2 years). Returns (mask over ``ts``, the limit in ms, the median
    in ms); no outliers when nothing is used."""
    out = np.zeros(len(ts), dtype=bool)
    vals = ts[use]
    if len(vals) == 0:
        return out, OUTLIER_MIN_MS, 0
    med = int(np.median(vals))
    limit = max(10 * int(np.median(np.abs(vals - med))), OUTLIER_MIN_MS)
    out[use] = np.abs(vals - med) > limit
    return out, limit, med


def _utc_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d")


def out_of_order_rows(ts: np.ndarray) -> int:
    """How many of the instants ``ts`` (epoch ms, file order) are earlier than one before them: 0 for a file
    sorted by time (ties allowed), n - 1 for n distinct instants newest first."""
    return int((ts < np.maximum.accumulate(ts)).sum()) if len(ts) else 0


#: the fixed enum values the replay writes, per (event type, field): checked against the Avro schemas when a
#: :class:`Replay` is built (contracts.require_symbols), so a renamed symbol stops it at start, naming the value
ENUM_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("sales_transaction", "payment_method"): ("ONLINE",),
    ("inventory_update", "reason"): ("OPENING", "RESTOCK", "SALE", "RETURN", "WASTE", "ADJUSTMENT"),
    ("price_change", "reason"): ("OBSERVED",),
    ("customer_event", "event_type"): ("STORE_VISIT",),
}


class Replay:
    """Turns a UCI transaction frame into POS events (see module docstring).

    Attributes after construction: ``products`` and ``stores`` reference frames (catalog schema); ``quarantine``:
    the lines not replayed for their shape, each ``{"line"`` (physical, malformed lines of
    :func:`load_transactions`, in ``df.attrs["quarantine"]``) and/or ``"row"`` (1-based row of ``df``: a row missing a
    required field, or a product line whose invoice_ts is malformed or a date outlier, :func:`date_outliers`; with
    its physical ``"line"`` too when ``df`` comes from :func:`load_transactions`), ``"code", "reason", "text"}``
    (the CLI dead-letters them);
    after iterating :meth:`events`: ``stats`` (:class:`ReplayStats`).
    """

    def __init__(self, df: pd.DataFrame, config: ReplayConfig | None = None):
        for (et, f), values in ENUM_VALUES.items():
            require_symbols(et, f, values, user="producers.replay")
        self.config = config or ReplayConfig()
        self.quarantine: list[dict[str, Any]] = list(df.attrs.get("quarantine", []))
        self.df = df.reset_index(drop=True)
        self.stats = ReplayStats()
        self._prepare()

    # --------------------------------------------------------------------------- preparation
    def _prepare(self) -> None:
        df, cfg = self.df, self.config
        missing = missing_fields(df)   # once: classify_rows takes it (before 2026-12-06 computed twice)
        self.kind, self.skip_key = classify_rows(df, missing)
        self.ts_format = fmt = df.attrs.get("invoice_ts_format")
        cached = df.attrs.get("invoice_ts_parsed")   # load_transactions' parse of these very values, if they are
        ts = london_to_utc_ms(df["invoice_ts"], fmt, parsed=cached.get(df["invoice_ts"]) if cached else None)
        line_of = df.attrs.get("source_line")

        quarantined = np.zeros(len(df), dtype=bool)

        def quarantine(i: int, code: str, reason: str) -> None:
            quarantined[i] = True
            entry = {"row": int(i) + 1, "code": code, "reason": reason, "text": ",".join(map(str, df.iloc[i].tolist()))}
            if line_of is not None:
                entry = {"line": line_of(int(i)), **entry}
            self.quarantine.append(entry)

        complete = (missing == "").to_numpy()
        for i in np.flatnonzero(~complete):   # truncated lines: quarantined, naming the fields
            quarantine(i, self.skip_key[i], f"missing field(s): {missing.iloc[i].replace(',', ', ')}")
        # a product line whose quantity, price or line number is not a number ("1,234.50", "£2.55", "5.5" units),
        # whose price is negative, whose numbers the contracts cannot carry or whose invoice is no invoice number:
        # quarantined naming the value (before 2026-12-06 only counted, the line lost)
        for i in np.flatnonzero(pd.Series(self.skip_key, dtype=object).isin(list(BAD_VALUE_REASONS)).to_numpy()):
            quarantine(i, self.skip_key[i], BAD_VALUE_REASONS[self.skip_key[i]](df.iloc[i]))
        # the file's last line without a line end, its last field the country, and that country the start of a
        # longer one (of :data:`COUNTRIES` or the file's other lines) but none itself: cut off ("United Kin"; until
        # 2026-12-06 replayed as a store of its own, UCI-X-UNITEDKIN). A country the file only names there
        # ("Mexico") is a country of its own, replayed
        last = len(df) - 1
        if df.attrs.get("unended_last_field") == "country" and last >= 0 and self.kind[last] != "skip":
            country = str(df["country"].iloc[last]).strip()
            known = set(COUNTRIES) | {str(c).strip() for c in df["country"].iloc[:last].unique()}
            longer = sorted(k for k in known if len(k) > len(country) and k.startswith(country))
            if country not in known and longer:
                quarantine(last, "TRUNCATED_LINE", f"the file's last line has no line end and its country {country!r} "
                                                   f"is the start of {longer[0]!r}: cut off?")
                self.kind[last], self.skip_key[last] = "skip", "TRUNCATED_LINE"
        # a product line whose invoice_ts is malformed ("2011-13-45", "12/1/201O") or a typo far from the file's
        # other dates ("2101-11-11": it moved every sale back 75 years) is quarantined, not replayed: it moves
        # neither the clock, the order nor the sizing of the others (before 2026-12-06 a malformed one was only
        # counted UNPARSEABLE, a far one replayed)
        product = self.kind != "skip"
        malformed = product & (ts == -1)   # london_to_utc_ms's mark of a value that does not parse
        far, limit_ms, med = date_outliers(ts, product & ~malformed)
        raw_ts = df["invoice_ts"].to_numpy()
        for i in np.flatnonzero(malformed):
            quarantine(i, "BAD_INVOICE_TS", f"invoice_ts {raw_ts[i]!r} is not a date and time in the file's format "
                                            f"{fmt}" if fmt else f"invoice_ts {raw_ts[i]!r}: no invoice_ts of the "
                                            f"file parses in any of the formats {', '.join(TS_FORMATS)}")
        for i in np.flatnonzero(far):
            quarantine(i, "INVOICE_TS_OUTLIER",
                       f"invoice_ts {raw_ts[i]!r} is {abs(int(ts[i]) - med) / 86_400_000:,.0f} days from the median "
                       f"of the file's dates ({_utc_date(med)}), more than {limit_ms / 86_400_000:,.0f} (10 x their "
                       "median absolute deviation, at least 90): a typo?")
        self.skip_key[malformed] = "BAD_INVOICE_TS"
        self.skip_key[far] = "INVOICE_TS_OUTLIER"
        self.skip_key[(ts < 0) & complete & ~product & ~quarantined] = "UNPARSEABLE"   # its own key kept when dead-lettered
        self.kind[malformed | far | (ts < 0)] = "skip"
        self.out_of_order = out_of_order_rows(ts[self.kind != "skip"])
        if self.out_of_order:  # replayed in time order (stable: file order within one instant), see events()
            order = np.argsort(ts, kind="stable")
            log.warning("%d of %d replayed rows are earlier than a row before them in the file: replayed in time "
                        "order (stable sort by invoice_ts)", self.out_of_order, int((self.kind != "skip").sum()))
            self.df = df = df.iloc[order].reset_index(drop=True)
            self.kind, self.skip_key, ts = self.kind[order], self.skip_key[order], ts[order]
            quarantined = quarantined[order]
        #: per row of :attr:`df` (replay order): True when it is in :attr:`quarantine` (dead-lettered, not replayed)
        self.quarantined = quarantined
        # the shift and the sizing span come from the rows that are replayed: a skipped line (a POST line dated
        # 2100 or 1990 by a typo) would otherwise move every sale or spread the month's demand over decades
        valid_ts = ts[self.kind != "skip"]
        if cfg.keep_dates or len(valid_ts) == 0:
            shift = 0
        else:
            end = cfg.end_at or datetime.now(timezone.utc)
            if end.tzinfo is None:
                end = end.replace(tzinfo=timezone.utc)
            shift = int(end.timestamp() * 1000) - int(valid_ts.max())
            shift -= shift % ALIGN_MS[cfg.align]   # floor to whole weeks / days: the last row at or before end
        self.shift_ms = shift
        self.ts = ts + shift
        use = self.kind != "skip"  # skipped rows may hold anything (inf, 1e20): 0 there, never cast
        self.qty = np.where(use, pd.to_numeric(df["quantity"], errors="coerce").to_numpy("float64"), 0).astype(np.int64)
        self.price = np.where(use, pd.to_numeric(df["unit_price"], errors="coerce").to_numpy("float64"), 0.0)
        stores = df["country"].map(lambda c: store_for_country(c)[0])
        self.store_ids = stores.to_numpy()
        self.codes = product_ids(df["stock_code"]).to_numpy()

        # per store x SKU sizing from average daily net demand over the slice: units sold less units returned
        # (a cancelled order is no demand: on the whole log UCI-GB 23166's 74,215-unit order, cancelled 16 min
        # later, sized its stock at 74,215 units, 100 years of its net demand), at least 0 (returns of earlier sales)
        span_days = max(1.0, (valid_ts.max() - valid_ts.min()) / 86_400_000) if len(valid_ts) else 1.0
        kind_u, qty_u = self.kind[use], self.qty[use]
        sales = pd.DataFrame({"store": self.store_ids[use], "sku": self.codes[use],
                              "units": np.where(kind_u == "sale", qty_u, 0),
                              "net": np.where((kind_u == "sale") | (kind_u == "return"), qty_u, 0)})
        grp = sales.groupby(["store", "sku"], sort=False)
        net = grp["net"].sum().clip(lower=0)
        demand = net / span_days
        largest = np.minimum(grp["units"].max().to_numpy(), net.to_numpy())   # a line larger: expedited restock
        lead_days = cfg.restock_lead_hours / 24
        rop = np.ceil(demand.to_numpy() * (lead_days + SAFETY_DAYS)).astype(np.int64) + 1
        cap = np.maximum.reduce([3 * rop, np.ceil(14 * demand.to_numpy()).astype(np.int64), largest,
                                 np.full(len(rop), 10, dtype=np.int64)])
        rop, cap = np.minimum(rop, STOCK_MAX // 4), np.minimum(cap, STOCK_MAX // 2)  # stock stays within the contract
        self.rop = dict(zip(demand.index, rop.tolist()))
        self.cap = dict(zip(demand.index, cap.tolist()))
        self.products = self._products(pd.DataFrame({"store": demand.index.get_level_values(0),
                                                     "sku": demand.index.get_level_values(1),
                                                     "rop": rop, "cap": cap}))
        self.stores = self._stores()

    def _products(self, sizing: pd.DataFrame) -> pd.DataFrame:
        df = self.df[self.kind != "skip"]
        codes = product_ids(df["stock_code"])
        desc = df["description"].fillna("").str.strip()
        # a note ("found", "damaged?", "Dotcom sales") has a "?" or more lower- than upper-case letters; a product
        # name is upper case, units aside ("BAG 250g SWIRLY MARBLES", "POLYESTER FILLER PAD 45x45cm": 16 products of
        # the development log were named by their code while any lower-case letter excluded a description), with a
        # word of 4 letters (:func:`names_product`: "FBA" or another code, "22719", names no product); a description
        # of the SKU's lines sold at a price names it in any case ("Dad's Cab Electronic Meter"), an upper-case note
        # never ("MISSING", "DAMAGED": until 2026-12-07 March 2010 named 17027A "MISSING")
        sale = (self.kind[self.kind != "skip"] == "sale")
        price = pd.to_numeric(df["unit_price"], errors="coerce")
        named = pd.DataFrame({"sku": codes, "desc": desc})[names_product(desc, codes, sale & (price > 0).to_numpy())]
        name = named.groupby("sku")["desc"].agg(lambda s: s.value_counts().index[0])
        med = price[sale & (price > 0).to_numpy()].groupby(codes[sale & (price > 0).to_numpy()]).median()
        size = sizing.groupby("sku").agg(rop=("rop", "max"), cap=("cap", "max"))
        brands = company_pool(self.config.seed, 40, salt=11)
        suppliers = company_pool(self.config.seed, 15, salt=12)
        rows = []
        for sku in sorted(set(codes)):
            nm = name.get(sku, sku)
            cat, sub, shelf = categorize(nm)
            up = float(round(med.get(sku, 0.0), 2)) if not math.isnan(med.get(sku, 0.0)) else 0.0
            h = zlib.crc32(sku.encode())
            rows.append({"product_id": sku, "product_name": nm, "category": cat, "sub_category": sub,
                         "brand": brands[h % len(brands)], "supplier": suppliers[(h // 97) % len(suppliers)],
                         "unit_cost": round(UNIT_COST_FRACTION * up, 2), "unit_price": up,
                         "shelf_life_days": shelf,
                         "reorder_point": int(size["rop"].get(sku, 2)),
                         "storage_capacity": int(size["cap"].get(sku, 10))})
        return pd.DataFrame(rows, columns=PRODUCTS_SCHEMA.names)

    def _stores(self) -> pd.DataFrame:
        rows = []
        for country in sorted(set(self.df["country"][self.kind != "skip"])):  # stores with replayed rows only
            sid, code, region = store_for_country(country)
            rows.append({"store_id": sid, "store_name": f"Online Retail UK - {country} market",
                         "city": "London" if code == "GB" else None, "country": country,
                         "country_code": code, "region": region})
        return pd.DataFrame(rows, columns=STORES_SCHEMA.names).drop_duplicates("store_id")

    # --------------------------------------------------------------------------- events
    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(event_type, record)`` in event-time order; fills :attr:`stats`.

        While it is iterated, :attr:`cursor` is the row of :attr:`df` (0-based, in replay order) the event just
        yielded belongs to (a restock due before a row is that row's), :attr:`row_start` whether that event is the
        first of its row and :attr:`emitted` counts the events yielded; :attr:`exhausted` turns True at the end. A
        caller that stops at a row start has handed over every event of the rows before :attr:`cursor` and none
        of the later ones (``producers.cli.run_replay`` saves those for a later replay)."""
        self.cursor, self.row_start, self.emitted, self.exhausted = 0, False, 0, False
        last = -1
        for item in self._events():
            self.row_start, self.cursor, last = self._row != last, self._row, self._row
            self.emitted += 1
            yield item
        self.cursor, self.row_start, self.exhausted = len(self.df), True, True

    def _events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        st = self.stats = ReplayStats(rows=len(self.df), time_shift_ms=self.shift_ms,
                                      out_of_order_rows=self.out_of_order,
                                      quarantine_codes=Counter(q["code"] for q in self.quarantine))
        lead_ms = int(self.config.restock_lead_hours * 3_600_000)
        stock: dict[tuple[str, str], int] = {}
        pending: set[tuple[str, str]] = set()
        restocks: list[tuple[int, int, str, str]] = []
        last_price: dict[tuple[str, str], float] = {}
        n_restock = Counter()
        seq = 0
        visited: set[str] = set()
        df = self.df
        inv_col = invoice_ids(df["invoice"]).to_numpy()
        tid_col = transaction_ids(df).to_numpy()
        cust_col = customer_ids(df["customer_id"]).to_numpy()
        desc_col = df["description"].fillna("").to_numpy()

        def count(et: str, rec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            st.events[et] += 1
            if et == "inventory_update":
                st.inventory_reasons[rec["reason"]] += 1
            return et, rec

        def inv(key, change: int, reason: str, ts: int, iid: str):
            stock[key] = stock.get(key, 0) + change
            return count("inventory_update", {
                "inventory_id": iid, "store_id": key[0], "product_id": key[1], "quantity_change": int(change),
                "new_quantity": int(stock[key]), "reason": reason,
                "reorder_point": int(self.rop.get(key, 2)), "timestamp": int(ts)})

        def restock_to(key, level: int, ts: int):
            n_restock[key] += 1
            return inv(key, level - stock[key], "RESTOCK", ts, f"RST-{key[0]}-{key[1]}-{n_restock[key]}")

        def make_room(key, add: int, ts: int, tid: str):
            """An ADJUSTMENT down to STOCK_MAX - add when adding ``add`` units would lift stock above the contract's
            bound (returns piling up: before 2026-12-06 120 returns of 100,000 units gave 21 inventory updates above
            STOCK_MAX, dead-lettered while their sales lines went out); None when there is room."""
            over = stock[key] + add - STOCK_MAX
            if over > 0:
                st.stock_max_adjustments += 1
                return inv(key, -over, "ADJUSTMENT", ts, f"{tid}-MAX")
            return None

        def maybe_order(key, ts: int):
            nonlocal seq
            if stock[key] < self.rop.get(key, 2) and key not in pending:
                pending.add(key)
                seq += 1
                heapq.heappush(restocks, (ts + lead_ms, seq, key[0], key[1]))

        for i in range(len(df)):
            self._row = i
            kind = self.kind[i]
            st.rows_by_kind[kind] += 1
            if kind == "skip":
                st.skipped[self.skip_key[i]] += 1
                continue
            ts = int(self.ts[i])
            while restocks and restocks[0][0] <= ts:
                due, _, s_, k_ = heapq.heappop(restocks)
                key_ = (s_, k_)
                pending.discard(key_)
                cap_ = self.cap.get(key_, 10)
                if stock[key_] < cap_:
                    yield restock_to(key_, cap_, due)
            key = (self.store_ids[i], self.codes[i])
            if key not in stock:
                yield inv(key, self.cap.get(key, 10), "OPENING", ts, f"OPEN-{key[0]}-{key[1]}")
            q = int(self.qty[i])
            invoice, tid = inv_col[i], tid_col[i]
            cid = cust_col[i] or None
            if kind in ("sale", "return"):
                if kind == "sale" and self.config.customer_events and cid and invoice not in visited:
                    visited.add(invoice)
                    yield count("customer_event", {
                        "event_id": f"VISIT-{invoice}", "customer_id": cid, "store_id": key[0],
                        "event_type": "STORE_VISIT", "product_id": None, "timestamp": ts})
                price = float(self.price[i])
                if kind == "sale" and self.config.price_observations and q < LIST_PRICE_MAX_QTY and price > 0:
                    old = last_price.get(key)
                    if old is not None and abs(old - price) > 1e-9:
                        yield count("price_change", {
                            "price_change_id": f"OBS-{tid}", "store_id": key[0], "product_id": key[1],
                            "old_price": old, "new_price": price, "reason": "OBSERVED", "timestamp": ts})
                    last_price[key] = price
                room = make_room(key, -q, ts, tid) if kind == "return" else None
                if room is not None:
                    yield room
                if kind == "sale" and q > stock[key]:
                    st.expedited_restocks += 1
                    yield restock_to(key, max(self.cap.get(key, 10), q), ts)
                yield count("sales_transaction", {
                    "transaction_id": tid, "store_id": key[0], "product_id": key[1], "quantity": q,
                    "unit_price": price, "timestamp": ts, "customer_id": cid, "payment_method": "ONLINE",
                    "invoice_id": invoice})
                yield inv(key, -q, "SALE" if kind == "sale" else "RETURN", ts, f"{tid}-INV")
            elif kind == "writeoff":
                change = max(q, -stock[key])
                if change != q:
                    st.capped_writeoffs += 1
                if change != 0:
                    reason = "WASTE" if WASTE_NOTE.search(desc_col[i] or "") else "ADJUSTMENT"
                    yield inv(key, change, reason, ts, f"{tid}-INV")
            elif kind == "found":
                room = make_room(key, q, ts, tid)
                if room is not None:
                    yield room
                yield inv(key, q, "ADJUSTMENT", ts, f"{tid}-INV")
            maybe_order(key, ts)


# ------------------------------------------------------------------------------------- sample
def _records(lines: list[str]) -> list[str]:
    """CSV physical lines -> records (a quoted field's line break joins lines until its quotes balance, RFC 4180);
    blank records left out."""
    out, buf = [], ""
    for line in lines:
        buf += line
        if buf.count('"') % 2 == 0:
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip():
        out.append(buf)
    return out


def cut_sample(src: str | Path, dst: str | Path, n_rows: int = 130_000, encoding: str | None = None) -> dict[str, Any]:
    """Write the last ~``n_rows`` data rows of ``src`` (a UCI log, CSV or compressed as its name says) to ``dst``
    (gzip, UTF-8): the rows of a UTF-8 source byte for byte (line endings kept; a byte-order mark dropped; blank
    lines left out; a quoted field may hold a line break); a source in another encoding (``encoding``, or
    Windows-1252 found by :func:`read_text`) is written as the same text in UTF-8.

    The cut starts at the first timestamp change at or after ``total - n_rows`` so that no invoice is
    split (when the whole tail shares one timestamp, the cut moves back to that timestamp's first row instead);
    gzip mtime 0 makes the output reproducible. Returns {"rows", "first_ts", "last_ts", "bytes"}.

    Raises:
        FileNotFoundError: no such file; ValueError: ``src`` has no data rows or no ``invoice_ts`` column, or its
            text cannot be decoded (:func:`read_text`).
    """
    lines = _records(io.StringIO(read_text(src, encoding), newline="").readlines())
    header, body = (lines[0] if lines else ""), lines[1:]
    start = max(0, len(body) - n_rows)
    columns = next(csv.reader([header]), [])
    if "invoice_ts" not in columns:
        raise ValueError(f"{src}: no invoice_ts column in the header; expected the format of the UCI README")
    ts_col = columns.index("invoice_ts")

    def ts_of(line: str) -> str:
        with _csv_fields_up_to(len(line) + 1):
            return next(csv.reader(io.StringIO(line)))[ts_col]

    if not body:
        raise ValueError(f"{src}: no data rows")
    first = ts_of(body[start])
    while 0 < start < len(body) and ts_of(body[start - 1]) == first:
        start += 1
        if start < len(body):
            first = ts_of(body[start])
    if start == len(body):  # the tail is one timestamp (one invoice's time): keep it whole, from its first line
        while start > 0 and ts_of(body[start - 1]) == first:
            start -= 1
    out = body[start:]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write((header + "".join(out)).encode("utf-8"))
    return {"rows": len(out), "first_ts": ts_of(out[0]), "last_ts": ts_of(out[-1]), "bytes": dst.stat().st_size}
