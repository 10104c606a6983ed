"""Fuzzing the running services on the real broker: nothing a camera (or a rogue producer) sends stops them.

Hypothesis generates frame messages (``<prefix>.frames``, scored by the real ``linewatch-detector
serve``) and result messages (``<prefix>.results``, stored by the real ``linewatch-storage writer``)
from their schemas, and breaks them (see :mod:`.fuzz_cases`).  Each hypothesis example is one message,
sent without waiting; then the test waits until every case is accounted for (so a thousand cases
cost a few Kafka round trips, not a thousand):

* a case built valid is stored (one row; a valid frame reaches the database through the detector
  and the writer, so what the detector accepts storage must store);
* a case built broken is dead-lettered exactly once, with a reason and an expected ``lw-dlq-code``;
* a corrupted payload may go either way, but exactly one of them;
* both services are still running, and both consumer groups committed up to the end of their
  partitions (no stuck partition).

``LINEWATCH_FUZZ_CASES`` cases (default 1100) in CI.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from itertools import count

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .fuzz_cases import MAX_FRAME_BYTES, MAX_FRAME_PIXELS, Case, assign_ids, frame_cases, result_cases
from .harness import Pipeline, wait_for

pytestmark = pytest.mark.kafka

CASES = int(os.environ.get("LINEWATCH_FUZZ_CASES", "1100"))
NOW = datetime.now(timezone.utc)


class Tally:
    """What became of every published case: rows in the database, records on the dead-letter topic."""

    def __init__(self, pipeline: Pipeline):
        from kafka import KafkaConsumer, TopicPartition

        self.pipeline = pipeline
        topic = pipeline.settings.topic("deadletter")
        self.consumer = KafkaConsumer(**pipeline.settings.client_kwargs(), group_id=None, enable_auto_commit=False,
                                      fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=32 * 1024 * 1024)
        tps = [TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.dead: dict[str, list[dict[str, str]]] = defaultdict(list)  # case id -> dead-letter headers
        self.untracked: list[dict[str, str]] = []  # dead letters of messages the test did not publish

    def poll(self) -> None:
        for recs in self.consumer.poll(timeout_ms=200).values():
            for r in recs:
                h = {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers}
                (self.dead[h["x-fuzz"]] if "x-fuzz" in h else self.untracked).append(h)

    def rows(self) -> Counter:
        from sqlalchemy import select

        from storage.models import Inspection

        with self.pipeline.engine.connect() as c:
            return Counter(c.execute(select(Inspection.frame_id)).scalars())


def _check(cases: list[Case], tally: Tally) -> list[str]:
    """What is wrong with the fate of ``cases`` (empty: every case accounted for as expected)."""
    rows = tally.rows()
    problems = []
    for c in cases:
        stored, dead = rows.get(c.frame_id, 0), tally.dead.get(c.case_id, [])
        fate = f"{c.stream} {c.kind!r}: stored {stored}x, dead-lettered {len(dead)}x " \
               f"{[(d.get('lw-dlq-code'), d.get('lw-dlq-reason', '')[:120]) for d in dead]}"
        if stored + len(dead) != 1:
            problems.append(f"not exactly once: {fate}")
        elif c.expect == "stored" and not stored:
            problems.append(f"a valid message was not stored: {fate}")
        elif c.expect == "dead" and not dead:
            problems.append(f"a broken message was stored: {fate}")
        elif dead and (not dead[0].get("lw-dlq-reason")
                       or c.expect == "dead" and dead[0].get("lw-dlq-code") not in c.codes):
            problems.append(f"dead letter without a reason or the expected code {sorted(c.codes)}: {fate}")
    return problems


@pytest.fixture(scope="module")
def fuzz_line(kafka_settings, pipeline_checkpoint, tmp_path_factory):
    from kafka import KafkaProducer

    from tests.storage.fixtures import make_test_database

    tmp = tmp_path_factory.mktemp("fuzz")
    settings = kafka_settings.model_copy(update={"topic_prefix": f"lwtest-fuzz-{uuid.uuid4().hex[:8]}"})
    db, cleanup = make_test_database("sqlite", tmp)
    pipeline = Pipeline(settings, db.env, db.url, tmp / "logs", pipeline_checkpoint, partitions=2)
    pipeline.env.update(LINEWATCH_DETECTOR_MAX_FRAME_BYTES=str(MAX_FRAME_BYTES),
                        LINEWATCH_DETECTOR_MAX_FRAME_PIXELS=str(MAX_FRAME_PIXELS),
                        LINEWATCH_DETECTOR_MAX_BATCH_PIXELS=str(MAX_FRAME_PIXELS),
                        LINEWATCH_DETECTOR_SAMPLE_RATE="0.1",
                        OMP_NUM_THREADS="1")  # one inference thread: the 2-core CI box runs the writer too
    detector = pipeline.start_detector("--max-batch", "16", "--max-wait-ms", "50")
    writer = pipeline.start_writer("--batch-size", "200", "--max-wait-ms", "100")
    producer = KafkaProducer(**settings.client_kwargs(), acks="all", linger_ms=20,
                             max_request_size=8 * 1024 * 1024)
    tally = Tally(pipeline)
    try:
        yield pipeline, producer, tally, (detector, writer)
    finally:
        producer.close(10)
        tally.consumer.close()
        pipeline.close()
        cleanup()


_ids = count()
_run = uuid.uuid4().hex[:6]


def test_no_message_stops_the_services(fuzz_line):
    pipeline, producer, tally, procs = fuzz_line
    cases: list[Case] = []

    # every example is one message, sent without waiting; all of them are checked together below, so the
    # whole run costs a few Kafka round trips (a failing case is reported by what was broken, not shrunk)
    @settings(max_examples=CASES, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(frame_cases(NOW), result_cases(NOW)))
    def publish_one(case: Case) -> None:
        case = assign_ids(case, f"{_run}-{next(_ids)}")
        cases.append(case)
        key = dict(case.headers).get("lw-camera", b"fuzz") if case.stream == "frames" else b"fuzz"
        producer.send(pipeline.settings.topic(case.stream), key=key, value=case.value, headers=case.headers)

    t0 = time.monotonic()
    publish_one()
    producer.flush(60)
    t1 = time.monotonic()

    def accounted() -> bool:
        tally.poll()
        rows = tally.rows()
        return all(rows.get(c.frame_id, 0) + len(tally.dead.get(c.case_id, [])) >= 1 for c in cases)

    try:
        wait_for(accounted, 300, f"{len(cases)} cases stored or dead-lettered", list(procs), pipeline.logs,
                 interval=1.0)
        time.sleep(1.0)  # a second copy of anything would arrive now
        tally.poll()
        problems = _check(cases, tally)
        assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:25])
        assert not tally.untracked, tally.untracked[:5]  # e.g. a detector result the writer refused
        wait_for(lambda: pipeline.caught_up(pipeline.detector_group, "frames")
                 and pipeline.caught_up(pipeline.writer_group, "results"), 60,
                 "both groups committed to the end", list(procs), pipeline.logs)
    except AssertionError:
        print(pipeline.logs(tail=4000))
        raise
    kinds = Counter(f"{c.stream} {c.expect}" for c in cases)
    print(f"fuzz: {len(cases)} cases, generated and sent in {t1 - t0:.0f} s, all accounted for "
          f"{time.monotonic() - t1:.0f} s later: {dict(sorted(kinds.items()))}")
    assert len(cases) >= CASES
    assert all(p.poll() is None for p in procs)
