"""`edgepay broker rotate-ca stage|switch|retire` (issue 15 §4, docs/broker.md "The CA",
host_tools/cli/broker_ca.py) on VM boards against a real Mosquitto run from the broker dir, mutual
TLS with the broker dir's CRL (the hardest case: the broker's client-CA file must hold both CAs
through the overlap, and crl.pem a CRL from each).

Two boards go the whole way: stage (both trust the next CA beside the current one), switch (the
broker's certificate from the new CA, ca.pem both CAs, a certificate from the old CA still taken), a
retire that the devices take but the broker dir keeps the old CA for (their certificates are from
it), their renewals from the new CA, a retire again: the boards end on the new CA alone, connected,
and the broker refuses the old CA's certificates. And a retire sent before the switch: ca_refused,
the device keeps both CAs, the tool exits 1 saying why."""
from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host_tools import crl
from host_tools.broker import Broker
from host_tools.cli import cli
from host_tools.cloud.registry import Registry
from host_tools.sim.provision import provision_sim
from host_tools.tls import device_der, make_ca, make_leaf
from tests.agentkit import AgentRig
from tests.test_certrenew_vm import SETTINGS, _alive, _drain, _online, _refused

DEVS = ("ca-a", "ca-b")


def _pem(c) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def site(tmp_path):
    """A broker dir as `provision --tls` leaves it (one CA for broker and devices, crl.pem, certs.json),
    a Mosquitto run from it requiring client certificates, and two boards provisioned (not started)."""
    bdir = tmp_path / "broker"
    bdir.mkdir()
    ca_key, ca = make_ca("edgepay device CA")
    skey, scert = make_leaf(ca_key, ca)
    (bdir / "ca.pem").write_bytes(_pem(ca))
    (bdir / "ca.key").write_bytes(ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (bdir / "server.pem").write_bytes(_pem(scert))
    (bdir / "server.key").write_bytes(skey.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                                         serialization.NoEncryption()))
    crl.write_crl(bdir)
    b = Broker(users={"cloud": "cloud-pw"}, workdir=bdir,
               tls={"cafile": str(bdir / "ca.pem"), "certfile": str(bdir / "server.pem"),
                    "keyfile": str(bdir / "server.key"), "require_certificate": True,
                    "crlfile": str(bdir / "crl.pem")})
    b.start()
    rig = AgentRig(b, tmp_path / "rig", serve_time=True, settings=SETTINGS)
    reg_path = tmp_path / "registry.db"
    reg = Registry(reg_path)
    boards = {}
    for dev in DEVS:
        key, cert = make_leaf(ca_key, ca, cn=dev, dns=(), ips=())
        crl.record_issued(bdir, dev, cert)  # as provision --tls does
        boards[dev] = provision_sim(b, reg, tmp_path / "boards", dev, "gate", dict(SETTINGS),
                                    ca_file=str(bdir / "ca.pem"), client_cert=device_der(key, cert))
        rig.boards.append(boards[dev])
        rig.reg.add(dev, reg.get(dev).key, "gate", "sim-gate")  # the rig's watcher verifies it too
    reg.close()
    base = ["--json", "--registry", str(reg_path), "--broker", f"127.0.0.1:{b.cloud_port}", "--user", "cloud"]

    def edgepay(*args):
        r = CliRunner().invoke(cli, [*base, *args], env={"EDGEPAY_MQTT_PASSWORD": "cloud-pw"}, catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    yield {"bdir": bdir, "broker": b, "rig": rig, "boards": boards, "edgepay": edgepay, "ca": (ca_key, ca),
           "tmp": tmp_path}
    rig.close()
    b.close()


def _cas(b):
    """The CA files on a board: set_ca's on its flash, and config.json's ca.pem beside it."""
    return sorted([n for n in b.state_files() if n.startswith("ca") and n.endswith(".der")]
                  + (["ca.pem"] if (b.dir / "ca.pem").exists() else []))


def _phase(s, phase, *args, code=0):
    t = () if phase == "switch" else ("--timeout", "25")
    r = s["edgepay"]("broker", "rotate-ca", phase, *args, "--broker-dir", str(s["bdir"]), *t)
    assert r.exit_code == code, (phase, r.output)
    return json.loads(r.stdout)


def _reboot_online(s, dev):
    _drain(s["rig"])
    s["boards"][dev].stop()
    s["boards"][dev].start()
    _online(s["rig"], dev)
    _alive(s["rig"], dev)


def _crls(bdir) -> int:
    return (bdir / "crl.pem").read_bytes().count(b"-----BEGIN X509 CRL-----")


def _client_cas(bdir) -> list[str]:
    return [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates((bdir / "ca.pem").read_bytes())]


@pytest.mark.timeout(400)
def test_stage_switch_retire_moves_two_boards_to_the_new_ca_alone(site):
    s, bdir, b = site, site["bdir"], site["broker"]
    t0 = time.monotonic()
    for dev in DEVS:
        s["boards"][dev].start()
        _online(s["rig"], dev)
    old_key, old = s["ca"]
    pid = b.proc.pid

    out = _phase(s, "stage", *DEVS)
    assert out["staged"] == 2 and [d["ca"] for d in out["devices"]] == [1, 1] and out["made"], out
    nxt = x509.load_pem_x509_certificate((bdir / "ca-next.pem").read_bytes())
    assert (bdir / "ca-next.key").stat().st_mode & 0o777 == 0o600
    assert _phase(s, "stage", DEVS[0])["made"] is False  # again: the same next CA, not another
    for dev in DEVS:
        assert _cas(s["boards"][dev]) == ["ca.pem", "ca1.der"]

    # a certificate from the old CA nobody revoked: the broker takes it through the overlap only
    xkey, xcert = make_leaf(old_key, old, cn="probe", dns=(), ips=())
    out = _phase(s, "switch")
    new = nxt.subject.rfc4514_string()
    assert out["ca"] == new and out["client_cas"] == [new, old.subject.rfc4514_string()] and out["mtls"], out
    assert out["broker_reload"] == {"reloaded": pid} and out["unstaged"] == [], out
    assert _client_cas(bdir) == out["client_cas"] and not (bdir / "ca-next.pem").exists()
    server = x509.load_pem_x509_certificate((bdir / "server.pem").read_bytes())
    assert server.issuer == nxt.subject
    assert _crls(bdir) == 2  # one from each CA
    time.sleep(0.5)
    assert b.proc.pid == pid and b.running()  # reloaded, not restarted
    assert not _refused(b, {"files": {"ca": str(bdir / "ca.pem")}}, xkey, xcert, s["tmp"])
    for dev in DEVS:
        _reboot_online(s, dev)  # the new server certificate, trusted beside the old CA

    # retire: the devices take the new CA alone, but their certificates are the old CA's
    out = _phase(s, "retire", *DEVS, code=1)
    assert out["retired"] == 2 and out["failed"] == 0 and [d["n"] for d in out["devices"]] == [1, 1], out
    assert out["broker_dir"] == "overlap kept" and out["stale_certs"] == sorted(DEVS), out
    assert len(_client_cas(bdir)) == 2 and (bdir / "ca-old.key").exists()
    for dev in DEVS:
        assert s["boards"][dev].state("ca") == 1 and _cas(s["boards"][dev]) == ["ca1.der"]

    r = s["edgepay"]("device", "renew-cert", *DEVS, "--broker-dir", str(bdir), "--devices-dir",
                     str(s["tmp"] / "nowhere"), "--timeout", "25")
    assert r.exit_code == 0, r.output
    assert all(rows[-1]["issuer"] == new for rows in crl.issued(bdir).values())  # from the new CA

    out = _phase(s, "retire", *DEVS)
    assert [d["n"] for d in out["devices"]] == [2, 2] and out["broker_dir"] == "retired", out
    assert _client_cas(bdir) == [new] and not (bdir / "ca-old.key").exists() and not (bdir / "ca-old.pem").exists()
    assert [p.name for p in bdir.glob("ca-retired-*.pem")] == out["retired"]
    assert _crls(bdir) == 1
    time.sleep(0.5)
    assert _refused(b, {"files": {"ca": str(bdir / "ca.pem")}}, xkey, xcert, s["tmp"]), "the old CA still taken"
    for dev in DEVS:
        _reboot_online(s, dev)  # on the new CA alone, with a certificate from it
        assert s["boards"][dev].state("ca") == 2 and _cas(s["boards"][dev]) == ["ca2.der"]
    print(f"rotate-ca: two boards staged, switched, retired twice, renewed in {time.monotonic() - t0:.1f} s")


def test_a_retire_before_the_switch_is_refused_and_the_device_keeps_both(site):
    s, bdir = site, site["bdir"]
    dev = DEVS[0]
    board = s["boards"][dev]
    board.start()
    _online(s["rig"], dev)
    assert _phase(s, "stage", dev)["staged"] == 1
    _drain(s["rig"])
    r = s["edgepay"]("broker", "rotate-ca", "retire", dev, "--broker-dir", str(bdir), "--timeout", "25")
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    d = out["devices"][0]
    assert not d["ok"] and d["error"] == "ca_refused" and "not switched" in d["detail"], out
    assert out["broker_dir"] == "overlap kept" and (bdir / "ca-next.pem").exists()
    assert "not switched" in r.stderr
    _online(s["rig"], dev)  # back on both CAs, on the broker's unchanged certificate
    _alive(s["rig"], dev)
    assert board.state("ca") is None and _cas(board) == ["ca.pem", "ca1.der"]
    # then the switch (which names the registry's device stage never reached) and the retire again
    r = s["edgepay"]("broker", "rotate-ca", "switch", "--broker-dir", str(bdir))
    assert r.exit_code == 0 and json.loads(r.stdout)["unstaged"] == [DEVS[1]], r.output
    assert "not staged" in r.stderr and DEVS[1] in r.stderr
    out = _phase(s, "retire", dev, code=1)  # 1: the other device's certificate holds the old CA here
    assert out["devices"][0]["ok"] and out["devices"][0]["n"] == 1 and out["stale_certs"] == sorted(DEVS), out
    assert board.state("ca") == 1 and _cas(board) == ["ca1.der"]


class _FakeClient:
    """A CommandClient stand-in: answers set_ca from `answers` in turn, and with retire publishes
    the verdict events in `events` to the subscriber (no broker, no board)."""

    def __init__(self, answers, events=()):
        from types import SimpleNamespace
        self.answers, self.events, self.sent, self.subs = list(answers), list(events), [], []
        self.registry = SimpleNamespace(get=lambda d: SimpleNamespace(key=b"k" * 32, kid=1))
        self.mqtt = SimpleNamespace(subscribe=lambda topic, cb, qos: self.subs.append(cb))

    def send(self, device, name, args, timeout):
        from types import SimpleNamespace
        self.sent.append((time.monotonic(), name, dict(args)))
        code, data = self.answers.pop(0)
        if code == "ok":
            for ev in self.events:
                self.subs[0]("v1/dev/%s/up/evt" % device, ev)
        return SimpleNamespace(ok=code == "ok", code=None if code == "ok" else code, data=data,
                               state=SimpleNamespace(value="SUCCEEDED" if code == "ok" else "FAILED"))

    def sync_time(self, device, timeout):
        return True


def test_busy_is_sent_again_after_the_delay_and_only_the_cas_verdict_counts(monkeypatch):
    """host_tools/cloud/carotate.py alone: `busy` twice, then the trial; an earlier CA's verdict
    (another h) is passed over for this one's."""
    from host_tools.cloud import carotate, certrenew
    der = make_ca("x")[1].public_bytes(serialization.Encoding.DER)
    h = carotate.ca_h(der)
    events = [{"code": "ca_refused", "detail": {"h": b"\0" * 8, "why": "old"}}, {"code": "ca_current", "detail": {"n": 3, "h": h}}]
    monkeypatch.setattr(certrenew, "open_message", lambda key, kid, topic, payload: payload)
    c = _FakeClient([("busy", None), ("busy", None), ("ok", {"ca": 3, "st": "trial"})], events)
    assert carotate.retire(c, "d1", der, timeout=10, busy_wait=0.3) == {"device": "d1", "n": 3, "h": h.hex()}
    times = [t for t, _, _ in c.sent]
    assert len(times) == 3 and all(b - a >= 0.29 for a, b in zip(times, times[1:]))
    assert c.sent[0][2] == {1: der, 2: True}
    c = _FakeClient([("ok", {"ca": 1, "st": "trial"})], [{"code": "ca_refused", "detail": {"h": h, "why": "OSError(-9984)"}}])
    with pytest.raises(carotate.CaError) as e:
        carotate.retire(c, "d1", der, timeout=5)
    assert e.value.code == "ca_refused" and "OSError(-9984)" in e.value.detail
    c = _FakeClient([("busy", None)] * 10)
    with pytest.raises(carotate.CaError) as e:  # still busy at the timeout: refused, busy named
        carotate.stage(c, "d1", der, timeout=1, busy_wait=0.3)
    assert e.value.code == "refused" and "busy" in e.value.detail and len(c.sent) <= 4
    with pytest.raises(carotate.CaError, match="bad_ca"):
        carotate.stage(c, "d1", b"\x01" * 10)
