"""The broker dir's certificate revocation list, kept by the tools instead of by hand (issue 15 §2).

Two files in the broker dir (beside ca.pem/ca.key, as `provision --tls` leaves it):
  certs.json   every device certificate the CA there issued: {device: [{serial (hex), not_after,
               issued}]}, written by `provision --tls` and by each renewal (`device renew-cert`);
               what a revocation looks up (public facts only: no key, 0600 as the rest)
  revoked.json the revoked serials, never dropped: [{serial, device, reason, at}], reason
               "superseded" (a renewal replaced it) or "revoked" (`device revoke`)
  crl.pem      the CRL Mosquitto's `crlfile` reads: every serial of revoked.json, signed by the CA
               again at each change, written atomically (a temporary file, fsync, rename), so the
               broker never reads half a list; world-readable (a CRL is public), so a broker run as
               another account reads it too.

    crl.revoke(broker_dir, [(serial, device)], "superseded")   # -> the serials added
    reload_broker(broker_dir)                                  # SIGHUP: Mosquitto rereads crlfile

A renewal supersedes the device's earlier certificates only after the device reported cert_current
for the new one (host_tools/cloud/certrenew.py): until then the old pair is the one it falls back
to. The CRL's nextUpdate is NEXT_UPDATE_DAYS ahead: an expired CRL makes OpenSSL refuse every client
certificate, so `edgepay broker crl --resign` (or any revocation) signs it afresh; do it within that
time (docs/security.md).

While the broker's CA rotates (`edgepay broker rotate-ca`, host_tools/cli/broker_ca.py), from its
switch to its retirement, ca.pem/ca.key are the new CA and ca-old.pem/ca-old.key the one it
replaces, whose device certificates the broker still takes: crl.pem then holds two CRLs, the new
CA's and the old one's, each listing every revoked serial (OpenSSL wants a CRL from the issuer of
each client certificate it checks; a serial listed under the other CA too is harmless: serials are
random), and certs.json notes each certificate's issuer.
"""
from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

CERTS, REVOKED, CRL = "certs.json", "revoked.json", "crl.pem"
OLD_PEM, OLD_KEY = "ca-old.pem", "ca-old.key"  # the CA being replaced, from rotate-ca switch to retire
NEXT_UPDATE_DAYS = 365


class CrlError(RuntimeError):
    pass


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _read(path: Path, empty):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as e:
        raise CrlError(f"{path} cannot be read: {e}") from None


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` whole or not at all: a reader sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_ca(broker_dir: Path, pem_name: str = "ca.pem", key_name: str = "ca.key"):
    """(CA key, CA certificate) from broker_dir/ca.key and ca.pem (its first certificate: while a
    rotation overlaps ca.pem holds the old CA after the new); CrlError if missing or unreadable."""
    d = Path(broker_dir)
    pem, key = d / pem_name, d / key_name
    if not (pem.exists() and key.exists()):
        raise CrlError(f"no CA in {d} (ca.pem and ca.key, made by edgepay provision --tls)")
    try:
        k = serialization.load_pem_private_key(key.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
    except (ValueError, TypeError) as e:
        raise CrlError(f"the CA in {d} cannot be read: {e}") from None
    if not isinstance(k, ec.EllipticCurvePrivateKey):
        raise CrlError(f"the CA key in {d} is not an EC key (provision --tls makes P-256)")
    return k, cert


def issued(broker_dir: Path) -> dict[str, list[dict]]:
    return _read(Path(broker_dir) / CERTS, {})


def record_issued(broker_dir: Path, device: str, cert: x509.Certificate) -> None:
    """Note a device certificate the CA issued (provision --tls, a renewal)."""
    d = Path(broker_dir)
    certs = issued(d)
    serial = format(cert.serial_number, "x")
    rows = certs.setdefault(device, [])
    if all(r["serial"] != serial for r in rows):
        rows.append({"serial": serial, "not_after": cert.not_valid_after_utc.isoformat(),
                     "issued": _now().isoformat(timespec="seconds"), "issuer": cert.issuer.rfc4514_string()})
    _write_atomic(d / CERTS, (json.dumps(certs, indent=1, sort_keys=True) + "\n").encode(), 0o600)


def revoked(broker_dir: Path) -> list[dict]:
    return _read(Path(broker_dir) / REVOKED, [])


def device_serials(broker_dir: Path, device: str, extra: tuple[x509.Certificate, ...] = ()) -> list[str]:
    """Every serial (hex) of a certificate issued to `device`: certs.json's and `extra`'s (a
    device.pem from before certs.json)."""
    out = [r["serial"] for r in issued(broker_dir).get(device, [])]
    for c in extra:
        s = format(c.serial_number, "x")
        if s not in out:
            out.append(s)
    return out


def sign(broker_dir: Path, entries: list[dict], ca=None) -> bytes:
    """The CRL (PEM) of `entries`, signed by the broker dir's CA."""
    ca_key, ca_cert = ca or load_ca(broker_dir)
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(now - datetime.timedelta(minutes=5))
         .next_update(min(now + datetime.timedelta(days=NEXT_UPDATE_DAYS), ca_cert.not_valid_after_utc)))
    for e in entries:
        at = datetime.datetime.fromisoformat(e["at"])
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(int(e["serial"], 16))
                                      .revocation_date(at).build())
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_crl(broker_dir: Path, ca=None) -> Path:
    """(Re)write broker_dir/crl.pem from revoked.json, signed now (also: an empty CRL to start with);
    during a CA rotation's overlap (ca-old.pem and ca-old.key there) the old CA's CRL follows."""
    d = Path(broker_dir)
    entries = revoked(d)
    data = sign(d, entries, ca)
    if (d / OLD_PEM).exists() and (d / OLD_KEY).exists():
        data += sign(d, entries, load_ca(d, OLD_PEM, OLD_KEY))
    _write_atomic(d / CRL, data, 0o644)
    return d / CRL


def revoke(broker_dir: Path, serials: list[tuple[str, str]], reason: str, ca=None) -> list[str]:
    """Put each (serial hex, device) on the CRL (earlier entries kept); re-sign and write crl.pem.
    -> the serials added (those already revoked are left as they were). crl.pem is written even
    when nothing is new, so it exists for the broker's `crlfile`."""
    d = Path(broker_dir)
    ca = ca or load_ca(d)
    have = revoked(d)
    known = {e["serial"] for e in have}
    added = []
    at = (_now() - datetime.timedelta(minutes=1)).isoformat(timespec="seconds")
    for serial, device in serials:
        serial = format(int(serial, 16), "x")
        if serial in known:
            continue
        known.add(serial)
        have.append({"serial": serial, "device": device, "reason": reason, "at": at})
        added.append(serial)
    if added:
        _write_atomic(d / REVOKED, (json.dumps(have, indent=1) + "\n").encode(), 0o600)
    if added or not (d / CRL).exists():
        write_crl(d, ca)
    return added


def listed(crl_pem: bytes) -> set[int]:
    """The serials a CRL (PEM) lists."""
    return {r.serial_number for r in x509.load_pem_x509_crl(crl_pem)}
