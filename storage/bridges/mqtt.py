"""MQTT sink: each verdict to ``<root>/<line>/<camera>`` with QoS 1, the newest one retained.

paho-mqtt's network thread keeps the connection (reconnecting with backoff); a batch is
acknowledged when the broker's PUBACK for every verdict came back.  While the broker is
away, :meth:`MqttSink.deliver` returns what was acknowledged and the loop redoes the batch
later (nothing committed); QoS 1 messages in flight when the connection dropped are re-sent
by paho after it reconnects, and a redone batch waits for them instead of publishing again.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Sequence

from .loop import Item
from .settings import BridgeSettings
from .verdict import mqtt_topic

log = logging.getLogger("linewatch.bridge.mqtt")


class MqttSink:
    kind = "mqtt"

    def __init__(self, settings: BridgeSettings) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the MQTT bridge needs paho-mqtt: pip install 'linewatch[bridges]'") from exc
        self.settings = settings
        self.target = f"mqtt://{settings.mqtt_host}:{settings.mqtt_port}/{settings.mqtt_topic_root}/#"
        # a persistent session: the broker keeps unacknowledged QoS 1 state across reconnects
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.mqtt_client_id,
                                   clean_session=False)
        if settings.mqtt_username:
            self._client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        if settings.mqtt_cafile:
            self._client.tls_set(ca_certs=settings.mqtt_cafile, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._connected = threading.Event()
        # message id -> frame id until the PUBACK arrives; then the frame id moves to _acked until a
        # deliver() collects it.  paho keeps unacknowledged QoS 1 messages and sends them again after
        # a reconnect, so a verdict still in flight is waited for, never published a second time.
        self._in_flight: dict[int, str] = {}
        self._acked_mids: set[int] = set()
        self._acked: set[str] = set()
        self._lock = threading.Lock()
        self._ack_arrived = threading.Event()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        log.info("connected to the MQTT broker %s:%d", self.settings.mqtt_host, self.settings.mqtt_port)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            log.warning("MQTT broker connection lost (%s); reconnecting", reason_code)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho calls this holding its own message lock, which publish() takes too: only note the id here
        # (it may even arrive before deliver() registered the message)
        with self._lock:
            self._acked_mids.add(mid)
        self._ack_arrived.set()

    def start(self) -> None:
        # connect_async: a broker that is not up yet is retried by the network thread, not fatal
        self._client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port,
                                   keepalive=self.settings.mqtt_keepalive_s)
        self._client.loop_start()

    def connected(self) -> bool:
        return self._connected.is_set()

    def deliver(self, items: Sequence[Item], timeout_s: float) -> set[str]:
        root = self.settings.mqtt_topic_root
        deadline = time.monotonic() + timeout_s
        wanted = {item.verdict.frame_id for item in items}
        if not self._connected.wait(timeout_s):
            return self._collect(wanted)
        with self._lock:
            in_flight = set(self._in_flight.values()) | self._acked
        for item in items:
            v = item.verdict
            if v.frame_id in in_flight:
                continue
            info = self._client.publish(mqtt_topic(root, v.line, v.camera_id), v.to_bytes(), qos=1,
                                        retain=item.newest)
            with self._lock:
                self._in_flight[info.mid] = v.frame_id
        while time.monotonic() < deadline:
            self._ack_arrived.clear()
            with self._lock:
                self._settle()
                if wanted <= self._acked:
                    break
            self._ack_arrived.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        return self._collect(wanted)

    def _settle(self) -> None:
        """Acknowledged message ids -> acknowledged frame ids (call with the lock held)."""
        for mid in self._acked_mids & self._in_flight.keys():
            self._acked.add(self._in_flight.pop(mid))
            self._acked_mids.discard(mid)

    def _collect(self, wanted: set[str]) -> set[str]:
        with self._lock:
            self._settle()
            done = wanted & self._acked
            self._acked -= done
        return done

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
