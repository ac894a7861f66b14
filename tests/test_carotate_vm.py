"""A broker CA that rotates (issue 15 §2, docs/broker.md "Rotating the broker's own credentials"):
`set_ca` {1: CA DER} stores the next CA power-safe and the device trusts it beside the current one
(MicroPython's load_verify_locations appends to the chain); `set_ca` {1: DER, 2: true} makes it the
only one, tried on a new connection and kept once the broker took it (event ca_current, the retired
CA file removed), else both again (event ca_refused). A board on the VM against a real Mosquitto
whose server certificate is switched between CAs."""
import hashlib
import time

import pytest
from cryptography.hazmat.primitives import serialization as S

from host_tools.broker import Broker
from host_tools.cloud.commands import State
from host_tools.cloud.registry import Registry
from host_tools.tls import make_ca, make_leaf, write_pki
from tests.agentkit import Watcher, cloud, provision


@pytest.fixture
def pki(tmp_path):
    out = {"a": write_pki(tmp_path / "a")}
    for n in ("b", "c"):
        k, ca = make_ca("broker CA " + n)
        lk, leaf = make_leaf(k, ca)
        d = tmp_path / n
        d.mkdir()
        (d / "server.pem").write_bytes(leaf.public_bytes(S.Encoding.PEM))
        (d / "server.key").write_bytes(lk.private_bytes(S.Encoding.PEM, S.PrivateFormat.PKCS8, S.NoEncryption()))
        out[n] = {"cert": str(d / "server.pem"), "key": str(d / "server.key"), "der": ca.public_bytes(S.Encoding.DER)}
    return out


@pytest.fixture
def broker(pki):
    a = pki["a"]
    b = Broker(users={"cloud": "cloud-pw"}, tls={"cafile": a["ca"], "certfile": a["cert"], "keyfile": a["key"]})
    b.start()
    yield b
    b.close()


def _serve(broker, which):  # the broker's server certificate, from CA `which`
    broker.tls["certfile"], broker.tls["keyfile"] = which["cert"], which["key"]
    broker.restart()


def _online(b, after, timeout=20):
    return b.wait_for(r"\bonline\b", timeout, start=after)


def _up(broker, pki, tmp_path):
    reg = Registry()
    b = provision(broker, reg, tmp_path, "ca1", ca_file=pki["a"]["ca"],
                  settings={"backoff_min_ms": 100, "backoff_max_ms": 300}).start()
    c = cloud(broker, reg)
    _online(b, 0)
    assert c.sync_time("ca1")
    return b, c


def _retire(c, broker, der, timeout=20, n=None):
    """set_ca {1: der, 2: true}, and the event that ends its trial (ca_current for `n` if given):
    (result, code, detail)."""
    w = Watcher(broker, c.registry, "v1/dev/+/up/evt")  # subscribed before the device can answer
    try:
        r = c.send("ca1", "set_ca", {1: der, 2: True}, timeout=10)
        assert r.state is State.SUCCEEDED and r.data == {"ca": r.data.get("ca"), "st": "trial"}, (r.code, r.data)
        h = hashlib.sha256(der).digest()[:8]
        _, m, _ = w.expect(lambda t, m, _r: m.get("code", "").startswith("ca_") and (m.get("detail") or {}).get("h") == h
                           and n in (None, m["detail"].get("n")), timeout, "ca_current or ca_refused")
        return r, m["code"], m["detail"]
    finally:
        w.close()


def _cas(b):
    """The CA files on the board: set_ca's on its flash, and config.json's ca.pem beside it."""
    return sorted([n for n in b.state_files() if n.startswith("ca") and n.endswith(".der")] + (["ca.pem"] if (b.dir / "ca.pem").exists() else []))


def test_a_device_follows_its_broker_to_a_new_ca_and_refuses_a_third(broker, pki, tmp_path):
    b, c = _up(broker, pki, tmp_path)
    try:
        r = c.send("ca1", "set_ca", {1: pki["b"]["der"]}, timeout=10)
        assert r.state is State.SUCCEEDED and r.data == {"ca": 1}, (r.code, r.data)
        n = len(b.lines)
        _serve(broker, pki["b"])  # re-issued by the new CA: the device trusts both, reconnects
        _online(b, n)
        assert c.sync_time("ca1")
        assert _cas(b) == ["ca.pem", "ca1.der"]
        r, code, d = _retire(c, broker, pki["b"]["der"])  # the new CA alone took the broker: the old one retired
        assert r.data["ca"] == 1 and code == "ca_current" and d["n"] == 1, (r.data, code, d)
        assert b.state("ca") == 1
        assert _cas(b) == ["ca1.der"], "the retired CA (config.json's) is removed"
        n = len(b.lines)
        b.kill()
        b.start()  # what it keeps on flash: the new CA, and it still connects
        _online(b, n)
        n = len(b.lines)
        _serve(broker, pki["c"])  # a broker certificate from a third CA: refused at the handshake
        b.wait_for(r"mqtt error connect", 20, start=n)
        time.sleep(2)
        assert "online" not in "\n".join(b.lines[n:])
        n = len(b.lines)
        _serve(broker, pki["a"])  # the retired CA is trusted no more either
        b.wait_for(r"mqtt error connect", 20, start=n)
        time.sleep(2)
        assert "online" not in "\n".join(b.lines[n:])
    finally:
        c.close()
        b.kill()


def test_retiring_the_ca_the_broker_still_uses_is_undone(broker, pki, tmp_path):
    b, c = _up(broker, pki, tmp_path)
    try:
        n = len(b.lines)
        _, code, d = _retire(c, broker, pki["b"]["der"])  # the new CA alone does not take the broker
        assert code == "ca_refused" and d["why"], (code, d)
        b.wait_for(r"mqtt error connect", 20, start=n)
        _online(b, n)  # both again: back on the broker's CA A
        assert b.state("ca") is None  # nothing retired
        assert _cas(b) == ["ca.pem", "ca1.der"]  # both still trusted
        n = len(b.lines)
        b.kill()
        b.start()
        _online(b, n)
    finally:
        c.close()
        b.kill()



def _until(b, cmd, timeout):
    """Wait for a command's result, giving up at once when the board died (a power cut)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and b.running:
        if cmd.wait(0.1).state.final:
            return cmd
    raise AssertionError("no result" + ("" if b.running else ": the board is off"))


@pytest.mark.timeout(600)
def test_a_power_cut_anywhere_in_a_retirement_leaves_a_ca_that_connects(broker, pki, tmp_path):
    """Retired once (ca1.der the only CA, config.json's removed), the device retires again (ca2.der
    written, tried, made current, ca1.der removed). From the same flash image each time, power is cut
    at op 1, 2, ... of a boot that then retires (~12 ops, ~50 s), until one runs through. After each cut the
    board boots clean and gets online, its flash holds no CA it does not name (a cut between the
    switch and the removal leaves ca1.der: that boot removes it), and a retirement sent again takes."""
    b, c = _up(broker, pki, tmp_path)
    try:
        assert c.send("ca1", "set_ca", {1: pki["b"]["der"]}, timeout=10).ok
        n = len(b.lines)
        _serve(broker, pki["b"])
        _online(b, n)
        assert c.sync_time("ca1")
        assert _retire(c, broker, pki["b"]["der"])[1] == "ca_current"
        b.stop()
        image = (b.dir / "flash.bin").read_bytes()  # one retirement done: ca1.der, `ca` 1
        at, cuts, seen = 1, 0, set()
        while True:
            (b.dir / "flash.bin").write_bytes(image)
            b.arm_power_cut(at)
            n = len(b.lines)
            b.start()
            try:
                _online(b, n, 15)
                assert c.sync_time("ca1", timeout=5)
                r = _until(b, c.submit("ca1", "set_ca", {1: pki["b"]["der"], 2: True}), 10)
                assert r.ok, (r.code, r.data)
                b.wait_for(r"mqtt up", 10, start=len(b.lines) - 1)  # the trial's connection
                time.sleep(0.5)  # the switch and the removal, after the CONNACK
                done = b.running
            except (AssertionError, TimeoutError):
                done = False
            if not done:
                time.sleep(0.3)
                assert not b.running, (at, b.log()[-3000:])
                b.wait(5)
                assert b.exit_reason() == "killed", b.log()[-2000:]
                cuts += 1
                left = (b.state("ca"), tuple(_cas(b)))  # what the cut left on flash
                seen.add(left)
            b.stop() if b.running else None
            n = len(b.lines)
            b.start()  # clean (the cut was spent, or never came)
            try:
                _online(b, n, 20)
            except TimeoutError as e:
                raise AssertionError((at, b.log()[-3000:])) from e
            time.sleep(1.5)  # a set_ca the cut left unacknowledged is delivered again, and may run now
            k = b.state("ca")
            assert k in (1, 2, 3), (at, k)
            cas = _cas(b)
            assert cas in ([f"ca{k}.der"], [f"ca{k}.der", f"ca{k + 1}.der"]), (at, k, cas)
            assert c.sync_time("ca1")
            r, code, d = _retire(c, broker, pki["b"]["der"], n=k + 1)
            assert code == "ca_current" and _cas(b) == [f"ca{k + 1}.der"], (at, code, d, _cas(b))
            b.kill()
            if done:
                break
            at += 1
        print(f"set_ca retire: cut at {cuts} points, up to op {at}; left {sorted(seen, key=str)}")
        assert cuts >= 3
        assert (2, ("ca1.der", "ca2.der")) in seen, "no cut came between the switch and the removal"
    finally:
        c.close()
        b.kill()
