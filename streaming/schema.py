"""Spark schemas derived from the Avro event contracts (``contracts/schemas/*.avsc``).

The Avro files are the single source of truth; nothing here repeats a field list. Mapping:

==========================================  ==========================================
Avro                                        Spark
==========================================  ==========================================
``string`` / ``enum``                       ``StringType`` (enum symbols checked by :mod:`streaming.transforms`)
``int``                                     ``IntegerType``
``long``                                    ``LongType``
``long`` + ``logicalType: timestamp-millis``  ``LongType`` (epoch ms on the wire; converted to
                                            ``TimestampType`` by :func:`streaming.transforms.parse_events`)
``float`` / ``double``                      ``FloatType`` / ``DoubleType``
``boolean``                                 ``BooleanType``
``["null", T]``                             ``T`` with ``nullable=True``
==========================================  ==========================================

A field without ``null`` in its union is *required*: :func:`required_fields` lists them and the validator
quarantines a record that lacks one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pyspark.sql import types as T

from contracts import EVENT_TYPES, raw_schema

_PRIMITIVES: dict[str, T.DataType] = {
    "string": T.StringType(), "int": T.IntegerType(), "long": T.LongType(), "float": T.FloatType(),
    "double": T.DoubleType(), "boolean": T.BooleanType(), "bytes": T.BinaryType(),
}


@dataclass(frozen=True)
class FieldInfo:
    """One Avro field as the streaming job sees it.

    Attributes:
        name: field name.
        spark_type: the Spark type used to parse the JSON value.
        nullable: True when the Avro type is a union with ``null``.
        timestamp_millis: True for ``long`` + ``timestamp-millis`` (epoch milliseconds, UTC).
        enum_symbols: the allowed symbols of an Avro enum, else None.
    """

    name: str
    spark_type: T.DataType
    nullable: bool
    timestamp_millis: bool = False
    enum_symbols: tuple[str, ...] | None = None


def _convert(avro_type: Any) -> tuple[T.DataType, bool, tuple[str, ...] | None]:
    """(spark type, timestamp-millis?, enum symbols) of a non-union Avro type."""
    if isinstance(avro_type, str):
        if avro_type not in _PRIMITIVES:
            raise ValueError(f"unsupported Avro type {avro_type!r} in an event contract")
        return _PRIMITIVES[avro_type], False, None
    if isinstance(avro_type, dict):
        t = avro_type.get("type")
        if t == "enum":
            return T.StringType(), False, tuple(avro_type["symbols"])
        if t == "long" and avro_type.get("logicalType") == "timestamp-millis":
            return T.LongType(), True, None
        if isinstance(t, str) and t in _PRIMITIVES:
            return _PRIMITIVES[t], False, None
    raise ValueError(f"unsupported Avro type {avro_type!r} in an event contract")


@functools.lru_cache(maxsize=None)
def fields(event_type: str) -> tuple[FieldInfo, ...]:
    """The fields of an event type's contract, in schema order.

    Raises:
        KeyError: unknown event type.
        ValueError: a type the streaming job cannot map (e.g. nested records).
    """
    out = []
    for f in raw_schema(event_type)["fields"]:
        t = f["type"]
        nullable = False
        if isinstance(t, list):
            non_null = [x for x in t if x != "null"]
            if len(non_null) != 1:
                raise ValueError(f"{event_type}.{f['name']}: only [null, T] unions are supported")
            nullable = len(non_null) < len(t)
            t = non_null[0]
        spark_type, ts, symbols = _convert(t)
        out.append(FieldInfo(f["name"], spark_type, nullable, ts, symbols))
    return tuple(out)


def struct_type(event_type: str) -> T.StructType:
    """The Spark ``StructType`` that parses the JSON value of ``event_type`` (all fields nullable so that a
    missing required field is *detected* rather than failing the parse; see :func:`required_fields`)."""
    return T.StructType([T.StructField(f.name, f.spark_type, True) for f in fields(event_type)])


def required_fields(event_type: str) -> list[str]:
    """Names of fields that are not a union with null (must be present and non-null)."""
    return [f.name for f in fields(event_type) if not f.nullable]


def timestamp_fields(event_type: str) -> list[str]:
    """Names of ``timestamp-millis`` fields."""
    return [f.name for f in fields(event_type) if f.timestamp_millis]


def string_fields(event_type: str) -> list[str]:
    """Names of ``string`` fields (not enums: their symbol check rejects any other value)."""
    return [f.name for f in fields(event_type)
            if isinstance(f.spark_type, T.StringType) and not f.enum_symbols]


def double_fields(event_type: str) -> list[str]:
    """Names of ``double`` / ``float`` fields (Spark reads the JSON strings "NaN" and "Infinity" into them)."""
    return [f.name for f in fields(event_type) if isinstance(f.spark_type, (T.DoubleType, T.FloatType))]


def enum_fields(event_type: str) -> dict[str, tuple[str, ...]]:
    """Enum field name -> allowed symbols."""
    return {f.name: f.enum_symbols for f in fields(event_type) if f.enum_symbols}


def field_names(event_type: str) -> list[str]:
    """Field names in contract order."""
    return [f.name for f in fields(event_type)]


def topic_event_types(settings) -> dict[str, str]:
    """Topic name -> event type for every contract, e.g. ``{"retail-sales-transactions": "sales_transaction"}``."""
    return {settings.topic(suffix): et for et, suffix in EVENT_TYPES.items()}
