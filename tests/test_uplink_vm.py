"""Store-and-forward (firmware/uplink.py) on the real VM: one sealing path. A money record passes
the schema check (msg.check) before it is signed; a malformed one is refused with a typed error,
nothing journaled, so it can never be refused by ingest and resent forever."""
import pytest

from host_tools.build import compile_firmware
from tests.test_journal_vm import run_bundle


@pytest.fixture(scope="module")
def bundle():
    return compile_firmware()


def test_record_is_checked_before_it_is_signed(bundle, tmp_path):
    r = run_bundle(bundle, "uplink_cases.py", tmp_path, heap="160K")  # the whole agent imported
    seq = r["ok"][0]
    assert r["ok"] == [seq, seq, 1, True, 8, seq, 250, "EUR"]  # opens as a checked sess_close
    for name, code in (("float_amount", "bad_type"), ("negative_amount", "bad_type"),
                       ("no_currency", "missing"), ("bad_currency", "bad_value"),
                       ("long_reason", "bad_value"), ("sid_not_text", "bad_type")):
        assert r[name][1:] == [True, False], (name, r[name])  # nothing journaled, not committed
        assert r[name][0] == code, (name, r[name])
    assert r["unknown_type"][1] == 1
    assert r["alarms"] == [["record_quarantined", {"seqs": [seq]}]]
