"""The broker dir's CRL kept by the tools (issue 15 §2, host_tools/crl.py), on the VM against a real
Mosquitto that requires a client certificate and reads the broker dir's crl.pem: `edgepay device
renew-cert` puts the device's old certificate on the CRL once the device reported cert_current and
reloads the broker (SIGHUP, no restart), so a connection with the old certificate is refused while
the device connects with its new one; a second renewal adds the second certificate and keeps the
first; `edgepay device revoke` puts the current one on it too, ends the board's open link (the CRL
reload alone keeps it) and the board is refused from then on."""
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

DEV = "crl1"


def _pem(c) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def site(tmp_path):
    """A broker dir as `provision --tls` leaves it (one CA for broker and devices, crl.pem),
    and a Mosquitto run from it (so `reload_broker` finds it by its -c)."""
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
    key, cert = make_leaf(ca_key, ca, cn=DEV, dns=(), ips=())
    crl.record_issued(bdir, DEV, cert)  # as provision --tls does
    board = provision_sim(b, reg, tmp_path / "boards", DEV, "gate", dict(SETTINGS),
                          ca_file=str(bdir / "ca.pem"), client_cert=device_der(key, cert))
    rig.boards.append(board)
    rig.reg.add(DEV, reg.get(DEV).key, "gate", "sim-gate")  # the rig's watcher verifies it too
    reg.close()
    base = ["--json", "--registry", str(reg_path), "--broker", f"127.0.0.1:{b.cloud_port}", "--user", "cloud"]

    def edgepay(*args):
        r = CliRunner().invoke(cli, [*base, *args], env={"EDGEPAY_MQTT_PASSWORD": "cloud-pw"}, catch_exceptions=False)
        assert "Traceback" not in r.output
        return r
    yield {"bdir": bdir, "broker": b, "rig": rig, "board": board, "old": (key, cert), "edgepay": edgepay,
           "pki": {"files": {"ca": str(bdir / "ca.pem")}}, "tmp": tmp_path, "reg": reg_path}
    rig.close()
    b.close()


def _listed(bdir) -> set[int]:
    return crl.listed((bdir / "crl.pem").read_bytes())


def _renew(s) -> dict:
    r = s["edgepay"]("device", "renew-cert", DEV, "--broker-dir", str(s["bdir"]), "--devices-dir",
                     str(s["tmp"] / "nowhere"), "--timeout", "20")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["devices"][0]


def _reboot_online(s) -> None:
    _drain(s["rig"])
    s["board"].stop()
    s["board"].start()
    _online(s["rig"], DEV)
    _alive(s["rig"], DEV)


def test_a_renewal_puts_the_old_certificate_on_the_crl_and_reloads_the_broker(site):
    s, bdir, b = site, site["bdir"], site["broker"]
    s["board"].start()
    _online(s["rig"], DEV)
    old_key, old = s["old"]
    assert not _refused(b, s["pki"], old_key, old, s["tmp"]), "the broker refuses the first certificate"
    pid = b.proc.pid
    out = _renew(s)
    assert out["ok"] and out["crl_added"] == [format(old.serial_number, "x")], out
    assert out["broker_reload"] == {"reloaded": pid}   # SIGHUP to the broker run from this dir
    assert _listed(bdir) == {old.serial_number}
    first_new = int(out["serial"], 16)
    time.sleep(0.5)  # the reload
    assert b.proc.pid == pid and b.running()           # reloaded, not restarted
    assert _refused(b, s["pki"], old_key, old, s["tmp"]), "the old certificate is still taken"
    _reboot_online(s)                                   # the device on its new certificate
    # a second renewal: the first renewed certificate joins the first one on the CRL
    out = _renew(s)
    assert out["crl_added"] == [format(first_new, "x")], out
    assert _listed(bdir) == {old.serial_number, first_new}
    entries = crl.revoked(bdir)
    assert [(e["device"], e["reason"]) for e in entries] == [(DEV, "superseded")] * 2
    assert [r["serial"] for r in crl.issued(bdir)[DEV]] == [format(old.serial_number, "x"), format(first_new, "x"),
                                                           out["serial"]]
    time.sleep(0.5)
    assert _refused(b, s["pki"], old_key, old, s["tmp"])
    _reboot_online(s)
    # the CRL is a CRL of the CA's (what openssl and Mosquitto check)
    c = x509.load_pem_x509_crl((bdir / "crl.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((bdir / "ca.pem").read_bytes())
    assert c.is_signature_valid(ca.public_key()) and c.next_update_utc > c.last_update_utc
    assert (bdir / "crl.pem").stat().st_mode & 0o777 == 0o644 and not list(bdir.glob(".crl.pem.*"))


def test_revoke_puts_the_current_certificate_on_the_crl_and_the_board_is_refused(site):
    s, bdir, b = site, site["bdir"], site["broker"]
    s["board"].start()
    _online(s["rig"], DEV)
    out = _renew(s)
    current = int(out["serial"], 16)
    time.sleep(0.5)
    _reboot_online(s)
    _drain(s["rig"])
    r = s["edgepay"]("device", "revoke", DEV, "--broker-dir", str(bdir), "--devices-dir", str(s["tmp"] / "nowhere"))
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["crl_added"] == [format(current, "x")] and res["broker_reload"]["reloaded"] == b.proc.pid, res
    # its open link ended (the CRL reload alone leaves it up), and it gets no new one
    assert res["link_dropped"] is True, res
    s["rig"].w.expect(lambda t, m, r: t == f"v1/dev/{DEV}/up/status" and m.get("online") is False, 10,
                      "the revoked device's link ended")
    assert _listed(bdir) == {s["old"][1].serial_number, current}   # the earlier entry kept
    assert [e["reason"] for e in crl.revoked(bdir)] == ["superseded", "revoked"]
    # again: nothing new, the list as it was
    r = s["edgepay"]("device", "revoke", DEV, "--broker-dir", str(bdir), "--devices-dir", str(s["tmp"] / "nowhere"))
    assert json.loads(r.stdout)["crl_added"] == [] and len(crl.revoked(bdir)) == 2
    with pytest.raises(AssertionError):
        _online(s["rig"], DEV, timeout=6)               # its certificate refused at the handshake
    assert s["board"].running                           # trying, refused: not hung
    _drain(s["rig"])
    s["board"].stop()
    s["board"].start()                                  # a reboot changes nothing
    with pytest.raises(AssertionError):
        _online(s["rig"], DEV, timeout=5)


def test_the_crl_store_keeps_entries_and_finds_a_device_pem_from_before_certs_json(tmp_path):
    """host_tools/crl.py alone: revoke() keeps earlier entries, ignores a serial twice, writes
    crl.pem even when nothing is new; a device.pem in the devices dir counts as the device's."""
    from host_tools.cli.device_cert import _old_pem
    ca_key, ca = make_ca("edgepay device CA")
    d = tmp_path / "b"
    d.mkdir()
    (d / "ca.pem").write_bytes(_pem(ca))
    (d / "ca.key").write_bytes(ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    with pytest.raises(crl.CrlError, match="no CA"):
        crl.revoke(tmp_path, [("1f", "x")], "revoked")
    assert crl.revoke(d, [], "revoked") == [] and _listed(d) == set()
    _, c1 = make_leaf(ca_key, ca, cn="g1", dns=(), ips=())
    devs = tmp_path / "devices"
    (devs / "g1").mkdir(parents=True)
    (devs / "g1" / "device.pem").write_bytes(_pem(c1))
    got = _old_pem(devs, "g1")
    assert [c.serial_number for c in got] == [c1.serial_number] and _old_pem(devs, "g2") == ()
    assert crl.device_serials(d, "g1", got) == [format(c1.serial_number, "x")]
    assert crl.revoke(d, [(format(c1.serial_number, "x"), "g1")], "superseded") == [format(c1.serial_number, "x")]
    assert crl.revoke(d, [("0" + format(c1.serial_number, "x"), "g1"), ("2a", "g2")], "revoked") == ["2a"]
    assert _listed(d) == {c1.serial_number, 0x2a}


def test_provision_tls_records_the_certificate_and_broker_conf_reads_the_crl(tmp_path, monkeypatch):
    """provision --tls notes the device's certificate in certs.json and starts an empty crl.pem;
    broker conf --tls-clients certificate names it as the crlfile without --crl."""
    out, bdir = tmp_path / "d", tmp_path / "b"
    r = CliRunner().invoke(cli, ["--registry", str(tmp_path / "r.db"), "provision", "rent-1", "--board", "sim-rental",
                                 "--out", str(out), "--broker-dir", str(bdir), "--tls", "--tls-host", "localhost"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    dev = x509.load_pem_x509_certificate((out / "device.pem").read_bytes())
    assert [c["serial"] for c in crl.issued(bdir)["rent-1"]] == [format(dev.serial_number, "x")]
    assert _listed(bdir) == set()
    monkeypatch.setenv("EDGEPAY_MQTT_PASSWORD", "cloud-secret-pw")
    r = CliRunner().invoke(cli, ["broker", "conf", "--broker-dir", str(bdir), "--tls-port", "18883",
                                 "--tls-clients", "certificate"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"crlfile {(bdir / 'crl.pem').resolve()}" in (bdir / "mosquitto.conf").read_text()
    r = CliRunner().invoke(cli, ["--json", "broker", "crl", "--broker-dir", str(bdir), "--resign"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["revoked"] == [] and got["resigned"] and got["next_update"][:4] >= "2027"
    r = CliRunner().invoke(cli, ["broker", "crl", "--broker-dir", str(tmp_path / "none")], catch_exceptions=False)
    assert r.exit_code == 0 and "no CRL" in r.output, r.output
