"""Mutual TLS (issue 15 §2): on a listener that requires a client certificate, the broker takes the
certificate's CN as the device's username (and client id), so the ACL confines it to the topics
of the device it certifies. A board on the VM against a real Mosquitto: its own certificate gets it
online and commanded; no certificate, one from another CA, an expired one and a revoked one (the
broker's CRL) are each refused at the handshake; another device's certificate confines it to that
device's topics, where its own messages cannot go. The PKI is made at test time."""
import time

import pytest

from host_tools.broker import Broker
from host_tools.cloud.commands import State
from host_tools.cloud.registry import Registry
from host_tools.tls import device_der, make_ca, make_crl, make_leaf, write_pki
from tests.agentkit import Watcher, cloud, provision


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtls")
    files = write_pki(d)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    ca = x509.load_pem_x509_certificate(open(files["ca"], "rb").read())
    # write_pki keeps its CA key to itself: a CA for devices is made here, and the broker trusts both
    ca_key, dev_ca = make_ca("edgepay device CA")
    certs = {name: make_leaf(ca_key, dev_ca, cn=cn, dns=(), ips=(), **kw)
             for name, cn, kw in (("own", "m1", {}), ("other", "m2", {}), ("expired", "m1", {"ended_days_ago": 2}),
                                  ("revoked", "m1", {}))}
    fkey, fca = make_ca("foreign device CA")
    certs["foreign"] = make_leaf(fkey, fca, cn="m1", dns=(), ips=())
    bundle = d / "cas.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM) + dev_ca.public_bytes(serialization.Encoding.PEM))
    crl = d / "crl.pem"
    crl.write_bytes(make_crl(ca_key, dev_ca, [certs["revoked"][1]]))
    return {"files": files, "cafile": str(bundle), "crl": str(crl),
            "der": {k: device_der(*v) for k, v in certs.items()}}


@pytest.fixture
def mtls_broker(pki):  # one per test: a retained status from another test must not be seen
    b = Broker(users={"cloud": "cloud-pw"},
               tls={"cafile": pki["cafile"], "certfile": pki["files"]["cert"], "keyfile": pki["files"]["key"],
                    "require_certificate": True, "crlfile": pki["crl"]})
    b.start()
    yield b
    b.close()


def _board(mtls_broker, pki, reg, tmp_path, which, device="m1"):
    cert = pki["der"][which] if which else None
    return provision(mtls_broker, reg, tmp_path, device, ca_file=pki["files"]["ca"], client_cert=cert,
                     settings={"backoff_min_ms": 100, "backoff_max_ms": 300})


def test_its_own_certificate_gets_a_device_online_and_commanded(mtls_broker, pki, tmp_path):
    reg = Registry()
    w = Watcher(mtls_broker, reg)
    b = _board(mtls_broker, pki, reg, tmp_path, "own").start()
    c = cloud(mtls_broker, reg)
    try:
        w.expect(lambda t, m, r: t == "v1/dev/m1/up/status" and m.get("online") is True, 20, "online over mTLS")
        assert c.send("m1", "get_state", timeout=10).state is State.SUCCEEDED
    finally:
        c.close()
        b.kill()
        w.close()


@pytest.mark.parametrize("which,why", [(None, "no certificate"), ("foreign", "another CA"),
                                       ("expired", "expired"), ("revoked", "on the CRL")])
def test_a_device_without_a_good_certificate_is_refused(mtls_broker, pki, tmp_path, which, why):
    reg = Registry()
    w = Watcher(mtls_broker, reg)
    b = _board(mtls_broker, pki, reg, tmp_path, which).start()
    try:
        b.wait_for(r"mqtt error connect", 20)  # the handshake (or the CONNECT after it) fails
        time.sleep(1.5)  # several attempts at its 100-300 ms backoff
        assert "mqtt up" not in b.log(), why
        assert not [t for t, m, r in w.all if t.startswith("v1/dev/m1/")], why
        assert "mqtt error connect" in b.log()
    finally:
        b.kill()
        w.close()


def test_another_devices_certificate_reaches_none_of_this_devices_topics(mtls_broker, pki, tmp_path):
    """m1 holding m2's certificate is m2 to the broker: m1's topics are not m2's, so nothing it sends
    arrives, and commands to m1 never reach it."""
    reg = Registry()
    w = Watcher(mtls_broker, reg)
    b = _board(mtls_broker, pki, reg, tmp_path, "other").start()
    c = cloud(mtls_broker, reg)
    try:
        time.sleep(3)
        assert not [t for t, m, r in w.all if t.startswith("v1/dev/m1/") or t.startswith("v1/dev/m2/")]
        r = c.send("m1", "get_state", timeout=3)
        assert r.state is not State.SUCCEEDED and not r.ok
    finally:
        c.close()
        b.kill()
        w.close()
