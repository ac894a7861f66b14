# MQTT 3.1.1 client for MicroPython asyncio: one supervisor task owns the connection.
#
#   c = MQTTClient({"client_id": "gate-001", "user": "gate-001", "password": "...",
#                   "host": "10.0.0.2", "port": 1883, "keepalive": 30})
#   c.subscribe("v1/dev/gate-001/dn/#", 1, handler)   # handler(topic, payload, retain, dup)
#   c.start()
#   await c.publish("v1/dev/gate-001/up/rec", data, qos=1)
#
# With cfg "brokers" ([[host, port], ...] instead of host and port) the addresses are tried in turn:
# a failed connect moves to the next at once, the backoff comes once all have failed, and a lost
# connection is retried on the same broker first (it holds the session), then on the next.
#
# Per connection three tasks run: reader (parses, dispatches, PUBACKs after the handler),
# writer (the only task that writes the socket) and ticker (keepalive, dead-peer detection,
# QoS1 retransmit timer). Any exception in any of them (MemoryError included) ends the
# connection; the supervisor reports it, backs off (exponential, full jitter) and reconnects.
# Unacknowledged QoS1 messages are resent after reconnect with DUP and the same packet id.
import asyncio
import gc
import random
import time
from errno import ECONNRESET, ETIMEDOUT  # errno, random: in every port (unix, esp32, rp2)

import mqtt_frame as F
import hal


def _rand(n):
    return random.getrandbits(30) % n if n > 0 else 0


ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff

# Settings with a default. Optional ones default to None (read with .get, never stored: each
# entry completed into the caller's dict is RAM for good): client_id (required), user,
# password, clean_session, will_topic, will_msg; tls (True to use TLS), ca (CA file, PEM or DER:
# verify the broker's certificate), cadata (CA bytes instead), server_hostname (checked against
# the cert; default: host), cert and certkey (the device's certificate and key, DER files:
# mutual TLS), ca2 (a second CA's DER file trusted beside ca if it exists: a CA rotation).
DEFAULTS = {
    "host": "127.0.0.1", "port": 1883,
    "keepalive": 60,            # s; PINGREQ after keepalive/2 of silence, dead at 1.25x
    "will_qos": 1, "will_retain": True,
    "max_inflight": 8,          # QoS1 window
    "max_packet": 4096,         # largest packet received (bytes after the fixed header)
    "max_qos0": 8,              # QoS0 messages queued while a write is pending
    "max_held": 16,             # received QoS1 messages held unacknowledged (deferred handlers)
    "connect_timeout": 10000,   # ms: TCP + TLS + CONNECT/CONNACK
    "ack_timeout": 20000,       # ms: resend an unacknowledged QoS1 (DUP) on the same connection; 0 = only after reconnect
    "backoff_min": 500, "backoff_max": 60000,  # ms
}


def _put(st, head, payload, ctrl):
    # A small PUBLISH goes out in one write with the queued PUBACKs behind it: one segment, one
    # broker wake (~0.1 ms a command round trip on loopback), the result ahead of the PUBACK.
    # A big payload is not copied: two writes, the PUBACKs in the next.
    if len(payload) <= 512:
        head.extend(payload)
        while ctrl:
            head.extend(ctrl.pop(0))
        st.write(head)
    else:
        st.write(head)
        st.write(payload)


class _Msg:
    # one QoS1 message in the window
    def __init__(self, pid, topic, payload, retain):
        self.pid = pid
        self.topic = topic
        self.payload = payload
        self.retain = retain
        self.sent = 0       # ticks of the last send
        self.state = 0      # 0 to send, 1 sent and awaiting PUBACK, 2 acked, 3 abandoned (stop)
        self.ev = None


class MQTTClient:
    def __init__(self, config):
        cfg = config  # completed in place, not copied: the caller's dict is ours (RAM)
        for k in DEFAULTS:
            if k not in cfg:
                cfg[k] = DEFAULTS[k]
        if not cfg.get("client_id"):
            raise ValueError("client_id")
        self.cfg = cfg
        # the broker addresses, tried in turn: config.py checked "brokers" (1..4 [host, port])
        self._addrs = cfg.get("brokers") or ((cfg["host"], cfg["port"]),)
        self._ai = 0             # the address connected to, or tried next
        self._ka = int(cfg["keepalive"])
        self._max = int(cfg["max_packet"])
        self._rx = bytearray(self._max)  # the one receive buffer, allocated once
        self._rxmv = memoryview(self._rx)
        self._hdr = bytearray(1)
        self._hdrmv = memoryview(self._hdr)
        self._subs = {}          # filter -> [qos, handler, deferred]
        self._held = []          # packet ids received and not yet acknowledged (deferred handlers)
        self._resync = False     # messages were left unacknowledged: reconnect once all is done
        self.gen = 0             # connection number: a held packet id means nothing on another
        self._window = []        # _Msg, in send order
        self._ctrl = []          # control packets to send (PUBACK, PINGREQ, SUBSCRIBE)
        self._q0 = []            # (topic, payload, retain)
        self._pid = 0
        self._kick = asyncio.Event()   # the writer has something to do
        self._wrote = asyncio.Event()  # the writer handed a batch to the socket
        self._writing = False
        self._room = asyncio.Event()   # a window slot was freed
        self._down = asyncio.Event()   # the current connection ended
        self._up = False
        self._stopping = False
        self._task = None
        self._tasks = ()
        self._stream = None
        self._sock = None        # the TCP socket
        self._tls = None         # the TLS socket wrapping it
        self._reason = None
        self._busy = False
        self._last_rx = self._last_tx = 0
        self._ping_out = False
        self._sub_pids = {}      # pid -> [filters]
        self._state_cbs = []
        self._on_error = None
        self._ssl_ctx = None
        self.before_tls = None
        self.stats = {"connects": 0, "reconnects": 0, "retransmits": 0, "errors": 0,
                      "dropped_qos0": 0, "oversize": 0, "handler_errors": 0, "refused": 0, "deferred": 0}
        self.session_present = False

    # ---- public API ---------------------------------------------------------------------
    def on_state(self, cb):
        """cb(up: bool) on every connect / disconnect."""
        self._state_cbs.append(cb)

    def on_error(self, cb):
        """cb(where: str, exc) for every error the client survives."""
        self._on_error = cb

    @property
    def up(self):
        return self._up

    def start(self):
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._supervise())
        return self._task

    async def stop(self, disconnect=True, last=None):
        """Send DISCONNECT (no will), close, end the supervisor. Waiting publishers get an
        MQTTError; their messages are forgotten (persist them above this layer). last: (topic,
        payload), a retained QoS0 message written just before the DISCONNECT by this call itself,
        not the writer task (a Ctrl-C that lands inside a task ends that task)."""
        self._stopping = True
        if disconnect and self._up and self._stream is not None:
            try:
                if last:
                    h = F.publish_header(last[0], len(last[1]), 0, True)
                    h.extend(last[1])
                    self._stream.write(h)
                self._stream.write(F.DISCONNECT_PKT)
                await asyncio.wait_for_ms(self._stream.drain(), 1000)
            except Exception:
                pass
        t = self._task
        self._task = None
        if t is not None:
            t.cancel()
            try:
                await t
            except BaseException:
                pass
        self._teardown()
        for m in self._window:
            m.state = 3
            if m.ev:
                m.ev.set()
        self._window = []
        self._room.set()

    def subscribe(self, topic, qos=1, handler=None, deferred=False):
        """Register handler(topic, payload, retain, dup) (may be async) for a filter.
        Subscribed now if connected and again after every reconnect.

        deferred=True: handler(topic, payload, retain, dup, pid) only takes the message; the caller
        PUBACKs it later with ack(pid, gen) once it is done with it. Until then the broker counts
        it in flight and stops sending at its own in-flight limit: that is the back-pressure
        (MQTT 3.1.1 has no receive maximum, and Mosquitto sends its whole queue at once). Past
        max_held held, a message is read past and left unacknowledged; once everything held is
        done the client disconnects cleanly and reconnects, and the broker delivers again what was
        left (MQTT 3.1.1 §4.4). Memory stays bounded by max_held whatever the burst."""
        self._subs[topic] = [qos, handler, deferred]
        if self._up:
            self._send_subscribe([topic])

    async def publish(self, topic, payload, qos=1, retain=False, wait=True):
        """QoS0: sent if connected, else dropped; returns True if handed to the socket path.
        QoS1: waits for room in the window, then (wait=True) returns the packet id once
        PUBACKed - across reconnects, resending with DUP and the same id. wait=False returns
        the packet id as soon as the message is in the window."""
        if isinstance(payload, str):
            payload = payload.encode()
        if qos == 0:
            if not self._up or len(self._q0) >= self.cfg["max_qos0"]:
                self.stats["dropped_qos0"] += 1
                return False
            self._q0.append((topic, payload, retain))
            self._kick.set()
            return True
        if qos != 1:
            raise ValueError("qos")
        F.publish_header(topic, 0, 1, retain, False, 1)  # validate before queuing
        while len(self._window) >= self.cfg["max_inflight"]:
            if self._stopping:
                raise F.MQTTError("stopped")
            self._room.clear()
            await self._room.wait()
        if self._stopping:
            raise F.MQTTError("stopped")
        m = _Msg(self._next_pid(), topic, payload, retain)
        self._window.append(m)
        if self._up:
            self._kick.set()
        if not wait:
            return m.pid
        m.ev = asyncio.Event()
        await m.ev.wait()
        if m.state != 2:
            raise F.MQTTError("stopped")
        return m.pid

    def inflight(self):
        return len(self._window)

    def ack(self, pid, gen):
        """PUBACK a message a deferred handler took on connection `gen` (ignored on any other)."""
        if gen == self.gen and pid in self._held:
            self._held.remove(pid)
            self._queue_ctrl(F.puback(pid))
            self._resync_done()

    async def flushed(self):
        """Wait until every control packet queued so far (a PUBACK) is written, or the link ends."""
        while (self._ctrl or self._writing) and self._up:
            self._wrote.clear()
            await self._wrote.wait()

    def redial(self):
        """Connect again with the settings as they are now (a new TLS context: certs.py's trial):
        a clean DISCONNECT (no will) if up, then at once; if down, at the next attempt."""
        self._ssl_ctx = None
        if self._up:
            self._resync = 2
            self._reason = F.MQTTError("redial")
            self._queue_ctrl(F.DISCONNECT_PKT)

    def _resync_done(self):
        if self._resync is True and not self._held and not self._window and self._up:
            self._resync = 2  # still set: what comes before the broker closes is left too
            self._reason = F.MQTTError("resync")  # what the report says when the broker closes
            self._queue_ctrl(F.DISCONNECT_PKT)  # no will; the broker closes, we reconnect
    # ---- supervisor ---------------------------------------------------------------------
    def _report(self, where, exc):
        self.stats["errors"] += 1
        cb = self._on_error
        if cb is not None:
            try:
                cb(where, exc)
            except Exception:
                pass
        else:
            print("mqtt", where, repr(exc))

    def _set_state(self, up):
        if self._up == up:
            return
        self._up = up
        for cb in self._state_cbs:
            try:
                cb(up)
            except Exception as e:
                self._report("state_cb", e)

    async def _supervise(self):
        attempt = 0
        tried = 0  # addresses that failed to connect in a row
        ever = False
        while not self._stopping:
            try:
                await asyncio.wait_for_ms(self._connect(), self.cfg["connect_timeout"])
            except asyncio.CancelledError:
                self._teardown()
                raise
            except BaseException as e:  # incl. MemoryError, TimeoutError, OSError, refusals
                if isinstance(e, KeyboardInterrupt):
                    raise
                self._teardown()
                self._report("connect", e)
                tried += 1
                self._ai = (self._ai + 1) % len(self._addrs)
                if tried % len(self._addrs):
                    continue  # the next address at once: back off only once each has failed
            else:
                attempt = tried = 0
                self.stats["connects"] += 1
                if ever:
                    self.stats["reconnects"] += 1
                ever = True
                self._set_state(True)
                try:
                    await self._down.wait()
                except asyncio.CancelledError:
                    self._teardown()
                    raise
                reason = self._reason
                again = self._resync  # our own clean disconnect, for a redelivery: back at once
                self._teardown()
                if self._stopping:
                    break
                self._report("connection", reason)
                if again:
                    continue
            # exponential backoff with full jitter in [min, min(max, min * 2^attempt)]
            lo = self.cfg["backoff_min"]
            hi = min(self.cfg["backoff_max"], lo << min(attempt, 16))
            attempt += 1
            await asyncio.sleep_ms(lo + _rand(hi - lo + 1))

    def _teardown(self):
        for t in self._tasks:
            t.cancel()
        self._tasks = ()
        # The sockets themselves, not the stream: MicroPython's Stream.close() is a no-op, and
        # closing a TLS socket does not close the TCP one under it: each dropped connection left
        # a socket open (CLOSE-WAIT) until the board ran out of them.
        for s in (self._tls, self._sock):
            if s is not None:
                try:
                    s.close()
                except Exception:
                    pass
        self._stream = self._sock = self._tls = None
        self._ctrl = []
        self._q0 = []
        self._held = []
        self._resync = False
        self._busy = False
        self._writing = False
        self._wrote.set()
        self._set_state(False)

    async def _connect(self):
        cfg = self.cfg
        self._down = asyncio.Event()
        self._reason = None
        self._ping_out = False
        self._sub_pids = {}
        self.gen += 1
        host, port = self._addrs[self._ai]  # after a lost connection the same one first (its session)
        g = cfg.get
        tls = g("tls") or g("ca") or g("cadata")
        if tls and self.before_tls:
            self.before_tls()  # the agent's clock: the RTC's floor for the certificate dates
        s = self._sock = hal.connect(host, port)
        if tls:
            if self._ssl_ctx is None:  # made once: loading the CA costs RAM and time
                self._ssl_ctx = hal.tls_context(g("ca"), g("cadata"), g("cert"), g("certkey"), g("ca2"))
            s = self._ssl_ctx.wrap_socket(
                s, server_hostname=g("server_hostname") or host,
                do_handshake_on_connect=False)
            self._tls = s
        st = asyncio.StreamReader(s)
        self._stream = st
        st.write(F.connect(cfg["client_id"], g("user"), g("password"), self._ka,
                           g("clean_session"), g("will_topic"), g("will_msg"),
                           cfg["will_qos"], cfg["will_retain"]))
        await st.drain()
        ptype, flags, n = await self._read_head(st)
        if ptype != F.CONNACK or n != 2:
            raise F.MalformedPacket("expected connack")
        await self._read_body(st, n)
        sp, rc = F.parse_connack(flags, self._rxmv[:2])
        if rc:
            self.stats["refused"] += 1
            raise F.MQTTError("connack refused", rc)
        self.session_present = sp
        now = ticks_ms()
        self._last_rx = self._last_tx = now
        # resend the whole window (DUP, same ids), resubscribe, then start the tasks
        for m in self._window:
            if m.state == 1:
                self.stats["retransmits"] += 1
            m.state = 0
        if self._subs:
            self._send_subscribe(list(self._subs))
        self._kick.set()
        self._tasks = (asyncio.create_task(self._reader(st)), asyncio.create_task(self._writer(st)),
                       asyncio.create_task(self._ticker()))

    def _fail(self, e):
        # a connection task failed (each catches its own: no wrapper coroutine per task)
        if isinstance(e, KeyboardInterrupt):
            raise e
        if self._reason is None:
            self._reason = e
        self._down.set()

    # ---- reading ------------------------------------------------------------------------
    async def _fill(self, st, mv):
        off = 0
        n = len(mv)
        while off < n:
            k = await st.readinto(mv[off:])
            if k is None:  # TLS: record not complete yet
                continue
            if not k:
                raise OSError(ECONNRESET)
            off += k
            self._last_rx = ticks_ms()

    async def _read_head(self, st):
        mv = self._hdrmv
        await self._fill(st, mv)
        b = self._hdr[0]
        n = 0
        shift = 0
        for i in range(4):
            await self._fill(st, mv)
            c = self._hdr[0]
            n |= (c & 0x7F) << shift
            if not c & 0x80:
                return b >> 4, b & 15, n
            shift += 7
        raise F.MalformedPacket("varint")

    async def _read_body(self, st, n):
        if n:
            await self._fill(st, self._rxmv[:n])

    async def _skip(self, st, n):
        # Stream n bytes through the rx buffer, allocating nothing per chunk: readinto's nbytes
        # bounds each read (no memoryview slice), the wait is inlined (no coroutine per read), and
        # the socket is drained while it has data, so the poller is asked only when it is empty.
        s = st.s
        b = self._rx
        m = self._max
        q = asyncio.core._io_queue  # pyright: ignore  (MicroPython asyncio: what Stream.readinto waits on)
        while n:
            k = s.readinto(b, n if n < m else m)
            if k is None:  # nothing buffered (or a TLS record incomplete): wait for the socket
                yield q.queue_read(s)
                continue
            if not k:
                raise OSError(ECONNRESET)
            n -= k
            self._last_rx = ticks_ms()

    async def _reader(self, st):
        try:
            while True:
                ptype, flags, n = await self._read_head(st)
                if n > self._max:
                    self.stats["oversize"] += 1
                    if ptype != F.PUBLISH:
                        raise F.PacketTooLarge(n, self._max)
                    # An oversized PUBLISH (any size the varint can say, 256 MiB) is refused
                    # without being stored: read its head into the buffer, stream past the rest,
                    # PUBACK it (else a persistent session redelivers it at every connect: the
                    # device would never get online again) and report it.
                    k = min(self._max, n)
                    await self._fill(st, self._rxmv[:k])
                    topic, qos, _, _, pid, _ = F.parse_publish_head(flags, self._rxmv[:k])
                    await self._skip(st, n - k)  # pyright: ignore  (a MicroPython coroutine with a bare yield)
                    if qos:
                        self._queue_ctrl(F.puback(pid))
                    self._report("rx", F.PacketTooLarge(n, self._max, topic))
                    continue
                await self._read_body(st, n)
                body = self._rxmv[:n]
                if ptype == F.PUBLISH:
                    await self._on_publish(flags, body)
                elif ptype == F.PUBACK:
                    self._on_puback(F.parse_pid(flags, body))
                elif ptype == F.SUBACK:
                    pid, codes = F.parse_suback(flags, body)
                    flts = self._sub_pids.pop(pid, None)
                    if flts is None or len(flts) != len(codes):
                        raise F.MalformedPacket("unexpected suback")
                    for i in range(len(codes)):
                        if codes[i] == 0x80:
                            # a link that cannot hear its commands or acks is no link: end it and
                            # subscribe again on the next, after the backoff (a cluster refuses one
                            # while it re-elects the stream behind it after a node is lost)
                            raise F.MQTTError("subscription refused", flts[i])
                elif ptype == F.PINGRESP:
                    F.parse_empty(flags, body)
                    self._ping_out = False
                else:
                    raise F.MalformedPacket("unexpected packet", ptype)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # any failure ends the connection, never silently
            self._fail(e)

    async def _on_publish(self, flags, body):
        topic, payload, qos, retain, dup, pid = F.parse_publish(flags, body)
        h = None
        for flt in self._subs:
            if F.topic_matches(flt, topic):
                h = self._subs[flt]
                break
        if h is not None and h[2]:
            if qos:
                # Once one is left, leave all the rest too: the broker delivers them again in order.
                if self._resync or len(self._held) >= self.cfg["max_held"]:
                    self.stats["deferred"] += 1
                    self._resync = self._resync or True
                    return
                self._held.append(pid)
            h[1](topic, bytes(payload), retain, dup, pid if qos else 0)  # kept: the rx buffer is reused
            return
        if h is not None:
            h = h[1]
            self._busy = True
            try:  # a copy that fails (a fragmented heap) loses this message, never the link
                r = h(topic, bytes(payload), retain, dup)
                if r is not None and hasattr(r, "send"):  # coroutine / generator
                    await r
            except asyncio.CancelledError:
                raise
            except Exception as e:  # MemoryError included
                # The handler had its turn: acknowledge anyway, else the broker redelivers a
                # poison message after every reconnect. The application sees the report.
                h = r = None
                gc.collect()
                self.stats["handler_errors"] += 1
                self._report("handler", e)
            finally:
                self._busy = False
                self._last_rx = ticks_ms()
        if qos:
            self._queue_ctrl(F.puback(pid))

    def _on_puback(self, pid):
        w = self._window
        for i in range(len(w)):
            m = w[i]
            if m.pid == pid:
                w.pop(i)
                m.state = 2
                m.payload = None
                if m.ev:
                    m.ev.set()
                self._room.set()
                self._resync_done()
                return
        # a PUBACK for an id we no longer hold (dup ack after a resend): ignore

    # ---- writing ------------------------------------------------------------------------
    def _queue_ctrl(self, pkt):
        if len(self._ctrl) >= 64:
            raise F.MQTTError("control queue full")
        self._ctrl.append(pkt)
        self._kick.set()

    def _next_pid(self):
        used = [m.pid for m in self._window]
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in used and self._pid not in self._sub_pids:
                return self._pid

    def _send_subscribe(self, flts):
        pid = self._next_pid()
        self._sub_pids[pid] = flts
        self._queue_ctrl(F.subscribe(pid, [(t, self._subs[t][0]) for t in flts]))

    async def _writer(self, st):
        try:
            kick = self._kick
            c = self._ctrl
            while True:
                await kick.wait()
                kick.clear()
                while True:
                    self._writing = True
                    m = None
                    for x in self._window:
                        if x.state == 0:
                            m = x
                            break
                    if self._q0:  # first: a burst of QoS1 results never starves the heartbeat (max_qos0 bounds it)
                        t, p, r = self._q0.pop(0)
                        _put(st, F.publish_header(t, len(p), 0, r), p, c)
                    elif m is not None:
                        _put(st, F.publish_header(m.topic, len(m.payload), 1, m.retain, m.sent != 0, m.pid), m.payload, c)
                        m.state = 1
                        m.sent = ticks_ms() or 1
                    elif c:
                        st.write(c.pop(0))
                    else:
                        self._writing = False
                        self._wrote.set()
                        break
                    await st.drain()
                    self._last_tx = ticks_ms()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # any failure ends the connection, never silently
            self._fail(e)

    async def _ticker(self):
        try:
            ka = self._ka * 1000
            tick = max(50, ka // 20) if ka else 1000
            ack_to = self.cfg["ack_timeout"]
            while True:
                await asyncio.sleep_ms(tick)
                now = ticks_ms()
                if ka:
                    idle_rx = ticks_diff(now, self._last_rx)
                    if self._busy:
                        idle_rx = 0
                    if idle_rx >= ka * 5 // 4:
                        raise OSError(ETIMEDOUT)  # no PINGRESP: broker or path is dead
                    # ping on rx silence (dead-peer probe), and on tx silence even with a ping
                    # outstanding (a long handler keeps the PINGRESP unread; the broker still
                    # needs a packet within keepalive)
                    if ((not self._ping_out and idle_rx >= ka // 2)
                            or ticks_diff(now, self._last_tx) >= ka * 3 // 4):
                        self._ping_out = True
                        self._queue_ctrl(F.PINGREQ_PKT)
                if ack_to:
                    for m in self._window:
                        if m.state == 1 and ticks_diff(now, m.sent) >= ack_to:
                            m.state = 0
                            self.stats["retransmits"] += 1
                            self._kick.set()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # any failure ends the connection, never silently
            self._fail(e)
