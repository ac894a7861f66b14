"""Firmware release manifests (SPEC §10): a COSE_Sign1 (RFC 9052 §4.2) with EdDSA over Ed25519, by a
release key (never a device key), in the deterministic CBOR profile of SPEC §3.

    key = Ed25519PrivateKey.generate(); kid = key_id(key.public_key())
    raw = sign_manifest(key, Manifest(board="sim-gate", kind="gate", version="1.4.0", seq=7,
                                      size=len(payload), sha256=hashlib.sha256(payload).digest()))
    m = verify_manifest(raw, {kid: key.public_key()}, revoked=set())    # ManifestError otherwise

What a device then checks before writing a byte (its class, seq above the installed one, size
against its slot, the journal format it reads) is `Manifest.check_for` here, the device's rules
run by the cloud before it offers a release.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .cbor import Tag, decode, encode
from .errors import ProtocolError

SIGN1_TAG = 18
ALG_EDDSA = -8
HEADER_ALG, HEADER_KID = 1, 4
KID_LEN = 8
SIG_LEN = 64
MAX_MANIFEST = 512            # bytes of the whole Sign1: a manifest is small by design
MAX_PAYLOAD = 4 * 1024 * 1024  # a release payload (a bundle, or an ESP32 OTA image)
CHUNK_MIN, CHUNK_MAX = 256, 1536  # what a chunk message carries (fits the 2,048-byte message bound)
FORMATS = ("bundle", "image")

# payload keys (SPEC §10)
K_BOARD, K_KIND, K_VERSION, K_SEQ, K_SIZE, K_SHA256, K_CHUNK = 1, 2, 3, 4, 5, 6, 7
K_JOURNAL, K_FORMAT, K_WINDOW, K_FROM, K_ALLOW_LOWER = 8, 9, 10, 11, 12
_REQUIRED = (K_BOARD, K_KIND, K_VERSION, K_SEQ, K_SIZE, K_SHA256, K_CHUNK, K_JOURNAL, K_FORMAT)
_KNOWN = set(_REQUIRED) | {K_WINDOW, K_FROM, K_ALLOW_LOWER}


class ManifestError(Exception):
    """A manifest refused; `code` is a SPEC §10 reason (bad_manifest, bad_alg, unknown_key,
    revoked_key, bad_signature, wrong_class, downgrade, too_large, journal_format, from_version)."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Manifest:
    board: str                 # the device class: board name ...
    kind: str                  # ... and app kind
    version: str               # human version, e.g. "1.4.0"
    seq: int                   # anti-rollback: strictly above the installed release's
    size: int                  # payload bytes
    sha256: bytes              # of the payload
    chunk: int = 1024          # bytes per chunk message
    journal: int = 1           # the journal format the release reads
    format: str = "bundle"     # "bundle" (RP2040, sim: a flash slot) or "image" (ESP32 OTA partition)
    window: tuple[int, int] | None = None   # install only between these Unix seconds
    from_version: str | None = None         # the oldest installed version it may update
    allow_lower: bool = False               # an explicit emergency rollback: seq may be lower

    def validate(self) -> "Manifest":
        def bad(why: str) -> ManifestError:
            return ManifestError("bad_manifest", why)
        for name in ("board", "kind", "version"):
            v = getattr(self, name)
            if not isinstance(v, str) or not 1 <= len(v.encode()) <= 32:
                raise bad(f"{name} is a 1-32 byte string")
        if type(self.seq) is not int or not 0 < self.seq < 2 ** 32:
            raise bad("seq is 1..2^32-1")
        if type(self.size) is not int or not 0 < self.size <= MAX_PAYLOAD:
            raise bad(f"size is 1..{MAX_PAYLOAD}")
        if not isinstance(self.sha256, bytes) or len(self.sha256) != 32:
            raise bad("sha256 is 32 bytes")
        if type(self.chunk) is not int or not CHUNK_MIN <= self.chunk <= CHUNK_MAX:
            raise bad(f"chunk is {CHUNK_MIN}..{CHUNK_MAX} bytes")
        if type(self.journal) is not int or not 0 < self.journal < 256:
            raise bad("journal is a format number 1..255")
        if self.format not in FORMATS:
            raise bad(f"format is one of {', '.join(FORMATS)}")
        if self.window is not None:
            w = self.window
            if len(w) != 2 or any(type(x) is not int or not 0 <= x < 2 ** 40 for x in w) or w[0] >= w[1]:
                raise bad("window is [start, end) Unix seconds, start < end")
        if self.from_version is not None and (not isinstance(self.from_version, str)
                                              or not 1 <= len(self.from_version.encode()) <= 32):
            raise bad("from is a 1-32 byte version")
        if type(self.allow_lower) is not bool:
            raise bad("allow_lower is a bool")
        return self

    def to_wire(self) -> dict:
        m = {K_BOARD: self.board, K_KIND: self.kind, K_VERSION: self.version, K_SEQ: self.seq,
             K_SIZE: self.size, K_SHA256: self.sha256, K_CHUNK: self.chunk, K_JOURNAL: self.journal,
             K_FORMAT: self.format}
        if self.window is not None:
            m[K_WINDOW] = list(self.window)
        if self.from_version is not None:
            m[K_FROM] = self.from_version
        if self.allow_lower:
            m[K_ALLOW_LOWER] = True
        return m

    @classmethod
    def from_wire(cls, m: object) -> "Manifest":
        if not isinstance(m, dict) or not all(type(k) is int for k in m):
            raise ManifestError("bad_manifest", "the payload is not a map of integer keys")
        missing = [k for k in _REQUIRED if k not in m]
        if missing or set(m) - _KNOWN:
            raise ManifestError("bad_manifest", f"keys missing {missing} or unknown {sorted(set(m) - _KNOWN)}")
        w = m.get(K_WINDOW)
        if w is not None and not isinstance(w, list):
            raise ManifestError("bad_manifest", "window is a list")
        if K_ALLOW_LOWER in m and m[K_ALLOW_LOWER] is not True:
            raise ManifestError("bad_manifest", "allow_lower is present only as true")
        return cls(m[K_BOARD], m[K_KIND], m[K_VERSION], m[K_SEQ], m[K_SIZE], m[K_SHA256], m[K_CHUNK],
                   m[K_JOURNAL], m[K_FORMAT], tuple(w) if w is not None else None,  # type: ignore[arg-type]
                   m.get(K_FROM), bool(m.get(K_ALLOW_LOWER, False))).validate()

    def check_for(self, board: str, kind: str, installed_seq: int, slot_bytes: int, journal: int,
                  installed_version: str | None = None) -> None:
        """The device's checks before it writes anything (SPEC §10); ManifestError otherwise."""
        if (self.board, self.kind) != (board, kind):
            raise ManifestError("wrong_class", f"for {self.board}/{self.kind}, not {board}/{kind}")
        if self.seq <= installed_seq and not self.allow_lower:
            raise ManifestError("downgrade", f"seq {self.seq} is not above the installed {installed_seq}")
        if self.size > slot_bytes:
            raise ManifestError("too_large", f"{self.size} bytes for a {slot_bytes}-byte slot")
        if self.journal != journal:
            raise ManifestError("journal_format", f"reads journal format {self.journal}, the device has {journal}")
        if self.from_version is not None and installed_version is not None \
                and _older(installed_version, self.from_version):
            raise ManifestError("from_version", f"updates from {self.from_version} on, not {installed_version}")


def _vkey(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in v.replace("-", ".").split("."))


def _older(a: str, b: str) -> bool:
    """Version a below b, part by part (numbers by value, other parts as text); a number against
    text cannot be ordered and counts as older: refused, as the device does (firmware/release.py)."""
    try:
        return _vkey(a) < _vkey(b)
    except TypeError:
        return True


def key_id(public: Ed25519PublicKey) -> bytes:
    """A release key's id: the first 8 bytes of SHA-256 over its raw 32-byte public key."""
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).digest()[:KID_LEN]


def _protected(kid: bytes) -> bytes:
    return encode({HEADER_ALG: ALG_EDDSA, HEADER_KID: kid})


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """["Signature1", protected, external_aad (empty), payload], deterministic CBOR."""
    return encode(["Signature1", protected, b"", payload])


def sign_manifest(key: Ed25519PrivateKey, m: Manifest) -> bytes:
    m.validate()
    kid = key_id(key.public_key())
    protected = _protected(kid)
    payload = encode(m.to_wire())
    sig = key.sign(sig_structure(protected, payload))
    raw = encode(Tag(SIGN1_TAG, [protected, {}, payload, sig]))
    if len(raw) > MAX_MANIFEST:
        raise ManifestError("bad_manifest", f"{len(raw)} bytes: over {MAX_MANIFEST}")
    return raw


def _sign1(raw: bytes) -> list:
    """A manifest's size, CBOR profile and Sign1 shape: -> [protected, {}, payload, signature]."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_MANIFEST:
        raise ManifestError("bad_manifest", f"not bytes of at most {MAX_MANIFEST}")
    try:
        env = decode(bytes(raw), envelope=True)
    except ProtocolError as e:
        raise ManifestError("bad_manifest", f"CBOR: {e.code}") from None
    if not isinstance(env, Tag) or env.tag != SIGN1_TAG:
        raise ManifestError("bad_manifest", "not a tagged COSE_Sign1 (tag 18)")
    body = env.value
    if not (isinstance(body, list) and len(body) == 4 and isinstance(body[0], bytes) and body[1] == {}
            and isinstance(body[2], bytes) and isinstance(body[3], bytes)):
        raise ManifestError("bad_manifest", "not [protected, {}, payload, signature]")
    return body


def _fields(payload: bytes) -> Manifest:
    try:
        fields = decode(payload)
    except ProtocolError as e:
        raise ManifestError("bad_manifest", f"payload: {e.code}") from None
    return Manifest.from_wire(fields)


def read_manifest(raw: bytes) -> Manifest:
    """The fields of a manifest, its signature NOT checked: for the cloud, which serves the bytes a
    device checks itself before it asks for any (the chunk server's store). ManifestError if it is
    not a manifest at all."""
    return _fields(_sign1(raw)[2])


def verify_manifest(raw: bytes, trusted: dict[bytes, Ed25519PublicKey], revoked: set[bytes] | frozenset = frozenset()) -> Manifest:
    """Check a manifest in order (size, CBOR profile, Sign1 shape, alg, key trusted and not revoked,
    signature, payload) and return it; ManifestError with the first failure's reason."""
    return _fields(verify_sign1(raw, trusted, revoked)[1])


def verify_sign1(raw: bytes, trusted: dict[bytes, Ed25519PublicKey],
                 revoked: set[bytes] | frozenset = frozenset()) -> tuple[bytes, bytes]:
    """A release key's Sign1 (a manifest, a key list: host_tools/protocol/keylist.py) checked up to
    its signature: -> (kid, payload bytes); ManifestError (a malformed one is bad_manifest)."""
    protected, _, payload, sig = _sign1(raw)
    try:
        hdr = decode(protected)
    except ProtocolError as e:
        raise ManifestError("bad_manifest", f"protected header: {e.code}") from None
    if not (isinstance(hdr, dict) and set(hdr) == {HEADER_ALG, HEADER_KID} and isinstance(hdr[HEADER_KID], bytes)):
        raise ManifestError("bad_manifest", "protected header is not {1: alg, 4: kid}")
    if hdr[HEADER_ALG] != ALG_EDDSA:
        raise ManifestError("bad_alg", f"alg {hdr[HEADER_ALG]!r}, not EdDSA (-8)")
    kid = hdr[HEADER_KID]
    if kid in revoked:
        raise ManifestError("revoked_key", kid.hex())
    pub = trusted.get(kid)
    if pub is None:
        raise ManifestError("unknown_key", kid.hex())
    if len(sig) != SIG_LEN:
        raise ManifestError("bad_signature", "not 64 bytes")
    try:
        pub.verify(sig, sig_structure(protected, payload))
    except InvalidSignature:
        raise ManifestError("bad_signature") from None
    return kid, payload
