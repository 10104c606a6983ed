"""``linewatch-detector serve``: the detector service between the frames and the results topics.

Modules:

* :mod:`.settings` — :class:`ServiceSettings` (``LINEWATCH_DETECTOR_*``) next to the Kafka
  settings of :mod:`ingest.kafka_config` (``LINEWATCH_KAFKA_*``, ``LINEWATCH_TOPIC_PREFIX``).
* :mod:`.routing` — which checkpoint scores which camera/product (routing file + default model)
  and the :class:`ModelHolder` that swaps a new set of models in *between* batches.
* :mod:`.imaging` — frame checks and decoding, heatmap quantisation, frame attachment, sampling.
* :mod:`.service` — :class:`DetectorService`: consumer group, micro-batching, inference, results,
  dead letters, at-least-once commits, SIGTERM handling.
* :mod:`.observability` — Prometheus metrics, ``/healthz`` ``/readyz`` ``/metrics`` HTTP server,
  structured (logfmt / JSON) logs.
* :mod:`.cli` — the ``serve`` subcommand, registered in ``detector.cli`` through its plugin list.

Nothing here imports torch at module level, so ``linewatch-detector --help`` stays fast.
"""
