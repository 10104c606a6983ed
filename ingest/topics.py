"""Explicit topic creation (the brokers run with ``auto.create.topics.enable=false``).

``ensure_topics(settings, partitions)`` creates ``<prefix>.frames``, ``<prefix>.results`` and
``<prefix>.deadletter`` (see :mod:`ingest.kafka_config`) with the given partition count.  It is
idempotent: topics that already exist are left as they are (a different partition count is
reported in the log, never changed: changing it would move keys, i.e. cameras, between
partitions).  The partition count bounds how many detector consumers of one group can work in
parallel on the frames topic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from ingest.kafka_config import KafkaSettings

log = logging.getLogger(__name__)

STREAMS: tuple[str, ...] = ("frames", "results", "deadletter")

# room for headers and record-batch overhead on top of the producer's record limit
_TOPIC_SIZE_HEADROOM = 1024 * 1024


def admin_client(settings: KafkaSettings, **overrides) -> KafkaAdminClient:
    """A kafka-python admin client for ``settings`` (caller closes it)."""
    kwargs = {**settings.client_kwargs(), "request_timeout_ms": 30000, **overrides}
    return KafkaAdminClient(**kwargs)


def topic_configs(settings: KafkaSettings, stream: str | None = None) -> dict[str, str]:
    """Per-topic configs linewatch sets on creation (records up to the producer's limit).

    The frames topic keeps the broker's time of each record (``LogAppendTime``): consumers check a
    frame's capture time against it, so a gateway's clock is never the only witness.
    """
    configs = {"max.message.bytes": str(settings.kafka_max_message_bytes + _TOPIC_SIZE_HEADROOM)}
    if stream == "frames":
        configs["message.timestamp.type"] = "LogAppendTime"
    return configs


def ensure_topics(
    settings: KafkaSettings,
    partitions: int,
    streams: Iterable[str] = STREAMS,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create the topics of ``streams`` under ``settings.topic_prefix`` if missing.

    Returns ``{topic name: partition count}`` as the cluster reports it afterwards.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    streams = list(streams)
    names = [settings.topic(s) for s in streams]  # type: ignore[arg-type]
    stream_of = dict(zip(names, streams))
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            new = {
                n: {
                    "num_partitions": partitions,
                    "replication_factor": replication_factor,
                    "configs": topic_configs(settings, stream_of[n]),
                }
                for n in missing
            }
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process: fine
            log.info("created topics %s with %d partitions", missing, partitions)
        counts = _wait_for_topics(admin, names, timeout_s)
    finally:
        admin.close()
    for name, count in counts.items():
        if count != partitions:
            log.warning("topic %s exists with %d partitions (asked for %d); left unchanged", name, count, partitions)
    return counts


def _wait_for_topics(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> dict[str, int]:
    """Wait until every topic has a leader for every partition; return partition counts."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            described = {t["name"]: t for t in admin.describe_topics(names)}
            ready = {}
            for name in names:
                info = described.get(name)
                parts = (info or {}).get("partitions") or []
                if info and info.get("error_code", 0) == 0 and parts and all(
                    p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0 for p in parts
                ):
                    ready[name] = len(parts)
            if len(ready) == len(names):
                return ready
            last = f"not ready: {sorted(set(names) - set(ready))}"
        except KafkaError as exc:
            last = repr(exc)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not ready after {timeout_s:.0f}s ({last})")
        time.sleep(0.1)


def delete_topics(settings: KafkaSettings, streams: Iterable[str] = STREAMS) -> None:
    """Delete the topics of ``streams`` under ``settings.topic_prefix`` (missing ones are ignored)."""
    names = [settings.topic(s) for s in streams]  # type: ignore[arg-type]
    admin = admin_client(settings)
    try:
        present = [n for n in names if n in set(admin.list_topics())]
        if present:
            admin.delete_topics(present)
    finally:
        admin.close()
