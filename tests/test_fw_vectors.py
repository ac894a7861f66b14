"""Every protocol/vectors/vectors.json case through the firmware codec, in one VM process."""
import json

import pytest

from tests.test_fw_codec import packed
from tests.vm import ROOT, run_vm

VECTORS = ROOT / "protocol" / "vectors" / "vectors.json"


def load():
    if not VECTORS.exists():
        return None
    return json.loads(VECTORS.read_text())


CASES = load()
pytestmark = pytest.mark.skipif(CASES is None, reason="protocol/vectors/vectors.json not generated yet")


@pytest.fixture(scope="module")
def outcomes():
    lines = "".join(json.dumps({"name": c["name"], "key": c["key"], "kid": c["kid"],
                                "topic": c["topic"], "hex": packed(bytes.fromhex(c["hex"]))}) + "\n"
                    for c in CASES)
    proc = run_vm("vectors_run.py", stdin=lines)
    out = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [o["name"] for o in out] == [c["name"] for c in CASES]
    return {o["name"]: o for o in out}


@pytest.mark.parametrize("case", CASES or [], ids=lambda c: c["name"])
def test_vector(outcomes, case):
    got = dict(outcomes[case["name"]])
    got.pop("name")
    want = {"error": case["error"]} if "error" in case else {"decoded": case["decoded"]}
    assert got == want, case["description"]


def test_vectors_cover_every_error():
    # the file should exercise each code the codec can raise
    errors = {c.get("error") for c in CASES}
    assert {"malformed", "trailing", "non_canonical", "indefinite", "dup_key", "too_deep",
            "too_large", "unsupported_cbor", "bad_tag", "bad_envelope", "bad_alg", "bad_kid",
            "bad_mac", "bad_type", "missing", "unknown_type", "bad_value", "bad_topic"} <= errors
