"""The development broker itself: topics, produce, consumer groups with commit and resume."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer

from ingest.topics import admin_client, ensure_topics


def _consume(settings, topic, group, limit, timeout_ms=10000):
    consumer = KafkaConsumer(
        topic,
        **settings.client_kwargs(),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=timeout_ms,
    )
    got = []
    try:
        for message in consumer:
            got.append(message)
            if len(got) >= limit:
                break
        consumer.commit()
    finally:
        consumer.close()
    return got


def test_ensure_topics_is_idempotent_with_explicit_partitions(kafka_test_settings):
    settings = kafka_test_settings
    first = ensure_topics(settings, partitions=3)
    again = ensure_topics(settings, partitions=3)
    assert first == again == {settings.topic(s): 3 for s in ("frames", "results", "deadletter")}
    admin = admin_client(settings)
    try:
        assert set(first) <= set(admin.list_topics())
    finally:
        admin.close()


def test_consumer_group_commits_and_resumes(kafka_test_settings):
    settings = kafka_test_settings
    ensure_topics(settings, partitions=3, streams=("frames",))
    topic = settings.topic("frames")
    producer = KafkaProducer(**settings.client_kwargs(), acks="all", enable_idempotence=True)
    for i in range(30):
        producer.send(topic, key=f"cam{i % 3}".encode(), value=str(i).encode())
    producer.flush()
    producer.close()

    first = _consume(settings, topic, "g1", limit=12)
    rest = _consume(settings, topic, "g1", limit=100, timeout_ms=4000)
    values = [m.value for m in first + rest]
    assert len(first) == 12
    assert sorted(values, key=int) == [str(i).encode() for i in range(30)]
    # per key (camera), order is kept
    for cam in ("cam0", "cam1", "cam2"):
        seq = [int(m.value) for m in first + rest if m.key == cam.encode()]
        assert seq == sorted(seq)
