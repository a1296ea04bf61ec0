"""Publishing raw JSON values (a POS gateway's forwarded lines, a JSON Lines file) with the platform's rules.

A raw value is checked exactly as the stream checks a Kafka value (:func:`contracts.check_payload`: UTF-8, strict
JSON object, each key once, Avro contract, ids, event time within [2000-01-01, now + STREAM_MAX_FUTURE_MINUTES],
numeric bounds). A record that passes goes to its topic through :class:`core.kafka.EventPublisher`; one that does
not goes to the dead-letter topic with the reason and the payload (text, or ``base64:<...>`` when not UTF-8).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterable

from contracts import ContractError, check_payload


def payload_text(value: bytes | str) -> str:
    """The payload as the dead-letter topic carries it: the text, or ``base64:<bytes>`` when not valid UTF-8."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()


def publish_raw(publisher, event_type: str, value: bytes | str) -> bool:
    """Check one raw JSON value and publish it (True) or dead-letter it with the reason (False).

    Args:
        publisher: a :class:`core.kafka.EventPublisher` (``publish`` / ``dead_letter``).
        event_type: the contract of the value, e.g. ``"sales_transaction"``.
        value: the Kafka value as bytes or text.
    """
    try:
        record = check_payload(event_type, value,
                               max_future_minutes=publisher.settings.stream_max_future_minutes)
    except ContractError as exc:
        publisher.dead_letter(event_type, payload_text(value), str(exc))
        return False
    return publisher.publish(event_type, record)


def publish_lines(publisher, event_type: str, lines: Iterable[bytes], stop=None) -> dict[str, int]:
    """:func:`publish_raw` for each non-empty line; returns ``{"published": n, "dead_lettered": m}``.

    Stops at the first line whose send blocked ``max_block_ms`` (``publisher.stalled``: broker unreachable or
    topic missing) instead of blocking again per line; then the result also holds ``stopped_at_line`` (1-based
    line of that send) and ``not_sent`` (the non-empty lines after it, read but not handed to Kafka).
    ``stop``: an event (e.g. :attr:`producers.cli.StopSignals.event`, set by SIGTERM) checked before each line:
    once set, no more lines are sent and the result holds ``stopped_at_line`` (the first line not sent) and
    ``not_sent`` (the non-empty lines from it to the end, read and counted, not sent).
    """
    out = {"published": 0, "dead_lettered": 0}
    stopped_at = None
    not_sent = 0
    for no, line in enumerate(lines, 1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        if stopped_at is None and stop is not None and stop.is_set():
            stopped_at = no
        if stopped_at is not None:
            not_sent += 1
            continue
        out["published" if publish_raw(publisher, event_type, line) else "dead_lettered"] += 1
        if getattr(publisher, "stalled", None):
            stopped_at = no
    if stopped_at is not None:
        out.update(stopped_at_line=stopped_at, not_sent=not_sent)
    return out


def publish_file(publisher, event_type: str, path: str | Path) -> dict[str, int]:
    """:func:`publish_lines` over a JSON Lines file (read as bytes: a line that is not UTF-8 is dead-lettered)."""
    with open(path, "rb") as fh:
        return publish_lines(publisher, event_type, fh)
