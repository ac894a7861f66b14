"""Where a cloud consumer takes device messages from, per engine: the one choice between the
Mosquitto implementation (a `$share` subscription, host_tools/cloud/mqtt.py) and the cluster one
(a durable JetStream consumer, host_tools/cloud/jetstream.py). Its own module so that mqtt.py, which
jetstream.py builds on, never imports jetstream.py back.
"""
from __future__ import annotations

from typing import Callable

from host_tools.cloud.jetstream import JetStreamRecords
from host_tools.cloud.mqtt import BrokerSettings, CloudMQTT


def record_feed(broker: BrokerSettings, group: str | None, topic_filter: str, put: Callable[[tuple], None],
                **options):
    """Where a consumer in `group` takes device messages of `topic_filter` from: each arrives as
    put((topic, payload, retain, token)), and the consumer settles each token when done with it
    (feed.settle([(token, "ack" | "term" | "nak")])). Mosquitto: a `$share` subscription (token
    None: QoS 1 is acknowledged on arrival); NATS with a group: a durable JetStream consumer
    shared by the group, acknowledged only when settled (host_tools/cloud/jetstream.py)."""
    if group is not None and broker.engine == "nats":
        return JetStreamRecords(broker, group, topic_filter, put, **options)
    return MqttRecords(broker, group, topic_filter, put)


class MqttRecords:
    """The MQTT implementation of a record feed (record_feed): one CloudMQTT whose
    network thread only queues, a (shared) subscription, acks to devices at QoS 1."""

    def __init__(self, broker: BrokerSettings, group: str | None, topic_filter: str, put: Callable[[tuple], None]):
        self.subscription = broker.work_share(group, topic_filter)
        self.mqtt = CloudMQTT(broker, sink=lambda t, p, r: put((t, p, r, None)))

    def start(self, timeout: float = 10.0) -> "MqttRecords":
        self.mqtt.subscribe(self.subscription, qos=1)
        self.mqtt.connect(timeout)
        return self

    def stop_taking(self) -> None:
        try:
            self.mqtt.client.unsubscribe(self.subscription)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def settle(self, items) -> None:
        """Nothing to do: paho acknowledged each QoS 1 message as it arrived."""

    def park(self, tokens) -> None:
        """Nothing to do: no prefetch window."""

    def publish(self, topic: str, payload: bytes) -> None:
        self.mqtt.publish(topic, payload, qos=1, timeout=None)

    def connected(self) -> bool:
        return self.mqtt.client.is_connected()

    def close(self) -> None:
        self.mqtt.close()
