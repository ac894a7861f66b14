"""Device key rotation on the real MicroPython VM against real Mosquitto (SPEC §11), driven by
hand-made signed commands so that the device's side is tested apart from the cloud's: the next key
unwrapped and proved; commands under the current key still run until the switch; the first
downlink under the next kid switches it (answered under the new kid), after which the old kid is
refused; the new key survives a reboot; every refusal (wrong version, a tampered wrap, a wrap
under another key, a wrap of the wrong size) changes nothing; and a power cut at every few flash
operations of boot, rekey and switch leaves a device that answers under one of its two keys and
completes the rotation when the cloud goes on."""
from __future__ import annotations

import hashlib
import hmac
import os
import queue
import threading
import time

import cbor2
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from paho.mqtt.enums import CallbackAPIVersion

from host_tools.protocol import ERROR_NAMES, ProtocolError, open_message, seal
from host_tools.protocol import topic as topic_for
from tests.agentkit import CLOUD, AgentRig

DEV = "dev1"
K1_KID, K2_KID = f"{DEV}:1".encode(), f"{DEV}:2".encode()


class Keyed:
    """A listener on the device's uplinks that verifies each under the key its kid names."""

    def __init__(self, broker, keys: dict[bytes, bytes]):
        self.keys = keys
        self.board = None  # set: expect() gives up as soon as this SimBoard has died
        self.q: queue.Queue = queue.Queue()
        self.all: list[tuple[str, dict, bytes]] = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"keyed-{os.urandom(4).hex()}")
        self.c.username_pw_set(*CLOUD)
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, r, p: (c.subscribe("v1/dev/+/up/#", 1), ready.set())
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", broker.cloud_port)
        self.c.loop_start()
        assert ready.wait(5)

    def _on(self, c, u, m):
        try:
            kid = cbor2.loads(cbor2.loads(m.payload).value[0])[4]
            msg = open_message(self.keys[kid], kid, m.topic, m.payload)
        except (ProtocolError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            kid, msg = b"", {"error": getattr(e, "code", repr(e))}
        item = (m.topic, msg, kid)
        self.all.append(item)
        self.q.put(item)

    def expect(self, pred, timeout=10.0, what="message"):
        """The next message pred() holds for; AssertionError at the timeout, or at once when the
        board being watched (self.board) has died."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                item = self.q.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.board is not None and not self.board.running:
                    raise AssertionError(f"the board died waiting for {what}") from None
                continue
            if pred(*item):
                return item
        raise AssertionError(f"no {what} within {timeout}s; saw {self.all[-6:]}")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def rig(broker, tmp_path):
    env = AgentRig(broker, tmp_path, serve_time=True)
    b = env.board(DEV)
    k1 = env.reg.get(DEV).key
    k2 = os.urandom(32)
    keyed = Keyed(broker, {K1_KID: k1, K2_KID: k2})
    yield env, b, k1, k2, keyed
    keyed.close()
    env.close()


def send(env, key, kid, name, args=None):
    """Publish a command signed under (key, kid) to kid's device; -> its cti."""
    dev = kid.decode().split(":")[0]
    now = int(time.time())
    cti = os.urandom(12)
    msg: dict = {"type": "command", "aud": dev, "exp": now + 60, "iat": now, "cti": cti,
                 "seq": env.reg.next_seq(dev), "name": name}
    if args is not None:
        msg["args"] = args
    t = topic_for(dev, "command")
    assert env.c.mqtt.publish(t, seal(key, kid, t, msg), qos=1, timeout=10)
    return cti


def result(keyed, cti, timeout=10.0):
    """(status name, data, kid it was signed under) of the command's result."""
    _, m, kid = keyed.expect(lambda t, m, k: t.endswith("/up/res") and m.get("cti") == cti, timeout, "result")
    return ERROR_NAMES[m["status"]], m.get("data"), kid


def proof(key: bytes, kid: bytes) -> bytes:
    return hmac.new(key, b"edgepay-rekey:" + kid, hashlib.sha256).digest()[:16]


def online(keyed, timeout=20.0, dev=DEV):
    keyed.expect(lambda t, m, k: t == f"v1/dev/{dev}/up/status" and m.get("online") is True, timeout, "online")


def clocked(env, keyed, key, kid, timeout=20.0):
    """The device answers get_state under (key, kid) with a trusted clock: -> the kid it answered under."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            code, data, k = result(keyed, send(env, key, kid, "get_state"), 3)
        except AssertionError:
            if keyed.board is not None and not keyed.board.running:
                raise
            continue
        if code == "ok" and data["clock"] == 1:
            return k
        time.sleep(0.3)
    raise AssertionError("no get_state with a trusted clock")


def test_rotation_switches_on_the_first_downlink_under_the_next_kid(rig):
    env, b, k1, k2, keyed = rig
    b.start()
    online(keyed)
    clocked(env, keyed, k1, K1_KID)
    wrapped = aes_key_wrap(k1, k2)
    code, data, kid = result(keyed, send(env, k1, K1_KID, "rekey", {1: 2, 2: wrapped}))
    assert (code, kid) == ("ok", K1_KID) and data == {"kv": 2, "proof": proof(k2, K2_KID)}
    b.wait_for("", 1)
    assert b.state("keynext")["v"] == 2 and b.state("key") is None
    # the same rekey again: the same proof; commands under the current key still run
    assert result(keyed, send(env, k1, K1_KID, "rekey", {1: 2, 2: wrapped}))[:2] == ("ok", data)
    assert result(keyed, send(env, k1, K1_KID, "display", {1: "still k1"}))[::2] == ("ok", K1_KID)
    # the confirmation: any command under the next kid; answered under it
    code, st, kid = result(keyed, send(env, k2, K2_KID, "get_state"))
    assert (code, kid) == ("ok", K2_KID)
    assert b.state("key")["v"] == 2 and b.state("keynext") is None
    # the old kid is refused from now on (unauthenticated: a result with no cti), nothing runs
    n = len(keyed.all)
    send(env, k1, K1_KID, "display", {1: "old key"})
    _, m, kid = keyed.expect(lambda t, m, k: t.endswith("/up/res") and "cti" not in m, 10, "bad_kid")
    assert ERROR_NAMES[m["status"]] == "bad_kid" and kid == K2_KID
    assert all(k in (K2_KID, b"") for _, _, k in keyed.all[n:])   # every new message under the new kid
    # the new key survives a reboot: hello, status and results under kid 2
    b.stop()
    n = len(keyed.all)
    b.start()
    online(keyed)
    code, _, kid = result(keyed, send(env, k2, K2_KID, "get_state"))   # read-only: runs untimed
    assert (code, kid) == ("ok", K2_KID)
    assert {k for _, _, k in keyed.all[n:]} == {K2_KID}


@pytest.mark.parametrize("args, why", [
    ({1: 3}, "rekey"),                          # not current + 1 (and no wrap)
    ({1: 1, 2: b"\0" * 40}, "rekey"),           # the current version
    ({1: 2, 2: b"\0" * 32}, "rekey"),           # a wrap of the wrong size
    ({1: 2, 2: "tampered"}, "unwrap"),          # one bit of the wrap flipped
    ({1: 2, 2: "other"}, "unwrap"),             # wrapped under another key
], ids=["version-jump", "same-version", "short-wrap", "tampered", "other-kek"])
def test_a_bad_rekey_is_refused_and_changes_nothing(rig, args, why):
    env, b, k1, k2, keyed = rig
    b.start()
    online(keyed)
    clocked(env, keyed, k1, K1_KID)
    if args.get(2) == "tampered":
        w = bytearray(aes_key_wrap(k1, k2))
        w[17] ^= 1
        args = {1: 2, 2: bytes(w)}
    elif args.get(2) == "other":
        args = {1: 2, 2: aes_key_wrap(os.urandom(32), k2)}
    code, data, kid = result(keyed, send(env, k1, K1_KID, "rekey", args))
    assert (code, data, kid) == ("bad_args", {"why": why}, K1_KID)
    assert b.state("keynext") is None and b.state("key") is None
    # a command under the would-be next kid is refused: there is no next key
    send(env, k2, K2_KID, "get_state")
    _, m, kid = keyed.expect(lambda t, m, k: t.endswith("/up/res") and "cti" not in m, 10, "bad_kid")
    assert ERROR_NAMES[m["status"]] == "bad_kid" and kid == K1_KID


# ---- power cuts ------------------------------------------------------------------------------
CUTS_ALL = os.environ.get("EDGEPAY_REKEY_CUTS", "") == "all"
STRIDE = 1 if CUTS_ALL else 3


def answered_under(env, keyed, key, kid, timeout=8.0):
    """Send get_state (read-only, runs untimed) under (key, kid): -> the kid of an ok answer, or
    None if it was refused unauthenticated (bad_kid)."""
    cti = send(env, key, kid, "get_state")
    dev = kid.decode().split(":")[0]
    _, m, k = keyed.expect(lambda t, m, k: t == f"v1/dev/{dev}/up/res" and
                           (m.get("cti") == cti or ("cti" not in m and "status" in m)), timeout, "an answer")
    return k if m.get("cti") == cti and ERROR_NAMES[m["status"]] == "ok" else None


def rotate(env, keyed, b, k1, k2, kid1, kid2, wrapped):
    """The cloud's side of a rotation, from wherever the device is: -> True once it is done, False
    if the board died on the way (it is then stopped)."""
    try:
        if answered_under(env, keyed, k1, kid1) == kid1:      # still on the first key
            clocked(env, keyed, k1, kid1)
            code, data, _ = result(keyed, send(env, k1, kid1, "rekey", {1: 2, 2: wrapped}), 8)
            assert (code, data) == ("ok", {"kv": 2, "proof": proof(k2, kid2)}), (code, data)
        assert answered_under(env, keyed, k2, kid2) == kid2   # the confirmation, or a check after it
        return True
    except AssertionError:
        time.sleep(0.3)
        if b.running:
            raise
        b.wait(5)
        assert b.exit_reason() == "killed", b.log()[-2000:]
        return False


@pytest.mark.timeout(7200 if CUTS_ALL else 600)
def test_a_power_cut_anywhere_in_a_rotation_never_strands_the_device(broker, tmp_path):
    """Cut at op 1, 1 + STRIDE, ... of a boot that then rotates its key (a fresh device each time),
    until one runs through without reaching the cut. After each cut the board boots clean: it
    answers under exactly one of its keys, and the rotation, carried on by the cloud, completes."""
    env = AgentRig(broker, tmp_path, serve_time=True)
    keyed = Keyed(broker, {})
    try:
        at, cuts = 1, 0
        while True:
            dev = f"rk{at}"
            b = env.board(dev)
            k1, k2 = env.reg.get(dev).key, os.urandom(32)
            kid1, kid2 = f"{dev}:1".encode(), f"{dev}:2".encode()
            keyed.keys.update({kid1: k1, kid2: k2})
            wrapped = aes_key_wrap(k1, k2)
            keyed.board = b
            b.start()             # a first boot formats the board's filesystem, as flashing does
            online(keyed, dev=dev)  # on a real one: cut only a provisioned board's boots
            b.stop()
            b.arm_power_cut(at, 5 if CUTS_ALL and at % 2 == 0 else None)   # all: every other one torn
            b.start()
            try:
                online(keyed, dev=dev)
                done = rotate(env, keyed, b, k1, k2, kid1, kid2, wrapped)
            except AssertionError:
                if b.running:
                    raise
                done = False
            if not done:
                cuts += 1
                b.wait(5)
                b.start()                               # clean: the cut was spent
                try:
                    online(keyed, dev=dev)
                except AssertionError as e:
                    raise AssertionError((at, b.exit_reason(), b.log()[-3000:])) from e
                on1 = answered_under(env, keyed, k1, kid1)
                assert on1 == kid1 or (b.state("key") or {}).get("v") == 2, (at, on1)
                assert rotate(env, keyed, b, k1, k2, kid1, kid2, wrapped), at
            assert b.state("key")["v"] == 2 and b.state("keynext") is None, at
            b.kill()
            if done:
                break
            at += STRIDE
        print(f"rekey: cut at {cuts} points, up to op {at}")
        assert cuts >= 3
    finally:
        keyed.close()
        env.close()


def test_the_firmware_unwraps_and_proves_every_keywrap_vector():
    """protocol/vectors/keywrap.json on the VM (firmware/rekey.py); the host codec's run is
    tests/test_keywrap.py: two implementations, one contract."""
    import json
    from pathlib import Path

    from tests.vm import run_vm_json
    cases = json.loads((Path(__file__).resolve().parents[1] / "protocol/vectors/keywrap.json").read_text())
    got = run_vm_json("keywrap_run.py", cases)
    assert got == {c["name"]: "ok" for c in cases}
    assert sum("error" in c for c in cases) >= 3
