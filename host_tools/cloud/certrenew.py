"""Device certificate renewal, cloud side (protocol/SPEC.md §12): the operator's CA makes the new
P-256 key pair and certificate (the device cannot: its MicroPython has no EC key generation), and
the `set_cert` command carries the certificate with the private scalar wrapped under the device's
current key (RFC 3394, host_tools/protocol/keywrap.py). The new private key exists on the host only
in this process's memory: it is never written to disk here.

    r = renewal(ca_key, ca_cert, "gate-001", registry.get("gate-001").key, days=825)
    out = renew(client, "gate-001", r, timeout=20)   # -> {"device", "not_after", "n", ...}
"""
from __future__ import annotations

import hashlib
import queue
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from host_tools.protocol import ProtocolError, open_message
from host_tools.protocol.keywrap import wrap
from host_tools.tls import LEAF_DAYS, make_leaf

MAX_CERT = 512  # SPEC §3's byte-string bound, and what the device accepts


class RenewError(RuntimeError):
    """The renewal did not finish: `code` says where (refused, cert_refused, no_result, not_back)."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}" if detail else code)


@dataclass
class Renewal:
    cert: x509.Certificate
    cert_der: bytes
    wrapped: bytes  # the 32-byte private scalar, wrapped under the device key: 40 bytes

    def args(self) -> dict:
        return {1: self.cert_der, 2: self.wrapped}


def renewal(ca_key, ca_cert, device: str, device_key: bytes, days: int = LEAF_DAYS) -> Renewal:
    """A new key pair and certificate (CN = the device, no names: the broker takes the CN as the
    username) from the CA, the key wrapped for the device."""
    key, cert = make_leaf(ca_key, ca_cert, cn=device, dns=(), ips=(), days=days)
    der = cert.public_bytes(serialization.Encoding.DER)
    if len(der) > MAX_CERT:
        raise RenewError("too_big", f"the certificate is {len(der)} bytes, over {MAX_CERT}")
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return Renewal(cert, der, wrap(device_key, scalar))


def send_retrying(client, device: str, name: str, args: dict, deadline: float, busy_wait: float = 1.0):
    """Send command `name` until it is not `busy` (a trial under way on the device: an earlier
    set_cert or set_ca, maybe redelivered after a reboot) or `deadline` (monotonic) passed, `busy_wait`
    seconds between tries; clock_untrusted: the device is given the time, then it goes again (a
    command must be fresh: SPEC §5). -> the last Command."""
    while True:
        c = client.send(device, name, args, timeout=max(1.0, deadline - time.monotonic()))
        if c.code == "clock_untrusted" and client.sync_time(device, timeout=5):
            continue
        if c.ok or c.code != "busy" or time.monotonic() + busy_wait > deadline:
            return c
        time.sleep(busy_wait)


def trial(client, device: str, name: str, args: dict, h: bytes, verdicts: tuple[str, ...], timeout: float,
          busy_wait: float = 1.0, error=None) -> tuple:
    """Send `name` (set_cert, set_ca with retire), whose success starts a trial connection on the
    device, and wait for the signed event that ends it: the first of `verdicts` whose detail names
    `h` (SPEC §12: the first 8 bytes of the certificate's or CA's SHA-256; an earlier command's
    verdict, redelivered, names another). -> (Command, event detail, event code). `error` (RenewError
    by default) raised as "refused" (the command failed) or "not_back" (no verdict within `timeout`)."""
    error = error or RenewError
    d = client.registry.get(device)
    got: queue.Queue = queue.Queue()

    def on_evt(topic: str, payload: bytes) -> None:
        try:
            m = open_message(d.key, d.kid, topic, payload)
        except ProtocolError:
            return
        if m.get("code") in verdicts:
            got.put(m)

    client.mqtt.subscribe(f"v1/dev/{device}/up/evt", on_evt, qos=1)
    time.sleep(0.2)  # the subscription in place before the device can answer
    deadline = time.monotonic() + timeout
    c = send_retrying(client, device, name, args, deadline, busy_wait)
    if not c.ok:
        raise error("refused", f"{c.state.value} {c.code} {c.data or ''}".strip())
    while True:
        try:
            m = got.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise error("not_back", f"no word from {device} within {timeout:g} s of its trial connection")
        detail = m.get("detail") or {}
        if detail.get("h") == h:
            return c, detail, m["code"]


def renew(client, device: str, r: Renewal, timeout: float = 30.0) -> dict:
    """Send set_cert, then wait for the device's verdict on its trial connection: the event
    cert_current (the broker took the new pair: it is the device's now) or cert_refused (it went back
    to its current pair). RenewError unless cert_current."""
    h = hashlib.sha256(r.cert_der).digest()[:8]  # the device's events name the certificate so
    _, detail, code = trial(client, device, "set_cert", r.args(), h, ("cert_current", "cert_refused"), timeout)
    if code != "cert_current":
        raise RenewError("cert_refused", f"the broker refused the new certificate ({detail.get('why')}); "
                         "the device is back on its current one")
    return {"device": device, "n": detail.get("n"), "serial": format(r.cert.serial_number, "x"),
            "not_after": r.cert.not_valid_after_utc.isoformat()}


def supersede(broker_dir, device: str, new_cert: x509.Certificate, also: tuple[x509.Certificate, ...] = ()) -> list[str]:
    """After the device reported cert_current for `new_cert`: note it as issued, and put every
    earlier certificate of the device known in the broker dir (certs.json, and `also`: a device.pem
    from before certs.json) on the broker dir's CRL, reason superseded (host_tools/crl.py). Earlier
    entries stay. -> the serials added; the caller reloads the broker (SIGHUP) so it rereads it."""
    from host_tools import crl
    new = format(new_cert.serial_number, "x")
    old = [s for s in crl.device_serials(broker_dir, device, also) if s != new]
    crl.record_issued(broker_dir, device, new_cert)
    return crl.revoke(broker_dir, [(s, device) for s in old], "superseded")
