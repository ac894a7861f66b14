"""Write protocol/vectors/keywrap.json, the key-wrap vectors of device key rotation (SPEC §9, §11).

Like generate.py, this uses neither codec: the AES-256 block function and the RFC 3394 wrap are
written out here from FIPS 197 and RFC 3394 §2.2.1, standard library only (hashlib, hmac), and the
wrap is checked against RFC 3394 §4.6's published answer before anything is written. Keys are the
fixed test keys of wire_by_hand.py (derived from a name, no deployment's secret).

    python protocol/vectors/keywrap_gen.py          # (re)write keywrap.json
    python protocol/vectors/keywrap_gen.py --check  # exit 1 if keywrap.json is stale
"""
from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

from wire_by_hand import test_key  # noqa: E402

OUT = Path(__file__).resolve().parent / "keywrap.json"

# --- AES-256 encryption (FIPS 197), by hand ----------------------------------------------------


def _xtime(b: int) -> int:
    b <<= 1
    return (b ^ 0x11B) if b & 0x100 else b


def _gmul(a: int, b: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        a, b = _xtime(a), b >> 1
    return r


def _sbox() -> list[int]:
    inv = [0] * 256
    for x in range(1, 256):
        for y in range(1, 256):
            if _gmul(x, y) == 1:
                inv[x] = y
                break
    box = []
    for x in range(256):
        b, s = inv[x], inv[x]
        for _ in range(4):
            b = ((b << 1) | (b >> 7)) & 0xFF
            s ^= b
        box.append(s ^ 0x63)
    return box


SBOX = _sbox()
assert SBOX[0x00] == 0x63 and SBOX[0x53] == 0xED  # FIPS 197 Figure 7


def _expand(key: bytes) -> list[list[int]]:
    """AES-256 key schedule (Nk 8, Nr 14): 15 round keys of 16 bytes."""
    assert len(key) == 32
    words = [list(key[4 * i:4 * i + 4]) for i in range(8)]
    rcon = 1
    for i in range(8, 60):
        t = list(words[i - 1])
        if i % 8 == 0:
            t = [SBOX[b] for b in t[1:] + t[:1]]
            t[0] ^= rcon
            rcon = _xtime(rcon)
        elif i % 8 == 4:
            t = [SBOX[b] for b in t]
        words.append([a ^ b for a, b in zip(words[i - 8], t)])
    return [sum(words[4 * r:4 * r + 4], []) for r in range(15)]


def aes256_encrypt(key: bytes, block: bytes) -> bytes:
    rks = _expand(key)
    s = [b ^ k for b, k in zip(block, rks[0])]  # state in column order, as the bytes come
    for rnd in range(1, 15):
        s = [SBOX[b] for b in s]
        s = [s[(i + 4 * (i % 4)) % 16] for i in range(16)]  # ShiftRows
        if rnd != 14:
            m = []
            for c in range(4):
                a = s[4 * c:4 * c + 4]
                m += [_gmul(a[0], 2) ^ _gmul(a[1], 3) ^ a[2] ^ a[3],
                      a[0] ^ _gmul(a[1], 2) ^ _gmul(a[2], 3) ^ a[3],
                      a[0] ^ a[1] ^ _gmul(a[2], 2) ^ _gmul(a[3], 3),
                      _gmul(a[0], 3) ^ a[1] ^ a[2] ^ _gmul(a[3], 2)]
            s = m
        s = [b ^ k for b, k in zip(s, rks[rnd])]
    return bytes(s)


# FIPS 197 Appendix C.3
assert aes256_encrypt(bytes(range(32)), bytes.fromhex("00112233445566778899aabbccddeeff")) \
    == bytes.fromhex("8ea2b7ca516745bfeafc49904b496089")

# --- RFC 3394 key wrap (§2.2.1), by hand -------------------------------------------------------

IV = bytes.fromhex("a6a6a6a6a6a6a6a6")


def wrap(kek: bytes, key: bytes) -> bytes:
    n = len(key) // 8
    a, r = IV, [key[8 * i:8 * i + 8] for i in range(n)]
    for j in range(6):
        for i in range(n):
            b = aes256_encrypt(kek, a + r[i])
            t = n * j + i + 1
            a = (int.from_bytes(b[:8], "big") ^ t).to_bytes(8, "big")
            r[i] = b[8:]
    return a + b"".join(r)


RFC_KEK = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
RFC_KEY = bytes.fromhex("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f")
RFC_WRAPPED = bytes.fromhex("28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326"
                            "cbc7f0e71a99f43bfb988b9b7a02dd21")
assert wrap(RFC_KEK, RFC_KEY) == RFC_WRAPPED  # RFC 3394 §4.6


def proof(key: bytes, kid: str) -> bytes:
    return hmac.new(key, b"edgepay-rekey:" + kid.encode(), hashlib.sha256).digest()[:16]


# --- the cases ---------------------------------------------------------------------------------

def valid(name: str, description: str, kek: bytes, key: bytes, kid: str,
          wrapped: bytes | None = None) -> dict:
    w = wrap(kek, key)
    assert wrapped is None or w == wrapped
    return {"name": name, "description": description, "kek": kek.hex(), "key": key.hex(),
            "kid": kid, "wrapped": w.hex(), "proof": proof(key, kid).hex()}


def invalid(name: str, description: str, kek: bytes, wrapped: bytes) -> dict:
    return {"name": name, "description": description, "kek": kek.hex(), "wrapped": wrapped.hex(),
            "error": "unwrap"}


def build() -> list[dict]:
    k1, k2, k3 = test_key("gate-001:1"), test_key("gate-001:2"), test_key("gate-001:3")
    o1, o2 = test_key("gate-002:1"), test_key("gate-002:2")
    good = wrap(k1, k2)
    flipped = bytearray(good)
    flipped[20] ^= 0x01
    return [
        valid("rfc3394_4_6", "RFC 3394 §4.6: 256 bits of key data under a 256-bit KEK "
              "(the proof is over an arbitrary kid)", RFC_KEK, RFC_KEY, "rfc3394:2", RFC_WRAPPED),
        valid("gate_v1_to_v2", "gate-001's key 2 wrapped under its key 1", k1, k2, "gate-001:2"),
        valid("gate_v2_to_v3", "gate-001's key 3 wrapped under its key 2", k2, k3, "gate-001:3"),
        valid("other_v1_to_v2", "gate-002's key 2 wrapped under its key 1", o1, o2, "gate-002:2"),
        invalid("flipped_byte", "gate_v1_to_v2's wrap with one bit of byte 20 flipped", k1,
                bytes(flipped)),
        invalid("flipped_iv", "gate_v1_to_v2's wrap with one bit of its first byte flipped", k1,
                bytes([good[0] ^ 0x80]) + good[1:]),
        invalid("other_kek", "gate-001's key 2 wrapped under gate-002's key 1, unwrapped under "
                "gate-001's key 1", k1, wrap(o1, k2)),
        invalid("truncated_32", "gate_v1_to_v2's wrap cut to 32 bytes", k1, good[:32]),
    ]


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{OUT.name} is current")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
