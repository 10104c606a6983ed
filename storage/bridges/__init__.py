"""Bridges: inspection results from Kafka to the line's reject gates and PLCs.

``linewatch-bridge mqtt`` and ``linewatch-bridge opcua`` each consume ``<prefix>.results`` in their
own consumer group and hand every verdict to a sink:

* :mod:`.verdict` — :class:`Verdict`, the small message a bridge emits (no images), and the
  MQTT topic / OPC UA node naming.
* :mod:`.loop` — the Kafka side shared by both: poll, decode, dead-letter bad results, skip
  frames already delivered, hand the batch to the sink, commit offsets only once the sink
  acknowledged it (at-least-once), health and metrics, SIGTERM.
* :mod:`.mqtt` — MQTT sink (paho-mqtt): QoS 1, retained last verdict per camera.
* :mod:`.opcua` — OPC UA sink (asyncua): a server with one folder of variables per camera.
* :mod:`.settings` — ``LINEWATCH_BRIDGE_*``, ``LINEWATCH_MQTT_*``, ``LINEWATCH_OPCUA_*``.
* :mod:`.cli` — the ``linewatch-bridge`` command.

paho-mqtt and asyncua come with the ``bridges`` extra (``pip install linewatch[bridges]``).
"""
