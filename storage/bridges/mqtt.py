"""MQTT sink: each verdict to ``<root>/<line>/<camera>`` with QoS 1, the newest one retained.

paho-mqtt's network thread keeps the connection (reconnecting with backoff); a batch is
acknowledged when the broker's PUBACK for every verdict came back.  While the broker is
away, :meth:`MqttSink.deliver` waits (the loop commits nothing); QoS 1 messages in flight
when the connection dropped are re-sent by paho after it reconnects.
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
        # message ids whose PUBACK arrived (a message published while the connection was down is
        # queued by paho and sent after the reconnect: its acknowledgement still lands here)
        self._acked: set[int] = set()
        self._acked_lock = threading.Lock()

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
        with self._acked_lock:
            self._acked.add(mid)

    def start(self) -> None:
        # connect_async: a broker that is not up yet is retried by the network thread, not fatal
        self._client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port,
                                   keepalive=self.settings.mqtt_keepalive_s)
        self._client.loop_start()

    def connected(self) -> bool:
        return self._connected.is_set()

    def deliver(self, items: Sequence[Item], stop: threading.Event) -> bool:
        root = self.settings.mqtt_topic_root
        with self._acked_lock:
            self._acked.clear()  # message ids wrap at 65535: no stale acknowledgement may match
        pending = []
        for item in items:
            while not self._connected.wait(0.2):
                if stop.is_set():
                    return False
            v = item.verdict
            pending.append(self._client.publish(mqtt_topic(root, v.line, v.camera_id), v.to_bytes(), qos=1,
                                                retain=item.newest))
        waiting = {info.mid for info in pending}
        while waiting:
            with self._acked_lock:
                done = waiting & self._acked
                self._acked -= done
            waiting -= done
            if waiting:
                if stop.is_set():
                    return False
                time.sleep(0.002)
        return True

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
