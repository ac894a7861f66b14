# The HAL's interfaces: what apps see, whatever drives them. Each device keeps its state, logs
# every actuation as `ACT <name> <state>` (tests and field logs grep for it) and hands the
# hardware part to a driver: a machine one (hal/mach.py: Pin, PWM, UART, SSD1306; hal/hx711.py) or the
# simulator link (hal/sim.py). `build(board)` makes them from a checked board definition.
#
#   p = hal.build(board)                 p.entry_barrier.open()       p.locks[3].unlock()
#   p.entry_loop.value                   p.on("entry_loop", cb)       await p.qr.read()
#   p.scale.grams                        p.display.show("Welcome")    p.led.pulse(200)
import asyncio


def _call(cbs, *a):
    for cb in cbs:
        try:
            cb(*a)
        except Exception as e:  # one bad handler must not stop the reader that called it
            print("hal: handler error", repr(e))


class Output:
    """Two-state actuator (relay). drv.write(dev, 0|1) drives the hardware."""
    KIND = "out"
    STATES = ("off", "on")
    gi = None  # a group member's index (hal/group.py)

    def __init__(self, name, drv):
        self.name = name
        self._drv = drv
        self.state = self.STATES[0]

    def set(self, on):
        on = 1 if on else 0
        self._drv.write(self, on)
        self.state = self.STATES[on]
        print("ACT", self.name, self.state)

    @property
    def active(self):
        return self.state == self.STATES[1]


class Relay(Output):
    """Barrier or plain relay: open()/close(); state "open" | "closed"."""
    STATES = ("closed", "open")

    def open(self):
        self.set(1)

    def close(self):
        self.set(0)


class Lock(Output):
    """Door or slot lock: unlock()/lock(); state "locked" | "unlocked" (energised = unlocked)."""
    STATES = ("locked", "unlocked")

    def unlock(self):
        self.set(1)

    def lock(self):
        self.set(0)

    @property
    def locked(self):
        return self.state == "locked"


class Indicator(Output):
    """LED or buzzer: on()/off()/pulse(ms)."""

    def on(self):
        self.set(1)

    def off(self):
        self.set(0)

    def pulse(self, ms=200):
        self.set(1)
        asyncio.create_task(self._off(ms))

    async def _off(self, ms):
        await asyncio.sleep_ms(ms)
        self.set(0)


class _Watched:
    """Something with a value that changes: callbacks on change and an awaitable next change.
    The callback list and the Event are made on first use: 8 slot sensors nobody awaits cost less."""

    _cbs = _ev = gi = None  # made on first use, on the instance; gi: index in its group

    def __init__(self, name):
        self.name = name

    def on_change(self, cb):
        self._cbs = (self._cbs or ()) + (cb,)  # a tuple: half a list's RAM, and set up once

    def _changed(self, v):
        if self._ev is not None:
            self._ev.set()
        if self._cbs:
            if self.gi is None:
                _call(self._cbs, v)
            else:
                _call(self._cbs, self.gi, v)

    async def changed(self):
        """Wait for the next change; return the new value."""
        if self._ev is None:
            self._ev = asyncio.Event()
        self._ev.clear()
        await self._ev.wait()
        return self.value


class Input(_Watched):
    """Digital input (vehicle loop, door switch, slot sensor): value 0|1, debounced by its driver."""
    KIND = "in"

    def __init__(self, name, value=0):
        super().__init__(name)
        self.value = value

    def _set(self, v):
        v = 1 if v else 0
        if v != self.value:
            self.value = v
            print("IN", self.name, v)
            self._changed(v)

    async def wait(self, value):
        while self.value != value:
            await self.changed()


class Scanner(_Watched):
    """Plate camera, QR scanner or RFID reader: callbacks get each scanned string; read() awaits one."""
    KIND = "scan"
    MAXQ = 4  # unread scans kept (oldest dropped)

    def __init__(self, name, kind):
        super().__init__(name)  # kind (plate, qr, rfid) is the board file's: nothing here reads it
        self.value = None
        self._q = None  # scans kept for read(), from its first call: callback users keep none

    def _got(self, s):
        self.value = s
        print("SCAN", self.name, s)
        q = self._q
        if q is not None:
            if len(q) >= self.MAXQ:
                q.pop(0)
            q.append(s)
        self._changed(s)

    async def read(self):
        if self._q is None:
            self._q = []
        while not self._q:
            await self.changed()
        return self._q.pop(0)


class Periph:
    """The board's peripherals by name: attributes (p.entry_barrier, p.locks[3]) and lookups for
    apps that go by name (has/get/value/on). Slot groups are hal/group.py's; members are "locks.3"."""

    def __init__(self, board):
        self.board = board
        self.all = {}
        self.link = None  # the simulator link on a sim board

    def _add(self, name, dev):
        self.all[name] = dev
        setattr(self, name, dev)

    def has(self, name):
        return name in self.all

    def get(self, name):
        d = self.all.get(name)
        if d is None:  # a group member, "locks.3"
            g, _, i = name.partition(".")
            g = self.all.get(g)
            if getattr(g, "KIND", 0) != "group" or not i.isdigit() or int(i) >= len(g):
                raise KeyError("no peripheral '" + name + "' on " + self.board.name)
            d = g[int(i)]
        return d

    def value(self, name):
        return self.get(name).value

    def on(self, name, cb):
        """Inputs call cb(value), scanners cb(text), scales cb(grams); a group calls cb(index, value)."""
        self.get(name).on_change(cb)


def _make(f, name, spec, pin):
    t = spec["type"]
    if t in ("barrier", "relay"):
        return Relay(name, f.out(spec, pin))
    if t == "lock":
        return Lock(name, f.out(spec, pin))
    if t == "indicator":
        return Indicator(name, f.out(spec, pin))
    if t == "input":
        return f.inp(Input(name), spec, pin)
    if t == "scanner":
        return f.scanner(Scanner(name, spec["kind"]), spec)
    if t == "scale":
        from hal.scale import Scale
        return f.scale(Scale(name), spec)
    from hal.display import Display
    return Display(name, f.display(spec))


def build(board, loop=None, sim=None):
    """The peripherals of `board` (a board.Board), their background tasks started on `loop` (or
    the default asyncio loop). A sim board talks to the host simulator at sim {"host", "port"};
    without a port it runs detached (actuations are only logged)."""
    p = Periph(board)
    if board.sim:
        from hal.sim import SimLink
        f = p.link = SimLink(board.name, sim, p)
    else:
        from hal import ON_VM
        if ON_VM and board.peripherals:
            from config import ConfigError
            raise ConfigError("board " + board.name + ": not a sim board, the VM cannot drive its peripherals")
        from hal.mach import Factory
        f = Factory()
    for name, spec in board.peripherals.items():
        if "pins" in spec:
            from hal.group import Group
            p._add(name, Group(f, name, spec))
        else:
            p._add(name, _make(f, name, spec, spec.get("pin")))
    spawn = loop.create_task if loop is not None else asyncio.create_task
    for coro in f.tasks():
        spawn(coro)
    return p
