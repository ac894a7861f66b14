"""TLS material made with `cryptography` at run time: a CA, a broker (server) certificate and, for
tests, a certificate from an unrelated CA. Nothing secret is ever stored in the repository.

Lifetimes are those of a deployment, not of a test run: a board in the field cannot be re-provisioned
every month. The CA lives CA_DAYS (about 10 years); leaf certificates LEAF_DAYS, the 825 days the
CA/Browser Forum allowed TLS server certificates until 2020, and never past their CA."""
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_DAYS = 3650
LEAF_DAYS = 825


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn="edgepay test CA", days=CA_DAYS):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca_key, ca_cert, cn="localhost", dns=("localhost",), ips=("127.0.0.1",), days=LEAF_DAYS,
              ended_days_ago=None):
    """A certificate signed by the CA; `ended_days_ago`: one that expired that long ago (tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    # a certificate outliving its CA would only fail later, at the CA's expiry: end with it
    end = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    start = now - datetime.timedelta(days=1)
    if ended_days_ago is not None:
        start, end = now - datetime.timedelta(days=ended_days_ago + 30), now - datetime.timedelta(days=ended_days_ago)
    san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_pki(d, **leaf_kw):
    """Write ca.pem, ca.der, server.pem, server.key and other-ca.pem/.der into d; return paths."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = make_ca()
    key, cert = make_leaf(ca_key, ca, **leaf_kw)
    _, other = make_ca("some other CA")
    out = {}
    for name, c in (("ca", ca), ("other-ca", other)):
        (d / (name + ".pem")).write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (d / (name + ".der")).write_bytes(c.public_bytes(serialization.Encoding.DER))
        out[name] = str(d / (name + ".pem"))
        out[name + "-der"] = str(d / (name + ".der"))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    out["cert"] = str(d / "server.pem")
    out["key"] = str(d / "server.key")
    return out


def device_der(key, cert) -> tuple[bytes, bytes]:
    """A device's certificate and private key as the device loads them: DER (its mbedtls has no
    PEM parser), the key PKCS#8."""
    return (cert.public_bytes(serialization.Encoding.DER),
            key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def make_crl(ca_key, ca_cert, revoked=(), days=30) -> bytes:
    """A CRL (PEM) from the CA listing the certificates `revoked`: what the broker's `crlfile` reads."""
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(now - datetime.timedelta(minutes=5)).next_update(now + datetime.timedelta(days=days)))
    for c in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                      .revocation_date(now - datetime.timedelta(minutes=5)).build())
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
