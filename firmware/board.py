# Board definitions (boards/*.json): which MCU, which peripherals on which pins, and the board's
# limits. Checked at boot with the rules of boards/schema.json (MicroPython has no jsonschema), so
# a wrong or incomplete board file stops the device with the exact field, never later in the field:
#   ConfigError: board sim-gate: peripheral 'entry_barrier' needs 'pin'
# A few rules a schema cannot say are checked here only: no pin used twice, the journal fits its
# flash region, a rental board has per-slot lock and sensor groups.
import json

from config import ConfigError

KINDS = ("gate", "vending", "rental")
PIN_TYPES = ("relay", "barrier", "lock", "input", "indicator")
REQUIRED = ("name", "kind", "mcu", "heap_kb", "flash_kb", "journal", "flash", "wdt_ms", "peripherals")


def _rules():
    """The schema's tables, built only while a board is being checked (module-level dicts would
    stay in RAM for good, even with the code frozen into flash)."""
    # mcu -> (highest GPIO, GPIOs that are flash/PSRAM/radio or do not exist)
    MCUS = {"esp32": (39, (6, 7, 8, 9, 10, 11)),
            "esp32s3": (48, (22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32)),
            "rp2040": (28, (23, 24, 25))}
    # peripheral type -> drivers it may use
    TYPES = {"relay": ("gpio",), "barrier": ("gpio",), "lock": ("gpio",), "input": ("gpio",),
             "indicator": ("gpio", "pwm"), "scanner": ("uart",), "scale": ("hx711",), "display": ("ssd1306", "console")}
    # top-level key -> (type, min, max); "o" object, "s" str, "b" bool, "i" int
    TOP = {"name": "s", "description": "s", "kind": "s", "mcu": "s", "sim": "b", "heap_kb": ("i", 16, 1024),
           "flash_kb": ("i", 256, 16384), "wdt_ms": ("i", 1000, 60000), "slots": ("i", 1, 16), "journal": "o",
           "flash": "o", "fs": "o", "peripherals": "o"}  # fs: the main filesystem's region, host-checked
    FLASH = {"label": "s", "start": ("i", 0, 1 << 30), "len": ("i", 16384, 1 << 30), "blocks": ("i", 8, 4096),
             "block_size": ("i", 256, 65536), "readsize": ("i", 16, 4096), "progsize": ("i", 1, 4096), "dir": "s"}
    # peripheral key -> "p" a pin, "P" a pin list, a tuple of allowed strings, "n" number > 0, or (type, min, max)
    PKEYS = {"type": "s", "driver": "s", "pin": "p", "pins": "P", "active": ("high", "low"),
             "pull": ("up", "down", "none"), "debounce_ms": ("i", 0, 1000), "kind": ("plate", "qr", "rfid"),
             "uart": "o", "i2c": "o", "dout": "p", "sck": "p", "per_gram": "n", "offset": ("i", -(1 << 30), 1 << 30),
             "period_ms": ("i", 50, 60000), "freq": ("i", 20, 40000), "width": ("i", 32, 256), "height": ("i", 8, 128),
             "note": "s"}
    UART = {"id": ("i", 0, 2), "tx": "p", "rx": "p", "baud": ("i", 1200, 921600)}
    I2C = {"id": ("i", 0, 1), "sda": "p", "scl": "p", "addr": ("i", 8, 119), "freq": ("i", 10000, 1000000)}
    return MCUS, TYPES, TOP, FLASH, PKEYS, UART, I2C


def _isint(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _name_ok(s, first, rest, n):
    if not 1 <= len(s) <= n or s[0] not in first:
        return False
    for c in s:
        if c not in rest:
            return False
    return True


_LOW = "abcdefghijklmnopqrstuvwxyz"
_DIG = "0123456789"


class Board:
    """A checked board definition. Reads like the config's board dict (b["name"], b.get("flash"))."""

    def __init__(self, d):
        self.d = d
        self.name = d["name"]  # the fields apps and the HAL read often; the rest by b["mcu"], b.get(...)
        self.kind = d["kind"]
        self.sim = bool(d.get("sim"))
        self.peripherals = d.get("peripherals") or {}

    def __getitem__(self, k):
        return self.d[k]

    def __contains__(self, k):
        return k in self.d

    def get(self, k, default=None):
        return self.d.get(k, default)


class _Check:
    def __init__(self, name):
        self.w = "board " + name

    def fail(self, what):
        raise ConfigError(self.w + ": " + what)

    def field(self, where, d, k, rule):
        v = d[k]
        if isinstance(rule, tuple) and isinstance(rule[0], str) and len(rule[0]) > 1:  # an enum
            if v not in rule:
                self.fail(where + "'" + k + "' must be one of " + "|".join(rule))
            return
        t = rule[0] if isinstance(rule, tuple) else rule
        if t == "s":
            ok = isinstance(v, str)
        elif t == "b":
            ok = isinstance(v, bool)
        elif t == "o":
            ok = isinstance(v, dict)
        elif t == "i":
            ok = _isint(v)
        elif t == "n":
            ok = (_isint(v) or isinstance(v, float)) and v > 0
        else:
            ok = True  # pins: checked against the MCU by _pin
        if not ok:
            self.fail(where + "'" + k + "' has the wrong type")
        if isinstance(rule, tuple) and not rule[1] <= v <= rule[2]:
            self.fail(where + "'" + k + "' out of range %d..%d" % (rule[1], rule[2]))

    def fields(self, where, d, rules):
        for k in d:
            if k not in rules:
                self.fail(where + "unknown field '" + k + "'")
            self.field(where, d, k, rules[k])


def _pin(ck, mcus, mcu, where, k, v, used):
    mx, bad = mcus[mcu]
    if not _isint(v) or not 0 <= v <= mx or v in bad:
        ck.fail(where + "bad pin '" + k + "': " + repr(v) + " (" + mcu + ")")
    if v in used:
        ck.fail(where + "pin %d already used by '%s'" % (v, used[v]))
    used[v] = where[12:-2] if where.startswith("peripheral") else where


def validate(d):
    """Check a board definition dict; return it, or raise ConfigError naming the field."""
    if not isinstance(d, dict):
        raise ConfigError("board: not an object")
    name = d.get("name")
    if not isinstance(name, str) or not _name_ok(name, _LOW + _DIG, _LOW + _DIG + "-", 32):
        raise ConfigError("board: needs a valid 'name'")
    ck = _Check(name)
    MCUS, TYPES, TOP, FLASH, PKEYS, UART, I2C = _rules()
    for k in REQUIRED:
        if k not in d:
            ck.fail("needs '" + k + "'")
    ck.fields("", d, TOP)
    if d["kind"] not in KINDS:
        ck.fail("'kind' must be one of " + "|".join(KINDS))
    mcu = d["mcu"]
    if mcu not in MCUS:
        ck.fail("'mcu' must be one of " + "|".join(MCUS))
    sim = d.get("sim", False)
    j = d["journal"]
    if "capacity" not in j:
        ck.fail("journal needs 'capacity'")
    ck.fields("journal ", j, {"capacity": ("i", 4096, 1048576)})
    fl = d["flash"]
    ck.fields("flash ", fl, FLASH)
    ways = ("label" in fl) + ("start" in fl and "len" in fl) + ("blocks" in fl)
    if ways != 1:
        ck.fail("flash needs exactly one of 'label', 'start'+'len', 'blocks'")
    if sim and "blocks" not in fl:
        ck.fail("flash of a sim board needs 'blocks'")
    if not sim and "blocks" in fl:
        ck.fail("flash 'blocks' is for sim boards only")
    region = fl["blocks"] * fl.get("block_size", 4096) if "blocks" in fl else fl.get("len")
    if region and j["capacity"] * 2 > region:
        ck.fail("journal 'capacity' does not fit its flash region (at most half of it)")
    slots = d.get("slots")
    if (d["kind"] == "rental") != (slots is not None):
        ck.fail("needs 'slots'" if d["kind"] == "rental" else "'slots' is for rental boards only")
    ps = d["peripherals"]
    if not ps:
        ck.fail("needs at least one peripheral")
    used = {}
    groups = {}
    for pn, p in ps.items():
        w = "peripheral '" + pn + "' "
        if not _name_ok(pn, _LOW, _LOW + _DIG + "_", 24):
            ck.fail("bad peripheral name '" + pn + "'")
        if not isinstance(p, dict):
            ck.fail(w + "is not an object")
        for k in ("type", "driver"):
            if k not in p:
                ck.fail(w + "needs '" + k + "'")
        ck.fields(w, p, PKEYS)
        t, drv = p["type"], p["driver"]
        if t not in TYPES:
            ck.fail(w + "unknown type '" + t + "'")
        if drv not in TYPES[t]:
            ck.fail(w + "driver '" + drv + "' cannot drive a " + t)
        if t in PIN_TYPES:
            if ("pin" in p) == ("pins" in p):
                ck.fail(w + "needs 'pin'" + (" or 'pins', not both" if "pin" in p else ""))
        elif "pin" in p or "pins" in p:
            ck.fail(w + "takes no 'pin'/'pins'")
        if "pin" in p:
            _pin(ck, MCUS, mcu, w, "pin", p["pin"], used)
        if "pins" in p:
            pl = p["pins"]
            if not isinstance(pl, list) or not pl:
                ck.fail(w + "'pins' must be a non-empty list")
            if slots is None:
                ck.fail(w + "'pins' (a per-slot group) needs 'slots'")
            if len(pl) != slots:
                ck.fail(w + "has %d pins for %d slots" % (len(pl), slots))
            for v in pl:
                _pin(ck, MCUS, mcu, w, "pins", v, used)
            groups[t] = pn
        for k in ("dout", "sck"):
            if k in p:
                _pin(ck, MCUS, mcu, w, k, p[k], used)
        if t == "scanner":
            if "kind" not in p:
                ck.fail(w + "needs 'kind'")
            if "uart" not in p:
                ck.fail(w + "needs 'uart'")
        if t == "scale":
            for k in ("dout", "sck"):
                if k not in p:
                    ck.fail(w + "needs '" + k + "'")
        if drv == "ssd1306" and "i2c" not in p:
            ck.fail(w + "needs 'i2c'")
        for k, rules, need in (("uart", UART, ("id", "rx", "baud")), ("i2c", I2C, ("id", "sda", "scl"))):
            if k in p:
                sub = p[k]
                ww = w + k + " "
                for r in need:
                    if r not in sub:
                        ck.fail(ww + "needs '" + r + "'")
                ck.fields(ww, sub, rules)
                for r in ("tx", "rx", "sda", "scl"):
                    if r in sub:
                        _pin(ck, MCUS, mcu, w, k + "." + r, sub[r], used)
    if slots is not None:
        for t in ("lock", "input"):
            if t not in groups:
                ck.fail("a rental board needs a per-slot '" + t + "' group ('pins' with one pin per slot)")
    return d


def load(src):
    """A Board from a board dict (the config's "board" section) or a path to a board file.

    A config "board" section with only name/kind (no "mcu", no "peripherals") is the legacy form:
    it is accepted as a board without peripherals. Anything more is checked in full.
    """
    if isinstance(src, str):
        try:
            with open(src) as f:
                src = json.load(f)
        except OSError:
            raise ConfigError("board file " + src + ": not found")
        except ValueError:
            raise ConfigError("board file " + src + ": not valid JSON")
    if isinstance(src, Board):
        return src
    if isinstance(src, dict) and "mcu" not in src and "peripherals" not in src:
        n = src.get("name")
        if not isinstance(n, str) or src.get("kind") not in KINDS:
            raise ConfigError("board: needs 'name' and a 'kind' (" + "|".join(KINDS) + ")")
        return Board(src)
    validate(src)
    src.pop("description", None)  # documentation only: not worth RAM on the device
    for p in src["peripherals"].values():
        p.pop("note", None)
    return Board(src)


def boot(cfg):
    """Check cfg["board"] at boot; on error print it and halt (exit 3 on the VM): no boot loop."""
    try:
        b = load(cfg["board"])
    except ConfigError as e:
        print("config error:", e)
        from hal import reset
        reset.halt(reset.EXIT_CONFIG)
        raise
    cfg["board"] = b
    return b
