"""The host's key wrap (host_tools/protocol/keywrap.py) against protocol/vectors/keywrap.json
(SPEC §9, §11), and the vector generator's --check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.protocol import keywrap

ROOT = Path(__file__).resolve().parent.parent
CASES = json.loads((ROOT / "protocol/vectors/keywrap.json").read_text())


def test_vector_file_shape() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    assert "rfc3394_4_6" in names
    assert sum("error" in c for c in CASES) >= 3 and sum("error" not in c for c in CASES) >= 3
    for c in CASES:
        assert c.get("error", "unwrap") == "unwrap"
        assert ({"name", "kek", "wrapped"} | ({"error"} if "error" in c else
                                                {"key", "kid", "proof"})) <= set(c)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case: dict) -> None:
    kek, wrapped = bytes.fromhex(case["kek"]), bytes.fromhex(case["wrapped"])
    if "error" in case:
        with pytest.raises(keywrap.KeyWrapError) as e:
            keywrap.unwrap(kek, wrapped)
        assert e.value.code == "unwrap" and isinstance(e.value, ValueError)
        return
    key = bytes.fromhex(case["key"])
    assert keywrap.unwrap(kek, wrapped) == key
    assert keywrap.wrap(kek, key) == wrapped
    assert keywrap.proof(key, case["kid"]).hex() == case["proof"]
    assert keywrap.proof_matches(key, case["kid"], bytes.fromhex(case["proof"]))
    assert not keywrap.proof_matches(key, case["kid"] + "0", bytes.fromhex(case["proof"]))


def test_bad_sizes_are_unwrap_errors() -> None:
    with pytest.raises(keywrap.KeyWrapError):
        keywrap.wrap(b"k" * 16, b"x" * 32)
    with pytest.raises(keywrap.KeyWrapError):
        keywrap.unwrap(b"k" * 32, b"x" * 48)
    with pytest.raises(keywrap.KeyWrapError):
        keywrap.unwrap(b"k" * 32, "not bytes")  # type: ignore[arg-type]


def test_generator_check_passes() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "protocol/vectors/keywrap_gen.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
