"""How far the streaming job has got: its checkpoints' committed Kafka offsets against the topics' end offsets.

Spark records, per query, the offsets of micro-batch N in ``<checkpoint>/<query>/offsets/N`` (line 1 ``v1``,
line 2 batch metadata, then one JSON line per source ``{topic: {partition: next offset}}``) and writes
``commits/N`` once the batch's sink finished. A query has *caught up* when the offsets of its last committed
batch reach the end offsets of every partition it reads. Works for the supervised job (another process).
"""

from __future__ import annotations

import json
from pathlib import Path

from core.settings import Settings
from streaming.checkpoint import batch_numbers


def committed_offsets(checkpoint_root: str | Path, query: str) -> dict[str, dict[int, int]]:
    """{topic: {partition: next offset}} of ``query``'s last committed micro-batch ({} before the first).

    Batches are the names of ``commits/`` made of digits only, as Spark reads them: checksums, temporary files and
    the ``N.corrupt-<time>`` entries the job set aside there until 2026-12-06 are not batches (before, int() of
    such a name raised ValueError and ``make demo``'s wait for the stream failed at once). A source line ``-``
    (Spark's, for a source without an offset) is skipped.

    Raises:
        OSError: the offsets entry of the last commit cannot be read.
        ValueError: a source line of that entry is not JSON.
    """
    root = Path(checkpoint_root) / query
    commits = batch_numbers(root / "commits")
    if not commits:
        return {}
    lines = (root / "offsets" / str(max(commits))).read_text().splitlines()
    out: dict[str, dict[int, int]] = {}
    for line in lines[2:]:
        line = line.strip()
        if line.startswith("{"):
            for topic, parts in json.loads(line).items():
                out.setdefault(topic, {}).update({int(p): int(o) for p, o in parts.items()})
    return out


def end_offsets(s: Settings, topics: list[str], timeout: float = 30.0) -> dict[str, dict[int, int]]:
    """{topic: {partition: end offset}} from the broker.

    Raises:
        TimeoutError: a topic's partitions are unknown to the broker after ``timeout`` seconds.
    """
    from kafka import KafkaConsumer, TopicPartition

    from ops.services import wait_until

    c = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), client_id="retail-progress")
    try:
        parts: dict[str, set[int] | None] = {}

        def known() -> bool:
            c.topics()  # fetches cluster metadata; partitions_for_topic answers None until it has
            parts.update({t: c.partitions_for_topic(t) for t in topics})
            return all(parts.values())

        try:
            wait_until(known, timeout, "topic partitions", interval=0.2)
        except TimeoutError:
            raise TimeoutError(f"partitions unknown for {[t for t, p in parts.items() if not p]}") from None
        out: dict[str, dict[int, int]] = {}
        for tp, off in c.end_offsets([TopicPartition(t, p) for t, ps in parts.items() for p in ps]).items():
            out.setdefault(tp.topic, {})[tp.partition] = off
        return out
    finally:
        c.close()


def lag(s: Settings, queries: dict[str, list[str]]) -> dict[str, int]:
    """{query: records still to process} for ``{query: [topics it reads]}``."""
    out = {}
    for q, topics in queries.items():
        done = committed_offsets(s.spark_checkpoint_dir, q)
        ends = end_offsets(s, topics)
        out[q] = sum(max(0, end - done.get(t, {}).get(p, 0)) for t, parts in ends.items() for p, end in parts.items())
    return out


def job_queries(s: Settings) -> dict[str, list[str]]:
    """The platform job's queries and the topics each reads (``raw``: every input topic; ``windows``: sales and
    inventory updates)."""
    from contracts import EVENT_TYPES
    from streaming.sinks import INPUT_EVENT_TYPES

    return {"raw": [s.topic(EVENT_TYPES[et]) for et in INPUT_EVENT_TYPES],
            "windows": [s.topic(EVENT_TYPES["sales_transaction"]), s.topic(EVENT_TYPES["inventory_update"])]}
