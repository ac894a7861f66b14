"""A broker CA that rotates (issue 15 §2, docs/broker.md "Rotating the broker's own credentials"):
`set_ca` {1: CA DER} stores the next CA power-safe and the device trusts it beside the current one
(MicroPython's load_verify_locations appends to the chain); `set_ca` {1: DER, 2: true} makes it the
only one, tried on a new connection and kept once the broker took it, else both again. A board on
the VM against a real Mosquitto whose server certificate is switched between CAs."""
import time

import pytest
from cryptography.hazmat.primitives import serialization as S

from host_tools.broker import Broker
from host_tools.cloud.commands import State
from host_tools.cloud.registry import Registry
from host_tools.tls import make_ca, make_leaf, write_pki
from tests.agentkit import cloud, provision


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


def test_a_device_follows_its_broker_to_a_new_ca_and_refuses_a_third(broker, pki, tmp_path):
    b, c = _up(broker, pki, tmp_path)
    try:
        r = c.send("ca1", "set_ca", {1: pki["b"]["der"]}, timeout=10)
        assert r.state is State.SUCCEEDED and r.data == {"ca": 1}, (r.code, r.data)
        n = len(b.lines)
        _serve(broker, pki["b"])  # re-issued by the new CA: the device trusts both, reconnects
        _online(b, n)
        assert c.sync_time("ca1")
        r = c.send("ca1", "set_ca", {1: pki["b"]["der"], 2: True}, timeout=10)
        assert r.state is State.SUCCEEDED and r.data == {"ca": 1, "st": "trial"}, (r.code, r.data)
        b.wait_for(r"\bca 1\b", 20)  # the new CA alone took the broker: the old one retired
        assert b.state("ca") == 1
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
        r = c.send("ca1", "set_ca", {1: pki["b"]["der"], 2: True}, timeout=10)
        assert r.state is State.SUCCEEDED, (r.code, r.data)
        b.wait_for(r"mqtt error connect", 20, start=n)  # the new CA alone does not take the broker
        _online(b, n)  # both again: back on the broker's CA A
        assert b.state("ca") is None  # nothing retired
        n = len(b.lines)
        b.kill()
        b.start()
        _online(b, n)
    finally:
        c.close()
        b.kill()
