# Import the codec from compiled .mpy files only (argv[1] is their directory).
import sys

d = sys.argv[1]
sys.path[:] = [d]  # drop firmware/ (the .py sources) from the search path
import cbor  # noqa: E402
import cose  # noqa: E402
import hmac256  # noqa: E402
import msg  # noqa: E402

names = []
for m in (cbor, hmac256, cose, msg):
    f = m.__file__
    assert f.startswith(d) and f.endswith(".mpy"), f
    names.append(f.split("/")[-1])
k = hmac256.HmacKey(b"k" * 32)
env = msg.seal(k, b"a:1", "v1/dev/a/up/status", {0: 2, 8: 1, 10: True})
assert msg.open(k, b"a:1", "v1/dev/a/up/status", env) == {0: 2, 8: 1, 10: True}
print("ok " + " ".join(names))
