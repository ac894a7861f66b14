"""Board rules a JSON Schema cannot say, checked on the host so that `build`, `provision` and `flash`
refuse a board the device would refuse at boot, with the same words (firmware/board.py):

- no pin used twice (pin, pins, dout/sck, uart tx/rx, i2c sda/scl, in the firmware's order);
- the journal fits its flash region (at most half of it);
- a rental board has per-slot `lock` and `input` groups;

and one the firmware cannot see, the flash layout: a journal given as `start`/`len` (an RP2040
`rp2.Flash` region inside MicroPython's storage area) must lie outside the board's declared main
filesystem `fs`, and inside the storage area when the board gives its size. A stock RP2040 image
mounts the whole storage area as `/`, so a `start`/`len` board must declare the `fs` its image mounts.

Run after boards/schema.json has passed, but defensive about types: jsonschema is a dev-only
dependency, so without it these rules may see any JSON.
"""
from __future__ import annotations

from typing import Any

PIN_SUBKEYS = ("tx", "rx", "sda", "scl")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pins(p: dict) -> list[Any]:
    """A peripheral's pins, in the order firmware/board.py visits them."""
    out = []
    if "pin" in p:
        out.append(p["pin"])
    if isinstance(p.get("pins"), list):
        out += p["pins"]
    out += [p[k] for k in ("dout", "sck") if k in p]
    for k in ("uart", "i2c"):
        sub = p.get(k)
        if isinstance(sub, dict):
            out += [sub[r] for r in PIN_SUBKEYS if r in sub]
    return out


def pin_rule(board: dict) -> list[str]:
    used: dict[int, str] = {}
    for name, p in (board.get("peripherals") or {}).items():
        if not isinstance(p, dict):
            continue
        for v in _pins(p):
            if not _int(v):
                continue
            if v in used:
                return [f"peripheral '{name}' pin {v} already used by '{used[v]}'"]
            used[v] = name
    return []


def journal_rule(board: dict) -> list[str]:
    fl, j = board.get("flash"), board.get("journal")
    if not isinstance(fl, dict) or not isinstance(j, dict) or not _int(j.get("capacity")):
        return []
    region = fl["blocks"] * fl.get("block_size", 4096) if _int(fl.get("blocks")) else fl.get("len")
    if _int(region) and region and j["capacity"] * 2 > region:
        return ["journal 'capacity' does not fit its flash region (at most half of it)"]
    return []


def rental_rule(board: dict) -> list[str]:
    if board.get("slots") is None:
        return []
    groups = {p.get("type") for p in (board.get("peripherals") or {}).values()
              if isinstance(p, dict) and "pins" in p}
    for t in ("lock", "input"):
        if t not in groups:
            return [f"a rental board needs a per-slot '{t}' group ('pins' with one pin per slot)"]
    return []


def layout_rule(board: dict) -> list[str]:
    fl, fs = board.get("flash"), board.get("fs")
    region = isinstance(fl, dict) and _int(fl.get("start")) and _int(fl.get("len"))
    if fs is None:
        if region:
            return ["flash 'start'/'len': needs 'fs', the main filesystem the board's image mounts "
                    "(a stock RP2040 image mounts the whole storage area, over the journal)"]
        return []
    if not region:
        return ["'fs' is for boards whose journal is a 'start'/'len' flash region"]
    if not isinstance(fs, dict) or not _int(fs.get("start")) or not _int(fs.get("len")):
        return ["'fs' needs integer 'start' and 'len'"]
    assert isinstance(fl, dict)
    j0, j1 = fl["start"], fl["start"] + fl["len"]
    f0, f1 = fs["start"], fs["start"] + fs["len"]
    if j0 < f1 and f0 < j1:
        return [f"flash region {j0}..{j1} overlaps the main filesystem 'fs' {f0}..{f1}"]
    storage = fs.get("storage")
    if _int(storage) and max(j1, f1) > storage:
        return [f"flash region {j0}..{j1} or 'fs' {f0}..{f1} ends past the storage area ({storage} bytes)"]
    return []


def check(board: dict) -> list[str]:
    """Problems beyond the schema, in firmware/board.py's order; [] for a good board."""
    out: list[str] = []
    for rule in (journal_rule, pin_rule, rental_rule, layout_rule):
        try:
            out += rule(board)
        except (TypeError, KeyError, AttributeError):  # a malformed board the schema would reject
            continue
    return out
