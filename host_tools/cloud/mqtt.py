"""A cloud-side MQTT connection (paho-mqtt 2.x) with what every cloud worker needs: TCP_NODELAY
(paho does not set it; without it a round trip costs ~40-90 ms of Nagle delay), a blocking
connect with a clear error, subscriptions restored on reconnect, and publish-and-wait. A payload
over the SPEC message bound on a device topic is dropped (counted in `oversize`) before any handler
decodes it, and never published.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from host_tools.protocol.cbor import MAX_MESSAGE

log = logging.getLogger(__name__)
DEVICE_TOPICS = "v1/dev/"
Handler = Callable[[str, bytes], None]
DeferredHandler = Callable[[str, bytes, Callable[[], None]], None]   # (topic, payload, done)
RawSink = Callable[[str, bytes, bool], None]   # (topic, payload, retain), on paho's network thread


@dataclass(frozen=True)
class BrokerSettings:
    """How a cloud worker reaches the broker: every worker (CloudMQTT, CommandClient, IngestWorker,
    SessionService, TimeServer.connect) takes one of these, so a setting is added in one place.
    client_id None: a random `cloud-...` one per connection (two workers never kick each other)."""
    host: str
    port: int
    username: str
    password: str
    client_id: str | None = None
    ca_file: str | None = None      # TLS with this CA; None: plain TCP
    mqtt5: bool | None = None       # None: the engine's (ENGINES); False: MQTT 3.1.1
    engine: str = "mosquitto"       # which broker: what it speaks and how workers share work on it
    session_s: int = 0              # > 0: a persistent session (needs client_id) that the broker keeps
                                    # this long while we are away, queueing our QoS 1 subscriptions
    servers: tuple[str, ...] = ()   # the engine's own client addresses (NATS: nats://host:port of each
                                    # node), where workers share work on its durable streams

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown broker engine {self.engine!r}: one of {', '.join(ENGINES)}")
        if self.session_s and not self.client_id:
            raise ValueError("a persistent session needs a fixed client_id")

    @property
    def v5(self) -> bool:
        return ENGINES[self.engine][0] if self.mqtt5 is None else self.mqtt5

    def work_share(self, group: str | None, topic_filter: str) -> str:
        """The filter with which N consumers in `group` split `topic_filter`'s messages between them
        (None: every consumer gets every message). An engine without MQTT shared subscriptions is
        refused here: NATS and RabbitMQ grant a `$share/...` filter and then deliver nothing."""
        if group is None:
            return topic_filter
        if not ENGINES[self.engine][1]:
            raise BrokerUnsupported(f"{self.engine} has no MQTT shared subscriptions: run one consumer "
                                    f"without a group, or share the work on the engine's own queues")
        return f"$share/{group}/{topic_filter}"

# engine -> (MQTT 5 by default, shared subscriptions). NATS 2.x and RabbitMQ 3.x speak 3.1.1 only.
ENGINES = {"mosquitto": (True, True), "nats": (False, False), "rabbitmq": (False, False)}


class BrokerUnreachable(ConnectionError):
    pass


class BrokerUnsupported(ValueError):
    """Asked for something the broker engine cannot do (a shared subscription on NATS)."""


class CloudMQTT:
    """One paho-mqtt 2.x client on `broker` (BrokerSettings): subscribe() handlers by filter
    ($share/ filters matched on their filter part), connect() blocking until CONNACK
    (BrokerUnreachable otherwise), publish() waiting for PUBACK. With `sink`, every message goes to
    it as it arrives, unfiltered and with its retain flag, instead of to the handlers: a consumer
    that queues and judges everything itself (ingest); subscribe() then only names the filters."""

    def __init__(self, broker: BrokerSettings, *, sink: RawSink | None = None):
        self.settings = broker
        self.host, self.port = broker.host, broker.port
        self._sink = sink
        self._subs: list[tuple[str, int, Callable[..., None] | None, bool]] = []  # (filter, qos, handler, deferred)
        self._connected = threading.Event()   # CONNACK taken and every subscription SUBACKed
        self._pending: set[int] = set()       # mids of this connection's SUBSCRIBEs not yet SUBACKed
        self._lock = threading.Lock()
        self._error: str | None = None
        self.oversize = 0  # device-topic payloads over MAX_MESSAGE, dropped unread
        self._manual = False  # paho's manual ack: on once a deferred subscription is made
        proto = paho.MQTTv5 if broker.v5 else paho.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=broker.client_id or f"cloud-{uuid.uuid4().hex[:12]}", protocol=proto,
                                  clean_session=None if broker.v5 else not broker.session_s)  # v5: connect()'s clean_start
        self.client.username_pw_set(broker.username, broker.password)
        if broker.ca_file:
            self.client.tls_set(ca_certs=broker.ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_socket_open = self._nodelay
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.1, 2)  # pyright: ignore[reportArgumentType] - paho types it int but sleeps a float: 100 ms first retry

    @staticmethod
    def _nodelay(client, userdata, sock) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if reason.is_failure:
            self._error = str(reason)
            return
        # Ready only once the broker has granted every subscription: a message published between
        # CONNACK and SUBACK would be lost to a clean session, and `ready` would be a lie.
        with self._lock:
            self._pending.clear()
            for topic, qos, _, _ in self._subs:
                rc, mid = client.subscribe(topic, qos)
                if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
                    self._pending.add(mid)
            if not self._pending:
                self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.warning("broker refused a subscription (mid %s): %s", mid, ", ".join(refused))
        with self._lock:
            self._pending.discard(mid)
            if not self._pending:
                self._connected.set()

    def _on_message(self, client, userdata, m) -> None:
        if self._sink is not None:
            self._sink(m.topic, m.payload, m.retain)
            self._ack(m)
            return
        if len(m.payload) > MAX_MESSAGE and m.topic.startswith(DEVICE_TOPICS):
            self.oversize += 1
            log.warning("dropped %d-byte payload on %s (over the %d-byte message bound; %d so far)",
                        len(m.payload), m.topic, MAX_MESSAGE, self.oversize)
            self._ack(m)
            return
        later: Callable[..., None] | None = None
        for flt, _, handler, deferred in self._subs:
            if flt.startswith("$share/"):  # $share/<group>/<filter>: match the filter part
                flt = flt.split("/", 2)[2]
            if handler is not None and paho.topic_matches_sub(flt, m.topic):
                if deferred:
                    later = handler
                else:
                    handler(m.topic, m.payload)
        if later is None:
            self._ack(m)
        else:
            later(m.topic, m.payload, lambda: self._ack(m))

    def _ack(self, m) -> None:
        """PUBACK `m` (only with a deferred subscription, which turns paho's manual ack on). On a
        connection that has since dropped this is a no-op: the broker resends the message to the
        persistent session at the next connect, and its handler sees it again."""
        if self._manual and m.qos:
            self.client.ack(m.mid, m.qos)

    def subscribe(self, topic_filter: str, handler: Handler | DeferredHandler | None = None, qos: int = 1,
                  *, deferred: bool = False) -> None:
        """Subscribe (again at every reconnect); `handler` gets matching messages (none with a sink).
        deferred: handler(topic, payload, done) must call done() once the message is dealt with,
        and only then is it acknowledged to the broker: with a persistent session, a message whose
        handler never finished (the process killed mid-way) is delivered again at the next connect.
        Every other message on this connection is acknowledged once its handlers return."""
        if deferred and not self._manual:
            self._manual = True
            self.client.manual_ack_set(True)
        self._subs.append((topic_filter, qos, handler, deferred))
        if self._connected.is_set():
            self.client.subscribe(topic_filter, qos)

    def connect(self, timeout: float = 10.0) -> "CloudMQTT":
        try:
            if self.settings.v5 and self.settings.session_s:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.settings.session_s
                self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
            else:
                self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise BrokerUnreachable(f"broker {self.host}:{self.port} unreachable: {e}") from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.client.loop_stop()
            raise BrokerUnreachable(f"broker {self.host}:{self.port} did not accept us: {self._error or 'timeout'}")
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                timeout: float | None = 10.0) -> bool:
        """Publish; with qos 1 wait for the broker's PUBACK (True) or the timeout (False). A device-
        topic payload over the message bound is a ValueError: the broker would drop the connection
        for it (its packet bound), and paho would resend it at every reconnect."""
        info = self.enqueue(topic, payload, qos, retain)
        if qos == 0 or timeout is None:
            return True
        return self.wait_published(info, timeout)

    def enqueue(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> paho.MQTTMessageInfo:
        """publish() without the wait, for a caller that must hand messages to paho in an order
        under its own lock and wait outside it (CommandClient: seq order); wait_published() then."""
        if len(payload) > MAX_MESSAGE and topic.startswith(DEVICE_TOPICS):
            raise ValueError(f"{len(payload)}-byte payload on {topic}: over the {MAX_MESSAGE}-byte message bound")
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    @staticmethod
    def wait_published(info: paho.MQTTMessageInfo, timeout: float) -> bool:
        """True once the broker acknowledged `info` (PUBACK), False at the timeout or if paho gave up."""
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
