"""paho-mqtt's own non-threaded client driven by an asyncio loop, for thousands of clients in one
process (host_tools/sim/fleet.py): no thread per client, no select() per client.

paho 2.x is made for an external event loop: it tells us when its socket opens and closes and
when it has something to write (on_socket_*), and we call loop_read / loop_write when the socket
is ready and loop_misc now and then (keepalive pings, a dead broker noticed). The one thing paho
would still do blocking is the TCP connect (socket.create_connection, up to connect_timeout): in
a reconnect storm, with the broker's accept queue full, that would stall every client of the
process. So the TCP connect is made here with the loop (`loop.sock_connect`) and the connected
socket handed to paho (`_Client._create_socket_connection`, paho 2.2's hook for the socket it
opens; paho is pinned in constraints.txt).

    m = AsyncMQTT(loop, "gate-1", password, host, port, keepalive=60,
                  will=(topic, payload, 1, True), on_message=..., on_up=..., on_down=...)
    await m.connect()          # True once CONNACK accepted (subscriptions are the caller's)
    m.publish(topic, payload, qos=1)
    m.drop()                   # cut the TCP connection without DISCONNECT (the will fires)
"""
from __future__ import annotations

import asyncio
import socket
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["AsyncMQTT", "misc_loop"]


class _Client(paho.Client):
    presock: socket.socket | None = None

    def _create_socket_connection(self):  # type: ignore[override]
        s, self.presock = self.presock, None
        if s is None:  # never here in the fleet: connect() always brings its own socket
            return super()._create_socket_connection()
        return s


class AsyncMQTT:
    def __init__(self, loop: asyncio.AbstractEventLoop, client_id: str, password: str, host: str, port: int, *,
                 keepalive: int = 60, will: tuple[str, bytes, int, bool] | None = None,
                 on_message: Callable[[str, bytes], None] | None = None,
                 on_up: Callable[[bool], None] | None = None, on_down: Callable[[], None] | None = None):
        self.loop = loop
        self.host, self.port = host, port
        self.up = False
        self.on_message_cb = on_message
        self.on_up_cb = on_up
        self.on_down_cb = on_down
        c = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                    protocol=paho.MQTTv311)
        c.username_pw_set(client_id, password)
        if will is not None:
            c.will_set(*will)
        c.max_inflight_messages_set(8)
        c.on_socket_open = self._sock_open
        c.on_socket_close = self._sock_close
        c.on_socket_register_write = self._reg_write
        c.on_socket_unregister_write = self._unreg_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self.refused_subs = 0  # SUBACKs with a refusal: each ends the link (firmware/mqtt_client.py does)
        self.q1: set[int] = set()  # QoS 1 publishes the broker has not PUBACKed yet
        self.room: asyncio.Event | None = None  # set at each PUBACK, for a publisher that waits on it
        c.connect_async(host, port, keepalive)
        self.client = c
        self._connack: asyncio.Future | None = None

    # -- paho's socket callbacks (on the loop's thread)
    def _sock_open(self, client, userdata, sock) -> None:
        self.loop.add_reader(sock, self._read)

    def _sock_close(self, client, userdata, sock) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def _reg_write(self, client, userdata, sock) -> None:
        self.loop.add_writer(sock, self._write)

    def _unreg_write(self, client, userdata, sock) -> None:
        self.loop.remove_writer(sock)

    def _read(self) -> None:
        self.client.loop_read(16)

    def _write(self) -> None:
        self.client.loop_write()

    # -- MQTT callbacks
    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        ok = not reason.is_failure
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(ok)
        if ok:
            self.up = True
            if self.on_up_cb:
                self.on_up_cb(bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, client, userdata, flags, reason, props) -> None:
        was = self.up
        self.up = False
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(False)
        if was and self.on_down_cb:
            self.on_down_cb()

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:
        # as the firmware: a link where the device cannot hear its commands or acks (a cluster
        # refusing a QoS 1 subscription while it re-elects after a node is lost) is dropped, and
        # the next one subscribes again
        if any(getattr(r, "is_failure", False) for r in reasons):
            self.refused_subs += 1
            # not from here: paho calls on_subscribe holding its _in_callback_mutex (a Lock, not
            # an RLock), and drop()'s loop_read -> on_disconnect takes it again: the whole worker
            # process (every device in it) hung on that lock for good
            self.loop.call_soon(self.drop)

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        self.q1.discard(mid)
        if self.room is not None:
            self.room.set()

    def _on_message(self, client, userdata, m) -> None:
        if self.on_message_cb:
            self.on_message_cb(m.topic, m.payload)

    # -- API
    async def connect(self, timeout: float = 10.0) -> bool:
        """TCP connect without blocking the loop, then MQTT CONNECT; True once accepted."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # SPEC §1
        try:
            await asyncio.wait_for(self.loop.sock_connect(s, (self.host, self.port)), timeout)
        except (OSError, asyncio.TimeoutError):
            s.close()
            return False
        self._connack = self.loop.create_future()
        self.client.presock = s
        try:
            self.client.reconnect()
        except OSError:
            self.client.presock = None
            s.close()
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(self._connack), timeout)
        except asyncio.TimeoutError:
            self.drop()
            return False

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        self.client.subscribe(topics)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        if not self.up:
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        if qos:
            self.q1.add(info.mid)
        return True

    def misc(self) -> None:
        if self.client.socket() is not None:
            self.client.loop_misc()

    def drop(self) -> None:
        """Close the socket without DISCONNECT: the broker publishes the will."""
        sock = self.client.socket()
        if sock is not None:
            try:
                getattr(sock, "shutdown")(socket.SHUT_RDWR)
            except OSError:
                pass
        # paho notices on its next read (EOF) and calls on_disconnect; make it now
        try:
            self.client.loop_read(1)
        except Exception:  # noqa: BLE001 - the socket is gone either way
            pass

    def disconnect(self) -> None:
        """A clean DISCONNECT (no will)."""
        if self.client.socket() is not None:
            self.client.disconnect()
            self.client.loop_write()


async def misc_loop(clients: Callable[[], list[AsyncMQTT]], every: float = 2.0) -> None:
    """Keepalive for all: each client's loop_misc every `every` seconds (spread over the interval)."""
    while True:
        cs = clients()
        if not cs:
            await asyncio.sleep(every)
            continue
        chunk = max(1, len(cs) // 20)
        for i in range(0, len(cs), chunk):
            for c in cs[i:i + chunk]:
                c.misc()
            await asyncio.sleep(every / 20)
