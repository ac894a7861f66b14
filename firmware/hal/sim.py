# The simulated peripherals' driver: one TCP connection to the host simulator
# (host_tools/sim/peripherals.py) on loopback, line-delimited JSON, one object per line:
#   device -> host  {"t":"hello","board":"sim-gate","out":{"entry_barrier":"closed",...}}
#                                                               on every (re)connect: every output's state
#                   {"t":"out","n":"entry_barrier","v":"open"}  on every actuation (barrier, lock,
#                                                               indicator, display text)
#   host -> device  {"t":"in","n":"entry_loop","v":1}           input change
#                   {"t":"scan","n":"qr","v":"PAY-123"}         scan (plate, QR, RFID tag)
#                   {"t":"scale","n":"scale","v":1250}          scale reading, grams
# Non-blocking (asyncio): a reader and a writer task per connection; reconnects with backoff
# (100 ms .. 1 s) when the host goes away. Bounded: the receive buffer is fixed (a longer line
# is dropped), and at most MAXQ unsent lines wait (oldest dropped; while down nothing queues,
# the snapshot on reconnect carries the state).
import asyncio
import json
from errno import ECONNRESET

import hal

MAXQ = 32
RXBUF = 256
MAXSCAN = 64


class SimLink:
    def __init__(self, board_name, cfg, devs):
        self.board = board_name
        cfg = cfg or {}
        self.host = cfg.get("host", "127.0.0.1")
        self.port = cfg.get("port")
        self.p = devs  # the Periph: its devices by name
        self.up = False
        self.q = []
        self._ev = asyncio.Event()
        self.dropped = self.bad = self.connects = 0
        self._rx = bytearray(RXBUF)

    # ---- the factory side (hal.io.build asks these) -------------------------------------------
    def out(self, *a):  # out(spec, pin), display(spec): the link drives them
        return self

    def inp(self, dev, *a):  # inp(dev, spec, pin), scanner(dev, spec), scale(dev, spec): the link feeds them
        return dev

    display = out
    scanner = scale = inp

    def tasks(self):
        return [self.run()] if self.port else []

    # ---- device -> host -------------------------------------------------------------------
    def write(self, dev, v):
        if isinstance(v, int):
            v = dev.STATES[v]
        self._send({"t": "out", "n": dev.name, "v": v})

    def _send(self, m):
        if not self.up:
            return
        if len(self.q) >= MAXQ:
            self.q.pop(0)
            self.dropped += 1
        self.q.append(json.dumps(m) + "\n")
        self._ev.set()

    # ---- connection -----------------------------------------------------------------------
    async def run(self):
        delay = 100
        while True:
            s = None
            try:
                s = hal.connect(self.host, self.port)
                st = asyncio.StreamReader(s)
                self.q = []
                self.up = True
                out = {}
                for g in self.p.all.values():
                    for d in g if g.KIND == "group" else (g,):
                        if d.KIND == "out":
                            out[d.name] = d.state
                self._send({"t": "hello", "board": self.board, "out": out})
                out = None  # else held by this frame for the whole connection
                down = asyncio.Event()
                r = asyncio.create_task(self._reader(st, down))
                w = asyncio.create_task(self._writer(st, down))
                await down.wait()
                r.cancel()
                w.cancel()
                if self.connects:
                    delay = 100
            except OSError:
                pass
            if self.up:
                self.up = False
                self.q = []
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
            await asyncio.sleep_ms(delay)
            delay = min(delay * 2, 1000)

    async def _writer(self, st, down):
        try:
            first = True
            while True:
                while self.q:
                    st.write(self.q.pop(0))
                await st.drain()
                if first:  # the hello got through: the connection is real
                    first = False
                    self.connects += 1
                    print("sim up", self.connects)
                self._ev.clear()
                if not self.q:
                    await self._ev.wait()
        except Exception as e:
            if self.connects and not down.is_set():
                print("sim down", repr(e))
        finally:
            down.set()

    # ---- host -> device -------------------------------------------------------------------
    async def _reader(self, st, down):
        try:
            buf = self._rx
            mv = memoryview(buf)
            n = 0
            skip = False
            while True:
                k = await st.readinto(mv[n:])
                if not k:
                    raise OSError(ECONNRESET)
                n += k
                start = 0
                while True:
                    i = buf.find(b"\n", start)
                    if i < 0 or i >= n:
                        break
                    if skip:
                        skip = False
                    else:
                        self._line(mv[start:i])
                    start = i + 1
                if start:
                    buf[0:n - start] = buf[start:n]
                    n -= start
                if n == RXBUF:  # a line longer than the buffer: drop it up to its newline
                    self.bad += 1
                    skip = True
                    n = 0
        except Exception as e:
            if self.connects and not down.is_set():
                print("sim down", repr(e))
        finally:
            down.set()

    def _line(self, b):
        try:
            m = json.loads(b)
            t, name, v = m["t"], m["n"], m["v"]
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            print("sim bad line")
            return
        try:
            d = self.p.get(name)
        except Exception:  # unknown (or not a name at all)
            d = None
        kind = getattr(d, "KIND", None)
        if t == "in" and kind == "in" and v in (0, 1):
            d._set(v)
        elif t == "scan" and kind == "scan" and isinstance(v, str) and 0 < len(v) <= MAXSCAN:
            d._got(v)
        elif t == "scale" and kind == "scale" and isinstance(v, int) and not isinstance(v, bool):
            d._set(v)
        else:
            self.bad += 1
            print("sim refused", t, name)


def rtc_floor(t):
    """hal.rtc_floor on the VM, whose clock is the host's and is never set: a test gives a board an
    RTC of its own, file .rtc in its directory (Unix s: a cold board's is 946684800, 2000), which
    this sets as machine.RTC() would. No .rtc: the host's clock, above any floor."""
    try:
        with open(".rtc") as f:
            if int(f.read()) >= t:
                return False
    except (OSError, ValueError):
        return False
    with open(".rtc", "w") as f:
        f.write(str(t))
    return True
