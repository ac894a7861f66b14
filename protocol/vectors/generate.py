"""Write protocol/vectors/vectors.json, the golden vectors of the edgepay wire protocol (SPEC §9).

Every byte is assembled by hand (item heads, maps, arrays, COSE headers, MAC structure):
these files use neither codec (not host_tools, not firmware), only hashlib/hmac from the standard
library, so that the vectors are an independent statement of SPEC.md. Keys are fixed test keys
derived from a name, so the output is reproducible.

    python protocol/vectors/generate.py          # (re)write vectors.json
    python protocol/vectors/generate.py --check  # exit 1 if vectors.json is stale

The bytes are made by wire_by_hand.py (CBOR, payload maps, COSE_Mac0), the cases by cases_valid.py
and cases_invalid.py: all standard library only, importing no codec.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, run from anywhere
sys.dont_write_bytecode = True  # leave no __pycache__ in protocol/

from cases_invalid import build_envelope_errors, build_payload_errors  # noqa: E402
from cases_valid import build_valid  # noqa: E402
from wire_by_hand import CASES  # noqa: E402

OUT = Path(__file__).resolve().parent / "vectors.json"


def render() -> str:
    CASES.clear()
    build_valid()
    build_envelope_errors()
    build_payload_errors()
    return json.dumps(CASES, indent=1) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{OUT.name} is current ({len(CASES)} cases)")
        return 0
    OUT.write_text(text)
    n_err = sum("error" in c for c in CASES)
    print(f"wrote {OUT} ({len(CASES)} cases: {len(CASES) - n_err} valid, {n_err} invalid)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
