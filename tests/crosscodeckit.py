"""Test kit for the cross-implementation codec tests (tests/test_cross_codec.py,
tests/test_cross_codec_pycose.py): the MicroPython VM that answers codec operations one JSON line
at a time (tests/vm/cross_codec.py) and its module-scoped `vm` fixture, SPEC §4 written out again
as hypothesis strategies (independent of both codecs), the §9 JSON form, each codec's open/seal
reduced to a comparable outcome, and STATS, the tally of what ran.

EDGEPAY_CROSS_N sets the number of cases per property (default 300).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import selectors
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, note, settings
from hypothesis import strategies as st

from host_tools.protocol import ProtocolError, open_message
from tests.test_fw_codec import enc  # hand-written deterministic encoder (neither codec)
from tests.vm import FIRMWARE, VM_SCRIPTS, micropython

N = int(os.environ.get("EDGEPAY_CROSS_N", "300"))
# The server's JSON lines and §9 forms share the VM heap with the codec and fragment it over a
# long run, so it gets more than a board's 64K (tests/test_fw_fuzz.py bounds the codec's memory).
HEAP = "256K"


def cross_settings(n: int = N) -> settings:
    return settings(max_examples=max(n, 1), derandomize=True, database=None, deadline=None,
                    print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


# --- the VM ------------------------------------------------------------------------------------

class VM:
    """One MicroPython process running tests/vm/cross_codec.py; call() is one line each way.
    A crash or a hang is answered as {"crash": ...} and the process is started again."""

    TIMEOUT = 30

    def __init__(self, heap: str = HEAP) -> None:
        self.heap = heap
        self.calls = 0
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.err = tempfile.TemporaryFile()
        self._start()

    def _start(self) -> None:
        env = dict(os.environ)
        env["MICROPYPATH"] = ":".join([str(FIRMWARE), str(VM_SCRIPTS), ".frozen"])
        self.err.seek(0)
        self.err.truncate()
        self.proc = subprocess.Popen(
            [micropython(), "-X", f"heapsize={self.heap}", str(VM_SCRIPTS / "cross_codec.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def call(self, op: dict[str, Any]) -> dict[str, Any]:
        assert self.proc and self.proc.stdin and self.proc.stdout
        self.calls += 1
        line = (json.dumps(op, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
            ready = self.sel.select(self.TIMEOUT)
            out = self.proc.stdout.readline() if ready else b""
        except BrokenPipeError:
            out = b""
        if out.endswith(b"\n"):
            return json.loads(out.decode("utf-8"))
        self.proc.kill()
        self.proc.wait()
        self.err.seek(0)
        why = (out.decode("utf-8", "replace")[-200:] + "\n"
               + self.err.read().decode("utf-8", "replace")[-2000:]).strip() or "no answer"
        self.restarts += 1
        self._start()
        return {"crash": why}

    def close(self) -> None:
        if self.proc:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.sel.close()
            self.proc.stdout.close()  # type: ignore[union-attr]
        self.err.close()


@pytest.fixture(scope="module", name="vm")
def cross_vm():
    """The module's VM (imported as cross_vm, requested as vm)."""
    machine = VM()
    assert "pong" in machine.call({"op": "ping"})
    yield machine
    machine.close()
    assert machine.restarts == 0, "the VM crashed or hung (see the failing case)"


# --- SPEC §4, written out again here (independent of both codecs) -------------------------------

U64 = (1 << 64) - 1
RESETS = ("power_on", "hard", "soft", "watchdog", "deepsleep", "brownout", "unknown")
KINDS = ("gate", "vending", "rental")
PURPOSES = ("entry", "exit", "vend", "rent", "return", "reauth")
ERROR_NUMBERS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 30, 31, 32,
                 33, 34, 35, 36, 37, 40, 41, 42, 43, 44)
SUFFIX = {1: "up/hello", 2: "up/status", 3: "up/hb", 4: "up/evt", 5: "up/evt", 6: "up/rec",
          7: "up/rec", 8: "up/rec", 9: "up/res", 10: "up/req", 11: "up/time", 12: "up/ota",
          20: "dn/cmd", 21: "dn/ack", 22: "dn/time", 23: "dn/ota"}
# SPEC §3: in a payload on dn/ota a bstr valued in the top-level map may be 1536 bytes
MAX_STR, MAX_CHUNK = 512, 1536

EDGE_UINTS = (0, 1, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, U64 - 1, U64)
EDGE_INTS = (-1, -24, -25, -128, -256, -257, -(1 << 32), -(1 << 63), -(1 << 64) + 1, -(1 << 64))
ODD_CHARS = ("é", "ß", "€", "中", "😀", "\U0010ffff", "\x00", "\x7f", "\u2028", "\ufeff",
             "\ufffe", '"', "\\", "\n")


def uints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(EDGE_UINTS), st.integers(0, U64))


# SPEC §4 integer bounds: a field's values run to its bound (often exactly at it)
MAX_COUNT, MAX_TIME, MAX_MONEY = (1 << 53) - 1, (1 << 32) - 1, 10 ** 12


def bounded(hi: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(tuple(x for x in EDGE_UINTS if x <= hi) + (hi - 1, hi)),
                     st.integers(0, hi))


def ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(EDGE_INTS + (0, -67, U64)), st.integers(-(1 << 64), U64),
                     st.integers(-120, -30))


CHARS = st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                  st.characters(exclude_categories=("Cs",)), st.sampled_from(ODD_CHARS))


@lru_cache(maxsize=None)
def text(lo: int, hi: int) -> st.SearchStrategy[str]:
    """UTF-8 text of lo..hi bytes; often exactly hi bytes, with multi-byte characters at the end."""

    @st.composite
    def draw_text(draw: Any) -> str:
        mode = draw(st.sampled_from(("free", "free", "max", "max_wide", "min")))
        s, n = "", 0
        for c in draw(st.lists(CHARS, max_size=min(hi, 40))):
            b = len(c.encode())
            if n + b <= hi:
                s, n = s + c, n + b
        if mode == "max":
            s += "a" * (hi - n)
        elif mode == "max_wide":  # fill to exactly hi bytes with 4-, 3-, 2- and 1-byte characters
            for c in ("😀", "€", "é", "a"):
                while n + len(c.encode()) <= hi:
                    s, n = s + c, n + len(c.encode())
        elif mode == "min":
            s = s[:1] if lo else ""
        s += "a" * max(0, lo - len(s.encode()))
        assert lo <= len(s.encode()) <= hi
        return s

    return draw_text()


DEVICE_IDS = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True),
                       st.sampled_from(("gate-001", "a", "0", "z" * 32, "9-" * 16)))
CURRENCIES = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3)


# strings at the 512-byte bound (built lazily: a literal would make every strategy repr huge)
BIG_STRINGS = st.sampled_from(("bstr", "tstr2", "tstr1", "tstr4")).map(
    lambda k: {"bstr": b"\xaa" * 512, "tstr2": "é" * 256, "tstr1": "x" * 512,
               "tstr4": "😀" * 128}[k])


@lru_cache(maxsize=None)
def value(depth: int) -> st.SearchStrategy[Any]:
    """Any profile value whose top item sits at `depth` (1 = the payload map): containers stop at
    depth 8, so nothing generated is too deep."""
    scalars = st.one_of(uints(), ints(), st.booleans(), st.none(), st.binary(max_size=24),
                        text(0, 24), BIG_STRINGS)
    if depth >= 8:
        return scalars
    return st.one_of(scalars, scalars,
                     st.lists(st.deferred(lambda: value(depth + 1)), max_size=4),
                     st.deferred(lambda: maps(depth)))


@lru_cache(maxsize=None)
def maps(depth: int) -> st.SearchStrategy[dict[Any, Any]]:
    """A map at `depth` (detail/args/data are at depth 2) with int and text keys."""
    keys = st.one_of(st.sampled_from(EDGE_UINTS + EDGE_INTS), st.integers(-30, 30), text(0, 12))
    return st.one_of(
        st.dictionaries(keys, value(depth + 1), max_size=5),
        st.builds(lambda vals, first, step: {first + step * i: v for i, v in enumerate(vals)},
                  st.lists(st.integers(0, 30), min_size=60, max_size=64),
                  st.integers(-100, 1000), st.integers(1, 5)),
        st.builds(lambda d: {f"k{i}": v for i, v in enumerate(d)},
                  st.lists(st.booleans(), min_size=60, max_size=64)),
    )


# a chunk's data: 1..1536 bytes, often at or around the 512 and 1536 bounds
CHUNK_DATA = st.one_of(
    st.binary(min_size=1, max_size=32),
    st.sampled_from((1, 511, 512, 513, 1535, 1536)).map(lambda n: bytes((k * 7) & 0xFF for k in range(n))),
    st.tuples(st.integers(1, MAX_CHUNK), st.integers(0, 255)).map(lambda nb: bytes([nb[1]]) * nb[0]))

LINES = st.lists(st.tuples(text(1, 32), bounded(MAX_COUNT), bounded(MAX_MONEY)).map(list),
                 max_size=32)


def _f(name: str, key: int, required: bool, strat: st.SearchStrategy[Any]) -> tuple:
    return (name, key, required, strat)


def _spec() -> dict[str, tuple[int, list[tuple]]]:
    u, tm, money = bounded(MAX_COUNT), bounded(MAX_TIME), bounded(MAX_MONEY)
    rssi = st.one_of(st.sampled_from((-MAX_COUNT, MAX_COUNT)), st.integers(-MAX_COUNT, MAX_COUNT),
                     st.integers(-120, -30))
    iat_opt = _f("iat", 6, False, tm)
    seq = _f("seq", 8, True, u)
    prev = _f("prev", 9, True, st.binary(min_size=16, max_size=16))
    sid = _f("sid", 10, True, text(1, 32))
    aud = _f("aud", 3, True, DEVICE_IDS)
    iat = _f("iat", 6, True, tm)
    rel = _f("rel", 10, True, st.binary(min_size=8, max_size=8))
    session = [seq, prev, sid, _f("payer", 11, True, text(1, 64)), _f("slot", 12, False, u),
               _f("t0", 13, True, tm), _f("offline", 14, False, st.booleans()),
               _f("auth", 15, False, text(1, 64))]
    return {
        "hello": (1, [iat_opt, seq, _f("fw", 10, True, text(1, 32)),
                      _f("board", 11, True, text(1, 32)),
                      _f("reset", 12, True, st.sampled_from(RESETS)),
                      _f("caps", 13, True, st.lists(text(1, 16), max_size=16)),
                      _f("kind", 14, True, st.sampled_from(KINDS)), _f("boots", 15, False, u)]),
        "status": (2, [iat_opt, seq, _f("online", 10, True, st.booleans())]),
        "heartbeat": (3, [iat_opt, seq, _f("uptime", 10, True, u), _f("heap", 11, True, u),
                          _f("jdepth", 12, True, u), _f("rssi", 13, False, rssi),
                          _f("clock", 14, True, st.sampled_from((0, 1))), _f("rx_refused", 15, False, u),
                          _f("rx_oversize", 16, False, u), _f("rx_dropped", 17, False, u),
                          _f("off_amt", 18, False, u), _f("off_n", 19, False, u)]),
        "event": (4, [iat_opt, seq, _f("code", 10, True, text(1, 32)),
                      _f("detail", 11, False, maps(2))]),
        "alarm": (5, [iat_opt, seq, _f("code", 10, True, text(1, 32)),
                      _f("detail", 11, False, maps(2)), _f("active", 12, True, st.booleans())]),
        # amount and cur: together or not at all
        "sess_open": (6, session + [_f("amount", 16, None, money), _f("cur", 17, None, CURRENCIES),
                                    _f("item", 21, False, text(1, 64))]),
        "sess_update": (7, [seq, prev, sid, _f("amount", 16, True, money),
                            _f("cur", 17, True, CURRENCIES), _f("t1", 18, True, tm)]),
        "sess_close": (8, session + [_f("amount", 16, True, money), _f("cur", 17, True, CURRENCIES),
                                     _f("t1", 18, True, tm), _f("lines", 19, False, LINES),
                                     _f("reason", 20, False, text(1, 16))]),
        "cmd_result": (9, [iat_opt, _f("cti", 7, False, st.binary(min_size=8, max_size=16)), seq,
                           _f("status", 10, True, st.sampled_from(ERROR_NUMBERS)),
                           _f("name", 11, False, text(1, 24)), _f("data", 12, False, maps(2)),
                           _f("cseq", 13, False, u)]),
        # amount and cur: together or not at all
        "auth_req": (10, [iat_opt, seq, sid, _f("payer", 11, True, text(1, 64)),
                          _f("slot", 12, False, u),
                          _f("purpose", 14, True, st.sampled_from(PURPOSES)),
                          _f("auth", 15, False, text(1, 64)), _f("amount", 16, None, money),
                          _f("cur", 17, None, CURRENCIES), _f("t0", 18, False, tm),
                          _f("t1", 19, False, tm)]),
        "command": (20, [aud, _f("exp", 4, True, tm), _f("nbf", 5, False, tm), iat,
                         _f("cti", 7, True, st.binary(min_size=8, max_size=16)), seq,
                         _f("name", 10, True, text(1, 24)), _f("args", 11, False, maps(2))]),
        "ack": (21, [aud, iat, seq, _f("upto", 10, True, u),
                     _f("resend", 11, False, st.booleans()),
                     _f("quarantined", 12, False, st.lists(u, max_size=16))]),
        "time_req": (11, [seq, _f("nonce", 10, True, st.binary(min_size=8, max_size=16))]),
        "time": (22, [aud, iat, seq, _f("nonce", 10, True, st.binary(min_size=8, max_size=16))]),
        "chunk_req": (12, [iat_opt, seq, rel, _f("i", 11, True, u)]),
        "chunk": (23, [aud, iat, seq, rel, _f("i", 11, True, u), _f("data", 12, True, CHUNK_DATA)]),
    }


SPEC = _spec()
TYPE_NAMES = tuple(SPEC)
# keys no SPEC field of the type uses (some are known for other types: receivers ignore them)
UNKNOWN_KEYS = (1, 2, 3, 4, 5, 7, 9, 15, 19, 20, 21, 23, 24, 99, 255, 256, 1 << 32, U64, -1, -25)


@dataclass
class Case:
    name: str
    message: dict[Any, Any]  # by field names (+ unknown int keys), as host seal() takes it
    wire: dict[int, Any]  # int keys, as the device's msg.seal() takes it
    device: str
    key: bytes
    kid: str
    topic: str
    extra: list[int] = field(default_factory=list)


def device_seals(c: Case) -> bool:
    """False for a message a device's codec refuses to encode: a chunk with over 512 bytes of
    data. A device never sends a chunk, and its encoder keeps the 512-byte string bound; SPEC §3's
    1536 is for what it receives on dn/ota."""
    return not any(type(v) is bytes and len(v) > MAX_STR for v in c.wire.values())


def count_items(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + sum(count_items(k) + count_items(x) for k, x in v.items())
    if isinstance(v, list):
        return 1 + sum(count_items(x) for x in v)
    return 1


def envelope(key: bytes, kid: str, topic: str, payload: bytes) -> bytes:
    """COSE_Mac0 by hand (hmac + the test encoder): valid MAC over any payload bytes."""
    prot = enc({1: 5, 4: kid.encode()})
    mac = hmac.new(key, b"\x84\x64MAC0" + enc(prot) + enc(topic.encode()) + enc(payload),
                   hashlib.sha256).digest()
    return b"\xd1\x84" + enc(prot) + b"\xa0" + enc(payload) + enc(mac)


@st.composite
def cases(draw: Any, names: tuple[str, ...] = TYPE_NAMES) -> Case:
    name = draw(st.sampled_from(names))
    number, fields = SPEC[name]
    message: dict[Any, Any] = {"type": name}
    wire: dict[int, Any] = {0: number}
    money = draw(st.booleans())
    for fname, key, required, strat in fields:
        present = money if required is None else (required or draw(st.booleans()))
        if present:
            message[fname] = wire[key] = draw(strat)
    known = {0} | {f[1] for f in fields}
    extra = [k for k in draw(st.lists(st.sampled_from(UNKNOWN_KEYS), max_size=2, unique=True))
             if k not in known]
    for k in extra:
        message[k] = wire[k] = draw(value(2))
    device = draw(DEVICE_IDS)
    version = draw(st.one_of(st.integers(1, 9), st.sampled_from((10, 1 << 31, U64))))
    c = Case(name, message, wire, device, draw(st.binary(min_size=32, max_size=32)),
             f"{device}:{version}", f"v1/dev/{device}/{SUFFIX[number]}", extra)
    # SPEC §3 bounds: ≤ 256 items in the payload, ≤ 2048 bytes on the wire
    assume(count_items(wire) <= 256)
    assume(len(envelope(c.key, c.kid, c.topic, enc(wire))) <= 2048)
    return c


# --- the §9 JSON form --------------------------------------------------------------------------

def to_json(v: Any, canon: bool = False) -> Any:
    """§9 form; map entries in the order given (a decoder's: wire order), or with canon=True
    sorted bytewise by encoded key (what the wire order must be)."""
    if isinstance(v, (bytes, bytearray)):
        return {"$hex": bytes(v).hex()}
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: enc(kv[0])) if canon else v.items()
        return {"$map": [[to_json(k, canon), to_json(x, canon)] for k, x in items]}
    if isinstance(v, (list, tuple)):
        return [to_json(x, canon) for x in v]
    return v


def J(v: Any) -> str:
    """Canonical text of a §9 form: compares True and 1, 0 and False as different."""
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def expected(c: Case) -> dict[str, Any]:
    return {k: to_json(v, True) for k, v in c.message.items() if isinstance(k, str)}


def host_form(decoded: dict[str, Any]) -> dict[str, Any]:
    return {k: to_json(v) for k, v in decoded.items()}


def host_open(key: bytes, kid: str, topic: str, data: bytes) -> dict[str, Any]:
    try:
        return {"decoded": host_form(open_message(key, kid, topic, data))}
    except ProtocolError as e:
        return {"error": e.code}


def vm_open(vm: VM, key: bytes, kid: str, topic: str, data: bytes) -> dict[str, Any]:
    return vm.call({"op": "open", "key": key.hex(), "kid": kid, "topic": topic,
                    "hex": data.hex()})


def vm_seal(vm: VM, c: Case) -> dict[str, Any]:
    return vm.call({"op": "seal", "key": c.key.hex(), "kid": c.kid, "topic": c.topic,
                    "fields": to_json(c.wire, True)})


STATS: dict[str, dict[str, int]] = {}


def tally(test: str, what: str) -> None:
    d = STATS.setdefault(test, {})
    d[what] = d.get(what, 0) + 1


def show(c: Case) -> None:
    note(f"type={c.name} kid={c.kid} topic={c.topic} key={c.key.hex()}")
    note(f"message={c.message!r}")


# key and kid of the hand-made messages (KNOWN/RESOLVED inputs, pycose variants)
KEY = bytes(range(32))
KID = "gate-001:1"
