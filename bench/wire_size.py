"""Wire size of a settlement record: COSE_Mac0 (host codec) vs JSON with a hex HMAC-SHA256.

The same fields both ways: device, seq, prev, sid, payer reference, slot, start and end time,
auth reference, amount and currency. JSON carries its field names and the device id (COSE gets
the device from the topic and the kid) and is written compactly (no spaces); its MAC is
HMAC-SHA256 over the JSON without the "mac" field, hex-encoded. The headline compares against
JSON with the same short names as SPEC §4 (the conservative comparison); a second figure with
descriptive names and ISO 8601 times is printed for information. Prints one JSON object last.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host_tools.protocol import make_kid, open_message, seal, topic  # noqa: E402

DEVICE = "gate-001"
KEY = hashlib.sha256(b"edgepay-bench-key").digest()
RECORD = {
    "type": "sess_close",
    "seq": 18342,
    "prev": hashlib.sha256(b"previous record").digest()[:16],
    "sid": "s-20260101-0042",
    "payer": "card:4111..1111",
    "slot": 3,
    "t0": 1767225600,
    "t1": 1767232815,
    "auth": "auth-7f3a91c2",
    "amount": 1250,
    "cur": "EUR",
}


def cose_record() -> bytes:
    dest = topic(DEVICE, "sess_close")
    data = seal(KEY, make_kid(DEVICE, 1), dest, RECORD)
    assert open_message(KEY, make_kid(DEVICE, 1), dest, data) == RECORD
    return data


def json_record() -> bytes:
    fields = {"device": DEVICE, **{k: v.hex() if isinstance(v, bytes) else v
                                   for k, v in RECORD.items()}}
    body = json.dumps(fields, separators=(",", ":")).encode()
    mac = hmac.new(KEY, body, hashlib.sha256).hexdigest()
    return json.dumps({**fields, "mac": mac}, separators=(",", ":")).encode()


VERBOSE_NAMES = {"type": "message_type", "seq": "sequence", "prev": "previous_hash",
                 "sid": "session_id", "payer": "payer_reference", "slot": "slot",
                 "t0": "start_time", "t1": "end_time", "auth": "auth_reference",
                 "amount": "amount_minor", "cur": "currency"}


def json_verbose_record() -> bytes:
    """For information only: descriptive names and ISO 8601 times, as many JSON APIs do."""
    fields: dict[str, object] = {"device_id": DEVICE}
    for name, value in RECORD.items():
        if isinstance(value, bytes):
            value = value.hex()
        elif name in ("t0", "t1"):
            value = datetime.fromtimestamp(int(value), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields[VERBOSE_NAMES[name]] = value
    body = json.dumps(fields, separators=(",", ":")).encode()
    mac = hmac.new(KEY, body, hashlib.sha256).hexdigest()
    return json.dumps({**fields, "hmac_sha256": mac}, separators=(",", ":")).encode()


def main() -> None:
    cose, js, verbose = cose_record(), json_record(), json_verbose_record()
    print(f"COSE_Mac0 ({len(cose)} bytes): {cose.hex()}")
    print(f"JSON, short names ({len(js)} bytes): {js.decode()}")
    print(f"(for information) JSON, descriptive names and ISO times ({len(verbose)} bytes, "
          f"ratio {len(cose) / len(verbose):.3f}): {verbose.decode()}")
    print(json.dumps({"cose_bytes": len(cose), "json_bytes": len(js),
                      "ratio": round(len(cose) / len(js), 3)}))


if __name__ == "__main__":
    main()
