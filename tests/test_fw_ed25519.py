"""Ed25519 verification on the MicroPython VM (firmware/ed25519.py, with firmware/sha512.py where
the port's hashlib has no sha512): the RFC 8032 §7.1 vectors verify and their tampered forms do
not, random signatures by `cryptography` agree both ways, and the SHA-512 fallback matches
hashlib's, its constants derived again from the primes."""
import ast
import hashlib
import json
import os
import subprocess
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.vm import FIRMWARE, ROOT, run_vm

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493

_M1024 = (
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1e355f6c5"
    "0544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d658675fc6ea534e0"
    "810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82"
    "d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e06203b33890cc9b832f79ef80560ccb9"
    "a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7aff6f6c9"
    "4fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed185ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5"
    "d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88"
    "425de6bde1a9187ebb6092cf67bf2b13fd65f27088d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
    "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80"
    "c3414a8d0859dc65a46128bab27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae078"
    "4504df543af8969be3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9"
    "b47acdb751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
    "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34dff7310fdc"
    "82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7984a74d371459867"
    "80fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e488acba6b965610b5480109c8"
    "b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
    "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5fb93246f6b1116398a346f1a641f3b041e989f791"
    "4f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45"
    "a96768d40fd9d03412c091c6315cf4fde7cb68606937380db2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac"
    "86aba41c0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0")

# RFC 8032 §7.1: (name, public key, message, signature). Only what a verifier is given: no secret keys.
RFC8032 = [
    ("TEST 1", "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("TEST 2", "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("TEST 3", "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ("TEST 1024", "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e", _M1024,
     "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"),
    ("TEST SHA(abc)", "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf", hashlib.sha512(b"abc").hexdigest(),
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
]


def flip(hexstr: str, byte: int, bit: int = 0) -> str:
    b = bytearray(bytes.fromhex(hexstr))
    b[byte] ^= 1 << bit
    return b.hex()


def noncanonical_s(sig: str) -> str:
    """The same signature with S + L: the same point equation, but S >= L (RFC 8032 §5.1.7 step 1)."""
    b = bytes.fromhex(sig)
    s = int.from_bytes(b[32:], "little") + L
    return (b[:32] + s.to_bytes(32, "little")).hex()


def host_ok(pub: str, sig: str, msg: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub)).verify(bytes.fromhex(sig), bytes.fromhex(msg))
        return True
    except (InvalidSignature, ValueError):
        return False


def no_square_y() -> int:
    """A y for which no point exists: (y^2 - 1) / (d y^2 + 1) is not a square mod p."""
    d = -121665 * pow(121666, P - 2, P) % P
    y = 2
    while True:
        x2 = (y * y - 1) * pow(d * y * y + 1, P - 2, P) % P
        if pow(x2, (P - 1) // 2, P) == P - 1:
            return y
        y += 1


def vm_run(cases: list[dict]) -> list[dict]:
    lines = "".join(json.dumps({**c, "id": i}) + "\n" for i, c in enumerate(cases))
    proc = run_vm("release_cases.py", stdin=lines, timeout=300, heapsize="256K")  # compiling from source needs more than 64K
    out = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [o["id"] for o in out] == list(range(len(cases))), proc.stdout[-2000:]
    return out


def ed(pub: str, sig: str, msg: str) -> dict:
    return {"op": "ed", "pub": pub, "sig": sig, "msg": msg}


def test_rfc8032_vectors_verify_and_their_tampered_forms_do_not():
    cases, want = [], []
    for name, pub, msg, sig in RFC8032:
        assert host_ok(pub, sig, msg), name                    # the table is the RFC's
        forms = [(ed(pub, sig, msg), True)]
        forms.append((ed(pub, sig, msg + "00"), False))       # a byte more
        if msg:
            forms.append((ed(pub, sig, flip(msg, len(msg) // 4)), False))
        forms.append((ed(pub, flip(sig, 3), msg), False))     # R
        forms.append((ed(pub, flip(sig, 40, 5), msg), False))  # S
        forms.append((ed(flip(pub, 7), sig, msg), False))     # another key
        forms.append((ed(pub, noncanonical_s(sig), msg), False))
        for c, ok in forms:
            assert host_ok(c["pub"], c["sig"], c["msg"]) is ok, (name, c)  # cryptography agrees
            cases.append(c)
            want.append({"ok": ok})
    got = [{"ok": o.get("ok"), **({"exc": o["exc"]} if "exc" in o else {})} for o in vm_run(cases)]
    assert got == want


def test_points_that_do_not_decode_are_refused():
    name, pub, msg, sig = RFC8032[1]
    y_ge_p = (P + 1).to_bytes(32, "little").hex()            # y >= p (here y = p + 1: the encoding of y = 1)
    x0_sign = (1 | 1 << 255).to_bytes(32, "little").hex()    # y = 1, so x = 0, with the sign bit set
    nosq = no_square_y().to_bytes(32, "little").hex()
    cases = [ed(bad, sig, msg) for bad in (y_ge_p, x0_sign, nosq)]          # A
    cases += [ed(pub, bad + sig[64:], msg) for bad in (y_ge_p, x0_sign, nosq)]  # R
    cases += [ed(pub[:-2], sig, msg), ed(pub, sig[:-2], msg), ed(pub, sig + "00", msg)]  # lengths
    assert [o.get("ok") for o in vm_run(cases)] == [False] * len(cases)


def test_random_keys_and_messages_agree_with_cryptography():
    n = int(os.environ.get("EDGEPAY_ED25519_N", "12"))
    cases, want = [], []
    for i in range(n):
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        msg = os.urandom(i * 37 % 700).hex()
        sig = key.sign(bytes.fromhex(msg)).hex()
        cases += [ed(pub, sig, msg), ed(pub, flip(sig, i % 64, i % 8), msg)]
        want += [True, host_ok(pub, flip(sig, i % 64, i % 8), msg)]
    assert [o.get("ok") for o in vm_run(cases)] == want


def test_sha512_fallback_matches_hashlib():
    lengths = [0, 1, 3, 55, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 600, 1000]
    msgs = [os.urandom(n).hex() for n in lengths]
    got = [o.get("hex") for o in vm_run([{"op": "sha512", "msg": m} for m in msgs])]
    assert got == [hashlib.sha512(bytes.fromhex(m)).hexdigest() for m in msgs]


def _iroot(n: int, r: int) -> int:
    x = 1 << -(-n.bit_length() // r)
    while True:
        y = ((r - 1) * x + n // x ** (r - 1)) // r
        if y >= x:
            return x
        x = y


def test_sha512_constants_are_the_fips_ones():
    """FIPS 180-4 §4.2.3, §5.3.5: the first 64 bits of the fractional parts of the cube roots of the
    first 80 primes, and of the square roots of the first 8."""
    tree = ast.parse((FIRMWARE / "sha512.py").read_text())
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id in ("_K", "_H0")}
    primes: list[int] = []
    k = 2
    while len(primes) < 80:
        if all(k % p for p in primes):
            primes.append(k)
        k += 1
    mask = 2 ** 64 - 1
    assert consts["_K"] == b"".join((_iroot(p << 192, 3) & mask).to_bytes(8, "big") for p in primes)
    assert consts["_H0"] == tuple(_iroot(p << 128, 2) & mask for p in primes[:8])


def test_bench_verifies_from_mpy_at_a_64k_heap():
    """bench/ed25519_vm.py as a board runs the code (.mpy, -X heapsize=64K): a verify leaves nothing
    behind and fits well inside the data budget. Its time is the bench's to report (shared cores)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ed25519_vm.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["retained_bytes"] <= 64, res
    assert res["peak_heap_kb"] <= 6 and res["min_free_kb"] <= 12, res
    assert set(res["mpy_bytes"]) == {"ed25519", "sha512", "release"} and res["mpy_total"] < 12_000, res
