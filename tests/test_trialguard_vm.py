"""One connection trial at a time (SPEC §12): a set_ca that retires the other CAs and a set_cert
each try their change on the next connection and keep it only if the broker takes it, so two that
overlapped could each take the other's verdict. The second is refused `busy`, with nothing written,
and the first completes. The only way to meet the guard is two commands delivered back to back,
the second before the first's trial connection is up: both are published at once here, to a board
on the VM against a real Mosquitto that requires a client certificate (test_certrenew_vm's)."""
import hashlib
from pathlib import Path

from host_tools.cloud.certrenew import renew, renewal
from tests import test_certrenew_vm as _renew
from tests.test_certrenew_vm import _board

pki, env = _renew.pki, _renew.env  # its fixtures: the device CA, the mutual-TLS broker and the rig


def _verdict(env, device, code, der, timeout=20):
    """The event that ends the trial of this certificate or CA: its detail."""
    h = hashlib.sha256(der).digest()[:8]
    _, m, _ = env.w.expect(lambda t, m, r: t == f"v1/dev/{device}/up/evt" and m.get("code") == code
                           and (m.get("detail") or {}).get("h") == h, timeout, code)
    return m["detail"]


def _files(b):  # what set_cert and set_ca write on the board's flash
    return sorted(n for n in b.state_files() if n.endswith(".der"))


def test_a_certificate_sent_during_a_ca_trial_is_refused_busy(env, pki):
    b, _ = _board(env, pki, "tg1")
    ca = Path(pki["files"]["ca-der"]).read_bytes()  # the broker's own CA: its retirement takes
    r = renewal(pki["ca_key"], pki["ca"], "tg1", env.reg.get("tg1").key)
    first = env.c.submit("tg1", "set_ca", {1: ca, 2: True})
    second = env.c.submit("tg1", "set_cert", r.args())  # on the broker before the trial's connection
    assert first.wait(10).ok and first.data == {"ca": 1, "st": "trial"}, (first.code, first.data)
    assert second.wait(10).code == "busy", (second.code, second.data)
    d = _verdict(env, "tg1", "ca_current", ca)  # the first completes
    assert d["n"] == 1 and b.state("ca") == 1
    assert b.state("cert") is None and _files(b) == ["ca1.der"], _files(b)  # the certificate: nothing written
    assert not (b.dir / "ca.pem").exists()  # config.json's CA, retired, is gone
    out = renew(env.c, "tg1", r, timeout=20)  # once the trial is over, the same renewal goes through
    assert out["n"] == 1 and b.state("cert") == {"n": 1}
    assert _files(b) == ["c1.der", "ca1.der", "k1.der"], _files(b)


def test_a_ca_sent_during_a_certificate_trial_is_refused_busy(env, pki):
    b, _ = _board(env, pki, "tg2")
    ca = Path(pki["files"]["ca-der"]).read_bytes()
    r = renewal(pki["ca_key"], pki["ca"], "tg2", env.reg.get("tg2").key)
    first = env.c.submit("tg2", "set_cert", r.args())
    second = env.c.submit("tg2", "set_ca", {1: ca, 2: True})
    assert first.wait(10).ok and first.data == {"st": "staged"}, (first.code, first.data)
    assert second.wait(10).code == "busy", (second.code, second.data)
    d = _verdict(env, "tg2", "cert_current", r.cert_der)
    assert d["n"] == 1 and b.state("cert") == {"n": 1}
    assert b.state("ca") is None and _files(b) == ["c1.der", "k1.der"], _files(b)  # the CA: nothing written
    assert (b.dir / "ca.pem").exists()
    # after the trial: the same CA again, retiring, goes through
    third = env.c.send("tg2", "set_ca", {1: ca, 2: True}, timeout=10)
    assert third.ok, (third.code, third.data)
    assert _verdict(env, "tg2", "ca_current", ca)["n"] == 1 and b.state("ca") == 1
    assert _files(b) == ["c1.der", "ca1.der", "k1.der"], _files(b)
