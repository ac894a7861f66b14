# The device agent, the composition root: it builds the services (MQTT link, signer, clock,
# command pipeline, uplink of money records) and wires them together; it owns presence (hello,
# retained status, will, heartbeat). An app (gate, vending, rental) gets only a Context (below).
import asyncio
import gc
import os
import time
from micropython import const

import cbor
import cose
import msg
import store
import config as cfgmod
from clock import Clock, log
from commands import Pipeline, CommandError
from hmac256 import HmacKey
from mqtt_client import MQTTClient
from cbor import CodecError
from hal import reset as hreset
from hal.display import Display
from hal.wdt import Watchdog

FW_VERSION = "0.1.0"
CAPS = ["cmd", "time", "cfg"]
MAX_PACKET = 2300  # SPEC message bound (2048) + topic + MQTT headers

# Message types and field keys (SPEC §4): const names cost nothing in the compiled bundle.
_T_HELLO = const(1)
_T_STATUS = const(2)
_T_HB = const(3)
_T_ALARM = const(5)
_T_RES = const(9)
_K_TYPE = const(0)
_K_IAT = const(6)
_K_SEQ = const(8)
_K_CODE = const(10)  # alarm: code, detail, active; status: online; hello: fw ...
_K_DETAIL = const(11)
_K_ACTIVE = const(12)
# hello: 10 fw, 11 board, 12 reset, 13 caps, 14 kind, 15 boots
_H_FW = const(10)
_H_BOARD = const(11)
_H_RESET = const(12)
_H_CAPS = const(13)
_H_KIND = const(14)
_H_BOOTS = const(15)
# heartbeat: 10 uptime, 11 heap, 12 jdepth, 13 rssi, 14 clock, 15-17 rx counts
_B_UPTIME = const(10)
_B_HEAP = const(11)
_B_JDEPTH = const(12)
_B_RSSI = const(13)
_B_CLOCK = const(14)
# ack (downlink): 10 upto, 11 resend, 12 quarantined seqs


class Rate:
    """Token bucket without allocation: `burst` at once, then one every `ms` milliseconds."""

    def __init__(self, burst, ms):
        self.burst = self.tokens = burst
        self.ms = ms
        self.at = time.ticks_ms()

    def take(self):
        now = time.ticks_ms()
        n = time.ticks_diff(now, self.at) // self.ms
        if n:
            self.tokens = min(self.burst, self.tokens + n)
            self.at = now
        if self.tokens:
            self.tokens -= 1
            return True
        return False


def rssi():
    """Wi-Fi signal in dBm on a board with a radio; None on the VM or when not connected."""
    try:
        import network
        return network.WLAN(network.STA_IF).status("rssi")
    except Exception:
        return None


def _ca(n):  # the broker CA files set_ca writes (n > 0)
    return store.ROOT + "ca%d.der" % n


def _pace_gc():
    # Booted (and on every heartbeat): collect, then again after a quarter of what is free has been
    # allocated, or 1/32 of the heap if that is more. A tight heap keeps the 1/32 pace that stops
    # long-lived objects scattering (a 688-byte littlefs buffer found no room at 48K with 3/4 of
    # free); a roomy one collects less often: at 1/32 the threshold, which counts temporaries too
    # (several times the ~5 KB a command keeps), meant more than one collection a command.
    gc.collect()
    free = gc.mem_free()
    gc.threshold(max(free // 4, (free + gc.mem_alloc()) // 32))


class Signer:
    """The device's key, both ways. The one sealing path: every uplink message, money records
    included, is schema-checked (msg.check raises CodecError) before it is encoded and signed."""

    def __init__(self, hkey, kid, device):
        self.hkey = hkey
        self.kid = kid
        self.device = device
        self.refused = 0  # downlink messages refused unauthenticated, since boot
        self.nxt = None   # during a key rotation: (HmacKey, kid, hex key) of the next key (rekey.py)

    def seal(self, topic, fields):
        """-> (envelope, payload bytes)."""
        msg.check(fields, topic)
        p = cbor.encode(fields)
        return cose.build(self.hkey, self.kid, topic, p), p

    def open(self, topic, data):
        """Verify a downlink envelope and check its payload; -> payload dict, or CodecError.
        During a key rotation, one under the next kid is the cloud's confirmation (SPEC §11)."""
        try:
            return msg.open(self.hkey, self.kid, topic, data)
        except CodecError as e:
            n = self.nxt
            if n is None or e.code != "bad_kid":
                raise
            p = msg.open(n[0], n[1], topic, data)
            import rekey
            rekey.switch(self)
            return p

    def open_dn(self, topic, data):
        """A time answer or ack for the services that subscribe to them: authentic and for this
        device, else None (logged, and counted if unauthenticated)."""
        try:
            p = self.open(topic, data)
        except CodecError as e:
            log("dn refused", topic, e.code)
            self.refused += 1
            return None
        if p[3] != self.device:
            log("dn refused wrong_audience", topic)
            return None
        return p


class Context:
    """All an app may touch: its commands, sending, alarms, money records, time, its hardware
    (the display too), and the link. Nothing else of the agent. Methods, not bound-method
    attributes: those would be ~0.7 KB of live heap on every board."""

    def __init__(self, a, hw):
        self._a = a
        self.hw = hw  # the board's peripherals, its display among them
        self.device, self.boots, self.cfg = a.device, a.boots, a.cfg
        self.rate = a.clock.rate  # the sim clock's rate (1 on a board): physical waits follow it
        self.money = a.uplink is not None  # False: no journal, so no money (apps refuse sessions)

    def on_command(self, name, needs_time=True):  # decorator: on_command(name)(fn(args))
        return self._a.cmds.on(name, needs_time)

    def send(self, typ, fields, qos=1):  # async
        return self._a.send(typ, fields, qos)

    def alarm(self, code, detail=None, active=True):  # fire and forget
        self._a.alarm(code, detail, active)

    def record(self, typ, fields, seq=None):  # journaled when it returns; raises if it cannot be
        return self._a.uplink.record(typ, fields, seq)

    def committed(self, seq):  # did the record with this seq reach flash?
        return self._a.uplink.committed(seq)

    def next_seq(self):  # a record's seq, taken before it is noted and recorded
        return self._a.seq.next()

    def now(self):  # None while the clock is untrusted
        return self._a.clock.now()

    def online(self):
        return self._a.mqtt.up

    def on_link(self, fn):  # fn(up) at every link change
        self._a.mqtt.on_state(fn)

    def on_busy(self, fn):  # fn() -> True while a session is mid-way: no update installs then
        self._a._busy = fn

    def on_beat(self, fn):  # fn(hb) adds the app's heartbeat fields (SPEC §4: 18 off_amt, 19 off_n)
        self._a._beat = fn


class Agent:
    def __init__(self, cfg):
        # Keep the heap in one piece: without a threshold the GC runs only when the heap is full,
        # so everything allocated in between (long-lived state among garbage: boot's imports and
        # buffers, then sessions) ends up spread over all of it, and a 688-byte littlefs file
        # buffer found no room with 27 KB free. Collecting every 1/32 of the heap during boot
        # keeps live data packed low and the top free for big buffers; run() then paces it.
        gc.collect()
        gc.threshold((gc.mem_free() + gc.mem_alloc()) // 32)
        self.cfg = cfg
        self.device = dev = cfg["device"]
        self.signer = Signer(HmacKey(cfg.pop("key_bytes")), cfg["kid"].encode(), dev)
        cfg.pop("key", None)  # the key lives in the HMAC pads only
        if store.read("key") or store.read("keynext"):  # a key rotation happened or is in hand
            import rekey
            rekey.boot(self.signer)
        self.board = cfg["board"]
        self.settings = cfg["settings"]
        self.settings.update(store.read("settings", {}))
        self.seq = store.Counter("seq")
        self.boots = store.read("boots", 0) + 1
        store.write("boots", self.boots)
        self.reset_cause = hreset.cause()
        fw = store.read("fw")  # the release installed by an update, once confirmed
        self.fw = fw["v"] if fw else FW_VERSION
        self._busy = None  # the app's busy(), set once it has started (Context.on_busy)
        self._beat = None  # the app's heartbeat fields (Context.on_beat)
        self.clock = Clock((cfg.get("sim") or {}).get("clock_rate", 1), self.settings)  # rate: sim only
        self.up_ms = time.ticks_ms()
        base = "v1/dev/" + dev + "/"
        self.t_up = base + "up/"
        t_cmd = base + "dn/cmd"
        self.cmds = Pipeline(dev, self.signer, self.clock, t_cmd, self.settings["cmd_window"])
        self.display = Display()
        self._hello_sent = False
        self._refusals = Rate(8, 1250)  # answers to unauthenticated messages: 8, then 1 per 1.25 s
        self._repeats = Rate(4, 500)     # answers to redeliveries of commands already answered
        self._cmdq = []                  # (bytes, packet id, connection): bounded by max_held
        self._wake = asyncio.Event()
        self._oversize_ms = time.ticks_ms()  # no oversize alarm before this (rate limit)
        self._register_builtins()
        self.journal = self.uplink = None
        self.journal_error = None
        if self.board.get("journal"):
            self._open_journal()
        # The config's broker section already speaks the client's names (host, port, password;
        # tls, ca, server_hostname, cert, certkey): it is completed and handed over, not copied.
        b = cfg.pop("broker")
        if b.get("cert"):  # mutual TLS: a renewed certificate (certs.py) wins over config.json's
            import certs
            certs.boot(b)
        n = store.read("ca", 0)  # the broker's CAs (set_ca, certs.py): ca<n>.der once n > 0, ca<n+1>.der beside it
        if b.get("ca"):
            if n:
                try:  # the CA it retired, if a cut came between the switch and the removal
                    os.remove(_ca(n - 1) if n > 1 else b["ca"])
                except OSError:
                    pass
                b["ca"] = _ca(n)
            b["ca2"] = _ca(n + 1)
        b.update({"client_id": dev, "user": dev, "keepalive": self.settings["keepalive_s"],
                  "will_topic": self.t_up + "status", "will_msg": self.seal(_T_STATUS, {_K_CODE: False}),
                  "will_qos": 1, "will_retain": True, "max_packet": MAX_PACKET,
                  "backoff_min": self.settings["backoff_min_ms"], "backoff_max": self.settings["backoff_max_ms"]})
        self.mqtt = MQTTClient(b)
        self.mqtt.subscribe(t_cmd, 1, self._on_cmd, True)
        self.updater = None
        from hal import ota as hota
        self.slots = hota.slots(self.board)
        if self.slots:
            CAPS.append("ota")
            st = store.read("ota")
            if st:  # an update left on flash by the last boot: what this boot is to it
                u = self._updater(st)
                u.how = u.boot()
        self.clock.attach(self.mqtt, self.signer, base)  # each service subscribes to its own topics
        self.mqtt.before_tls = self.clock.rtc
        self.mqtt.on_state(self._on_state)
        self.mqtt.on_error(self._mqtt_error)
        if self.journal is not None:
            from uplink import Uplink
            self.uplink = Uplink(self.signer, self.seq, self.mqtt, base, self.journal, self.alarm)
            CAPS.append("rec")

    def _open_journal(self):
        from hal import flash
        from journal import Journal
        try:
            self.journal = Journal(flash.mount(self.board) + "/j", self.board["journal"].get("capacity", 32768),
                                   prog=flash.progsize)
        except Exception as e:
            if type(e).__name__ == "PowerLoss":  # the simulated flash lost power mid-recovery: so did we
                hreset.power_off()
            # A damaged journal is never formatted over (it may hold unsent money): run without
            # money (apps refuse sessions while uplink is None) and say why on every hello.
            self.journal_error = repr(e)[:60]
            log("journal unavailable", self.journal_error)
            return
        if getattr(flash.dev, "on_cut", 1) is None:  # simulated flash: a cut kills the whole board
            flash.dev.on_cut = hreset.power_off
        self.seq.skip_to(self.journal.last_seq)  # never reuse a number the journal holds (will first)
        log("journal", self.journal.depth(), "pending, last seq", self.journal.last_seq)

    # ---- sending ----------------------------------------------------------------------------
    def seal(self, typ, fields):
        fields[_K_TYPE] = typ
        fields[_K_SEQ] = self.seq.next()
        now = self.clock.now()
        if now is not None and typ < 6:  # the non-record types carry their time (SPEC §4)
            fields[_K_IAT] = now
        return self.signer.seal(self.t_up + msg.topic_suffix(typ), fields)[0]

    async def send(self, typ, fields, qos=1, retain=False):
        data = self.seal(typ, fields)
        return await self.mqtt.publish(self.t_up + msg.topic_suffix(typ), data, qos, retain)

    def alarm(self, code, detail=None, active=True):
        """Send an alarm, not awaited (QoS 1 from a task: the caller goes on at once)."""
        f = {_K_CODE: code, _K_ACTIVE: active}
        if detail is not None:
            f[_K_DETAIL] = detail
        asyncio.create_task(self.send(_T_ALARM, f))

    def jdepth(self):
        return self.journal.depth() if self.uplink else 0

    # ---- presence ---------------------------------------------------------------------------
    def _on_state(self, up):
        log("mqtt", "up" if up else "down")
        if up:
            asyncio.create_task(self._announce())

    async def _announce(self):
        try:
            if not self._hello_sent:  # once per boot (OCPP: do not re-announce unless it changed)
                await self.send(_T_HELLO, {_H_FW: self.fw, _H_BOARD: self.board["name"],
                                           _H_RESET: self.reset_cause, _H_CAPS: CAPS,
                                           _H_KIND: self.board["kind"], _H_BOOTS: self.boots})
                self._hello_sent = True
                log("hello sent")
                if self.journal_error:
                    await self.send(_T_ALARM, {_K_CODE: "journal", _K_DETAIL: {"why": self.journal_error},
                                               _K_ACTIVE: True})
            await self.send(_T_STATUS, {_K_CODE: True}, 1, True)
            log("online")
        except Exception as e:
            log("announce failed", repr(e))

    def _mqtt_error(self, where, e):
        log("mqtt error", where, repr(e))
        # "rx": a packet over the bound was skipped and acknowledged. Alarm at most once a minute
        # (a flood costs one message a minute; the heartbeat counts them all).
        now = time.ticks_ms()
        if where == "rx" and time.ticks_diff(now, self._oversize_ms) >= 0:
            self._oversize_ms = time.ticks_add(now, 60000)
            self.alarm("oversize", {"size": e.args[0]})

    def rx_counts(self):
        """Downlink messages since boot: [refused unauthenticated, oversize (skipped), dropped (the
        handler failed)]; heartbeat fields 15-17, get_state's "rx"."""
        s = self.mqtt.stats
        return self.signer.refused, s["oversize"], s["handler_errors"]

    def uptime(self):
        return time.ticks_diff(time.ticks_ms(), self.up_ms) // 1000

    async def _heartbeats(self):
        while True:
            await asyncio.sleep(self.settings["hb_s"])
            while not self.mqtt.up:  # a beat due while the link is down goes once it is back
                await asyncio.sleep_ms(200)
            try:
                _pace_gc()
                hb = {_B_UPTIME: self.uptime(), _B_HEAP: gc.mem_free(), _B_JDEPTH: self.jdepth(),
                      _B_CLOCK: 1 if self.clock.trusted() else 0}
                r = rssi()
                if r is not None:
                    hb[_B_RSSI] = r
                for k, v in zip((15, 16, 17), self.rx_counts()):
                    if v:  # absent = 0: the usual heartbeat stays as small as before
                        hb[k] = v
                if self._beat:
                    self._beat(hb)
                await self.send(_T_HB, hb, 0)
            except Exception as e:  # a MemoryError skips one beat, never stops them
                hb = None
                log("heartbeat", repr(e))

    # ---- downlink ---------------------------------------------------------------------------
    def _on_cmd(self, topic, data, retain, dup, pid):
        # Only taken here, on the MQTT reader: the command is run and answered by _commands, and
        # PUBACKed only then, so the broker's in-flight limit bounds what waits (back-pressure,
        # not memory), and a reset before the PUBACK gets it delivered again.
        self._cmdq.append((data, pid, self.mqtt.gen))
        self._wake.set()

    async def _commands(self):
        """The one task that runs and answers commands, one at a time, in the order they came."""
        q = self._cmdq
        mq = self.mqtt
        while True:
            if not q:
                self._wake.clear()
                await self._wake.wait()
                continue
            data, pid, gen = q.pop(0)
            o = None
            try:
                if gen == mq.gen:  # else the broker delivers it again on this connection
                    o = await self.cmds.handle(data)
                    data = None
                    if self._answering(o):
                        # Into the QoS1 window (resent across reconnects); a reboot waits for it.
                        await mq.publish(self.t_up + "res", self.seal(_T_RES, self.cmds.result(o)), 1, False,
                                         o.after is not None)
            except Exception as e:  # MemoryError included: one command lost, never the device
                data = None
                gc.collect()
                log("result not sent", repr(e))
            mq.ack(pid, gen)
            # Only one command is ever run and not yet acknowledged on the wire: the one the
            # pipeline persisted last, so a redelivery after a reset is answered dup/interrupted,
            # never stale_seq (which would tell the cloud it never ran).
            await mq.flushed()
            if o is not None and o.after is not None:
                o.after()

    def _answering(self, o):
        if o.code == "ok" and not o.again:
            log("cmd ok", o.name)
            return True
        if o.again:
            log("cmd dup", o.name)
            return self._repeats.take()  # redeliveries of captured commands: a few answers, not each
        log("cmd refused", o.code, o.name)
        if o.name is None:
            self.signer.refused += 1
        return o.name is not None or self._refusals.take()  # no amplification of a forged flood

    # ---- built-in commands ------------------------------------------------------------------
    def _register_builtins(self):
        on = self.cmds.on

        @on("get_state", needs_time=False)
        def get_state(args):
            gc.collect()
            return {"fw": self.fw, "board": self.board["name"], "kind": self.board["kind"],
                    "uptime": self.uptime(), "heap": gc.mem_free(), "heap_used": gc.mem_alloc(), "clock": 1 if self.clock.trusted() else 0,
                    "seq": self.seq.value, "cmd_seq": self.cmds.last_seq, "boots": self.boots,
                    "reset": self.reset_cause, "display": self.display.text, "jdepth": self.jdepth(),
                    "settings": dict(self.settings),
                    "rx": list(self.rx_counts())}

        @on("sync_time", needs_time=False)  # ask the cloud's time now (moves nothing itself)
        def sync_time(args):
            return None, lambda: asyncio.create_task(self.clock.ask(self.send))

        @on("set_config")
        def set_config(args):
            if not args:
                raise CommandError("bad_args", "empty")
            for k, v in args.items():  # all or nothing: check every pair before changing any
                try:
                    cfgmod.check_setting(k, v)
                except ValueError as e:
                    raise CommandError("bad_args", str(e)[:40])
            self.settings.update(args)
            store.write("settings", {k: self.settings[k] for k in cfgmod.SETTINGS})
            return {"applied": len(args)}

        @on("display")
        def display(args):
            text, secs = args.get(1), args.get(2, 0)
            if not isinstance(text, str) or not 1 <= len(text) <= 64 or not isinstance(secs, int) or secs < 0:
                raise CommandError("bad_args", "text")
            self.display.show(text, secs)

        @on("reboot")
        def reboot(args):
            delay = args.get(1, 0)
            if not isinstance(delay, int) or not 0 <= delay <= 3600:
                raise CommandError("bad_args", "delay")
            return None, lambda: asyncio.create_task(self._reboot(delay))

        @on("ota")  # a board without update slots: unsupported (ota.py is never imported there)
        def ota_cmd(args):
            if not self.slots:
                raise CommandError("unsupported")
            raw = args.get(1)
            if type(raw) is not bytes:
                raise CommandError("bad_args", "manifest")
            u = self._updater()
            import release
            try:
                return {"st": u.offer(raw)}
            except release.ReleaseError as e:  # the result says why; an update in hand goes on
                raise CommandError("refused", e.code)

        @on("rekey")
        def rekey_cmd(args):
            import rekey
            r = rekey.offer(self.signer, args)
            if type(r) is str:
                raise CommandError("bad_args", r)
            return r

        @on("set_cert")  # a renewed certificate and its key, wrapped (SPEC §12): tried, then kept
        def set_cert(args):
            if not self.mqtt.cfg.get("cert"):
                raise CommandError("unsupported")
            import certs
            return certs.stage(self, args)

        @on("set_ca")  # the broker's next CA beside the current one; with 2: true, the only one (certs.py)
        def set_ca(args):
            if not self.mqtt.cfg.get("ca"):
                raise CommandError("unsupported")
            import certs
            return certs.set_ca(self, args)

        @on("ota_abort")
        def ota_abort(args):
            u = self.updater
            st = u.abort() if u else "none"
            if st is None:
                raise CommandError("refused", "installed")
            return {"st": st}

        @on("set_release_keys")  # a signed release key list (SPEC §10): the next manifest's trust
        def set_release_keys(args):
            raw = args.get(1)
            if type(raw) is not bytes:
                raise CommandError("bad_args", "list")
            import release
            try:
                return release.set_keys(raw, self.cfg)
            except release.ReleaseError as e:
                raise CommandError("refused", e.code)
            finally:  # the verifier is ~12 KB of RAM: let it go unless an update holds it
                if self.updater is None:
                    import sys
                    for m in ("release", "ed25519", "sha512"):
                        sys.modules.pop(m, None)

    # ---- firmware update (ota.py, imported only when an update is in hand) -----------------
    def _updater(self, st=None):
        if self.updater is None:  # chunks are listened for only from here on
            import ota
            self.updater = ota.Updater(self, self.slots, st)
            self.mqtt.subscribe(self.t_up[:-3] + "dn/ota", 0, self._on_chunk)
        return self.updater

    def _on_chunk(self, topic, data, retain, dup):
        u = self.updater
        if u is not None:
            p = self.signer.open_dn(topic, data)
            if p is not None:
                u.on_chunk(p)

    def self_test(self):
        """A trial release keeps itself only if this holds: its journal opened and its app started."""
        return self.journal_error is None and (self._busy is not None or not self.board.get("peripherals"))

    def _hardware(self):
        """Build the board's peripherals (None on a board without them)."""
        if not self.board.get("peripherals"):
            return None
        import board
        import hal
        b = board.load(self.board)
        hw = hal.build(b, sim=self.cfg.get("sim"))
        # The board file is read at boot only (the drivers hold what they need): after it only its
        # name and kind are (hello, get_state), so the rest (~3.5 KB of dicts on the rental) leaves RAM.
        b.peripherals = None
        b.d = {"name": b.name, "kind": b.kind}
        if hw.has("display"):
            self.display = hw.get("display")  # the built-in `display` command shows on the board's own
        return hw

    async def _reboot(self, delay):
        await asyncio.sleep(delay)
        log("ACT reboot")
        try:
            await self.mqtt.stop()
        except Exception:
            pass
        hreset.reset(hreset.EXIT_REBOOT)

    # ---- main -------------------------------------------------------------------------------
    async def run(self, wdt_ms=10000):
        app = self.cfg.get("app")
        if not app and self.board.get("peripherals"):
            app = "apps." + self.board["kind"]  # the payment app for this kind of device
        if app:
            __import__(app)
            import sys
            sys.modules[app].setup(Context(self, self._hardware()))
        _pace_gc()
        wdt = Watchdog(wdt_ms)
        self.mqtt.start()
        asyncio.create_task(self._heartbeats())
        asyncio.create_task(self._commands())
        asyncio.create_task(self.clock.run(self.mqtt, self.send))
        if self.uplink:
            asyncio.create_task(self.uplink.run())
        u = self.updater
        if u:
            u.start(u.how)
        log("agent", self.device, "boot", self.boots, "reset", self.reset_cause)
        while True:  # the loop that proves the event loop is alive
            wdt.feed()
            await asyncio.sleep_ms(250)

    async def shutdown(self):
        """Orderly stop: offline status (retained), then DISCONNECT (no will), both written here."""
        try:
            await asyncio.wait_for(self.mqtt.stop(last=(self.t_up + "status", self.seal(_T_STATUS, {_K_CODE: False}))), 3)
        except Exception:
            pass
        log("stopped")
