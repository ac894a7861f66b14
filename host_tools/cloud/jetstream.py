"""The cluster implementation of a record feed: device records from a replicated JetStream stream,
shared by competing workers on one durable pull consumer (nats-py), acked after the commit.

    feed = record_feed(broker, "ingest", "v1/dev/+/up/rec", put)   # record_feed.py; engine "nats", servers set
    feed.start(); ...; feed.settle([(token, "ack"), ...]); feed.stop_taking(); feed.close()

Devices keep publishing MQTT 3.1.1 to the cluster's MQTT listeners; NATS maps the topic
`v1/dev/<id>/up/rec` to the subject `v1.dev.<id>.up.rec`, and the stream EDGEPAY_UP (file
storage, one replica on each of the three nodes, bounded by bytes and age, work-queue retention:
a message is gone once acked) captures every such subject. Each worker pulls batches from the same
durable consumer (explicit ack, `ack_wait`, `max_deliver`, `max_ack_pending`) and hands each
message to the worker's queue as (topic, payload, retain=False, token). The worker settles each
token once it is done with it:
- "ack": committed (or a duplicate, or quarantined in the ledger) - only after the ledger commit;
- "term": a poison message (bad signature, unknown device, garbage, oversize, a conflict): never
  redelivered, counted, and no other message waits for it;
- "nak": the batch failed (the ledger was down, say), or the record does not link yet (its
  predecessor is with another worker) and was held past ingest's hold_ms: delivered again
  (0.2 s later, to whichever worker pulls), up to max_deliver times.
A worker that dies never settles its tokens: after `ack_wait` the consumer redelivers them to the
others. A message the stream has but no worker acks is never lost; one the device published while
the stream had no leader (a node kill) may be: the device's PUBACK comes from the MQTT layer, not
from this stream. The device still holds the record until the signed ingest ack covers it and
sends it again, so the ledger loses nothing; the stream only spares it the wait.

Acks to devices go out on the same cluster. `acks="nats"` (default): a core NATS publish on the
device's dn subject over this feed's own connection, which fails over to any node; the cluster
delivers it to the device's MQTT subscription if the device is connected (at QoS 0: an offline
device misses it, resends the record at its return and is acked again, as a duplicate).
`acks="mqtt"`: an MQTT 3.1.1 connection at QoS 1 to BrokerSettings.host:port, queued in an offline
persistent session - but bound to that one node, and less robust to a node kill: in one run of
three a device stayed unacked 45 s after the kill although the workers kept sending its acks
(presumably QoS 1 publishes whose JetStream store failed as the node died, never PUBACKed, holding
paho's in-flight window); with core NATS acks six runs of six recovered (docs/cluster.md).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any, Callable

from host_tools.cloud.mqtt import BrokerSettings, BrokerUnreachable, BrokerUnsupported, CloudMQTT
from host_tools.protocol.cbor import MAX_MESSAGE

log = logging.getLogger("edgepay.jetstream")

STREAM = "EDGEPAY_UP"
Put = Callable[[tuple], None]


def subject_of(topic_filter: str) -> str:
    """An MQTT topic (filter) as the NATS subject the cluster maps it to."""
    return ".".join({"+": "*", "#": ">"}.get(p, p) for p in topic_filter.split("/"))


def topic_of(subject: str) -> str:
    return subject.replace(".", "/")


class JetStreamRecords:
    """One worker's share of a JetStream stream (see the module doc). An asyncio loop on a thread of
    its own runs the nats-py connection; put() is called on it, settle()/publish() from any thread."""

    def __init__(self, broker: BrokerSettings, group: str, topic_filter: str, put: Put, *,
                 stream: str = STREAM, replicas: int = 3, ack_wait_s: float = 30.0, max_deliver: int = 20,
                 max_ack_pending: int = 20000, fetch_max: int = 500, backlog_max: int = 500,
                 max_bytes: int = 256 << 20, max_age_s: float = 7 * 86400.0, acks: str = "nats"):
        if not broker.servers:
            raise BrokerUnsupported("nats has no MQTT shared subscriptions: a group shares a JetStream consumer, "
                                    "for which BrokerSettings.servers must list the cluster's NATS client "
                                    "addresses (nats://host:port)")
        if acks not in ("mqtt", "nats"):
            raise ValueError(f"acks must be 'mqtt' or 'nats', not {acks!r}")
        self.broker, self.group, self.stream = broker, group, stream
        self.filter = subject_of(topic_filter)
        self.subscription = f"jetstream:{stream}/{group}:{self.filter}"
        self.put = put
        self.replicas, self.ack_wait_s, self.max_deliver = replicas, ack_wait_s, max_deliver
        self.max_ack_pending, self.fetch_max, self.backlog_max = max_ack_pending, fetch_max, backlog_max
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.acks = acks
        self.mqtt: CloudMQTT | None = CloudMQTT(broker) if acks == "mqtt" else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"jetstream-{group}", daemon=True)
        self._nc: Any = None
        self._psub: Any = None
        self._fetcher: asyncio.Task | None = None
        self._taking = threading.Event()
        self._outstanding = 0          # handed to put(), not yet settled nor parked: the prefetch window
        self._parked: set[int] = set()  # ids of messages held by the worker (out of the window)
        self._lock = threading.Lock()
        self.stats: collections.Counter = collections.Counter()

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "JetStreamRecords":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._connect(timeout), self._loop)
        try:
            fut.result(timeout + 5)
        except Exception as e:  # noqa: BLE001 - any failure to set up is "cannot take records"
            self._shutdown_loop()
            raise BrokerUnreachable(f"JetStream on {', '.join(self.broker.servers)}: {type(e).__name__}: {e}") from None
        if self.mqtt is not None:
            self.mqtt.connect(timeout)
        return self

    async def _connect(self, timeout: float) -> None:
        import nats
        from nats import errors as nats_errors
        from nats.js import api
        from nats.js import errors as js_errors

        async def on_error(e: Exception) -> None:
            log.warning("NATS connection: %s: %s", type(e).__name__, e)
        self._nc = await nats.connect(
            list(self.broker.servers), user=self.broker.username, password=self.broker.password,
            name=f"edgepay-{self.group}", connect_timeout=min(2.0, timeout), reconnect_time_wait=0.2,
            max_reconnect_attempts=-1, error_cb=on_error, allow_reconnect=True)
        js = self._nc.jetstream(timeout=max(2.0, timeout / 2))
        cfg = api.StreamConfig(
            name=self.stream, subjects=[self.filter], retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE, num_replicas=self.replicas, max_bytes=self.max_bytes,
            max_age=self.max_age_s, max_msg_size=4 * MAX_MESSAGE, discard=api.DiscardPolicy.NEW)
        deadline = time.monotonic() + timeout
        while True:  # just after a node start the meta leader may still be settling
            try:
                try:
                    await js.stream_info(self.stream)
                    await js.update_stream(cfg)
                except js_errors.NotFoundError:
                    await js.add_stream(cfg)
                cons = api.ConsumerConfig(
                    durable_name=self.group, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
                    max_deliver=self.max_deliver, max_ack_pending=self.max_ack_pending,
                    deliver_policy=api.DeliverPolicy.ALL, filter_subject=self.filter)
                self._psub = await js.pull_subscribe(self.filter, durable=self.group, stream=self.stream, config=cons)
                break
            except (nats_errors.TimeoutError, js_errors.ServiceUnavailableError, js_errors.ServerError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self._taking.set()
        self._fetcher = asyncio.ensure_future(self._fetch_loop())

    async def _fetch_loop(self) -> None:
        from nats import errors as nats_errors
        while self._taking.is_set():
            with self._lock:
                room = self.backlog_max - self._outstanding
            if room <= 0:   # back-pressure: the stream holds the backlog, not our memory
                await asyncio.sleep(0.005)
                continue
            try:
                msgs = await self._psub.fetch(min(self.fetch_max, room), timeout=0.25)
            except (nats_errors.TimeoutError, asyncio.TimeoutError):
                continue
            except asyncio.CancelledError:
                return
            except Exception as e:  # noqa: BLE001 - a node kill, a leader election: pull again
                with self._lock:
                    self.stats["fetch_errors"] += 1
                log.info("JetStream fetch: %s: %s", type(e).__name__, e)
                await asyncio.sleep(0.1)
                continue
            for m in msgs:
                if not self._taking.is_set():  # unsettled: redelivered to another worker after ack_wait
                    break
                with self._lock:
                    self._outstanding += 1
                    self.stats["received"] += 1
                    if m.metadata.num_delivered > 1:
                        self.stats["redelivered"] += 1
                self.put((topic_of(m.subject), m.data, False, m))

    def stop_taking(self) -> None:
        """Pull no more: what was taken is still settled; the rest stays in the stream."""
        self._taking.clear()

    def close(self, timeout: float = 5.0) -> None:
        self._taking.clear()
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout)
            except Exception:  # noqa: BLE001 - best effort: unsettled messages are redelivered
                log.warning("JetStream close did not finish cleanly")
        self._shutdown_loop()
        if self.mqtt is not None:
            self.mqtt.close()

    async def _close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.cancel()
            try:
                await self._fetcher
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.flush(2)  # the acks already written go out before we leave
            except Exception:  # noqa: BLE001
                pass
            await self._nc.close()

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def counts(self) -> dict[str, int]:
        """received, redelivered (delivered before, to us or a worker that died), acked, terminated, naked."""
        with self._lock:
            return dict(self.stats)

    def connected(self) -> bool:
        up = self._nc is not None and self._nc.is_connected
        return up and (self.mqtt is None or self.mqtt.client.is_connected())

    # ---- settling -----------------------------------------------------------------------
    def settle(self, items: list[tuple[Any, str]]) -> None:
        """(token, "ack" | "term" | "nak") for messages this feed put: done on the NATS loop."""
        items = [(t, v) for t, v in items if t is not None]
        if not items:
            return
        with self._lock:
            for t, _ in items:
                if id(t) in self._parked:
                    self._parked.discard(id(t))
                else:
                    self._outstanding = max(0, self._outstanding - 1)
            for _, v in items:
                self.stats[{"ack": "acked", "term": "terminated", "nak": "naked"}[v]] += 1
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._settle(items)))

    def park(self, tokens: list) -> None:
        """Messages the worker holds (a record waiting for its predecessor) leave the prefetch
        window: the predecessor may be behind them in the stream. Still unsettled: a dead worker's
        are redelivered. Bounded by ingest's hold_max per device."""
        with self._lock:
            for t in tokens:
                if t is not None and id(t) not in self._parked:
                    self._parked.add(id(t))
                    self._outstanding = max(0, self._outstanding - 1)

    async def _settle(self, items: list[tuple[Any, str]]) -> None:
        for m, v in items:
            try:
                if v == "ack":
                    await m.ack()
                elif v == "term":
                    await m.term()
                else:
                    await m.nak(delay=0.2)
            except Exception as e:  # noqa: BLE001 - a lost ack is a redelivery, deduplicated by the ledger
                with self._lock:
                    self.stats["settle_errors"] += 1
                log.info("JetStream %s failed: %s", v, e)

    # ---- to devices ---------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes) -> None:
        """An ack or a command to a device, over the cluster (see the module doc)."""
        if len(payload) > MAX_MESSAGE:
            raise ValueError(f"{len(payload)}-byte payload on {topic}: over the {MAX_MESSAGE}-byte message bound")
        if self.mqtt is not None:
            self.mqtt.publish(topic, payload, qos=1, timeout=None)
            return
        subject = subject_of(topic)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._nc.publish(subject, payload)))
