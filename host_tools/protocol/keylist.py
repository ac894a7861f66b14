"""Release key lists (SPEC §10 "The release key list"): the release public keys a device trusts and
the kids it has revoked, replaced by a COSE_Sign1 (EdDSA) signed by a release key the device trusts
now, never by the key the list revokes. The payload is {1: "keys", 2: version, 3: [pub] (1..4 raw
32-byte keys), 4?: [revoked kid] (<= 16)}; the host side of firmware/release.py's open_keys.

    raw = sign_keylist(old_key, KeyList(version=2, keys=(raw_pub(old_key), raw_pub(new_key))))
    t = accept_keylist(raw, Trust(1, {kid: pub}, ()))     # the device's new trust; KeyListError otherwise

KeyListError.code is the `refused` reason the device answers `set_release_keys` with: bad_list,
bad_alg, unknown_key, revoked_key, bad_signature, stale_version, self_revoked, empty.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .cbor import Tag, decode, encode
from .errors import ProtocolError
from .manifest import (HEADER_KID, KID_LEN, MAX_MANIFEST, SIGN1_TAG, ManifestError, _protected, _sign1, key_id,
                       sig_structure, verify_sign1)

KIND = "keys"
MAX_KEYS = 4
MAX_REVOKED = 16
K_KIND, K_VERSION, K_KEYS, K_REVOKED = 1, 2, 3, 4


class KeyListError(Exception):
    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def kid_of(pub: bytes) -> bytes:
    """A raw 32-byte public key's kid (as key_id)."""
    return hashlib.sha256(pub).digest()[:KID_LEN]


@dataclass(frozen=True)
class KeyList:
    version: int                        # strictly above the device's list version (anti-rollback)
    keys: tuple[bytes, ...]             # raw 32-byte Ed25519 public keys, 1..4
    revoked: tuple[bytes, ...] = ()     # kids, <= 16

    def validate(self) -> "KeyList":
        if type(self.version) is not int or not 0 < self.version < 2 ** 32:
            raise KeyListError("bad_list", "version is 1..2^32-1")
        if not 1 <= len(self.keys) <= MAX_KEYS or any(not isinstance(k, bytes) or len(k) != 32 for k in self.keys):
            raise KeyListError("bad_list", f"1..{MAX_KEYS} raw 32-byte public keys")
        if len({kid_of(k) for k in self.keys}) != len(self.keys):
            raise KeyListError("bad_list", "a key listed twice")
        if len(self.revoked) > MAX_REVOKED or any(not isinstance(k, bytes) or len(k) != KID_LEN for k in self.revoked):
            raise KeyListError("bad_list", f"at most {MAX_REVOKED} revoked kids of {KID_LEN} bytes")
        return self

    def to_wire(self) -> dict:
        m: dict = {K_KIND: KIND, K_VERSION: self.version, K_KEYS: list(self.keys)}
        if self.revoked:
            m[K_REVOKED] = list(self.revoked)
        return m

    @classmethod
    def from_wire(cls, m: object) -> "KeyList":
        if not isinstance(m, dict) or m.get(K_KIND) != KIND or type(m.get(K_VERSION)) is not int \
                or not isinstance(m.get(K_KEYS), list) or not isinstance(m.get(K_REVOKED, []), list):
            raise KeyListError("bad_list", 'not {1: "keys", 2: version, 3: [pub], 4?: [kid]}')
        if set(m) - {K_KIND, K_VERSION, K_KEYS, K_REVOKED}:
            raise KeyListError("bad_list", "unknown keys")
        return cls(m[K_VERSION], tuple(m[K_KEYS]), tuple(m.get(K_REVOKED, []))).validate()


@dataclass(frozen=True)
class Trust:
    """What a device trusts: its key list version (0: the provisioned keys), {kid: raw pub}, revoked kids."""
    version: int
    keys: dict[bytes, bytes]
    revoked: tuple[bytes, ...] = field(default=())


def sign_keylist(key: Ed25519PrivateKey, kl: KeyList) -> bytes:
    kl.validate()
    protected = _protected(key_id(key.public_key()))
    payload = encode(kl.to_wire())
    raw = encode(Tag(SIGN1_TAG, [protected, {}, payload, key.sign(sig_structure(protected, payload))]))
    if len(raw) > MAX_MANIFEST:  # cannot be with 4 keys and 16 kids; the device's bound all the same
        raise KeyListError("bad_list", f"{len(raw)} bytes: over {MAX_MANIFEST}")
    return raw


def read_keylist(raw: bytes, trusted: dict[bytes, bytes], revoked=()) -> tuple[bytes, KeyList]:
    """The list's signer kid and fields, its signature checked against trusted {kid: raw pub}."""
    pubs = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in trusted.items()}
    try:
        kid, payload = verify_sign1(raw, pubs, set(revoked))
    except ManifestError as e:
        raise KeyListError("bad_list" if e.code == "bad_manifest" else e.code, e.detail) from None
    try:
        fields = decode(payload)
    except ProtocolError as e:
        raise KeyListError("bad_list", f"payload: {e.code}") from None
    return kid, KeyList.from_wire(fields)


def peek_keylist(raw: bytes) -> tuple[bytes, KeyList]:
    """The signer's kid and the fields of a list, its signature NOT checked (the CLI, before it
    sends a file: a manifest or a stray file is refused here, not by every device)."""
    try:
        protected, _, payload, _ = _sign1(raw)
        hdr, fields = decode(protected), decode(payload)
    except ManifestError as e:
        raise KeyListError("bad_list", e.detail) from None
    except ProtocolError as e:
        raise KeyListError("bad_list", f"CBOR: {e.code}") from None
    kid = hdr.get(HEADER_KID) if isinstance(hdr, dict) else None
    if not isinstance(kid, bytes):
        raise KeyListError("bad_list", "protected header has no kid")
    return kid, KeyList.from_wire(fields)


def accept_keylist(raw: bytes, now: Trust) -> Trust:
    """The device's rules (firmware/release.py open_keys): -> the trust the list leaves, or
    KeyListError with the first failure's reason; a refusal changes nothing."""
    kid, kl = read_keylist(raw, now.keys, now.revoked)
    if kl.version <= now.version:
        raise KeyListError("stale_version", f"version {kl.version} is not above {now.version}")
    if kid in kl.revoked:
        raise KeyListError("self_revoked", f"signed by {kid.hex()}, which it revokes")
    revoked = tuple(kl.revoked) + tuple(k for k in now.revoked if k not in kl.revoked)  # for good
    if len(revoked) > MAX_REVOKED:
        raise KeyListError("bad_list", f"over {MAX_REVOKED} revoked kids with the device's")
    keys = {kid_of(p): p for p in kl.keys if kid_of(p) not in revoked}
    if not keys:
        raise KeyListError("empty", "no key the list trusts is left unrevoked")
    return Trust(kl.version, keys, revoked)
