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


def _board(env, pki, device="r1", start=True):
    key, cert = make_leaf(pki["ca_key"], pki["ca"], cn=device, dns=(), ips=())
    b = env.board(device, ca_file=pki["files"]["ca"], client_cert=device_der(key, cert))
    if start:
        b.start()
        _online(env, device)
    return b, (key, cert)


def _drain(env):
    while not env.w.q.empty():  # what the watcher saw so far: the next _online waits for a new one
        env.w.q.get_nowait()


def _refused(broker, pki, key, cert, tmp_path):
    """A TLS client holding (key, cert) gets no CONNACK from the broker (the CRL, another CA)."""
    import socket
    import ssl
    kf, cf = tmp_path / "old.key", tmp_path / "old.pem"
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.create_default_context(cafile=pki["files"]["ca"])
    ctx.load_cert_chain(cf, kf)
    try:
        with socket.create_connection(("127.0.0.1", broker.tls_port), 5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 2]) + b"r1")
                return s.recv(4) == b""
    except (ssl.SSLError, OSError):
        return True


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
    pki["crl"].write_bytes(make_crl(pki["ca_key"], pki["ca"], [old[1]]))
    try:
        _drain(env)
        env.broker.restart()
        _online(env, "r1")
        assert _refused(env.broker, pki, *old, env.tmp), "the broker still takes the old certificate"
        _drain(env)
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
    _drain(env)
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


@pytest.mark.timeout(7200 if CUTS_ALL else 900)
def test_a_power_cut_anywhere_in_a_renewal_leaves_a_pair_that_matches(env, pki):
    """Cut at op 1, 1 + STRIDE, ... of a boot that then renews its certificate (a fresh device each
    time), until one runs through without reaching the cut. After each cut the board boots clean and
    gets online over mutual TLS (so its certificate and key match and the broker takes them), and a
    renewal sent again completes."""
    stride = 1 if CUTS_ALL else 2
    at, cuts = 1, 0
    while True:
        dev = f"pc{at}"
        b, _ = _board(env, pki, dev)
        b.stop()
        b.arm_power_cut(at, 5 if CUTS_ALL and at % 2 == 0 else None)
        _drain(env)
        b.start()
        try:
            _online(env, dev, 15)
            r = renewal(pki["ca_key"], pki["ca"], dev, env.reg.get(dev).key)
            renew(env.c, dev, r, timeout=10)
            done = True  # the whole renewal ran before the cut point (which may still come)
        except (AssertionError, RenewError):
            time.sleep(0.3)
            if b.running:
                raise AssertionError((at, b.log()[-3000:]))
            done = False
        if not done:
            cuts += 1
            b.wait(5)
            assert b.exit_reason() == "killed", b.log()[-2000:]
            _drain(env)
            b.start()  # clean: the cut was spent
            try:
                _online(env, dev, 20)
            except AssertionError as e:
                raise AssertionError((at, b.log()[-3000:])) from e
            n0 = (b.state("cert") or {}).get("n", 0)
            r = renewal(pki["ca_key"], pki["ca"], dev, env.reg.get(dev).key)
            n = renew(env.c, dev, r, timeout=20)["n"]
            assert n > n0 and b.state("cert") == {"n": n}, (at, n0, n)
        b.kill()  # and a boot with no cut armed (read_cut consumed it): on its renewed pair
        _drain(env)
        b.start()
        _online(env, dev, 20)
        assert b.state("cert")["n"] in (1, 2, 3), at
        assert env.c.send(dev, "get_state", timeout=10).ok, (at, done, b.log()[-4000:])
        b.kill()
        if done:
            break
        at += stride
    print(f"set_cert: cut at {cuts} points, up to op {at}")
    assert cuts >= 3


def test_the_cli_renews_each_device_and_says_which_failed(env, pki, tmp_path):
    """edgepay device renew-cert with the CA in the broker dir (as provision --tls leaves it): the
    device switches, the new certificate's end is printed, an unknown device fails, no key is shown."""
    import datetime
    import json

    from click.testing import CliRunner

    from host_tools.cli import cli
    from host_tools.cloud.registry import Registry
    from host_tools.sim.provision import provision_sim
    reg_path = tmp_path / "registry.db"
    reg = Registry(reg_path)
    key, cert = make_leaf(pki["ca_key"], pki["ca"], cn="cli1", dns=(), ips=())
    b = provision_sim(env.broker, reg, tmp_path / "boards", "cli1", "gate", dict(SETTINGS),
                      ca_file=pki["files"]["ca"], client_cert=device_der(key, cert))
    env.boards.append(b)
    env.reg.add("cli1", reg.get("cli1").key, "gate", "sim-gate")  # the rig's watcher verifies it too
    bdir = tmp_path / "broker"
    bdir.mkdir()
    (bdir / "ca.pem").write_bytes(pki["ca"].public_bytes(serialization.Encoding.PEM))
    (bdir / "ca.key").write_bytes(pki["ca_key"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    try:
        b.start()
        _online(env, "cli1")
        base = ["--registry", str(reg_path), "--broker", f"127.0.0.1:{env.broker.cloud_port}", "--user", "cloud"]
        r = CliRunner().invoke(cli, ["--json", *base, "device", "renew-cert", "cli1", "nope", "--broker-dir",
                                     str(bdir), "--days", "90", "--timeout", "20"],
                               env={"EDGEPAY_MQTT_PASSWORD": "cloud-pw"}, catch_exceptions=False)
        assert r.exit_code == 1, r.output
        out = json.loads(r.stdout)
        by = {d["device"]: d for d in out["devices"]}
        assert by["cli1"]["ok"] and by["cli1"]["n"] == 1, by
        assert by["nope"]["error"] == "unknown_device"
        assert b.state("cert") == {"n": 1}
        assert reg.get("cli1").key.hex() not in r.output
        left = datetime.datetime.fromisoformat(by["cli1"]["not_after"]) - datetime.datetime.now(datetime.timezone.utc)
        assert 89 <= left.days <= 90
    finally:
        reg.close()


def test_a_device_without_a_certificate_answers_unsupported(broker, tmp_path, pki):
    """A password device (no mutual TLS) has no pair to renew: set_cert is unsupported, nothing written."""
    rig = AgentRig(broker, tmp_path, serve_time=True, settings=SETTINGS)
    try:
        b = rig.board("pw1").start()
        _online(rig, "pw1")
        r = renewal(pki["ca_key"], pki["ca"], "pw1", rig.reg.get("pw1").key)
        c = rig.c.send("pw1", "set_cert", r.args(), timeout=10)
        assert c.code == "unsupported", c.code
        assert b.state("cert") is None
    finally:
        rig.close()
