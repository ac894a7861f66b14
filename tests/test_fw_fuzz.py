"""Fuzz the firmware decoder on the VM: only CodecError ever comes out, nothing hangs, memory is
bounded. Deterministic: chunk k uses seed k. EDGEPAY_FUZZ_N sets the total (default 20,000).
The chunks run as parallel VM processes, so the suite stays fast."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import cbor2
import pytest

from tests.test_fw_codec import enc
from tests.vm import run_vm

TOTAL = int(os.environ.get("EDGEPAY_FUZZ_N", "20000"))
CHUNKS = 4
HEAP = 64 * 1024


@pytest.fixture(scope="module")
def summaries():
    per = -(-TOTAL // CHUNKS)

    def one(k):
        proc = run_vm("fuzz.py", k + 1, per, timeout=60 + per // 100)
        lines = proc.stdout.strip().splitlines()
        s = json.loads(lines[-1])
        s["accepted"] = [bytes.fromhex(ln[4:]) for ln in lines[:-1] if ln.startswith("acc ")]
        return s

    with ThreadPoolExecutor(CHUNKS) as ex:
        return list(ex.map(one, range(CHUNKS)))


def test_enough_inputs(summaries):
    assert sum(s["n"] for s in summaries) >= min(TOTAL, 10000)


def test_only_codec_errors(summaries):
    for s in summaries:
        assert s["n_failures"] == 0, s["failures"]


def test_memory_bounded(summaries):
    for s in summaries:
        # nothing retained across 5,000 decodes ...
        assert s["mem_end"] - s["mem_start"] <= 1024, s
        # ... and no single input costs more than half the 64K heap
        assert s["peak"] < HEAP // 2, s


def test_fuzzer_reaches_every_layer(summaries):
    codes = set()
    for s in summaries:
        codes |= set(s["codes"])
    # CBOR, envelope and payload layers are all exercised (not stuck at one early error)
    for c in ("malformed", "trailing", "non_canonical", "indefinite", "too_deep", "too_large",
              "unsupported_cbor", "bad_tag", "bad_envelope", "bad_mac", "bad_type", "missing",
              "bad_value"):
        assert c in codes, (c, sorted(codes))
    assert sum(s["ok"] for s in summaries) > 0


def test_accepted_inputs_are_deterministic_cbor(summaries):
    # whatever the firmware accepts, an independent decoder (cbor2) reads, and re-encoding it
    # deterministically (tests' own encoder) gives back the very same bytes
    seen = 0
    for s in summaries:
        for data in s["accepted"]:
            value = cbor2.loads(data)
            assert enc(value) == data, data.hex()
            seen += 1
    assert seen > 0
